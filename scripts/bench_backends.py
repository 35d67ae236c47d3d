#!/usr/bin/env python
"""Time one Quantum-Train generator step per backend, side by side, and its peak memory.

A step is what training does once per optimisation step: all 12 candidates with shared
angles (forward and backward), the DiffQAS weighted sum, the Linear(n+1 -> 1) mapping.
Each (n, L, backend) runs in a fresh subprocess so its peak RSS is its own.

    python scripts/bench_backends.py [--sizes 8x10,12x10,14x15,17x15] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

BACKENDS = ("native", "default.qubit", "lightning.qubit")


def one_config(n: int, layers: int, backend: str, repeats: int, budget: float) -> dict:
    import torch

    from diffqas_runner.qt.generator import Generator, GeneratorOptions

    torch.manual_seed(0)
    options = GeneratorOptions(
        backend="native" if backend == "native" else "pennylane",
        device="default.qubit" if backend == "native" else backend,
        tensor_scale="none",
    )
    generator = Generator({"w": torch.Size([2**n])}, layers, options)
    coeffs = torch.randn(2**n)
    times = []
    for i in range(repeats + 1):  # the first step builds caches: not timed
        start = time.perf_counter()
        weights = generator()["w"]
        (coeffs * weights).sum().backward()
        elapsed = time.perf_counter() - start
        if i > 0 or elapsed > budget:
            times.append(elapsed)
        if sum(times) > budget:
            break
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "L": layers, "backend": backend, "step_s": statistics.median(times), "peak_mb": peak_mb,
            "repeats": len(times)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8x10,12x10,14x15,17x15")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per config; slower backends skip larger sizes")
    parser.add_argument("--memory-mb", type=float, default=16000, help="projected peak RSS above which larger sizes are skipped")
    parser.add_argument("--json", help="write the rows as a JSON list to this path")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: n,L,backend in a subprocess
    args = parser.parse_args()
    if args.one:
        n, layers, backend = args.one.split(",")
        print(json.dumps(one_config(int(n), int(layers), backend, args.repeats, args.budget)))
        return

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows, too_slow = [], set()
    machine = platform.processor() or platform.machine()
    print(f"# {machine}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'n':>3} {'L':>3} {'backend':>16} {'step_s':>10} {'peak_mb':>9} {'x native':>9}")
    for n, layers in sizes:
        native_s = None
        for backend in args.backends.split(","):
            if backend in too_slow:
                print(f"{n:>3} {layers:>3} {backend:>16}  skipped: a smaller size projects over the time or memory budget")
                continue
            cmd = [sys.executable, __file__, "--one", f"{n},{layers},{backend}", "--repeats", str(args.repeats),
                   "--budget", str(args.budget)]  # fmt: skip
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            rows.append(row)
            if backend == "native":
                native_s = row["step_s"]
            ratio = f"{row['step_s'] / native_s:9.1f}" if native_s else ""
            print(f"{n:>3} {layers:>3} {backend:>16} {row['step_s']:>10.4f} {row['peak_mb']:>9.0f} {ratio}", flush=True)
            if row["step_s"] * 2**3 > args.budget:  # the next size would be roughly 8x slower
                too_slow.add(backend)


if __name__ == "__main__":
    main()
