"""Sweeps: presets compose, launchers run jobs, aggregate.py turns a sweep into tables and plots."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from diffqas_runner.aggregate import aggregate
from diffqas_runner.cli import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _sweep(tmp_path, launcher_args):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "diffqas_runner", "-m", "task=bessel", "debug=smoke", "logger=none", "search=auto",
           "search.arch=null,8", "seed=0,1", "train.threads=1", *launcher_args, f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return sweep


def _check_aggregate(sweep):
    summaries = [json.loads(p.read_text()) for p in sweep.rglob("summary.json")]
    assert len(summaries) == 4 and {(s["search"], s["arch"], s["seed"]) for s in summaries} == {
        ("diffqas", None, 0), ("diffqas", None, 1), ("fixed", 8, 0), ("fixed", 8, 1)}  # fmt: skip
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "aggregate.py"), str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with (sweep / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["DiffQAS", "8 Ent-Ry"]
    for row in rows:
        mine = [s for s in summaries if (s["search"] == "diffqas") == (row["model"] == "DiffQAS")]
        values = sorted(s["metrics"]["test_mse"] for s in mine)
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        assert float(row["test_mse_mean"]) == pytest.approx(sum(values) / 2, rel=1e-15)
        assert float(row["test_mse_best"]) == values[0]
        assert float(row["test_mse_std"]) == pytest.approx(abs(values[1] - values[0]) / 2**0.5, rel=1e-12)
    assert float(rows[0]["test_mse_paper"]) == 4.0e-5 and float(rows[1]["test_mse_paper"]) == 1.41e-4  # SPEC Table II
    # three smoke steps are not the paper's 100 epochs: shown, and marked as not comparable
    assert all(r["steps"] == "3" and 0 < float(r["epochs"]) < 1 and r["comparable"] == "no" for r in rows)
    text = (sweep / "results.md").read_text()
    header, _, *cells = text.split("\n\n")[0].splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    for line in cells:
        row = dict(zip(names, (c.strip() for c in line.strip("|").split("|"))))
        assert row["model"] in ("DiffQAS", "8 Ent-Ry") and row["steps"] == "3"
        for name in ("test_mse_mean", "test_mse_std", "test_mse_best", "test_mse_paper", "train_mse_mean"):
            assert re.fullmatch(r"\d\.\d{3}e[+-]\d\d", row[name]), (name, row[name])  # one format for every metric
    assert "comparable: `yes` when" in text and "The sweep's first job" in text
    for name in ("learning_curves.png", "structural_weights.png", "final_metric.png"):
        assert (sweep / name).read_bytes()[:8] == PNG, name
        from matplotlib.image import imread

        assert imread(sweep / name).shape[0] > 100


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_joblib_sweep_then_aggregate(tmp_path):
    _check_aggregate(_sweep(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]))


@pytest.mark.slow
def test_submitit_local_sweep_then_aggregate(tmp_path):
    sweep = _sweep(tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"])
    _check_aggregate(sweep)


@pytest.mark.parametrize(
    "command", [[sys.executable, str(REPO / "scripts" / "aggregate.py")], [sys.executable, "-m", "diffqas_runner.aggregate"]]
)
def test_aggregate_refuses_an_empty_dir_with_one_line(tmp_path, command):
    proc = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "no finished job" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def _job(sweep: Path, name: str, num: int, seed: int, seconds: float, epochs: int, depth: int = 10) -> None:
    """A finished job's files as a run writes them (the parts aggregate reads)."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    summary = {"task": "bessel", "search": "fixed", "arch": 8, "arch_name": "Ent-Ry", "depth": depth, "backend": "native",
               "seed": seed, "metrics": {"test_mse": 0.0001234 * (seed + 1), "train_mse": 0.002}, "qt_params": 134,
               "wall_seconds": seconds, "steps": 17 * epochs}  # fmt: skip
    (job / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": 17 * e, "epoch": e, "loss": 0.1, "test_mse": 0.001} for e in range(1, epochs + 1)]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_aggregate_is_a_command_of_the_installed_package(tmp_path):
    """`python -m diffqas_runner.aggregate` and the `diffqas-aggregate` console script: steps and
    epochs shown, the paper's budget marked, the first job's warm-up kept out of the wall time."""
    sweep = tmp_path / "sweep"
    _job(sweep, "a", 1, seed=1, seconds=10.0, epochs=100)
    _job(sweep, "b", 0, seed=0, seconds=70.0, epochs=100)  # Hydra's job 0: the kernel's build, cold caches
    _job(sweep, "c", 2, seed=2, seconds=12.0, epochs=100)
    _job(sweep, "d", 3, seed=0, seconds=5.0, epochs=100, depth=5)  # the paper's epochs, another depth
    proc = subprocess.run([sys.executable, "-m", "diffqas_runner.aggregate", str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with (sweep / "results.csv").open() as f:
        rows = {r["depth"]: r for r in csv.DictReader(f)}
    row = rows["10"]
    assert (row["steps"], row["epochs"], row["comparable"], row["seeds"]) == ("1700", "100", "yes", "0 1 2")
    assert float(row["wall_seconds_median"]) == 11.0  # jobs 1 and 2; job 0 is reported apart
    assert rows["5"]["comparable"] == "no"
    text = (sweep / "results.md").read_text()
    assert "| 1.234e-04 |" in text and "The sweep's first job (b) took 70.0 s" in text
    last = proc.stdout.strip().splitlines()[-1]  # the last line names every file written
    assert last.startswith("2 configurations ->") and all(
        name in last for name in ("results.csv", "results.md", "final_metric.png", "learning_curves.png")
    ), last
    script = Path(sys.executable).with_name("diffqas-aggregate")
    (sweep / "results.md").unlink()
    proc = subprocess.run([str(script), str(sweep), "--no-plots"], capture_output=True, text=True)
    assert proc.returncode == 0 and (sweep / "results.md").read_text() == text, proc.stderr


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes(preset):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params, "a preset is a sweep: it sets hydra.sweeper.params"


def test_optuna_preset_runs_and_reports_the_best_trial(tmp_path):
    sweep = tmp_path / "opt"
    cmd = [sys.executable, "-m", "diffqas_runner", "-m", "hparams_search=bessel_optuna", "debug=smoke", "logger=none",
           "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.run(cmd, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = [json.loads(p.read_text())["metrics"] for p in sweep.glob("*/summary.json")]
    assert len(metrics) == 2 and all(m["val_mse"] != m["test_mse"] for m in metrics)
    best = OmegaConf.load(sweep / "optimization_results.yaml").best_value
    # the objective is the run's validation MSE, not its test MSE
    assert best == pytest.approx(min(m["val_mse"] for m in metrics), rel=1e-12)


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_aggregate_names_and_skips_damaged_files(tmp_path):
    """A sweep with a damaged summary, a metrics line cut short by a kill and an unreadable failure
    record still aggregates: the good job is a row, the damaged ones are named, nothing is traced."""
    sweep = _sweep(tmp_path, [])
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    (jobs[0] / "summary.json").write_text("{not json")
    with (jobs[1] / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "test_ms')
    failed = sweep / "9"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "failure.json").write_text("[1, 2")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "aggregate.py"), str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"skipping {jobs[0]}" in proc.stderr
    text = (sweep / "results.md").read_text()
    assert "## Failed jobs (1)" in text and "unreadable failure.json" in text


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_evaluate_refuses_bad_arguments_with_one_line(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("task:\n  name: bessel\n  kind: timeseries\n")
    (run / "model.pt").write_bytes(b"junk")
    for args, needle in (([str(run)], "task=bessel run"), ([str(run), "--episodes", "0"], "--episodes=0"),
                         ([str(tmp_path / "none")], "not found")):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "diffqas_runner.evaluate", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_a_sweep_over_search_spaces_aggregates_by_space_name(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "diffqas_runner", "-m", "task=bessel", "debug=smoke", "logger=none", "search=fixed",
           "search.arch=8", "search_space=paper12,wide32", "train.threads=1", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    aggregate(sweep)
    with (sweep / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["search_space.name"], r["model"]) for r in rows] == [("paper12", "8 Ent-Ry"), ("wide32", "8 H-Cyc-RyRz")]
    assert "search_space.product.rotation" not in rows[0]  # the space is named, not spelled out
    # the paper's Table II number belongs to paper12's candidate 8 only
    assert float(rows[0]["test_mse_paper"]) == 1.41e-4 and rows[1]["test_mse_paper"] == ""


def test_the_papers_numbers_go_to_paper12_by_its_circuits_not_its_name():
    from diffqas_runner.aggregate import _paper
    from diffqas_runner.quantum import CANDIDATES
    from diffqas_runner.quantum.candidates import space_digest

    summary = {"task": "bessel", "search": "fixed", "arch": 8, "search_space": "paper12"}
    assert _paper({**summary, "search_space_digest": space_digest(CANDIDATES)}, "test_mse") == 1.41e-4
    reordered = space_digest(CANDIDATES[::-1])  # a space still called paper12, other circuits per number
    assert _paper({**summary, "search_space_digest": reordered}, "test_mse") is None
    assert _paper({"task": "bessel", "search": "fixed", "arch": 8}, "test_mse") == 1.41e-4  # older summaries


def test_aggregate_reports_the_depth_a_run_used_not_its_interpolation(tmp_path):
    """A run at the task's default depth records `depth: ${task.depth}` in .hydra/config.yaml; the
    table shows the depth the run used (summary.json), not the interpolation."""
    from diffqas_runner.aggregate import load_jobs

    run = tmp_path / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("task:\n  name: bessel\n  depth: 10\ndepth: ${task.depth}\nseed: 0\n")
    summary = {"task": "bessel", "search": "fixed", "arch": 8, "arch_name": "Ent-Ry", "seed": 0, "depth": 10,
               "metrics": {"test_mse": 1e-4}, "qt_params": 134, "wall_seconds": 1.0}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (job,) = load_jobs(tmp_path)
    assert job.config["depth"] == 10


def test_aggregate_takes_runs_that_measured_nothing_and_refuses_a_file(tmp_path):
    """A MiniGrid run stopped before any episode finished has mean_return null: a blank cell, not a crash."""
    sweep = tmp_path / "sweep"
    for i, value in enumerate((None, 0.5)):
        job = sweep / str(i)
        job.mkdir(parents=True)
        (job / "summary.json").write_text(json.dumps({
            "task": "minigrid", "search": "diffqas", "arch": None, "arch_name": None, "seed": i, "depth": 10,
            "backend": "native", "metrics": {"mean_return": value, "std_return": value, "episodes": 0},
            "qt_params": 314, "wall_seconds": 1.0, "steps": 2,
        }))  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "diffqas_runner.aggregate", str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    with (sweep / "results.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["mean_return_mean"]) == 0.5 and row["n_seeds"] == "2"
    proc = subprocess.run([sys.executable, "-m", "diffqas_runner.aggregate", str(sweep / "0" / "summary.json")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "not a directory" in proc.stderr
