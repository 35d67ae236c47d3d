"""Issue 23, section 4: a finished result is never rewritten, and every input error is one line.

A rerun with other settings into a finished run's or sweep's directory leaves every file of the
finished jobs byte-identical (their `.hydra/` record included) and says why on one line; a user's
config file never silently loses to a packaged one of the same name; malformed user files, Hydra's
composition errors and an unwritable record are one line with exit status 2."""

import errno
import hashlib
from pathlib import Path

import pytest
from helpers import cli, first_by_default
from omegaconf import OmegaConf

from diffqas_runner.aggregate import aggregate
from diffqas_runner.record import hydra_record

FAST = ["task=bessel", "debug=smoke", "figures=false", "depth=2", "train.max_steps=1", "logger=none"]
UNTRACKED = {".lock", "cli.log"}  # the lock holder's pid and the log: not results


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under root (but the lock and the log) -> its content's hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in UNTRACKED
    }


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --- finished results are never rewritten ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]], ids=["basic", "joblib"])
def test_a_sweep_with_other_settings_leaves_the_finished_jobs_byte_identical(tmp_path, launcher):
    """Used to rewrite both jobs' .hydra/ and multirun.yaml with lr 0.5 beside lr=0.01 results."""
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}", *launcher]
    assert cli(args, tmp_path).returncode == 0
    before, multirun = _snapshot(sweep), (sweep / "multirun.yaml").read_bytes()
    proc = cli([*args, "train.lr=0.5"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    after = _snapshot(sweep)
    assert {k: v for k, v in after.items() if not k.startswith("multirun")} == {
        k: v for k, v in before.items() if not k.startswith("multirun")
    }
    assert (sweep / "multirun.1.yaml").read_bytes() == multirun  # the earlier sweep's record, kept
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr
    refusals = [line for line in proc.stderr.splitlines() if "other settings (train.lr: 0.01 there, 0.5 now)" in line]
    assert len(refusals) == 2 and all("hydra.sweep.dir" in line and "fresh=true" in line for line in refusals)
    assert "2 job(s) of the sweep refused" in proc.stderr and not list(sweep.rglob("failure.json"))
    # the same sweep again: nothing to do, the records untouched
    again = cli(args, tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert {k: v for k, v in _snapshot(sweep).items() if not k.startswith("multirun")} == {
        k: v for k, v in before.items() if not k.startswith("multirun")
    }
    assert all(OmegaConf.load(sweep / j / ".hydra" / "config.yaml").train.lr != 0.5 for j in ("0", "1"))
    assert len(aggregate(sweep, plots=False)) == 1  # one configuration (both seeds) at its own lr


@pytest.mark.slow
def test_an_optuna_study_with_other_settings_leaves_the_finished_trials_byte_identical(tmp_path):
    mine = tmp_path / "configs" / "hparams_search"
    mine.mkdir(parents=True)
    study = (
        "# @package _global_\ndefaults:\n  - override /task: bessel\n  - override /hydra/sweeper: optuna\n"
        "  - override /hydra/sweeper/sampler: tpe\nhydra:\n  sweeper:\n    direction: minimize\n    n_trials: 2\n"
        "    sampler:\n      seed: 0\n    params:\n      train.lr: choice({})\n"
        "task:\n  validation: 0.2\n"  # an optimising sweeper needs a split to optimise (never test)
    )
    (mine / "first.yaml").write_text(study.format("0.01, 0.02"))
    (mine / "other.yaml").write_text(study.format("0.3, 0.4"))
    sweep = tmp_path / "opt"
    args = ["--config-dir", str(tmp_path / "configs"), "-m", *FAST, f"hydra.sweep.dir={sweep}"]
    assert cli([*args, "hparams_search=first"], tmp_path).returncode == 0
    before = _snapshot(sweep)
    proc = cli([*args, "hparams_search=other"], tmp_path)
    assert proc.returncode == 1 and "2 job(s) of the sweep refused" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and _snapshot(sweep) == before


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_a_value_that_does_not_resolve_never_rewrites_a_finished_run(tmp_path):
    """Used to swallow the resolution error in the pre-check and let Hydra rewrite .hydra/."""
    out = tmp_path / "run"
    assert cli([*FAST, f"hydra.run.dir={out}"], tmp_path).returncode == 0
    before = _snapshot(out)
    proc = cli([*FAST, "data_dir=${oc.env:DIFFQAS_SURELY_UNSET}", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2 and len(_errors(proc.stderr)) == 1, proc.stderr
    assert "data_dir" in proc.stderr and "DIFFQAS_SURELY_UNSET" in proc.stderr and "fresh=true" in proc.stderr
    assert _snapshot(out) == before


def test_the_record_is_the_one_hydra_would_write(tmp_path):
    out = tmp_path / "run"
    assert cli([*FAST, "seed=3", f"hydra.run.dir={out}"], tmp_path).returncode == 0
    record = out / ".hydra"
    assert sorted(p.name for p in record.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert OmegaConf.load(record / "config.yaml").seed == 3
    assert "seed=3" in OmegaConf.load(record / "overrides.yaml")
    hydra = OmegaConf.load(record / "hydra.yaml").hydra
    assert hydra.output_subdir == ".hydra" and hydra.runtime.output_dir == str(out)


def test_an_unwritable_record_is_one_line(tmp_path):
    """A path where .hydra/ cannot be written (here a file in its place; a full disk alike)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".hydra").write_text("in the way")
    proc = cli([*FAST, f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2 and len(_errors(proc.stderr)) == 1, proc.stderr
    assert str(out / ".hydra") in proc.stderr and "allowed:" in proc.stderr
    assert not (out / "summary.json").exists()


def test_a_full_disk_leaves_the_previous_record_whole(tmp_path, monkeypatch):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hydra_record, "atomic_write", full)
    with pytest.raises(hydra_record.RecordError, match="config.yaml: .*No space left on device.*allowed"):
        hydra_record.write_record(tmp_path, {"config.yaml": "seed: 1\n"})
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 0\n"


# --- a user's file never silently loses ---------------------------------------------------------
@pytest.mark.parametrize("group,option", first_by_default([("search_space", "paper12"), ("task", "bessel")]))
def test_a_user_file_with_a_packaged_name_is_refused(tmp_path, group, option):
    """Used to run with the packaged file and ignore the user's."""
    mine = tmp_path / "mine" / group
    mine.mkdir(parents=True)
    text = "name: paper12\ncandidates:\n  - {init: H, entangler: ring, rotation: Ry}\n"
    (mine / f"{option}.yaml").write_text(text if group == "search_space" else "# @package _global_\ndepth: 3\n")
    out = tmp_path / "run"
    proc = cli(["--config-dir", str(tmp_path / "mine"), *FAST, f"{group}={option}", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2 and len(_errors(proc.stderr)) == 1, proc.stderr
    assert f"{group}={option}" in proc.stderr and str(mine / f"{option}.yaml") in proc.stderr and "allowed:" in proc.stderr
    assert not (out / "summary.json").exists()


# --- every input error is one line, exit 2 ------------------------------------------------------
SPACE_FILES = {
    "malformed": ("bad.yaml", b"name: bad\ncandidates: [\n", "not valid YAML"),
    "non_utf8": ("bad.yaml", b"\xff\xfename: bad\n", "not UTF-8"),
    "unknown_key": ("bad.yaml", b"name: bad\nfoo: 1\ncandidates:\n  - {init: H, entangler: ring, rotation: Ry}\n", "foo"),
    "twin_names": (
        "bad.yaml",
        b"name: bad\ncandidates:\n  - {init: H, entangler: ring, rotation: Ry, name: twin}\n"
        b"  - {init: H, entangler: chain, rotation: Ry, name: twin}\n",
        "twin",
    ),
    "directory": ("bad.yaml", None, "is a directory"),
    "symlink_loop": ("bad.yaml", "loop", "symbolic links"),
}


@pytest.mark.parametrize("case", first_by_default(list(SPACE_FILES), ids=list(SPACE_FILES)))
def test_a_bad_search_space_file_is_one_line(tmp_path, case):
    name, content, needle = SPACE_FILES[case]
    folder = tmp_path / "mine" / "search_space"
    folder.mkdir(parents=True)
    path = folder / name
    if content is None:
        path.mkdir()
    elif content == "loop":
        path.symlink_to(folder / "other.yaml")
        (folder / "other.yaml").symlink_to(path)
    else:
        path.write_bytes(content)
    out = tmp_path / "run"
    proc = cli(["--config-dir", str(tmp_path / "mine"), *FAST, "search_space=bad", f"hydra.run.dir={out}"], tmp_path)
    lines = _errors(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0] and "allowed:" in lines[0], proc.stderr
    # the file is named by its path, or by its config name in the user's folder (search_space/bad)
    assert case == "twin_names" or str(path) in lines[0] or "'search_space/bad'" in lines[0], lines[0]
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "args,needle",
    first_by_default(
        [
            (["task=mnist", "task.classes={a:1}"], "task.classes"),
            (["train.epochs=abc"], "train.epochs"),
            (["task=imagenet"], "task=imagenet"),
            (["train.lr=["], "override"),
            (["--config-dir", "nowhere"], "--config-dir='nowhere'"),
            (["--config-dir", "a-file"], "--config-dir='a-file'"),
        ]
    ),
)
def test_hydra_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    """Used to be Hydra's multi-line dumps (or tracebacks) with exit status 1."""
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "run"
    rest = [a for a in FAST if not a.startswith("task=")]
    proc = cli([*args, *rest, f"hydra.run.dir={out}"], tmp_path)
    lines = _errors(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0] and "allowed" in lines[0], proc.stderr
    assert not (out / "summary.json").exists()


def test_a_failed_sweep_job_is_one_line_then_the_summary(tmp_path):
    """Used to print Hydra's JobFailed traceback before the sweep's own closing line."""
    sweep = tmp_path / "sweep"
    proc = cli(["-m", *FAST, "train.max_steps=2", "train.lr=1e300,0.01", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("[")]  # log lines aside
    assert len(errors) == 4 and "loss became nan" in errors[0], proc.stderr
    assert errors[1].startswith("Error: 1 job(s) of the sweep failed"), proc.stderr
    assert errors[2:] == [f"sweep directory: {sweep}", f"tables and plots: diffqas-aggregate {sweep}"]  # what next


def test_a_settings_conflict_names_each_key_with_both_values():
    """The refusal says what differs, not just where: each key with the checkpoint's value and this
    run's ("unset" where one lacks the key); an option added later at its old meaning is no difference."""
    import json

    from diffqas_runner.train.checkpoint import describe_differences, differing_keys

    stored = json.dumps({"train": {"lr": 0.01, "epochs": 100}, "seed": 0, "qt": {"old": 1}})
    now = json.dumps({"train": {"lr": 0.5, "epochs": 100}, "seed": 0, "task": {"model": "cnn"}, "qt": {"new": True}})
    added = {"qt.new": True}  # its value now means what running without it did
    assert differing_keys(stored, now, added) == ["qt.old", "task.model", "train.lr"]
    assert describe_differences(stored, now, added) == (
        'qt.old: 1 there, unset now; task.model: unset there, "cnn" now; train.lr: 0.01 there, 0.5 now'
    )
    # an option added later at a null default: an older checkpoint without it is the same run
    later = json.dumps({"train": {"lr": 0.01, "epochs": 100}, "seed": 0, "qt": {"old": 1}, "backend": {"memory_mb": None}})
    assert differing_keys(stored, later) == [] and describe_differences(stored, later) == ""
