#!/usr/bin/env python
"""The IQP closed form's forward and backward with its two Walsh-Hadamard transforms on the C++
kernel (`kernel.WHT`) against the GEMM stages (`closed_form.wht_gemm`), alternating in one process
so that the machine's drift falls on both (docs/benchmarks.md, issue 36).

    python scripts/bench_closed_form.py --size 11x10 --size 17x15 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from diffqas_runner.quantum import CANDIDATES, closed_form, kernel, native


def quartile(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", default=None, help="NxL: qubits x layers (repeatable; default 11x10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if kernel.load() is None:
        raise SystemExit("the C++ kernel is not built yet: python -m diffqas_runner.quantum.kernel")
    print(f"# {args.threads} thread(s), 1-minute load {os.getloadavg()[0]:.2f}; lower quartile of the timed steps")
    fast = closed_form.wht
    for size in args.size or ["11x10"]:
        n, layers = (int(v) for v in size.split("x"))
        cands = tuple(c for c in CANDIDATES if native._mode(c, n, layers) == "closed_form")
        theta = torch.rand(layers, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        weights = torch.rand(2**n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        repeats = 10 if n > 14 else 200

        def step(theta=theta, cands=cands, weights=weights):
            (closed_form.probabilities(theta, cands) * weights).sum().backward()

        for r in range(args.rounds):
            try:
                closed_form.wht = fast
                a = quartile(step, repeats)
                closed_form.wht = closed_form.wht_gemm
                b = quartile(step, repeats)
            finally:
                closed_form.wht = fast
            print(f"({n}, {layers}) {len(cands)} candidates, round {r}: kernel WHT {a * 1e3:.3f} ms, "
                  f"GEMM WHT {b * 1e3:.3f} ms, ratio {a / b:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
