"""Two builds of the C++ kernel alternated in one process: this tree's kernel.cpp against another
commit's (same ABI), on the Ry rows alone or on a whole generator step.

    python scripts/bench_kernel_ab.py --ref d136793~1 [--rows 17x15x4] [--step paper12:17x15] [--rounds 12]

Each side is built with the flags the package uses (`kernel._command`), loaded with ctypes and
swapped in as the library `kernel.load()` returns; the rounds alternate the two in ABBA order and
time the minimum of three calls each, so both sides see the same machine state. Printed: each
side's median, the median ratio this/ref, and the range of the per-round ratios. Whole-process
comparisons (scripts/bench_speed.py) swing by 20-30% between invocations on a shared machine;
this is the comparison for a kernel change. Also `--check`: whether the two builds give the same
outputs and state gradients (torch.equal) and how far apart the angles' gradients are.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffqas_runner.quantum import kernel

HERE = Path(__file__).resolve().parent.parent


def build(source: Path, out: Path):
    """kernel.cpp at `source` compiled as the package compiles it, and opened (ABI checked)."""
    res = subprocess.run(kernel._command(source, out), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"build of {source} failed:\n{res.stderr[-3000:]}")
    return kernel._open(out)


def ry_backward_case(n: int, layers: int, rows: int, dtype: torch.dtype):
    """A call of four Ry rows' forward and backward (CNOT-ring-like permutations: a roll per row),
    timing the backward; returns (timed call, outputs for --check)."""
    gen = torch.Generator().manual_seed(n)
    start = torch.randn(rows, 2**n, generator=gen, dtype=dtype)
    start /= start.norm(dim=1, keepdim=True)
    theta = torch.randn(layers, n, generator=gen, dtype=torch.float64)
    perm = torch.stack([torch.roll(torch.arange(2**n), 1 + r) for r in range(rows)]).to(torch.int32).contiguous()
    grad_out = torch.randn(rows, 2**n, generator=gen, dtype=dtype)

    def outputs():
        s, t = start.clone().requires_grad_(), theta.clone().requires_grad_()
        out = kernel.RyLayers.apply(s, t, perm, None, 1)
        out.backward(grad_out)
        return out.detach(), s.grad, t.grad

    def timed() -> float:
        t = theta.clone().requires_grad_()
        out = kernel.RyLayers.apply(start, t, perm, None, 1)
        began = time.perf_counter()
        out.backward(grad_out)
        return time.perf_counter() - began

    return timed, outputs


def step_case(space: str, n: int, layers: int, dtype: torch.dtype):
    """A DiffQAS generator's forward and backward onto 2**n weights (bench_speed.py's step)."""
    from bench_speed import generator_step  # this script's folder is on sys.path

    step = generator_step(space, n, layers, str(dtype).removeprefix("torch."))

    def timed() -> float:
        began = time.perf_counter()
        step()
        return time.perf_counter() - began

    return timed, None


def compare(libs: dict, timed, rounds: int) -> str:
    times = {name: [] for name in libs}
    for lib in libs.values():  # warm each side
        kernel._module = lib
        timed(), timed()
    for r in range(rounds):
        for name in list(libs) if r % 2 == 0 else list(libs)[::-1]:
            kernel._module = libs[name]
            times[name].append(min(timed() for _ in range(3)))
    this, ref = (statistics.median(times[k]) for k in ("this", "ref"))
    ratios = sorted(a / b for a, b in zip(times["this"], times["ref"]))
    return f"this {this * 1e3:8.2f} ms  ref {ref * 1e3:8.2f} ms  ratio {this / ref:.3f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="a commit whose diffqas_runner/quantum/kernel.cpp to compare against")
    parser.add_argument("--rows", default="17x15x4", help="Ry rows' backward: NxLAYERSxROWS ('' to skip)")
    parser.add_argument("--step", default="paper12:17x15", help="a generator step: SPACE:NxLAYERS ('' to skip)")
    parser.add_argument("--precisions", default="float64,float32")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--check", action="store_true", help="compare the two builds' outputs instead of timing")
    args = parser.parse_args()
    kernel.load()
    with tempfile.TemporaryDirectory() as tmp:
        ref_source = Path(tmp) / "ref.cpp"
        ref_source.write_text(
            subprocess.run(["git", "show", f"{args.ref}:diffqas_runner/quantum/kernel.cpp"], cwd=HERE, check=True,
                           capture_output=True, text=True).stdout
        )  # fmt: skip
        libs = {"this": build(kernel.SOURCE, Path(tmp) / "this.so"), "ref": build(ref_source, Path(tmp) / "ref.so")}
        print(f"# this tree against {args.ref}, {torch.get_num_threads()} threads, {args.rounds} rounds", flush=True)
        for precision in args.precisions.split(","):
            dtype = getattr(torch, precision)
            if args.rows:
                n, layers, rows = map(int, args.rows.split("x"))
                timed, outputs = ry_backward_case(n, layers, rows, dtype)
                if args.check:
                    got = {}
                    for name, lib in libs.items():
                        kernel._module = lib
                        got[name] = outputs()
                    same = [torch.equal(a, b) for a, b in zip(got["this"], got["ref"])]
                    rel = float((got["this"][2] - got["ref"][2]).abs().max() / got["ref"][2].abs().max())
                    print(f"Ry rows {args.rows} {precision}: outputs, state gradients equal {same[:2]}; angles' {rel:.1e}")
                else:
                    print(f"Ry rows {args.rows} backward {precision}: {compare(libs, timed, args.rounds)}", flush=True)
            if args.step and not args.check:
                space, size = args.step.split(":")
                n, layers = map(int, size.split("x"))
                timed, _ = step_case(space, n, layers, dtype)
                print(f"{space} ({n}, {layers}) step {precision}: {compare(libs, timed, args.rounds)}", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
