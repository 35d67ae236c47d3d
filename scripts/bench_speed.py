#!/usr/bin/env python
"""Issue 36's speed figures for this checkout against a reference checkout, in one invocation.

    python scripts/bench_speed.py --ref /path/to/old/checkout [--pairs 5] [--only steps,runs,sweep]

The reference is any checkout of this project (e.g. `git worktree add /tmp/ref 6b34372`, then
`ln -s ../configs /tmp/ref/diffqas_runner/configs`); it runs through PYTHONPATH, so both sides use
the same Python and torch. Every figure is measured A B A B ... (this tree, then the reference),
each in a fresh process, so drift in the machine's speed falls on both sides alike; the printed
ratio is the median of the pairs' ratios (this / reference). Both sides use the C++ kernel
(DIFFQAS_NATIVE_KERNEL=cpp, built before timing) unless --kernel torch.

Figures:
- steps: one training step (generator forward and backward, the target, the optimiser; median of
  --repeats steps after 10 untimed ones) of the Table II Bessel DiffQAS run and of its fixed
  candidate 8, 1 thread; and the generator step of paper12 and wide32 at (17, 15) in float64 and
  float32 (a Linear mapping onto 2**17 weights), torch's threads (--threads).
- runs: whole processes: `import torch` alone, the smoke run (`debug=smoke`, MNIST from --data-dir), and the Table II
  Bessel DiffQAS run (`task=bessel logger=none figures=false train.threads=1`).
- sweep: the Table II Bessel sweep (`-m experiment=table2_bessel hydra/launcher=joblib
  hydra.launcher.n_jobs=2 figures=false logger=none`), one pair (minutes per side).
Peak RSS (MB) is printed for every process-level figure. The first line says the machine, torch's
threads and the 1-minute load before and after: quote the ratios with it. Before the last line,
the targets that compare two figures of this tree (float32 against float64, wide32 against
paper12, the smoke run against `import torch`) are printed as ratios of this invocation's medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BESSEL = ["task=bessel", "logger=none", "figures=false", "train.threads=1"]
STEPS = {  # label: (kind, arguments)
    "Bessel DiffQAS step (11 qubits, depth 10)": ("train", BESSEL),
    "Bessel candidate 8 step": ("train", [*BESSEL, "search=fixed", "search.arch=8"]),
    "paper12 (17, 15) float64 generator step": ("generator", ["paper12", "17", "15", "float64"]),
    "paper12 (17, 15) float32 generator step": ("generator", ["paper12", "17", "15", "float32"]),
    "wide32 (17, 15) float64 generator step": ("generator", ["wide32", "17", "15", "float64"]),
}


def _median_step(step, repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_train_step(overrides: list[str], repeats: int) -> float:
    """One optimisation step of a run's experiment, as `train_supervised` takes it (a batch of 10;
    fused into one kernel call where the loop would fuse it)."""
    import torch
    from hydra import compose, initialize_config_dir
    from torch.func import functional_call

    from diffqas_runner.cli import CONFIG_DIR
    from diffqas_runner.config import validate
    from diffqas_runner.run import build, seed_everything

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    torch.set_num_threads(1)
    seed_everything(0)
    exp = build(cfg)
    task, model, generator, optimizer = exp.task, exp.model, exp.generator, exp.optimizer
    x, y = task.train.x[:10], task.train.y[:10]
    try:  # the step as one kernel call where the tree has it and the structure allows (train/fused_step.py)
        from diffqas_runner.train import fused_step

        fused = fused_step.build(task, model, generator)
    except ImportError:  # a tree before it
        fused = None

    def step():
        if fused is not None:
            optimizer.zero_grad(set_to_none=True)
            fused(x, y)
        else:
            loss = task.loss(functional_call(model, generator(), (x,)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()

    return _median_step(step, repeats)


def generator_step(space: str, n: int, layers: int, precision: str):
    """A DiffQAS generator's forward and backward onto 2**n weights (scripts/bench_backends.py's
    step), as a function to call (scripts/bench_kernel_ab.py times it too)."""
    import torch

    from diffqas_runner.config import search_space_file
    from diffqas_runner.qt.generator import Generator, GeneratorOptions

    dtype = getattr(torch, precision)
    torch.manual_seed(0)
    options = GeneratorOptions(space=search_space_file(space), dtype=dtype)
    generator = Generator({"w": torch.Size([2**n])}, layers, options)

    def step():
        generator.zero_grad(set_to_none=True)
        generator()["w"].square().sum().backward()

    return step


def one_generator_step(space: str, n: int, layers: int, precision: str, repeats: int) -> float:
    return _median_step(generator_step(space, n, layers, precision), repeats, warmup=2)


def _env(tree: Path | None, kernel: str) -> dict:
    env = {**os.environ, "DIFFQAS_NATIVE_KERNEL": kernel, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def _process(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, this process alone: os.wait4's rusage) and stdout of one process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def _pairs(label: str, make_cmd, trees: dict, pairs: int, env_kernel: str, measure=None) -> float:
    """Alternate this tree and the reference `pairs` times; print medians, the ratio and peaks;
    return this tree's median."""
    values: dict[str, list[float]] = {k: [] for k in trees}
    peaks: dict[str, float] = {k: 0.0 for k in trees}
    for _ in range(pairs):
        for side, tree in trees.items():
            with tempfile.TemporaryDirectory() as tmp:
                wall, peak, out = _process(make_cmd(Path(tmp)), _env(tree, env_kernel), Path(tmp))
            values[side].append(wall if measure is None else measure(out))
            peaks[side] = max(peaks[side], peak)
    this, ref = values["this"], values.get("ref")
    line = f"{label:>46}: this {statistics.median(this):8.4f} s"
    if ref:
        ratios = [a / b for a, b in zip(this, ref)]
        line += f"  ref {statistics.median(ref):8.4f} s  ratio {statistics.median(ratios):5.2f}x"
        line += f" (pairs {min(ratios):.2f}-{max(ratios):.2f})"
    if measure is None:
        line += f"  peak RSS this {peaks['this']:.0f} MB" + (f", ref {peaks['ref']:.0f} MB" if ref else "")
    print(line, flush=True)
    return statistics.median(this)


