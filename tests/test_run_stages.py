"""run()'s stages (issue 23.6): validate, inspect the directory, build, restore, train, select,
write. A finished run answers before any data is loaded or generator built."""

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from diffqas_runner import run as run_module
from diffqas_runner.cli import CONFIG_DIR


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_a_finished_run_is_nothing_to_do_before_data_or_generator(tmp_path, monkeypatch):
    cfg = _compose(["task=bessel", "debug=smoke", "figures=false", "logger=none", "depth=2"])
    first = run_module.run(cfg, tmp_path / "run", interactive=False)
    assert (tmp_path / "run" / "summary.json").exists()

    def no_build(_cfg):
        raise AssertionError("a finished run must not build anything")

    monkeypatch.setattr(run_module, "build", no_build)
    again = run_module.run(cfg, tmp_path / "run", interactive=False)
    assert again == json.loads((tmp_path / "run" / "summary.json").read_text()) == json.loads(json.dumps(first))
    with pytest.raises(AssertionError, match="must not build"):  # an unfinished directory does build
        run_module.run(cfg, tmp_path / "other", interactive=False)


def test_write_only_writes_files_and_select_is_its_own_stage():
    import inspect

    source = inspect.getsource(run_module.write)
    assert "select" not in source and "run(" not in source  # no child runs inside the atomic-write window

    def in_order(function, *names):
        source = inspect.getsource(function)
        order = [source.index(f"{name}(") for name in names]
        assert order == sorted(order), (function.__name__, names)

    # run() reads as its stages (issue 38): prepare, make, restore, the recorder, one stage, write
    in_order(run_module.run, "prepare", "make", "restore", "open_recorder", "stage", "write")
    in_order(run_module.prepare, "validate", "_inspect_dir")
    in_order(run_module.make, "seed_everything", "build", "check_contenders", "set_run_threads")
    in_order(run_module.search_and_select, "train", "summarize", "select_stage")
    # a race alone is its own stage: it trains no search run
    in_order(run_module.race_alone, "summarize", "select_stage", "pick_as_result")
    assert "train(" not in inspect.getsource(run_module.race_alone)
    assert len(inspect.getsource(run_module.run).splitlines()) <= 40


def test_the_directory_is_inspected_once_per_run(tmp_path, monkeypatch):
    """The CLI's pre-flight (its callback and the job's guard) and run() share one reading of the
    directory: the checkpoint is loaded once, and a later run reads the directory afresh."""
    cfg = _compose(["task=bessel", "debug=smoke", "figures=false", "logger=none", "depth=2"])
    run_module.run(cfg, tmp_path / "run", interactive=False)
    reads = []
    real = run_module.find_checkpoint
    monkeypatch.setattr(run_module, "find_checkpoint", lambda *a: reads.append(a) or real(*a))
    assert run_module.preflight(cfg, tmp_path / "run") is not None  # the callback
    assert run_module.preflight(cfg, tmp_path / "run") is not None  # the job's guard
    done = run_module.run(cfg, tmp_path / "run", interactive=False)  # nothing to do: it finished
    assert len(reads) == 1 and done["steps"] == 3
    run_module.run(cfg, tmp_path / "run", interactive=False)  # no pre-flight kept now: reads again
    assert len(reads) == 2
    fresh = cfg.copy()
    fresh.fresh = True  # fresh=true empties the directory before reading it: the pre-flight keeps nothing
    assert run_module.preflight(fresh, tmp_path / "run") is None and len(reads) == 2


def test_a_kept_pre_flight_never_outlives_fresh_or_another_resume(tmp_path):
    """fresh=true empties the directory: a pre-flight kept from before must not answer for it; and
    a pre-flight is kept only for the resume path it read."""
    cfg = _compose(["task=bessel", "debug=smoke", "figures=false", "logger=none", "depth=2"])
    run_module.run(cfg, tmp_path / "run", interactive=False)
    assert run_module.preflight(cfg, tmp_path / "run") is not None  # kept: this run, finished
    fresh = cfg.copy()
    fresh.fresh = True
    again = run_module.run(fresh, tmp_path / "run", interactive=False)  # runs again, not "nothing to do"
    assert again["steps"] == 3 and (tmp_path / "run" / "metrics.jsonl").exists()
    assert not run_module._INSPECTED


def test_probabilities_of_constant_candidates_are_the_callers_to_change():
    """Angle-independent candidates' probabilities come from a per-process cache: what a caller
    gets is a copy, so writing to it changes nothing later."""
    import torch

    from diffqas_runner.quantum import CANDIDATES, probabilities

    theta = torch.zeros(2, 3, dtype=torch.float64)
    first = probabilities(theta, [CANDIDATES[0]])
    expected = first.clone()
    first.mul_(0)
    torch.testing.assert_close(probabilities(theta, [CANDIDATES[0]]), expected, rtol=0, atol=0)
