"""Reliability: kill-and-resume equivalence, SIGTERM, determinism, the NaN guard, wandb fallback."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import env, load_kernel_or_skip, metrics_rows, wait_for, wait_until

from diffqas_runner.qt import Generator
from diffqas_runner.record import Recorder
from diffqas_runner.tasks.timeseries import TimeSeriesTask
from diffqas_runner.train import checkpoint
from diffqas_runner.train.checkpoint import Checkpointer
from diffqas_runner.train.supervised import NonFiniteLoss, train_supervised

TIMESERIES = ["task=bessel", "train.epochs=20", "train.checkpoint_every=5", "search=fixed", "search.arch=10", "depth=4"]


def _classification(data_dir):
    return ["task=mnist", "search=fixed", "search.arch=8", "depth=3", "train.max_steps=60", "train.eval_every=10",
            "train.checkpoint_every=4", f"data_dir={data_dir}"]  # fmt: skip


def _command(overrides, out):
    return [sys.executable, "-m", "diffqas_runner", *overrides, "logger=none", "train.threads=1", "figures=false",
            f"hydra.run.dir={out}"]  # fmt: skip


def _rows(out):
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]


def _final(out):
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary[k] for k in ("metrics", "structural_weights", "ranking", "steps")}


def _env() -> dict:
    """Processes compared bitwise share one kernel path: pure torch, so neither depends on whether
    an earlier process left a built C++ kernel in the cache (auto mode decides per process)."""
    return env(DIFFQAS_NATIVE_KERNEL="torch")


_wait_for = wait_for


@pytest.mark.parametrize(
    "kind",
    ["timeseries", pytest.param("classification", marks=pytest.mark.slow), pytest.param("fused", marks=pytest.mark.slow)],
)
def test_sigkill_then_rerun_gives_the_uninterrupted_result(tmp_path, kind, data_dir, monkeypatch):
    """fused: candidate 8 on the C++ kernel, whose steps are one kernel call (train/fused_step.py)."""
    overrides = {"timeseries": TIMESERIES, "fused": [*TIMESERIES, "search.arch=8"]}.get(kind) or _classification(data_dir)
    run_env = _env()
    if kind == "fused":
        load_kernel_or_skip(monkeypatch)  # built (or skipped) here, so both processes load the same library
        run_env = env(DIFFQAS_NATIVE_KERNEL="cpp")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_command(overrides, whole), env=run_env, check=True, capture_output=True, timeout=300)
    if kind == "fused":
        assert json.loads((whole / "summary.json").read_text())["simulator"]["step"] == "fused"

    proc = subprocess.Popen(_command(overrides, killed), env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(killed / "checkpoint.pt", proc)
    # somewhere after the first checkpoint, in the first quarter of the logged rows: a state, not a time
    # seeded and printed (shown when the test fails): DIFFQAS_KILL_SEED=N replays a kill point
    seed = int(os.environ.get("DIFFQAS_KILL_SEED", random.randrange(2**31)))
    rows = random.Random(seed).randint(1, 5 if kind == "timeseries" else 1)
    print(f"kill point: after {rows} logged row(s) (DIFFQAS_KILL_SEED={seed})")
    wait_until(lambda: len(metrics_rows(killed)) >= rows, proc, f"{rows} rows never appeared")
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (killed / "summary.json").exists()
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["loop"]["step"]

    again = subprocess.run(_command(overrides, killed), env=run_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] == step > 0
    assert _final(killed) == _final(whole)  # bitwise: floats compared exactly
    assert _rows(killed) == _rows(whole)  # the learning curve too, without duplicated rows


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_resume_path_continues(tmp_path):
    out, elsewhere, whole = tmp_path / "run", tmp_path / "elsewhere", tmp_path / "whole"
    overrides = [*TIMESERIES, "train.checkpoint_every=1000"]  # only the signal writes a checkpoint
    proc = subprocess.Popen(_command(overrides, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "metrics.jsonl", proc)
    while not (out / "metrics.jsonl").read_text():  # training has started
        assert proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "resume" in err and "Traceback" not in err
    ckpt = checkpoint.load(out / "checkpoint.pt")
    assert ckpt["loop"]["step"] > 0 and not ckpt["finished"]
    assert not (out / "summary.json").exists()
    # resume=PATH continues in another directory, with the learning curve carried over
    again = subprocess.run(_command([*overrides, f"resume={out}"], elsewhere), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((elsewhere / "summary.json").read_text())["resumed_from_step"] == ckpt["loop"]["step"]
    subprocess.run(_command(overrides, whole), env=_env(), check=True, capture_output=True, timeout=300)
    assert _final(elsewhere) == _final(whole) and _rows(elsewhere) == _rows(whole)


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_same_seed_same_summary_and_a_finished_run_is_not_redone(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        subprocess.run(_command(TIMESERIES, out), env=_env(), check=True, capture_output=True, timeout=300)
    assert _final(a) == _final(b) and _rows(a) == _rows(b)
    other = tmp_path / "c"
    subprocess.run(_command([*TIMESERIES, "seed=1"], other), env=_env(), check=True, capture_output=True, timeout=300)
    assert _final(other)["metrics"] != _final(a)["metrics"]
    # rerunning a finished run leaves it alone; a different config in the same dir is refused
    before = (a / "summary.json").read_text()
    proc = subprocess.run(_command(TIMESERIES, a), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (proc.stderr + proc.stdout).count("nothing to do") == 1, proc.stderr
    assert (a / "summary.json").read_text() == before
    proc = subprocess.run(_command([*TIMESERIES, "train.lr=0.02"], a), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "train.lr" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_resume_from_an_explicit_checkpoint_into_a_new_dir(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    subprocess.run(_command([*TIMESERIES, "train.max_steps=30"], first), env=_env(), check=True, capture_output=True)
    ckpt = first / "checkpoint.pt"
    # the capped run's checkpoint is 'finished' but a longer config differs only by max_steps: refused
    proc = subprocess.run(_command([*TIMESERIES, f"resume={ckpt}"], second), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "train.max_steps" in proc.stderr
    proc = subprocess.run(
        _command([*TIMESERIES, f"resume={tmp_path / 'nowhere'}"], second), env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "resume=" in proc.stderr and not (second / "summary.json").exists()


def test_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path):
    torch.manual_seed(3)
    state = checkpoint.rng_state()
    expect = (torch.rand(3), random.random())
    checkpoint.save_atomic({"version": checkpoint.VERSION, "rng": state}, tmp_path / "c.pt")
    torch.rand(5)
    random.random()
    checkpoint.set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], expect[0]) and got[1] == expect[1]
    assert not (tmp_path / "c.pt.tmp").exists()


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    task = TimeSeriesTask("bessel")
    model = task.build_model()
    gen = Generator({k: v.shape for k, v in model.named_parameters()}, depth=2)
    opt = torch.optim.RMSprop(gen.parameters(), lr=0.01)
    calls = {"n": 0}
    loss = task.loss

    def poisoned(output, target):
        calls["n"] += 1
        value = loss(output, target)
        return value * float("nan") if calls["n"] == 7 else value

    task.loss = poisoned
    cfg = OmegaConf.create({"epochs": 1, "max_steps": None, "batch_size": 10, "eval_every": None})
    ckpt = Checkpointer(tmp_path / "checkpoint.pt", 3, {"generator": gen, "optimizer": opt}, {"fingerprint": ""})
    recorder = Recorder(tmp_path)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 7 .*checkpoint\.pt"):
        train_supervised(task, model, gen, opt, cfg, recorder, checkpointer=ckpt)
    recorder.close()
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["loop"]["step"] == 6
    assert all(torch.isfinite(v).all() for v in saved["state"]["generator"].values())


@pytest.mark.slow
def test_wandb_online_without_network_falls_back_to_offline(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in _env().items() if k != "WANDB_MODE"}
    # a key of the right shape and a server that refuses connections: no real network is touched
    env.update(WANDB_API_KEY="0" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="5")
    args = [*TIMESERIES, "train.max_steps=3", "logger=wandb", "logger.mode=online"]
    proc = subprocess.run(
        [sys.executable, "-m", "diffqas_runner", *args, f"hydra.run.dir={out}"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "falling back to offline" in proc.stderr + proc.stdout
    assert list((out / "wandb").glob("offline-run-*")) and (out / "summary.json").exists()


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_two_sweeps_started_together_never_share_a_directory(tmp_path):
    cmd = [sys.executable, "-m", "diffqas_runner", "-m", "task=bessel", "debug=smoke", "figures=false", "logger=none", "seed=0,1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    summaries = sorted(tmp_path.glob("outputs/multirun/*/*/*/summary.json"))
    assert len(summaries) == 4 and len({p.parent for p in summaries}) == 4
    assert len({p.parent.parent for p in summaries}) == 2  # one sweep dir each (microseconds in the name)


def test_a_damaged_checkpoint_is_named_not_traced(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"cut short")
    proc = subprocess.run(_command(TIMESERIES, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "checkpoint=" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "summary.json").exists()


def test_a_checkpoint_from_before_an_added_option_is_the_same_run(tmp_path):
    """A finished run recorded before search.supernet (or the selection options) existed: its
    fingerprint lacks those keys, and the same config now, at their defaults, is the same run
    ('nothing to do'); another value of a new key, or any other difference, is another run."""
    from helpers import compose as _compose

    from diffqas_runner import run as run_module
    from diffqas_runner.config import ADDED_KEYS
    from diffqas_runner.train.checkpoint import differing_keys

    base = ["task=bessel", "debug=smoke", "logger=none", "depth=2", "figures=false", "train.threads=1"]
    out = tmp_path / "run"
    first = run_module.run(_compose(base), out, interactive=False)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    current = ckpt["meta"]["fingerprint"]
    old = json.loads(current)
    for key in ADDED_KEYS:  # as written before these options were added
        section, leaf = key.split(".")
        old[section].pop(leaf, None)  # task.model: classification only
    ckpt["meta"]["fingerprint"] = json.dumps(old, sort_keys=True)
    torch.save(ckpt, out / "checkpoint.pt")
    assert run_module.run(_compose(base), out, interactive=False) == first
    for key, value in (("seed", 1), ("search.eta", 4), ("search.supernet", False)):
        new = json.loads(current)
        *parents, leaf = key.split(".")
        node = new
        for part in parents:
            node = node[part]
        node[leaf] = value
        assert differing_keys(ckpt["meta"]["fingerprint"], json.dumps(new), ADDED_KEYS) == [key]
