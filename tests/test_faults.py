"""Sweeps and runs that survive faults (issue 15): failed jobs are results, one owner per run
directory, MiniGrid checkpoints, signals inside long steps, non-finite gradients, finished runs."""

import json
import os
import signal
import threading
import time

import pytest
import torch
from helpers import cli, metrics_rows, wait_until
from helpers import popen as _popen
from helpers import wait_for as _wait_for
from omegaconf import OmegaConf

from diffqas_runner.aggregate import aggregate
from diffqas_runner.qt import Generator
from diffqas_runner.record import Recorder
from diffqas_runner.tasks.timeseries import TimeSeriesTask
from diffqas_runner.train import checkpoint
from diffqas_runner.train.checkpoint import Checkpointer, Interrupted
from diffqas_runner.train.supervised import NonFiniteLoss, train_supervised

DIVERGE = "train.lr=1e300"  # RMSprop's first step with this lr makes every weight infinite


def _cli(args, cwd, timeout=600):
    return cli(args, cwd, timeout=timeout)


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([], id="basic"),
        pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], id="joblib", marks=pytest.mark.slow),
    ],
)
def test_a_diverging_job_never_stops_the_sweep(tmp_path, launcher):
    """`-m ... train.lr=inf,0.01` used to leave only job 0/. Now: job 0 fails with a record, every
    other job finishes, the sweep exits 1 naming the failure, and aggregate lists it."""
    sweep = tmp_path / "sweep"
    args = ["-m", "task=bessel", "debug=smoke", "figures=false", "logger=none", "depth=2", f"{DIVERGE},0.01,0.02", *launcher]
    proc = _cli([*args, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"1 job(s) of the sweep failed (failure.json in each): {sweep / '0'}" in proc.stderr
    failure = json.loads((sweep / "0" / "failure.json").read_text())
    assert failure["error"] == "NonFiniteLoss" and failure["step"] == 2 and not (sweep / "0" / "summary.json").exists()
    summaries = [json.loads((sweep / j / "summary.json").read_text()) for j in ("1", "2")]
    assert [s["steps"] for s in summaries] == [3, 3]
    if launcher:  # a parallel launcher and no train.threads: each of the 2 jobs gets 2 cores // 2 jobs
        expect = max(1, len(os.sched_getaffinity(0)) // 2)
        assert [s["torch_threads"] for s in summaries] == [expect, expect]
    rows = aggregate(sweep, plots=False)
    assert len(rows) == 2
    text = (sweep / "results.md").read_text()
    assert "## Failed jobs (1)" in text and "train.lr=1e+300" in text and "NonFiniteLoss" in text
    # resubmitting the sweep reruns only what did not finish, and fails at the same job again
    again = _cli([*args, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert again.returncode == 1 and "nothing to do" in again.stderr


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_an_optuna_study_records_a_diverging_trial_and_writes_its_results(tmp_path):
    mine = tmp_path / "configs" / "hparams_search"
    mine.mkdir(parents=True)
    (mine / "diverge.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /task: bessel\n  - override /hydra/sweeper: optuna\n"
        "  - override /hydra/sweeper/sampler: tpe\nhydra:\n  sweeper:\n    direction: minimize\n    n_trials: 4\n"
        "    max_failure_rate: 1.0\n    sampler:\n      seed: 0\n    params:\n      train.lr: choice(1e300, 0.01)\n"
        "task:\n  validation: 0.2\n"  # an optimising sweeper needs a split to optimise (never test)
    )
    sweep = tmp_path / "opt"
    args = ["--config-dir", str(tmp_path / "configs"), "-m", "hparams_search=diverge", "debug=smoke", "logger=none", "depth=2"]
    proc = _cli([*args, f"hydra.sweep.dir={sweep}"], tmp_path)
    results = OmegaConf.load(sweep / "optimization_results.yaml")  # written although a trial diverged
    healthy = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    failed = sorted(p.parent for p in sweep.glob("*/failure.json"))
    assert healthy and failed and len(healthy) + len(failed) == 4, proc.stderr  # seed 0 samples both values
    assert results.best_value == pytest.approx(min(s["metrics"]["val_mse"] for s in healthy), rel=1e-12)
    assert results.best_params["train.lr"] == 0.01
    assert proc.returncode == 1 and f"{len(failed)} job(s) of the sweep failed" in proc.stderr


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_two_runs_started_together_into_one_directory(tmp_path):
    """Different configs, same hydra.run.dir: one run owns it and finishes whole; the other exits 2 at
    once with one line naming the directory and the owner, and writes nothing into it."""
    out = tmp_path / "run"
    first = _popen(["task=bessel", "depth=2", "train.max_steps=60", "logger=none", f"hydra.run.dir={out}"], tmp_path)
    _wait_for(out / ".lock", first)
    deadline = time.monotonic() + 60
    while not (out / ".lock").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = _cli(["task=bessel", "depth=2", "seed=1", "train.max_steps=40", "logger=none", f"hydra.run.dir={out}"], tmp_path)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(out) in lines[0] and f"pid {first.pid}" in lines[0], second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["steps"] == 60
    assert OmegaConf.load(out / ".hydra" / "config.yaml").seed == 0  # the first run's record, untouched
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60 and not (out / "failure.json").exists()


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_a_finished_run_dir_is_never_emptied_by_a_rerun(tmp_path):
    out = tmp_path / "run"
    args = ["task=bessel", "depth=2", "debug=smoke", "figures=false", "logger=none", f"hydra.run.dir={out}"]
    assert _cli(args, tmp_path).returncode == 0
    metrics = (out / "metrics.jsonl").read_text()
    (out / "checkpoint.pt").unlink()
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2 and "fresh=true" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "summary.json").exists() and (out / "metrics.jsonl").read_text() == metrics
    proc = _cli([*args, "fresh=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "checkpoint.pt").exists() and json.loads((out / "summary.json").read_text())["resumed_from_step"] is None


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_minigrid_stopped_by_sigterm_resumes_and_ends_with_every_episode(tmp_path):
    out = tmp_path / "run"
    args = ["task=minigrid", "depth=2", "train.episodes=150", "train.checkpoint_every=5", "train.log_every=5", "logger=none",
            "train.threads=1", f"hydra.run.dir={out}"]  # fmt: skip
    proc = _popen(args, tmp_path)
    # the state the assertions need: a checkpoint exists and an episode has finished (whatever
    # the machine's speed; a loaded machine used to be stopped before any episode ended)
    wait_until(lambda: (out / "checkpoint.pt").exists() and any(r.get("episodes", 0) > 0 for r in metrics_rows(out)), proc)
    assert proc.poll() is None, "the run finished before it could be stopped: make it longer"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err
    saved = checkpoint.load(out / "checkpoint.pt")
    stopped_at, episodes = saved["loop"]["update"], len(saved["loop"]["returns"])
    assert stopped_at > 0 and 0 < episodes < 150 and not saved["finished"]
    again = _cli(args, tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == stopped_at and summary["steps"] > stopped_at
    assert summary["metrics"]["episodes"] >= 150
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == summary["steps"]  # no duplicated rows across the resume


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_rl_rejects_the_supervised_keys_with_one_line(tmp_path):
    for key in ("train.epochs=3", "train.lr_schedule=cosine", "train.warmup_steps=5", "train.eval_every=2", "task.window=3"):
        proc = _cli(["task=minigrid", key, "logger=none", f"hydra.run.dir={tmp_path / 'x'}"], tmp_path, timeout=120)
        assert proc.returncode != 0 and key.split("=")[0].split(".")[1] in proc.stderr and "Traceback" not in proc.stderr


def _bessel_loop(tmp_path, **kw):
    torch.manual_seed(0)
    task = TimeSeriesTask("bessel")
    model = task.build_model()
    gen = Generator({k: v.shape for k, v in model.named_parameters()}, depth=2)
    opt = torch.optim.RMSprop(gen.parameters(), lr=0.01)
    cfg = OmegaConf.create({"epochs": 1, "max_steps": None, "batch_size": 10, "eval_every": None})
    ckpt = Checkpointer(tmp_path / "checkpoint.pt", 3, {"generator": gen, "optimizer": opt}, {"fingerprint": ""})
    return task, model, gen, opt, cfg, ckpt


def test_a_nan_gradient_stops_the_run_before_the_optimiser_step(tmp_path):
    task, model, gen, opt, cfg, ckpt = _bessel_loop(tmp_path)
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 5 else grad

    gen.theta.register_hook(poison)
    recorder = Recorder(tmp_path)
    with pytest.raises(NonFiniteLoss, match=r"gradient theta became non-finite at step 5"):
        train_supervised(task, model, gen, opt, cfg, recorder, checkpointer=ckpt)
    recorder.close()
    assert torch.isfinite(gen.theta).all()  # the poisoned step was never applied
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["loop"]["step"] == 3 and all(torch.isfinite(v).all() for v in saved["state"]["generator"].values())


def test_sigterm_inside_a_long_step_is_answered_at_once(tmp_path):
    """A signal during a step's forward pass (here a generator call that never ends by itself)
    stops the run inside that call, with the previous step's state checkpointed. No clock: the
    forward pass at step 5 only returns when the test releases it, which it never does."""
    task, model, gen, opt, cfg, ckpt = _bessel_loop(tmp_path)
    forward, calls = gen.forward, {"n": 0, "returned": False}
    inside = threading.Event()

    def endless_forward():
        calls["n"] += 1
        if calls["n"] == 5:  # step 5: a long Python-level loop, as in a deep first simulation
            inside.set()
            while True:  # only the signal's exception gets out of here
                time.sleep(0.001)
        return forward()

    def stop_when_inside():
        inside.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    gen.forward = endless_forward
    recorder = Recorder(tmp_path)
    with ckpt.signals:
        threading.Thread(target=stop_when_inside, daemon=True).start()
        with pytest.raises(Interrupted) as stop:
            train_supervised(task, model, gen, opt, cfg, recorder, checkpointer=ckpt)
    recorder.close()
    assert inside.is_set() and stop.value.signum == signal.SIGTERM
    assert stop.value.step == 4 and checkpoint.load(tmp_path / "checkpoint.pt")["loop"]["step"] == 4


@pytest.mark.slow
def test_sigterm_during_a_deep_first_step_from_the_command_line(tmp_path):
    """The CLI version: depth 1000 at 11 qubits makes the first step long; SIGTERM sent as training
    starts (metrics.jsonl is opened) is answered inside that step, not after it."""
    out = tmp_path / "run"
    proc = _popen(["task=bessel", "depth=1000", "logger=none", "train.threads=1", f"hydra.run.dir={out}"], tmp_path)
    _wait_for(out / "metrics.jsonl", proc)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err
    # stopped inside the first step: nothing completed (a step-0 checkpoint at most)
    assert "SIGTERM before the first step" in err or "SIGTERM at step 0:" in err, err


def test_the_recorder_hands_the_run_exit_code_to_its_sinks(tmp_path):
    """wandb gets the real exit code (a run stopped by SIGTERM is 143 there, not 0)."""
    seen = []

    class Sink:
        run_id = None

        def log(self, row, step=None):
            pass

        def summary(self, summary):
            pass

        def close(self, exit_code=0):
            seen.append(exit_code)

    Recorder(tmp_path, [Sink()]).close(128 + signal.SIGTERM)
    assert seen == [143]


def test_the_fused_finiteness_check_names_the_first_bad_tensor():
    from diffqas_runner.train.supervised import _first_non_finite

    big = torch.full((3,), 1e308, dtype=torch.float64)  # finite, though their sum is not
    ok = [("a", big), ("b", torch.ones(2, 2, dtype=torch.float32))]
    assert _first_non_finite(ok) is None and _first_non_finite([]) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):  # numpy's path, and torch's for bfloat16
            c = torch.zeros(4, dtype=dtype, requires_grad=True)
            with torch.no_grad():
                c[2] = bad
            assert _first_non_finite([*ok, ("c", c), ("d", c.detach().clone())]) == "c"
            assert _first_non_finite([("d", c.detach()[:2])]) is None  # a view that holds only finite entries
