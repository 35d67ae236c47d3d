#!/usr/bin/env python
"""Time one Quantum-Train generator step per backend, side by side, and its peak memory.

A step is what training does once per optimisation step: all candidates of the search space
(`--search-space`, default paper12's 12) with shared angles (forward and backward), the DiffQAS
weighted sum, the Linear(n+1 -> 1) mapping.
Each (n, L, backend, precision) runs in a fresh subprocess so its peak RSS is its own; all
ratios printed come from this one invocation.

    python scripts/bench_backends.py [--sizes 8x10,12x10,14x15,17x15] [--json PATH]
        [--backends native,default.qubit,lightning.qubit] [--precision float64,float32]
        [--threads N] [--memory-mb MB] [--sim-memory-mb MB] [--search-space paper12|wide32|PATH.yaml]

`--precision` applies to the native backends; the PennyLane backends always run in float64.
Backend native-torch is native with its C++ kernel switched off (the pure-torch fallback).
"x native" is step_s over the native float64 step_s of the same size in this invocation.
`--sim-memory-mb` is backend.memory_mb for the native backends (candidates simulated in chunks
that fit it). `--memory-mb` skips a size whose peak RSS, projected from the same backend's smaller sizes,
exceeds it (and says so). Each row records the 1-minute load average when its subprocess started.
`--json PATH` writes the rows as a JSON list, each row carrying the machine it ran on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

BACKENDS = ("native", "default.qubit", "lightning.qubit")
# native-torch: the native backend with its C++ kernel switched off (DIFFQAS_NATIVE_KERNEL=torch)
NATIVE = ("native", "native-torch")
PRECISIONS = ("float64", "float32")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_config(
    n: int,
    layers: int,
    backend: str,
    precision: str,
    repeats: int,
    budget: float,
    threads: int | None,
    space: str,
    sim_memory_mb: int | None = None,
) -> dict:
    import torch

    from diffqas_runner.config import search_space_file
    from diffqas_runner.qt.generator import Generator, GeneratorOptions

    if threads:
        torch.set_num_threads(threads)
    if backend == "native-torch":
        os.environ["DIFFQAS_NATIVE_KERNEL"] = "torch"
    torch.manual_seed(0)
    native = backend in NATIVE
    options = GeneratorOptions(
        backend="native" if native else "pennylane",
        device="default.qubit" if native else backend,
        tensor_scale="none",
        space=search_space_file(space),
        dtype=torch.float32 if precision == "float32" else torch.float64,
        memory_mb=sim_memory_mb,
    )
    load = os.getloadavg()[0]
    base_mb = _rss_mb()  # torch, the project and the backend's imports, before any simulation
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
    kernel = None
    if native:
        from diffqas_runner.quantum import kernel as native_kernel

        kernel = "cpp" if native_kernel.load() is not None else "torch"
    return {
        "n": n,
        "L": layers,
        "search_space": space,
        "n_candidates": len(generator.candidates),
        "backend": backend,
        "kernel": kernel,
        "precision": precision,
        "sim_memory_mb": sim_memory_mb if native else None,
        "step_s": statistics.median(times),
        "min_s": min(times),
        "peak_mb": _rss_mb(),
        "base_mb": base_mb,
        "repeats": len(times),
        "torch_threads": torch.get_num_threads(),
        "load_1min": load,
        "torch": torch.__version__,
    }


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_mb = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 1024
    except (OSError, StopIteration):
        mem_mb = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mb": round(mem_mb) if mem_mb else None,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _default_memory_mb() -> float:
    total = machine()["memory_mb"]
    return 0.8 * total if total else 16000


def _project_mb(done: list[dict], n: int, layers: int) -> float | None:
    """Peak RSS projected for (n, layers) from the same backend's previous sizes: the part above
    the imports is fitted as a + b * 2**n * L through the last two sizes (the fixed part a
    dominates small sizes, the state-proportional part b large ones), or scaled linearly
    from a single size."""
    if not done:
        return None
    work = [2 ** r["n"] * r["L"] for r in done[-2:]]
    extra = [r["peak_mb"] - r["base_mb"] for r in done[-2:]]
    target = 2**n * layers
    if len(done) >= 2 and work[1] > work[0]:
        slope = max(0.0, (extra[1] - extra[0]) / (work[1] - work[0]))
        projected = max(extra[1], extra[1] + slope * (target - work[1]))
    else:
        projected = extra[-1] * max(1.0, target / work[-1])
    return done[-1]["base_mb"] + projected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8x10,12x10,14x15,17x15")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--precision", default="float64,float32", help="native precisions to time (comma list)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per config; slower backends skip larger sizes")
    parser.add_argument(
        "--memory-mb",
        type=float,
        default=None,
        help="skip a size whose peak RSS, projected from the backend's previous size, exceeds this (default: 80%% of RAM)",
    )
    parser.add_argument("--sim-memory-mb", type=int, default=None, help="backend.memory_mb of the native backends")
    parser.add_argument("--json", help="write the rows as a JSON list to this path")
    parser.add_argument("--search-space", default="paper12", help="a packaged space (paper12, wide32) or a YAML file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: n,L,backend,precision in a subprocess
    args = parser.parse_args()
    if args.one:
        n, layers, backend, precision = args.one.split(",")
        config = (int(n), int(layers), backend, precision, args.repeats, args.budget, args.threads, args.search_space)
        row = one_config(*config, args.sim_memory_mb)
        print(json.dumps(row))
        return

    precisions = args.precision.split(",")
    for p in precisions:
        if p not in PRECISIONS:
            parser.error(f"--precision {p!r}: allowed {', '.join(PRECISIONS)}")
    memory_mb = args.memory_mb if args.memory_mb is not None else _default_memory_mb()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    configs = [(b, p) for b in args.backends.split(",") for p in (precisions if b in NATIVE else ["float64"])]
    info = machine()
    info["command"] = " ".join(["python", *sys.argv])
    print(f"# {info['cpu']}, {info['cores']} cores, {info['memory_mb']} MB, Python {info['python']}, {info['date']}")
    print(f"# torch threads: {args.threads or 'torch default'}; memory budget {memory_mb:.0f} MB; load {os.getloadavg()}")
    print(f"# search space: {args.search_space}; backend.memory_mb: {args.sim_memory_mb or 'default (half the free memory)'}")
    head = ("n", 3), ("L", 3), ("backend", 16), ("precision", 9), ("step_s", 10), ("peak_mb", 9), ("threads", 7), ("load", 5)
    print(" ".join(f"{name:>{width}}" for name, width in head), f"{'x native':>9}")
    rows, too_slow, previous = [], set(), {}
    for n, layers in sizes:
        native_s = None
        for backend, precision in configs:
            label = f"{n:>3} {layers:>3} {backend:>16} {precision:>9}"
            if (backend, precision) in too_slow:
                print(f"{label}  skipped: a smaller size took over budget/8 = {args.budget / 8:.1f} s per step")
                continue
            projected = _project_mb(previous.get((backend, precision), []), n, layers)
            if projected is not None and projected > memory_mb:
                print(f"{label}  skipped: projected peak RSS {projected:.0f} MB > --memory-mb {memory_mb:.0f}")
                continue
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{n},{layers},{backend},{precision}",
                "--repeats",
                str(args.repeats),
                "--budget",
                str(args.budget),
                "--search-space",
                args.search_space,
            ]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--sim-memory-mb", str(args.sim_memory_mb)] if args.sim_memory_mb else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = {**json.loads(out.strip().splitlines()[-1]), **info}
            rows.append(row)
            previous.setdefault((backend, precision), []).append(row)
            if backend == "native" and precision == "float64":
                native_s = row["step_s"]
            ratio = f"{row['step_s'] / native_s:9.2f}" if native_s else ""
            cells = f"{row['step_s']:>10.4f} {row['peak_mb']:>9.0f} {row['torch_threads']:>7} {row['load_1min']:>5.2f}"
            kernel = {"cpp": "  (C++ kernel)", "torch": "  (pure torch)"}.get(row["kernel"], "")
            print(f"{label} {cells} {ratio}{kernel}", flush=True)
            if row["step_s"] * 2**3 > args.budget:  # the next size would be roughly 8x slower
                too_slow.add((backend, precision))
            if args.json:  # rewritten after every row, so an interrupted run keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
    if args.json:
        print(f"# wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
