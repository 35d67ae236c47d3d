"""Every run's figures (record/figures.py), what reaches wandb, and the progress ETA."""

import json
import logging
import struct
from pathlib import Path

import pytest
from helpers import cli, env
from matplotlib.image import imread

from diffqas_runner.quantum.candidates import CANDIDATES
from diffqas_runner.record import figures

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
GROUPS = [[1, 3, 4, 6], [2], [5], [7], [8], [9, 12], [10], [11]]  # paper12 on 11 qubits
INDEPENDENT = [1, 3, 4, 6, 9, 12]


def _rows(n=5, weights=True, **metrics):
    rows = []
    for i in range(n):
        row = {"step": 10 * (i + 1), "epoch": i + 1, "loss": 1.0 / (i + 1)}
        row.update({k: v * (i + 1) for k, v in metrics.items()})
        if weights:
            row["structural_weights"] = [0.01 * (c + 1) * (i + 1) for c in range(12)]
        rows.append(row)
    return rows


def _labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def test_the_learning_curve_shows_loss_and_the_task_metric_per_split():
    rows = _rows(test_accuracy=0.1, val_accuracy=0.09, train_accuracy=0.11, test_loss=0.5, val_loss=0.6)
    fig = figures.learning_curve(rows, "mnist DiffQAS")
    loss, accuracy = fig.axes
    assert (loss.get_xlabel(), loss.get_ylabel(), accuracy.get_ylabel()) == ("step", "loss", "accuracy")
    assert _labels(loss) == ["train (running mean)", "validation", "test"]
    assert _labels(accuracy) == ["train", "validation", "test"]
    test_line = accuracy.get_lines()[2]
    assert list(test_line.get_xdata()) == [10, 20, 30, 40, 50]
    assert list(test_line.get_ydata()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert (loss.get_yscale(), accuracy.get_yscale()) == ("log", "linear")  # an accuracy reads on a linear scale

    series = figures.learning_curve(_rows(test_mse=0.01, train_mse=0.02), "bessel")
    loss, mse = series.axes
    assert _labels(loss) == ["train (running mean)"] and _labels(mse) == ["train", "test"]
    assert mse.get_ylabel() == "mse" and mse.get_yscale() == "log"
    assert figures.learning_curve([], "") is None


def test_structural_weights_draw_one_line_per_group_angle_independent_ones_dashed():
    rows = _rows()
    summary = {"ranking_groups": GROUPS, "angle_independent": INDEPENDENT, "candidates": [c.name for c in CANDIDATES]}
    ax = figures.structural_weights(rows, summary, "bessel").axes[0]
    lines = ax.get_lines()
    assert len(lines) == len(GROUPS) and ax.get_ylabel() == "structural weight" and ax.get_xlabel() == "step"
    by_label = {line.get_label(): line for line in lines}
    flat = by_label["1,3,4,6 (angle-indep.)"]
    assert flat.get_linestyle() == "--" and flat.get_marker() == "x"
    assert list(flat.get_ydata()) == pytest.approx([0.01 * (1 + 3 + 4 + 6) / 4 * k for k in range(1, 6)])  # the members' mean
    assert by_label["5 H-Cyc-Ry"].get_linestyle() == "-"
    assert figures.structural_weights(_rows(weights=False), summary) is None  # a fixed candidate has none


@pytest.mark.parametrize(
    "search,rl,expected",
    [("diffqas", False, {"learning_curve.png", "structural_weights.png"}), ("fixed", False, {"learning_curve.png"}),
     ("diffqas", True, {"structural_weights.png"})],
)  # fmt: skip
def test_each_run_draws_the_figures_of_its_kind(search, rl, expected):
    summary = {"task": "t", "search": search, "arch": 8, "arch_name": "Ent-Ry", "seed": 0, "ranking_groups": GROUPS}
    rows = _rows(weights=search == "diffqas", test_mse=0.1)
    assert set(figures.run_figures(rows, summary, rl)) == expected


def test_a_wide_circuit_title_wraps_inside_its_figure():
    """A long note (a wide space's groups ranked above the drawn one) stays on the page."""
    from diffqas_runner.config import search_space_file
    from diffqas_runner.record.circuit_figure import draw_candidate

    space = search_space_file("wide32")
    cand = next(c for c in space if c.rotation.label == "RyRz")
    note = "DiffQAS top angle-dependent, w = 0.123; ranked above it: angle-independent " + "; ".join(
        ",".join(str(k) for k in range(j, j + 4)) for j in range(1, 33, 4)
    )
    fig = draw_candidate(cand, 5, 10, note + f"\n {cand.number}: {cand.name}")
    fig.canvas.draw()
    title = fig.axes[0].title
    assert title.get_text().count("\n") >= 2
    extent, page = title.get_window_extent(), fig.bbox
    assert page.x0 <= extent.x0 and extent.x1 <= page.x1


def test_the_prediction_figure_labels_both_axes():
    from diffqas_runner.tasks.timeseries import TimeSeriesTask

    task = TimeSeriesTask("bessel")
    ax = task.figures(task.build_model())["prediction.png"].axes[0]
    assert ax.get_xlabel() and "scaled" in ax.get_ylabel()


def test_the_eta_ignores_the_first_step(monkeypatch, caplog):
    """The first step pays one-off costs (here 60 s on a fake clock: data loading, warm-up): the ETA after ten steps
    of 1 s each says 90 steps x 1 s, not (60 + 9) s / 10 steps x 90 ."""
    from diffqas_runner.record import progress as module

    clock = [0.0]
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock[0])
    bar = module.Progress("lines", 100, "step", "test_mse")
    clock[0] += 60
    bar.advance()
    for _ in range(9):
        clock[0] += 1
        bar.advance()
    with caplog.at_level(logging.INFO, logger="diffqas_runner"):
        bar.report({"test_mse": 0.5}, "epoch 1")
    assert "step 10/100" in caplog.text and "elapsed 1:09, ETA 1:30" in caplog.text, caplog.text

    # RL: 20 episodes done before a resume, then updates that finish none, the first paying the build
    caplog.clear()
    bar = module.Progress("lines", 100, "episode", "charts/episodic_return")
    bar.skip(20)
    clock[0] += 60
    bar.advance(0)
    clock[0] += 1
    bar.advance(2)  # the first episodes: the clock starts here
    for _ in range(4):
        clock[0] += 1
        bar.advance(2)
    with caplog.at_level(logging.INFO, logger="diffqas_runner"):
        bar.report({}, "update 6")
    assert "episode 30/100" in caplog.text and "ETA 0:35" in caplog.text, caplog.text  # 70 episodes at 2 per second


