"""The native simulator beside its peers, each at its best, doing the same work in one invocation.

The work of one step: every candidate's 2**n probabilities for shared angles theta and the
gradient of sum(c * P) over theta for fixed random coefficients c (what a DiffQAS step needs).

    python scripts/bench_peers.py [--sizes 8x10,12x10,14x15] [--search-space paper12|wide32]
        [--peers native,native-torch,default.qubit,lightning.qubit,qulacs] [--budget S] [--json PATH]

- native: this project's simulator (float64, C++ kernel); native-torch: its pure-torch path.
- default.qubit: PennyLane, torch interface, backprop (its fastest differentiable method here).
- lightning.qubit: PennyLane's C++ simulator. Its adjoint method differentiates expectation values
  only, not qml.probs, so it runs with parameter-shift (2 circuits per angle): stated in the rows.
- qulacs: one ParametricQuantumCircuit per candidate, built once (a step sets its parameters),
  forward update_quantum_state, gradient by its
  adjoint backprop_inner_product with bistate c * psi (the exact gradient of sum(c |psi|^2)).
  Needs the optional `bench` extra (pip install -e ".[bench]").

Before timing, every peer's probabilities and gradient are checked against native's at 6 qubits
(to 1e-8): they do the same work. Each (peer, size) runs in a fresh subprocess (its own peak RSS);
"x native" is the peer's step time over native's at the same size in this invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PEERS = ("native", "native-torch", "default.qubit", "lightning.qubit", "qulacs")
METHOD = {
    "native": "adjoint (C++ kernel)",
    "native-torch": "torch autograd",
    "default.qubit": "backprop",
    "lightning.qubit": "parameter-shift",
    "qulacs": "adjoint (backprop_inner_product)",
}


def _space(name: str):
    from diffqas_runner.config import search_space_file
    from diffqas_runner.quantum import CANDIDATES

    cands = list(CANDIDATES) if name == "paper12" else list(search_space_file(name))
    if any(c.entangler.parametrised for c in cands):
        raise SystemExit(
            f"--search-space {name}: parametrised entanglers (crx ... cu3) are not built for the peers; allowed: CNOT/CZ spaces"
        )
    return cands


def _theta(n: int, layers: int, k: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.rand((layers, n, k) if k > 1 else (layers, n), dtype=torch.float64, generator=gen) * 6.283


_CIRCUITS: dict = {}


def _qulacs_circuit(cand, n: int, layers: int):
    """The candidate as a qulacs ParametricQuantumCircuit, built once (a step only sets its
    parameters), and where each parameter sits: (layer, wire, k)."""
    key = (cand, n, layers)
    if key not in _CIRCUITS:
        from qulacs import ParametricQuantumCircuit

        circuit, where = ParametricQuantumCircuit(n), []
        q = lambda wire: n - 1 - wire  # noqa: E731 -- qulacs: qubit 0 is the least significant bit
        if cand.hadamard:
            for w in range(n):
                circuit.add_H_gate(q(w))
        add = {"X": circuit.add_parametric_RX_gate, "Y": circuit.add_parametric_RY_gate, "Z": circuit.add_parametric_RZ_gate}
        two = circuit.add_CNOT_gate if cand.entangler.gate == "cnot" else circuit.add_CZ_gate
        for layer in range(layers):
            for control, target in cand.entangler.pairs_on(n):
                two(q(control), q(target))
            for w in range(n):
                for k, axis in enumerate(cand.rotation.axes):
                    add[axis](q(w), 0.0)
                    where.append((layer, w, k))
        _CIRCUITS[key] = circuit, where
    return _CIRCUITS[key]


def _qulacs_step(theta, cands, coeffs):
    """(probabilities (len(cands), 2**n), gradient like theta) with qulacs."""
    import numpy as np
    import torch
    from qulacs import QuantumState

    layers, n = theta.shape[:2]
    th = theta.detach().numpy()
    probs, grad = [], np.zeros_like(th)
    for row, cand in enumerate(cands):
        circuit, where = _qulacs_circuit(cand, n, layers)
        for i, (layer, w, k) in enumerate(where):  # qulacs: R(t) = exp(+i t P / 2), so t = -theta
            circuit.set_parameter(i, -(th[layer, w] if th.ndim == 2 else th[layer, w, k]))
        state = QuantumState(n)
        circuit.update_quantum_state(state)
        psi = state.get_vector()
        probs.append(np.abs(psi) ** 2)
        bistate = QuantumState(n)
        bistate.load(coeffs[row].numpy() * psi)
        # backprop_inner_product gives Re<bistate| dpsi/dt'> for qulacs' t' = -t: dL/dt = -2 of it
        for (layer, w, k), value in zip(where, circuit.backprop_inner_product(bistate)):
            if th.ndim == 2:
                grad[layer, w] -= 2 * value
            else:
                grad[layer, w, k] -= 2 * value
    return torch.from_numpy(np.stack(probs)), torch.from_numpy(grad)


def _step(peer: str, theta, cands, coeffs):
    import torch

    if peer == "qulacs":
        return _qulacs_step(theta, cands, coeffs)
    from diffqas_runner.quantum import probabilities

    t = theta.detach().clone().requires_grad_()
    if peer in ("native", "native-torch"):
        probs = probabilities(t, cands, backend="native")
    else:
        probs = probabilities(t, cands, backend="pennylane", device=peer)
    (grad,) = torch.autograd.grad((coeffs * probs).sum(), t)
    return probs.detach(), grad


def _k(cands) -> int:
    return max(c.rotation.n_angles for c in cands)


def one(peer: str, n: int, layers: int, space: str, repeats: int, budget: float) -> dict:
    import torch

    os.environ["DIFFQAS_NATIVE_KERNEL"] = "torch" if peer == "native-torch" else "cpp"
    cands = _space(space)
    k = _k(cands)
    # the same work: this peer against native (C++ kernel) at 6 qubits, probabilities and gradient
    small = _theta(6, 3, k, seed=1)
    coeffs_small = torch.randn(len(cands), 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mine = _step(peer, small, cands, coeffs_small)
    os.environ["DIFFQAS_NATIVE_KERNEL"] = "torch"  # the reference: the pure-torch path (tested against PennyLane)
    ref = _step("native-torch", small, cands, coeffs_small)
    os.environ["DIFFQAS_NATIVE_KERNEL"] = "torch" if peer == "native-torch" else "cpp"
    agree = max(float((mine[0] - ref[0]).abs().max()), float((mine[1] - ref[1]).abs().max()))
    if agree > 1e-8:
        raise SystemExit(f"{peer} disagrees with native at 6 qubits by {agree:.2e}: not the same work")
    theta = _theta(n, layers, k)
    coeffs = torch.randn(len(cands), 2**n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for i in range(repeats + 1):  # the first builds caches (native) or QNodes (PennyLane): not timed
        start = time.perf_counter()
        _step(peer, theta, cands, coeffs)
        elapsed = time.perf_counter() - start
        if i > 0 or elapsed > budget:
            times.append(elapsed)
        if sum(times) > budget:
            break
    return {
        "peer": peer,
        "method": METHOD[peer],
        "n": n,
        "L": layers,
        "search_space": space,
        "n_candidates": len(cands),
        "step_s": statistics.median(times),
        "repeats": len(times),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_mb": base,
        "agree_6q": agree,
        "torch_threads": torch.get_num_threads(),
        "load_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8x10,12x10,14x15")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--search-space", default="paper12")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per (peer, size); slower peers skip larger sizes")
    parser.add_argument("--json", help="write the rows as a JSON list to this path")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        peer, n, layers = args.one.split(",")
        print(json.dumps(one(peer, int(n), int(layers), args.search_space, args.repeats, args.budget)))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_backends import machine

    info = {**machine(), "command": " ".join(["python", *sys.argv])}
    print(f"# {info['cpu']}, {info['cores']} cores, {info['memory_mb']} MB, Python {info['python']}, {info['date']}")
    print(f"# search space: {args.search_space}; load {os.getloadavg()}; one subprocess per row")
    print(f"{'n':>3} {'L':>3} {'peer':>16} {'method':>33} {'step_s':>10} {'peak_mb':>8} {'x native':>9}")
    rows, too_slow = [], set()
    for n, layers in [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]:
        native_s = None
        for peer in args.peers.split(","):
            label = f"{n:>3} {layers:>3} {peer:>16} {METHOD[peer]:>33}"
            if peer in too_slow:
                print(f"{label}  skipped: a smaller size took over budget/8 per step")
                continue
            cmd = [sys.executable, __file__, "--one", f"{peer},{n},{layers}", "--search-space", args.search_space]
            cmd += ["--repeats", str(args.repeats), "--budget", str(args.budget)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{label}  failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            row = {**json.loads(res.stdout.strip().splitlines()[-1]), **info}
            rows.append(row)
            if peer == "native":
                native_s = row["step_s"]
            ratio = f"{row['step_s'] / native_s:9.1f}" if native_s else ""
            print(f"{label} {row['step_s']:>10.4f} {row['peak_mb']:>8.0f} {ratio}", flush=True)
            if row["step_s"] * 8 > args.budget:
                too_slow.add(peer)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
