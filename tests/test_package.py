"""The package outside the checkout: a built wheel, user configs, --help, device placement, progress lines."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import cli, env
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]


_env = env


def _cli(args, cwd, environ=None, timeout=300):
    return cli(args, cwd, environ, timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("diffqas_runner-*.whl")
    return path


def test_the_wheel_carries_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("diffqas_runner/configs/") for n in names if n.startswith("diffqas_runner/configs/")}
    in_checkout = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")}
    assert in_checkout and in_checkout <= shipped
    docs = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")}
    assert docs and {f"diffqas_runner/{d}" for d in docs} <= names  # the docs --help points to
    import diffqas_runner

    assert f"diffqas_runner-{diffqas_runner.__version__}-" in wheel.name  # the version is written in one place


def test_the_manual_prints_the_installed_docs(capsys):
    from diffqas_runner import manual

    manual.main(["design"])
    text = capsys.readouterr().out
    assert text.startswith((REPO / "docs" / "design.md").read_text()[:200])
    assert str(manual.docs_dir()) in text.splitlines()[-1] and (manual.docs_dir() / "results.md").is_file()
    manual.main([])
    assert capsys.readouterr().out.startswith("# diffqas-runner")


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_the_installed_wheel_runs_from_an_empty_directory_with_user_configs(wheel, tmp_path):
    """pip install <wheel> (into a fresh target dir, the dependencies from this environment), then
    `diffqas-run` in an empty directory, and a user's own experiment through --config-dir."""
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _env(PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import diffqas_runner.cli as c; print(c.__file__); print(c.CONFIG_DIR)"],
        cwd=empty, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's copy, not the checkout
    proc = _cli(["task=bessel", "debug=smoke", "logger=none"], empty, env)
    assert proc.returncode == 0, proc.stderr
    (summary,) = empty.glob("outputs/runs/*/*/summary.json")
    assert json.loads(summary.read_text())["steps"] == 3
    # the wheel's console script aggregates it, and its manual and docs are the installed ones
    proc = subprocess.run(
        [str(site / "bin" / "diffqas-aggregate"), "outputs"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "1 configurations" in proc.stdout, proc.stderr
    assert (empty / "outputs" / "results.md").is_file() and (empty / "outputs" / "learning_curves.png").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "diffqas_runner.manual", "results"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and str(site / "diffqas_runner" / "docs") in proc.stdout.splitlines()[-1], proc.stderr
    proc = subprocess.run([sys.executable, "-m", "diffqas_runner.manual"], cwd=empty, env=env, capture_output=True, text=True)
    assert proc.stdout.startswith("# diffqas-runner"), proc.stderr  # the README, from the wheel's metadata
    # ... as a wheel user reads it: no make targets or links to files the wheel lacks
    assert "make install" not in proc.stdout and "make test" not in proc.stdout and "](CHANGELOG.md)" not in proc.stdout
    assert "## Quick start (the installed package)" in proc.stdout and "diffqas-run task=bessel" in proc.stdout

    mine = tmp_path / "my_configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /task: damped_shm\nsearch:\n  mode: fixed\n  arch: 8\ndepth: 3\n"
    )
    (mine / "task").mkdir()
    (mine / "task" / "bessel_short.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /task_base/timeseries\n  - _self_\ntask:\n  name: bessel\n  length: 120\n"
    )
    out = tmp_path / "run"
    proc = _cli(["--config-dir", str(mine), "experiment=mine", "debug=smoke", "logger=none", f"hydra.run.dir={out}"], empty, env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["task"], summary["search"], summary["arch"], summary["depth"]) == ("damped_shm", "fixed", 8, 3)
    out = tmp_path / "run2"
    proc = _cli(
        ["--config-dir", str(mine), "task=bessel_short", "debug=smoke", "logger=none", f"hydra.run.dir={out}"], empty, env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["task"] == "bessel"


def test_help_names_the_program_and_lists_every_user_group_only():
    proc = _cli(["--help"], REPO)
    assert proc.returncode == 0
    text = proc.stdout
    assert text.startswith("diffqas-run:") and "powered by Hydra" not in text
    assert "task_base" not in text and "schema" not in text
    assert "python -m diffqas_runner.manual" in text and "README.md" not in text  # docs a wheel user has
    section = text.split("== Config groups", 1)[1].split("\n==", 1)[0]
    listed: dict[str, str] = {}
    for line in section.splitlines()[1:]:
        words = line.split()
        if not words:
            continue
        if line.startswith("  ") and not line.startswith("   "):  # a group's line; deeper lines continue it
            group, words = words[0], words[1:]
        listed[group] = listed.get(group, "") + " " + " ".join(words)
    assert set(listed) == {"task", "search", "search_space", "backend", "logger", "debug", "experiment", "hparams_search"}
    for group, options_text in listed.items():
        names = {w.strip(",()") for w in options_text.split()}
        options = sorted(p.stem for p in (REPO / "configs" / group).glob("*.yaml"))
        assert options and set(options) <= names, (group, options, names)


def test_cuda_without_a_gpu_exits_2_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    proc = _cli(["task=bessel", "backend.device=cuda", "logger=none", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "backend.device='cuda'" in lines[0] and "Traceback" not in proc.stderr
    assert not (out / "summary.json").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_a_non_interactive_run_logs_one_progress_line_per_evaluation(tmp_path):
    out = tmp_path / "run"
    proc = _cli(
        ["task=bessel", "train.max_steps=30", "train.eval_every=10", "logger=none", "depth=2", f"hydra.run.dir={out}"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "ETA" in line]
    assert [line.split("step ")[1].split(" ")[0] for line in lines] == ["10/30", "20/30", "30/30"], proc.stderr
    assert all("test_mse" in line and "elapsed" in line for line in lines)
    assert (out / "cli.log").read_text().count("ETA") == 3


class _Devices(TorchDispatchMode):
    """Records the device of every tensor going into or out of every torch operation."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in (*args, *(kwargs or {}).values(), *(out if isinstance(out, tuple | list) else (out,))):
            if isinstance(value, torch.Tensor):
                self.seen.add(value.device.type)
        return out


@pytest.mark.parametrize("task", ["bessel", "minigrid"])
def test_every_tensor_of_a_step_is_on_the_configured_device(task, tmp_path):
    """`place` puts the target, the generator and the data on backend.device; one training step
    (supervised, or one A2C update with its rollout) then touches no tensor elsewhere. On this
    CPU-only machine the configured device is the CPU; the check is the same on a GPU."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from diffqas_runner.cli import CONFIG_DIR
    from diffqas_runner.record import Recorder
    from diffqas_runner.run import build

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={task}", "depth=2", "train.max_steps=1", "logger=none"])
    exp = build(cfg)
    device = torch.device(cfg.backend.device)
    assert exp.device == device
    tensors = [*exp.model.parameters(), *exp.generator.parameters(), *exp.generator.buffers()]
    tensors += [t for split in ("train", "val", "test") if getattr(exp.task, split, None) is not None
                for t in (getattr(exp.task, split).x, getattr(exp.task, split).y)]  # fmt: skip
    assert tensors and {t.device for t in tensors} == {device}
    recorder = Recorder(tmp_path)
    with _Devices() as seen:
        if task == "minigrid":
            from diffqas_runner.train.a2c import train_a2c

            train_a2c(exp.task, exp.model, exp.generator, exp.optimizer, cfg.train, recorder)
        else:
            from diffqas_runner.train.supervised import train_supervised

            train_supervised(exp.task, exp.model, exp.generator, exp.optimizer, cfg.train, recorder)
    recorder.close()
    assert seen.seen == {device.type}


def _readme_commands() -> list[str]:
    """The `diffqas-run ...` commands of the README's code blocks (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            for part in line.split("&&"):
                if part.strip().startswith("diffqas-run"):
                    commands.append(part.strip())
    return commands


@pytest.mark.slow
def test_the_readme_is_a_short_manual_whose_commands_compose(tmp_path):
    """README.md stays under 19,000 characters (15,000 until it gained the search-space, shots and
    ten-class section, 16,000 until the CPU-only install, the controls and the race's evidence),
    and every `diffqas-run` command in it composes as written (`--cfg job`: nothing runs;
    placeholders such as PATH get a real value)."""
    assert len((REPO / "README.md").read_text()) < 19_000
    commands = _readme_commands()
    assert len(commands) >= 8
    mine = tmp_path / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /task: damped_shm\n")
    for command in commands:
        args = command.split()[1:]
        args = [a.replace("=PATH", "=/tmp").replace("$USER", "me") for a in args if a != "-m"]
        # a sweep composes job by job: its first job stands for it (--cfg and -m do not combine)
        args = [a.split(",")[0] if "=" in a and "," in a and "[" not in a else a for a in args]
        proc = _cli([*args, "--cfg", "job"], tmp_path)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])


def test_the_pins_accept_pytorchs_cpu_builds():
    """The README's CPU-only install: torch and torchvision from PyTorch's CPU index (versions like
    2.14.1+cpu), then `pip install -c constraints.txt`: the pins must accept those local versions."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name] = req.specifier
    assert pins["torch"].contains("2.14.1+cpu") and pins["torchvision"].contains("0.29.1+cpu")
    assert not pins["torch"].contains("2.13.0+cpu")  # a pin, not a range
    readme = (REPO / "README.md").read_text()
    assert "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu" in readme
    assert str(pins["torch"]) == "==2.14.1" and str(pins["torchvision"]) == "==0.29.1"
