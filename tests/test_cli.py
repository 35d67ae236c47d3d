"""The command line end to end: config composition, bad input, smoke runs, outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli, env, first_by_default
from helpers import compose as _compose
from omegaconf import OmegaConf

GROUP_OPTIONS = {
    "task": ["mnist", "fashion_mnist", "bessel", "damped_shm", "delayed_qc", "narma5", "narma10"],
    "search": ["diffqas", "fixed", "race"],
    "backend": ["native", "pennylane"],
    "logger": ["wandb", "none"],
    "debug": ["smoke"],
}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_option_composes(group, option):
    cfg = _compose([f"{group}={option}"] + (["search.arch=3"] if option == "fixed" else []))
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group == "depth":
        assert cfg.depth == int(option)


def _run(args, cwd, timeout=300, wandb_mode="disabled"):
    return cli(args, cwd, env(WANDB_MODE=wandb_mode), timeout)


BAD_INPUTS = [
    (["task=imagenet"], "imagenet"),
    (["search=fixed", "search.arch=13"], "search.arch=13"),
    (["search=fixed"], "search.arch"),
    (["depth=0"], "depth"),
    (["search.mode=greedy"], "greedy"),
    (["task.classes=[3,3]"], "task.classes"),
    (["task.name=cifar"], "task.name='cifar'"),
    (["train.lr=-1"], "train.lr"),
    (["train.optimizer=sgd"], "sgd"),
    (["qt.input_norm=layer"], "qt.input_norm"),
    (["qt.toolkit_negative=abs"], "qt.toolkit_negative"),
    (["search.angles=each"], "search.angles"),
    (["train.epochs=0"], "train.epochs=0"),
    (["train.epochs=abc"], "train.epochs"),
    (["seed=x"], "seed"),
    (["task.classes=[3,12]"], "task.classes"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.checkpoint_every=0"], "train.checkpoint_every"),
    (["backend.device=tpu"], "backend.device"),
    (["task=bessel", "task.train_fraction=1.5"], "task.train_fraction"),
    (["task=bessel", "task.validation=1"], "task.validation=1"),
    (["task=bessel", "task.validation=0.001"], "task.validation=0.001"),
    (["task=bessel", "task.hidden=[20,20]"], "task.hidden"),
    (["data_dir=/nonexistent/data"], "/nonexistent/data"),
    (["seed=-1"], "seed=-1"),
    (["seed=4294967296"], "seed=4294967296"),
    (["depth=1001"], "depth=1001"),
    (["train.lr=inf"], "train.lr=inf"),
    (["train.lr=nan"], "train.lr=nan"),
    (["train.eps=0"], "train.eps=0"),
    (["train.threads=0"], "train.threads=0"),
    (["qt.toolkit=[0.1,0.8,0]"], "qt.toolkit"),
    (["qt.theta_std=-1"], "qt.theta_std"),
    (["qt.mapping_hidden=[0]"], "qt.mapping_hidden"),
    (["logger.project=" + "p" * 200], "logger.project"),
    (["logger.project=a/b"], "logger.project='a/b'"),
    (["logger.tags=[" + "t" * 80 + "]"], "logger.tags"),
    (["backend=pennylane", "backend.device=cpu"], "backend.device='cpu'"),
    (["backend.device=cuda:x"], "backend.device='cuda:x'"),
    (["task=bessel", "task.window=0"], "task.window=0"),
    (["task=bessel", "task.length=5"], "task.length=5"),
    (["task=bessel", "task.classes=[1,2]"], "classes"),
    (["task=minigrid", "train.gamma=2"], "train.gamma=2"),
    (["task=minigrid", "train.workers=0"], "train.workers=0"),
    (["task=minigrid", "train.entropy_coef=-1"], "train.entropy_coef=-1"),
    (["task=minigrid", "task.env_id=CartPole-v1"], "task.env_id"),
    (["task=minigrid", "task.env_id=MiniGrid-Nope-v0"], "MiniGrid-Nope-v0"),
    (["task=mnist", "task.hidden=[]"], "task.hidden"),
    (["+foo=1"], "foo is not a key"),
    (["+train.foo=1"], "train.foo is not a key"),
    (["task.kind=rl"], "task.kind='rl'"),
    (["task=bessel", "task.window=1000"], "task.window=1000"),
    (["search=fixed", "search.arch=3", "search.select=2"], "search.select=2"),
    (["backend.memory_mb=0"], "backend.memory_mb=0"),
    (["backend.memory_mb=-5"], "backend.memory_mb=-5"),
    (["backend.memory_mb=lots"], "backend.memory_mb"),
    (["qt.mapping_hidden=4"], "allowed: a list of integers"),
    (["task=bessel", "task.model=cnn"], "task.model is not a key (Key 'model' not in 'TimeSeriesTaskConfig'); allowed: name"),
]
# Through the command line by default (a compose error, range checks, a schema key, a data path);
# every case goes through the command line in the slow suite and through `validate` below.
CLI_BY_DEFAULT = {0, 23}


@pytest.mark.parametrize(
    "overrides,needle",
    [pytest.param(*case, marks=() if i in CLI_BY_DEFAULT else pytest.mark.slow) for i, case in enumerate(BAD_INPUTS)],
)
def test_bad_input_exits_nonzero_with_a_message_and_no_summary(tmp_path, overrides, needle):
    out = tmp_path / "run"
    proc = _run([*overrides, "logger=none", f"hydra.run.dir={out}"], tmp_path, timeout=120)
    assert proc.returncode != 0
    message = proc.stderr + proc.stdout
    assert needle in message, message
    assert "Traceback" not in message
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("overrides,needle", BAD_INPUTS)
def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path, overrides, needle, data_dir):
    """Every case of BAD_INPUTS in-process: composing it, or run() before its first step, fails with
    one line that names the key (the line the command line prints), and no summary.json."""
    from diffqas_runner.errors import describe
    from diffqas_runner.run import run

    try:
        cfg = _compose([f"data_dir={data_dir}", *overrides, "logger=none"])
    except Exception as err:  # composition: what the CLI turns into its one line
        line, code = describe(err, [*overrides])
    else:
        with pytest.raises(Exception) as raised:  # noqa: PT011 (ConfigError, DataError, ...: each names its key)
            run(cfg, tmp_path / "run", interactive=False)
        line, code = str(raised.value), 2
        assert not (tmp_path / "run" / "summary.json").exists()
    assert code == 2 and needle in line and "\n" not in line, line


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_corrupt_data_and_unwritable_output_dir_fail_cleanly(tmp_path):
    corrupt = tmp_path / "data"
    (corrupt / "MNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (corrupt / "MNIST" / "raw" / name).write_bytes(b"not an idx file")
    out = tmp_path / "run"
    proc = _run(
        ["debug=smoke", "figures=false", "logger=none", f"data_dir={corrupt}", f"hydra.run.dir={out}"], tmp_path, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{corrupt / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'}: not an IDX file" in proc.stderr
    assert not (out / "summary.json").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for flag, key in (("", "hydra.run.dir"), ("-m", "hydra.sweep.dir")):
        proc = _run(
            [*filter(None, [flag]), "debug=smoke", "figures=false", "logger=none", f"{key}={blocker / 'run'}"],
            tmp_path,
            timeout=120,
        )
        assert proc.returncode == 2 and f"{key}=" in proc.stderr and "not a directory" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_more_threads_than_cores_warns_and_runs(tmp_path):
    out = tmp_path / "a" / ".." / "run"  # a path through `..` is one directory, not two owners
    proc = _run(["task=bessel", "debug=smoke", "figures=false", "logger=none", "depth=2", f"train.threads={os.cpu_count() + 1}",
                 f"hydra.run.dir={out}"], tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "concurrent jobs >" in proc.stderr and json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_an_over_long_run_directory_name_is_one_line(tmp_path):
    out = tmp_path / ("d" * 300)
    proc = _run(["task=bessel", "debug=smoke", "figures=false", "logger=none", f"hydra.run.dir={out}"], tmp_path, timeout=120)
    assert proc.returncode == 2 and "hydra.run.dir=" in proc.stderr and "too long" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", first_by_default(["truncated", "mismatched"]))
def test_damaged_mnist_files_are_named(tmp_path, data_dir, damage):
    """A truncated image file, or a label file that does not match its images: the message names the
    file and what is wrong (not 'no MNIST data found')."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_dir / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    if damage == "truncated":
        (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:100_000])
        needle = "train-images-idx3-ubyte: 100,000 bytes"
    else:
        (raw / "train-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
        needle = "train-labels-idx1-ubyte holds"
    out = tmp_path / "run"
    proc = _run(
        ["debug=smoke", "figures=false", "logger=none", f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={out}"],
        tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "no MNIST data found" not in proc.stderr and not (out / "summary.json").exists()


def test_smoke_run_writes_the_contract_files(tmp_path, data_dir):
    out = tmp_path / "run"
    proc = _run(["debug=smoke", "logger=none", f"data_dir={data_dir}", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "mnist" and summary["search"] == "diffqas" and summary["arch"] is None
    assert (summary["n_qubits"], summary["classical_params"], summary["qt_params"]) == (17, 108_866, 285)
    assert summary["qt_params_paper"] == 286  # SPEC's count, with the mapping's dead output bias
    assert summary["depth"] == 15 and summary["steps"] == 3 and summary["backend"] == "native"
    assert len(summary["structural_weights"]) == 12
    assert sorted(map(sorted, summary["ranking_groups"])) == [[1, 3, 4, 6], [2], [5], [7], [8], [9, 12], [10], [11]]
    assert summary["ranking"] == [g[0] for g in summary["ranking_groups"]]
    assert summary["angle_independent"] == [1, 3, 4, 6, 9, 12]
    assert 0.0 <= summary["metrics"]["test_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and {"step", "epoch", "loss", "test_accuracy", "structural_weights"} <= rows[-1].keys()
    assert (out / ".hydra" / "config.yaml").exists()
    assert (out / "circuit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the top-ranked candidate
    # The exported network is a plain MLP: it reproduces the accuracy with no quantum code loaded.
    check = f"""
import sys, torch
from torchvision import datasets
state = torch.load({str(out / "model.pt")!r}, weights_only=True)
net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(),
                          torch.nn.Linear(64, 2))
net.load_state_dict(state)
ds = datasets.MNIST({str(data_dir)!r}, train=False)
keep = (ds.targets == 1) | (ds.targets == 5)
x = ds.data[keep].reshape(-1, 784).float().div(255).sub(0.5).div(0.5)
acc = (net(x).argmax(1) == (ds.targets[keep] == 5).long()).double().mean().item()
assert not any(m.startswith(("pennylane", "diffqas_runner")) for m in sys.modules)
print(acc)
"""
    acc = float(subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout)
    assert acc == pytest.approx(summary["metrics"]["test_accuracy"], abs=1e-12)


def test_smoke_multirun_fixed_9_and_12_agree(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = _run(
        ["-m", "debug=smoke", "figures=false", "logger=none", "search=fixed", "search.arch=9,12", f"data_dir={data_dir}",
         f"hydra.sweep.dir={sweep}"], tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summaries = [json.loads(p.read_text()) for p in sorted(Path(sweep).glob("*/summary.json"))]
    assert [s["arch"] for s in summaries] == [9, 12]
    assert [s["arch_name"] for s in summaries] == ["Ent-Rz", "Cyc-Rz"]
    assert summaries[0]["qt_params_paper"] == 17 * 15 + 17 + 2
    assert summaries[0]["qt_params"] == 17 + 1  # the angles of an angle-independent candidate are dead
    assert summaries[0]["metrics"] == summaries[1]["metrics"]  # both generate from |0..0>


def test_wandb_offline_run_is_written_inside_the_run_dir(tmp_path, data_dir):
    out = tmp_path / "run"
    proc = _run(
        ["debug=smoke", "search=fixed", "search.arch=9", "logger=wandb", "logger.mode=offline", f"data_dir={data_dir}",
         f"hydra.run.dir={out}"], tmp_path, wandb_mode="offline",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert (out / "summary.json").exists()
    # the run's figures reach wandb as images; wandb itself prints nothing (the run logs one line about it)
    images = sorted(p.name.split("_")[0] for p in (runs[0] / "files" / "media" / "images" / "figures").glob("*.png"))
    assert images == ["circuit", "learning"]  # a fixed candidate: no structural weights
    assert {p.name for p in out.glob("*.png")} == {"learning_curve.png", "circuit.png"}
    lines = proc.stderr.splitlines() + proc.stdout.splitlines()
    talk = [line for line in lines if "wandb" in line.lower() and "run directory:" not in line]  # the test's dir says wandb
    assert len(talk) == 1 and "wandb sync" in talk[0], talk


@pytest.mark.parametrize(
    "task", ["bessel", *(pytest.param(t, marks=pytest.mark.slow) for t in ("damped_shm", "delayed_qc", "narma5", "narma10"))]
)
def test_timeseries_smoke_run(tmp_path, task):
    out = tmp_path / "run"
    proc = _run([f"task={task}", "debug=smoke", "logger=none", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_qubits"], summary["classical_params"], summary["qt_params"], summary["depth"]) == (11, 1781, 134, 10)
    assert summary["qt_params_paper"] == 135
    assert summary["steps"] == 3 and 0 < summary["metrics"]["test_mse"] < 4  # scaled to [-1, 1]
    assert summary["torch_threads"] == 1  # the default for a generator of 11 qubits
    import diffqas_runner

    simulator = summary["simulator"]  # how it was computed (CONTRACT "Reproducibility"): the code that ran
    assert (simulator["backend"], simulator["dtype"], simulator["threads"]) == ("native", "float64", 1)
    assert simulator["version"] == diffqas_runner.__version__ and simulator["kernel"].startswith(
        ("cpp", "torch")
    )  # "cpp (no OpenMP)" too
    if simulator["kernel"].startswith("cpp"):  # which build of kernel.cpp: the library this machine caches
        from diffqas_runner.quantum import kernel

        assert kernel.library_path().name == f"diffqas_kernel_{simulator['kernel_build']}.so"
    else:
        assert simulator["kernel_build"] is None
    for name in ("prediction.png", "learning_curve.png", "structural_weights.png", "circuit.png"):  # every DiffQAS run's own
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    config = OmegaConf.load(out / ".hydra" / "config.yaml")  # the paper's optimiser came with the task
    assert (config.train.optimizer, config.train.lr, config.train.batch_size, config.train.epochs) == ("rmsprop", 0.01, 10, 100)
    # model.pt loads into the plain LSTM target and reproduces the test MSE
    from diffqas_runner.nets import LSTMRegressor
    from diffqas_runner.tasks.timeseries import TimeSeriesTask

    net = LSTMRegressor(1, 20)
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    data = TimeSeriesTask(task)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(net(data.test.x), data.test.y).item()
    assert mse == pytest.approx(summary["metrics"]["test_mse"], rel=1e-6)


@pytest.mark.parametrize("task", ["bessel", "damped_shm", "delayed_qc", "narma5", "narma10"])
def test_timeseries_tasks_bring_their_validated_settings(task):
    """The series set the settings chosen on validation MSE (README); classification keeps the
    library defaults, and a command-line override still wins over the task's value."""
    cfg = _compose([f"task={task}"])
    assert (cfg.qt.tensor_scale.value, cfg.qt.toolkit_negative.value, cfg.train.warmup_steps) == ("none", "odd", 100)
    assert _compose([f"task={task}", "qt.tensor_scale=standardize"]).qt.tensor_scale.value == "standardize"
    mnist = _compose(["task=mnist"])
    assert (mnist.qt.tensor_scale.value, mnist.qt.toolkit_negative.value, mnist.train.warmup_steps) == ("standardize", "clamp", 0)


def test_library_defaults_are_the_cli_defaults():
    """`Generator(shapes, depth)` from Python builds what `diffqas-run` builds with no `qt.*` override."""
    from diffqas_runner.qt.generator import GeneratorOptions

    assert GeneratorOptions.from_config(_compose([])) == GeneratorOptions()


@pytest.mark.parametrize(
    "value, ok",
    [("all", True), ("[3,1,7]", True), ("[0,1,2,3,4,5,6,7,8,9]", True), ("[1]", False), ("[1,1]", False),
     ("[1,10]", False), ("some", False), ("[true,false]", False), ("5", False), ("null", False)],
)  # fmt: skip
def test_task_classes_accepts_all_or_distinct_labels(value, ok):
    from diffqas_runner.config import ConfigError, validate

    cfg = _compose(["task=mnist", f"task.classes={value}"])
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=r"task.classes=.* is not allowed; allowed: all, or two or more different"):
            validate(cfg)


def test_the_last_lines_name_the_directory_and_rounded_metrics(tmp_path):
    out = tmp_path / "run"
    proc = cli(["task=bessel", "debug=smoke", "logger=none", "figures=false", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines[-1].endswith(f"run directory: {out}")
    done = lines[-2]
    assert "done in" in done and "test_mse=" in done
    value = done.split("test_mse=")[1].split(",")[0]
    assert len(value.replace("e", " ").split()[0].replace(".", "").lstrip("0")) <= 4  # rounded to 4 digits
    summary = json.loads((out / "summary.json").read_text())
    assert float(value) == pytest.approx(summary["metrics"]["test_mse"], rel=1e-3)


def test_a_sweep_ends_on_its_directory_and_the_aggregate_command(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "task=bessel", "debug=smoke", "logger=none", "figures=false", "seed=0,1", f"hydra.sweep.dir={sweep}"],
               tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-2:] == [f"sweep directory: {sweep}", f"tables and plots: diffqas-aggregate {sweep}"]


def test_a_log_that_cannot_be_written_is_one_line_and_the_run_goes_on(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "cli.log").symlink_to("/dev/full")  # every write: no space left on device
    proc = cli(["task=bessel", "debug=smoke", "logger=none", "figures=false", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "Logging error" not in text and "Traceback" not in text
    warnings = [line for line in text.splitlines() if "cannot be written" in line]
    assert len(warnings) == 1 and "cli.log" in warnings[0] and "No space left" in warnings[0]
    assert (out / "summary.json").exists()


def test_an_optuna_sweep_over_the_split_records_the_refused_job(tmp_path):
    """task.validation swept with an optimising sweeper: the job without a split is a failed job
    (failure.json, named at the end, exit 1), the other runs."""
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "hparams_search=bessel_optuna", "task.validation=0,0.2", "hydra.sweeper.n_trials=2", "debug=smoke",
                "logger=none", "figures=false", f"hydra.sweep.dir={sweep}"], tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    failed = [p.parent for p in sweep.glob("*/failure.json")]
    finished = [p.parent for p in sweep.glob("*/summary.json")]
    assert len(failed) == 1 and len(finished) == 1
    assert "task.validation" in json.loads((failed[0] / "failure.json").read_text())["message"]
    assert json.loads((finished[0] / "summary.json").read_text())["objective"] == "val_mse"


def test_an_optimising_sweeper_needs_a_split_but_rl_has_no_test_split_to_fear():
    from omegaconf import OmegaConf

    from diffqas_runner.cli import check_objective
    from diffqas_runner.errors import ConfigError

    optuna = OmegaConf.create({"sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}})
    basic = OmegaConf.create({"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}})
    check_objective(_compose(["task=minigrid"]), optuna)  # RL: its objective is the training return
    check_objective(_compose(["task=bessel"]), basic)  # a grid chooses nothing
    check_objective(_compose(["task=bessel", "task.validation=0.2"]), optuna)
    with pytest.raises(ConfigError, match="task.validation=0.0 with hydra/sweeper OptunaSweeper"):
        check_objective(_compose(["task=bessel"]), optuna)