def _wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, chunk = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


@pytest.mark.slow
def test_a_diffqas_run_writes_its_figures_and_wandb_gets_them_quietly(tmp_path):
    out = tmp_path / "run"
    proc = cli(
        ["task=bessel", "debug=smoke", "logger=wandb", "logger.mode=offline", f"hydra.run.dir={out}"],
        tmp_path, env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb_dir")),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in ("learning_curve.png", "structural_weights.png", "prediction.png", "circuit.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
        assert imread(out / name).shape[0] >= 300, name
    talk = [line for line in (proc.stdout + proc.stderr).splitlines() if "wandb" in line.lower()]
    assert len(talk) <= 2 and "wandb sync" in talk[-1], talk  # no banner, no history or summary tables
    (run,) = (out / "wandb").glob("offline-run-*")
    images = {p.name.split("_")[0] for p in (run / "files" / "media" / "images" / "figures").glob("*.png")}
    assert images == {"learning", "structural", "prediction", "circuit"}
    (chart,) = (run / "files" / "media" / "table").glob("structural_weights*.table.json")
    table = json.loads(chart.read_text())
    lines = {
        "1,3,4,6 (angle-indep.)",
        "2 H-Ent-Ry",
        "5 H-Cyc-Ry",
        "7 Ent-Rx",
        "8 Ent-Ry",
        "9,12 (angle-indep.)",
        "10 Cyc-Rx",
        "11 Cyc-Ry",
    }
    assert table["columns"] == ["step", "lineKey", "lineVal"] and {row[1] for row in table["data"]} == lines
    summary = {}
    for record in _wandb_records(next(run.glob("*.wandb"))):
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
    mine = json.loads((out / "summary.json").read_text())
    assert summary["final/test_mse"] == pytest.approx(mine["metrics"]["test_mse"])
    assert (summary["task"], summary["steps"], summary["n_qubits"]) == ("bessel", 3, 11)
    assert summary["ranking"] == mine["ranking"] and summary["structural_groups/c1+3+4+6"] == pytest.approx(
        mine["group_weights"][mine["ranking_groups"].index([1, 3, 4, 6])]
    )
    top = next(g for g in mine["ranking_groups"] if g[0] not in mine["angle_independent"])
    assert summary["circuit"] == f"{top[0]} {mine['candidates'][top[0] - 1]}"


def test_figures_false_writes_no_png_and_the_same_numbers(tmp_path):
    """figures=false (bookkeeping: not part of the run's identity): no PNG, the same summary and
    model; and race's shorter rungs never draw (only their numbers are read)."""
    import torch
    from helpers import compose as _compose

    from diffqas_runner.run import run

    base = ["task=bessel", "debug=smoke", "logger=none", "depth=2", "train.threads=1"]
    drawn = run(_compose([*base, "search=fixed", "search.arch=2"]), tmp_path / "drawn", interactive=False)
    plain = run(_compose([*base, "search=fixed", "search.arch=2", "figures=false"]), tmp_path / "plain", interactive=False)
    assert sorted(p.name for p in (tmp_path / "drawn").glob("*.png")) == ["circuit.png", "learning_curve.png", "prediction.png"]
    assert not list((tmp_path / "plain").glob("*.png"))
    assert plain["metrics"] == drawn["metrics"]
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("drawn", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same run: rerun with figures=true into plain's directory, it has nothing to do
    again = run(_compose([*base, "search=fixed", "search.arch=2"]), tmp_path / "plain", interactive=False)
    assert again == plain and not list((tmp_path / "plain").glob("*.png"))
    raced = run(
        _compose([*base, "search.strategy=race", "search.supernet=false", "train.max_steps=4"]),
        tmp_path / "race",
        interactive=False,
    )
    rungs = list((tmp_path / "race" / "select" / "race").rglob("summary.json"))
    assert rungs and not list((tmp_path / "race" / "select" / "race").rglob("*.png"))
    assert (tmp_path / "race" / "select" / f"arch_{raced['selected_arch']}" / "circuit.png").exists()


def test_the_final_metric_plot_reads_right_on_a_log_axis():
    """MSE spread over orders of magnitude: on a log axis every bar stays inside the seeds' range
    (mean - std would go below zero), and the plot says what it shows."""
    from diffqas_runner.record import figures

    values = [[1e-6, 2e-6, 3e-4], [4e-5, 5e-5, 6e-5]]
    fig = figures.final_metric(["DiffQAS", "8 Ent-Ry"], values, [4e-5, None], [True, False], "test_mse", True, "bessel")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and "bessel" in ax.get_title() and "3 seeds" in ax.get_title()
    assert "lowest to highest seed" in ax.get_ylabel()
    low, high = ax.get_ylim()
    assert 0 < low <= 1e-6 and high >= 3e-4
    segments = [seg for coll in ax.collections for seg in getattr(coll, "get_segments", lambda: [])()]
    ends = [y for seg in segments for _, y in seg]
    assert ends and min(ends) == pytest.approx(1e-6) and max(ends) == pytest.approx(3e-4)
    linear = figures.final_metric(["a"], [[0.9, 0.95]], [None], [False], "test_accuracy", False, "mnist")
    assert "mean ± std" in linear.axes[0].get_ylabel()
