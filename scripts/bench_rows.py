"""One candidate row's forward and backward on the native simulator's layer-by-layer path, per
kind of row, beside a Ry row with a CNOT ring (the kernel's first and cheapest path).

    python scripts/bench_rows.py [--size 17x15] [--precision float64] [--repeats 3]

Each row runs `native._simulate_group` (parametrised entanglers: `native.probabilities` with
their angles phi) on one candidate (H start or |0..0>, CNOT or CZ ring, the
rotation named) and sums its probabilities' gradient; the median of the repeats after one
untimed call is printed, with the ratio to the first row. DIFFQAS_NATIVE_KERNEL decides the path
(default here: cpp, the C++ kernel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

ROWS = {  # label: (mode, init, gate, axes)
    "Ry, CNOT ring, H start": ("ry", "H", "cnot", ("Y",)),
    "Ry, CZ ring, |0..0> start (signs)": ("ry", "none", "cz", ("Y",)),
    "Ry, CZ ring, H start (signs, dense start)": ("ry", "H", "cz", ("Y",)),
    "Rx, CNOT ring (real pairs)": ("rx", "H", "cnot", ("X",)),
    "RyRz, CNOT ring (Ry + Z phase)": ("complex", "H", "cnot", ("Y", "Z")),
    "Rot (ZYZ), CZ ring (Ry + Z phases)": ("complex", "none", "cz", ("Z", "Y", "Z")),
    # the same two rows on the general complex 2x2 path (the only complex path before issue 26)
    "RyRz, CNOT ring (general 2x2)": ("complex-2x2", "H", "cnot", ("Y", "Z")),
    "Rot (ZYZ), CZ ring (general 2x2)": ("complex-2x2", "none", "cz", ("Z", "Y", "Z")),
    # parametrised entanglers (issue 27): gate by gate on complex amplitudes, phi (L, n, m)
    "Ry, CRy ring, H start (controlled)": ("controlled", "H", "cry", ("Y",)),
    "Ry, CRz ring, H start (diagonal layer)": ("controlled", "H", "crz", ("Y",)),
    "U3 (= Rot), CU3 ring, |0..0> (toolkit)": ("controlled", "none", "cu3", ("Z", "Y", "Z")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="17x15")
    parser.add_argument("--precision", default="float64")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("DIFFQAS_NATIVE_KERNEL", "cpp")
    from diffqas_runner.quantum import kernel, native
    from diffqas_runner.quantum.candidates import Candidate, Entangler, Rotation

    n, layers = (int(v) for v in args.size.split("x"))
    dtype = getattr(torch, args.precision)
    path = "C++ kernel" if kernel.load() is not None else "pure torch"
    print(f"# n={n} L={layers} {args.precision}, {torch.get_num_threads()} threads, {path}, load {os.getloadavg()}")
    first = None
    for number, (label, (mode, init, gate, axes)) in enumerate(ROWS.items(), 1):
        cand = Candidate(number, init, Entangler(gate, "ring"), Rotation(axes))
        shape = (layers, n) if len(axes) == 1 else (layers, n, len(axes))
        theta = (torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(number)) * 6.283).to(dtype)
        theta.requires_grad_()
        m = cand.entangler.n_angles
        phi = (torch.rand(layers, n, max(m, 1), dtype=torch.float64) * 6.283).to(dtype).requires_grad_()
        times = []
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            if mode == "controlled":
                native.probabilities(theta, (cand,), phi=phi).sum().backward()
            elif mode == "complex-2x2":  # Ry-between-Z rows off their fast path
                yz, native.YZ_AXES = native.YZ_AXES, ()
                try:
                    native._simulate_group(theta, (cand,), "complex").sum().backward()
                finally:
                    native.YZ_AXES = yz
            else:
                native._simulate_group(theta, (cand,), mode).sum().backward()
            if i:
                times.append(time.perf_counter() - start)
        step = statistics.median(times)
        first = first or step
        print(f"{label:>44} {step:8.4f} s {step / first:5.1f}x")


if __name__ == "__main__":
    main()
