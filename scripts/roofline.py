"""How close one generator step of the native simulator comes to the memory roofline.

For the candidates whose probabilities depend on the angles and are simulated layer by layer
(the C++ kernel's rows; static and closed-form candidates are left out: their cost is not
per-layer state traffic), a step must at least, per row and layer after the first (a product
state), read the state and its permutation index and write the state in the forward (8 + 4 + 8
bytes per amplitude and plane, float64), and read the state, its gradient and the index and write
both back in the backward (8 + 8 + 4 + 8 + 8). That floor, over the bandwidth this machine
sustains (a copy of a buffer far larger than the caches, and of one that fits them, torch's
copy_ on the same thread count), is the roofline; the step (median of repeats, forward and
backward of all candidates, as in bench_backends.py) is reported as a fraction of it.

    python scripts/roofline.py [--size 17x15] [--search-space paper12] [--threads 1,2] [--precision float64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch


def bandwidth_gbs(mb: int, repeats: int = 20) -> float:
    """Bytes read plus written per second by dst.copy_(src) of `mb` MB buffers (median)."""
    src = torch.rand(mb * 2**20 // 8, dtype=torch.float64)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 8 / statistics.median(times) / 1e9


def floor_bytes(cands, n: int, layers: int, itemsize: int) -> tuple[int, int]:
    """(bytes a step must move, rows counted) for the layer-by-layer candidates."""
    from diffqas_runner.quantum import native

    total, rows = 0, 0
    for cand in cands:
        mode = native._mode(cand, n, layers)
        if mode in ("static", "closed_form", "controlled"):  # no layer-by-layer gather; parametrised entanglers: not modelled
            continue
        planes = 1 if mode == "ry" else 2
        run = layers - 1 if native._start_fixed(cand, n) else layers
        per_amp = planes * (itemsize + 4 + itemsize) + planes * (4 * itemsize + 4)
        total += per_amp * 2**n * run
        rows += 1
    return total, rows


def step_seconds(cands, n: int, layers: int, dtype: torch.dtype, repeats: int) -> float:
    from diffqas_runner.qt.generator import Generator, GeneratorOptions

    options = GeneratorOptions(space=tuple(cands), tensor_scale="none", dtype=dtype)
    generator = Generator({"w": torch.Size([2**n])}, layers, options)
    coeffs = torch.randn(2**n)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        (coeffs * generator()["w"]).sum().backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="17x15")
    parser.add_argument("--search-space", default="paper12")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--precision", default="float64,float32")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("DIFFQAS_NATIVE_KERNEL", "cpp")
    from diffqas_runner.config import search_space_file
    from diffqas_runner.quantum import CANDIDATES, kernel

    kernel.load()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_backends import machine

    info = machine()
    n, layers = (int(v) for v in args.size.split("x"))
    cands = list(CANDIDATES) if args.search_space == "paper12" else list(search_space_file(args.search_space))
    print(f"# {info['cpu']}, {info['cores']} cores, {info['memory_mb']} MB, {info['date']}, load {os.getloadavg()}")
    print(f"# python {' '.join(sys.argv)}")
    print(f"{'threads':>7} {'precision':>9} {'rows':>4} {'floor MB':>9} {'DRAM GB/s':>9} {'cache GB/s':>10}"
          f" {'roofline s':>10} {'step s':>8} {'roofline/step':>13}")  # fmt: skip
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        dram, cache = bandwidth_gbs(512), bandwidth_gbs(4)
        for precision in args.precision.split(","):
            dtype = getattr(torch, precision)
            floor, rows = floor_bytes(cands, n, layers, torch.finfo(dtype).bits // 8)
            step = step_seconds(cands, n, layers, dtype, args.repeats)
            roof = floor / (dram * 1e9)
            print(f"{threads:>7} {precision:>9} {rows:>4} {floor / 2**20:>9.0f} {dram:>9.1f} {cache:>10.1f}"
                  f" {roof:>10.4f} {step:>8.4f} {roof / step:>13.2f}", flush=True)  # fmt: skip
    print(f"# finished {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
