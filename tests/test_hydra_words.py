"""diffqas_runner/hydra_words.py reads Hydra's wording: make Hydra say each thing, read it back.

Pinned to the Hydra version it was checked on: an upgrade fails the first test, and the rest say
which reading broke."""

import io
import sys
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus

from diffqas_runner import hydra_words
from diffqas_runner.cli import CONFIG_DIR


def _composition_error(overrides) -> BaseException:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"), pytest.raises(Exception) as caught:
        compose(config_name="config", overrides=overrides)
    return caught.value


def test_checked_on_the_installed_hydra():
    assert hydra.__version__ == hydra_words.CHECKED, (
        f"hydra-core {hydra.__version__} is installed; diffqas_runner/hydra_words.py was checked on {hydra_words.CHECKED}: "
        "run this file's other tests, fix any reading that broke, then set CHECKED"
    )


def test_a_missing_option_and_the_search_path():
    err = _composition_error(["task=nope"])
    assert hydra_words.missing_config(err) == "task/nope"
    assert "Config search path" in str(err) and "Config search path" not in hydra_words.without_search_path(str(err))


def test_the_override_being_merged():
    err = _composition_error(["depth=abc"])
    assert hydra_words.merged_override(err) == "depth=abc"


def test_the_config_file_being_composed(tmp_path):
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "broken.yaml").write_text("# @package _global_\ndepth: abc\n")
    err = _composition_error([f"hydra.searchpath=[file://{tmp_path}]", "task=broken"])
    assert hydra_words.config_file(err) == "task/broken", str(err)


def test_a_failed_jobs_line_is_dropped_and_nothing_else(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", hydra_words.WithoutJobFailedLine(stream))
    job = JobReturn(overrides=["seed=1"], status=JobStatus.FAILED)
    job.return_value = RuntimeError("the job's own message")
    with pytest.raises(RuntimeError, match="own message"):
        _ = job.return_value  # Hydra writes its line, then re-raises
    sys.stderr.write("Error: our line\n")
    assert stream.getvalue() == "Error: our line\n"


@pytest.mark.parametrize("user", [None, "0", "1"])
def test_hydra_re_raises_and_the_users_setting_is_kept(monkeypatch, user):
    from hydra._internal.utils import run_and_report  # what hydra.main runs every stage through

    monkeypatch.delenv(hydra_words.USER_FULL_ERROR, raising=False)
    if user is None:
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    else:
        monkeypatch.setenv("HYDRA_FULL_ERROR", user)
    hydra_words.reraise_in_process()

    def fails():
        raise ValueError("composition failed")

    with pytest.raises(ValueError, match="composition failed"):  # re-raised, not printed and exit(1)
        run_and_report(fails)
    assert hydra_words.user_wants_tracebacks() == (user == "1")


def test_nothing_else_in_the_package_reads_hydras_wording():
    package = Path(hydra_words.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "hydra_words.py":
            continue
        text = path.read_text()
        for phrase in ("Error executing job", "Could not find '", "Error merging override", "Config search path"):
            assert phrase not in text, f"{path.name} reads Hydra's {phrase!r}: do it in hydra_words.py"


def _hydra(user_folder: Path | None = None):
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path

    from diffqas_runner.cli import CONFIG_PACKAGE

    GlobalHydra.instance().clear()
    search_path = create_config_search_path(f"pkg://{CONFIG_PACKAGE}")
    if user_folder is not None:
        search_path.append("command-line", f"file://{user_folder}")
    return Hydra.create_main_hydra2(task_name="t", config_search_path=search_path)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


MODE_CASES = [
    [],
    ["task=bessel", "seed=0,1"],
    ["hydra.mode=MULTIRUN"],
    ["hydra.mode=RUN", "task=bessel"],
    ["hydra.mode=MULTIRUN", "hydra.mode=RUN"],
    ["+hydra.mode=MULTIRUN"],
    *[[f"experiment={name}"] for name in _options("experiment")],
    *[[f"hparams_search={name}"] for name in _options("hparams_search")],
]


@pytest.mark.parametrize("overrides", MODE_CASES, ids=lambda o: " ".join(o) or "none")
def test_hydra_mode_read_from_the_overrides_is_what_hydras_composition_reads(monkeypatch, overrides):
    """`compose_once` answers Hydra's get_mode without composing: the same answer as Hydra's own
    composition for every packaged experiment and sweep, and for hydra.mode overrides."""
    from hydra._internal.hydra import Hydra

    from diffqas_runner.cli import CONFIG_PACKAGE

    composing = Hydra.get_mode
    monkeypatch.setattr(Hydra, "get_mode", composing)  # restored after the test
    hydra_obj = _hydra()
    expected = composing(hydra_obj, "config", list(overrides))
    hydra_words.compose_once(CONFIG_PACKAGE)
    assert Hydra.get_mode is not composing
    calls = []
    monkeypatch.setattr(Hydra, "compose_config", lambda *a, **k: calls.append(a) or pytest.fail("composed"))
    assert Hydra.get_mode(hydra_obj, "config", list(overrides)) == expected
    assert not calls


@pytest.mark.parametrize("case", ["user folder", "searchpath", "other config", "unreadable value", "hydra as a dict"])
def test_hydra_mode_is_left_to_hydra_where_a_config_of_the_users_may_set_it(monkeypatch, tmp_path, case):
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    from diffqas_runner.cli import CONFIG_PACKAGE

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nhydra:\n  mode: MULTIRUN\n")
    seen = []
    monkeypatch.setattr(Hydra, "get_mode", lambda self, name, overrides: seen.append(name) or RunMode.MULTIRUN)
    hydra_words.compose_once(CONFIG_PACKAGE)
    hydra_obj = _hydra(tmp_path if case == "user folder" else None)
    overrides = {
        "user folder": ["experiment=mine"],
        "searchpath": [f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"],
        "other config": [],
        "unreadable value": ["hydra.mode=${oc.env:MODE}"],
        "hydra as a dict": ["hydra={mode:MULTIRUN}"],
    }[case]
    name = "other" if case == "other config" else "config"
    assert Hydra.get_mode(hydra_obj, name, overrides) == RunMode.MULTIRUN
    assert seen == [name]  # Hydra's own composition answered


def test_only_the_groups_compared_above_set_hydra_mode():
    """`compose_once` reads hydra.mode from the overrides alone, so a packaged config that set it
    would be missed unless its group is among MODE_CASES' (experiment, hparams_search)."""
    from omegaconf import OmegaConf

    setting = []
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        hydra_node = OmegaConf.load(path).get("hydra")
        if hydra_node is not None and "mode" in hydra_node:
            setting.append(path.relative_to(CONFIG_DIR).parts[0])
    assert set(setting) <= {"experiment", "hparams_search"}, setting