# issue 36's targets that compare two figures of this tree: (numerator, denominator, target)
WITHIN = (
    ("paper12 (17, 15) float32 generator step", "paper12 (17, 15) float64 generator step", "<= 0.6x"),
    ("wide32 (17, 15) float64 generator step", "paper12 (17, 15) float64 generator step", "<= 3.5x"),
    ("smoke run", "import torch", "<= 1.5x"),
)


def _print_within(medians: dict[str, float]) -> None:
    """This tree's ratios between its own figures (medians of this invocation), with the targets."""
    for top, bottom, target in WITHIN:
        if top in medians and bottom in medians:
            print(f"# this tree: {top} / {bottom} = {medians[top] / medians[bottom]:.2f}x (target {target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, help="a reference checkout (omit: this tree alone)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200, help="timed steps per Bessel step figure (5 at 17 qubits)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the 17-qubit steps (default torch's)")
    parser.add_argument("--only", default="steps,runs", help="comma list of steps, runs, sweep")
    parser.add_argument("--kernel", default="cpp", choices=("cpp", "torch"))
    parser.add_argument("--data-dir", type=Path, default=HERE.parent / "shared" / "data", help="the smoke run's images")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: one figure in this process
    args = parser.parse_args()
    if args.one:
        kind, *rest = args.one
        if kind == "train":
            print(json.dumps(one_train_step(rest, args.repeats)))
        else:
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
            space, n, layers, precision = rest
            print(json.dumps(one_generator_step(space, int(n), int(layers), precision, args.repeats)))
        return
    trees = {"this": HERE} | ({"ref": args.ref.resolve()} if args.ref else {})
    for tree in trees.values():  # build both kernels before any timing
        _process([sys.executable, "-m", "diffqas_runner.quantum.kernel"], _env(tree, "cpp"), tree)
    only = set(args.only.split(","))
    threads = f"{args.threads} threads" if args.threads else "torch's default threads"
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"kernel {args.kernel}, {args.pairs} pairs, 1-minute load {os.getloadavg()[0]:.2f}; this {HERE}"
        + (f", ref {args.ref}" if args.ref else ""),
        flush=True,
    )
    script = str(Path(__file__).resolve())
    medians: dict[str, float] = {}
    if "steps" in only:
        for label, (kind, rest) in STEPS.items():
            repeats = args.repeats if kind == "train" else 5
            extra = ["--threads", str(args.threads)] if args.threads else []
            medians[label] = _pairs(
                f"{label} ({'1 thread' if kind == 'train' else threads})",
                lambda tmp, kind=kind, rest=rest, repeats=repeats, extra=extra: [
                    sys.executable, script, "--repeats", str(repeats), *extra, "--one", kind, *rest,
                ],
                trees, args.pairs, args.kernel, measure=lambda out: float(out.strip().splitlines()[-1]),
            )  # fmt: skip
    run = [sys.executable, "-m", "diffqas_runner"]
    if "runs" in only:
        importing = lambda tmp: [sys.executable, "-c", "import torch"]  # noqa: E731
        medians["import torch"] = _pairs("import torch (process)", importing, trees, args.pairs, args.kernel)
        smoke = ["debug=smoke", "logger=none", "figures=false", f"data_dir={args.data_dir}"]
        smoke_run = lambda tmp: [*run, *smoke, f"hydra.run.dir={tmp}/r"]  # noqa: E731
        medians["smoke run"] = _pairs("smoke run (process)", smoke_run, trees, args.pairs, args.kernel)
        bessel = lambda tmp: [*run, *BESSEL, f"hydra.run.dir={tmp}/r"]  # noqa: E731
        _pairs("Bessel DiffQAS run (process)", bessel, trees, args.pairs, args.kernel)
    if "sweep" in only:
        sweep = ["-m", "experiment=table2_bessel", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        sweep += ["figures=false", "logger=none"]
        _pairs("Table II Bessel sweep (process)", lambda tmp: [*run, *sweep, f"hydra.sweep.dir={tmp}/s"], trees, 1, args.kernel)
    _print_within(medians)
    print(f"# 1-minute load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
