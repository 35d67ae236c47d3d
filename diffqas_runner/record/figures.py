"""Every figure the project draws, for one run and for a sweep (`aggregate`), in one place.

matplotlib's object API (`matplotlib.figure.Figure`, no pyplot state), imported only when a
figure is drawn. Each function takes plain data (metrics.jsonl rows, summary fields) and returns
a Figure, or None when there is nothing to draw; callers save it.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..quantum.groups import group_weight

SPLITS = (("train", "tab:blue"), ("val", "tab:green"), ("test", "tab:red"))
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
HIGHER_IS_BETTER = ("accuracy", "return")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _series(rows: Sequence[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[key]) for r in rows if isinstance(r.get(key), int | float) and isinstance(r.get(x), int | float)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _marker(n: int) -> str | None:
    return "o" if n < 30 else None  # a run with a few evaluations shows its points, one with one shows a dot


def learning_curve(rows: Sequence[dict], title: str = "") -> Any | None:
    """learning_curve.png of a supervised run: the loss (training loss as a running mean over the
    steps since the last evaluation, the held-out splits' loss where the task computes one) and
    each task metric (train, validation, test) against the step, from metrics.jsonl's rows."""
    keys = {k for r in rows for k in r}
    metrics = sorted({k.split("_", 1)[1] for k in keys if k.split("_", 1)[0] in SPLIT_NAMES and "_" in k} - {"loss"})
    if not rows or "loss" not in keys:
        return None
    panels = [("loss", [("loss", "train (running mean)", "tab:blue")] + _split_keys(keys, "loss"))]
    panels += [(m, _split_keys(keys, m)) for m in metrics]
    fig = _figure(4.2 * len(panels) + 0.6, 3.6)
    for ax, (name, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key, label, color in series:
            x, y = _series(rows, key)
            ax.plot(x, y, color=color, lw=1.3, marker=_marker(len(x)), ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        values = [v for key, _, _ in series for v in _series(rows, key)[1]]
        if values and min(values) > 0 and not name.endswith(HIGHER_IS_BETTER):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _split_keys(keys: set[str], metric: str) -> list[tuple[str, str, str]]:
    return [(f"{s}_{metric}", SPLIT_NAMES[s], color) for s, color in SPLITS if f"{s}_{metric}" in keys]


def group_label(group: Sequence[int], names: Sequence[str] | None = None, independent: bool = False) -> str:
    """'5 H-Cyc-Ry', or '1,3,4,6' for a group of identical candidates; '(angle-independent)' marked."""
    label = ",".join(map(str, group))
    if len(group) == 1 and names and group[0] <= len(names):
        label += f" {names[group[0] - 1]}"
    return label + (" (angle-indep.)" if independent else "")


def draw_structural_weights(
    ax, rows: Sequence[dict], groups: Sequence[Sequence[int]] | None, independent=(), names=None, x="step"
):
    """One line per group of identical candidates (their weights are equal all run: the group's
    weight is its members' mean, `group_weight`), angle-independent groups dashed with markers.
    Returns the number of lines drawn."""
    series = [(r[x], r["structural_weights"]) for r in rows if r.get("structural_weights") and x in r]
    if not series:
        return 0
    steps = [s for s, _ in series]
    groups = groups or [[i + 1] for i in range(len(series[0][1]))]
    independent = set(independent or ())
    from matplotlib import colormaps

    colors = colormaps["tab10" if len(groups) <= 10 else "tab20"].colors
    for i, group in enumerate(sorted(groups)):
        flat = group[0] in independent
        ax.plot(
            steps, [group_weight(w, group) for _, w in series], color=colors[i % len(colors)], lw=1.2,
            ls="--" if flat else "-", marker="x" if flat else _marker(len(steps)), markevery=max(1, len(steps) // 12), ms=4,
            label=group_label(group, names, flat),
        )  # fmt: skip
    ax.set_xlabel(x)
    ax.set_ylabel("structural weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=max(1, (len(groups) + 11) // 12), title="candidate (group)", title_fontsize=6, loc="center left",
              bbox_to_anchor=(1.01, 0.5))  # fmt: skip
    return len(groups)


def structural_weights(rows: Sequence[dict], summary: dict, title: str = "") -> Any | None:
    """structural_weights.png of a DiffQAS run (None for a fixed candidate: it has no weights)."""
    if not any(r.get("structural_weights") for r in rows):
        return None
    fig = _figure(8.5, 4.0)
    ax = fig.subplots()
    x = "step" if any("step" in r for r in rows) else "global_step"
    draw_structural_weights(
        ax, rows, summary.get("ranking_groups"), summary.get("angle_independent"), summary.get("candidates"), x
    )
    ax.set_title(title or "DiffQAS structural weights", fontsize=9)
    return fig


def returns(values: Sequence[float], title: str) -> Any:
    """learning_curve.png of an RL run: every episode's return and a moving average."""
    fig = _figure(8, 3.5)
    ax = fig.subplots()
    if len(values):
        x = np.arange(1, len(values) + 1)
        ax.plot(x, values, ".", ms=1.5, alpha=0.3, color="tab:blue", label="episode return")
        k = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(x[k - 1 :], smooth, color="tab:red", lw=1.5, label=f"moving average ({k})")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(title)
    return fig


def run_figures(rows: Sequence[dict], summary: dict, rl: bool) -> dict[str, Any]:
    """The figures every run draws from its metrics rows: learning_curve.png (supervised; an RL
    run draws its returns itself) and structural_weights.png (DiffQAS)."""
    kind = summary["search"]
    what = {"diffqas": "DiffQAS", "race": f"race pick {summary.get('selected_arch')} {summary.get('selected_name')}"}
    name = f"{summary['task']} " + what.get(kind, f"{summary['arch']} {summary['arch_name']}")
    if summary.get("qt_source", "circuit") != "circuit":
        name += f" ({summary['qt_source']} control)"
    out = {}
    if not rl:
        out["learning_curve.png"] = learning_curve(rows, f"{name}, seed {summary['seed']}")
    out["structural_weights.png"] = structural_weights(rows, summary, f"{name} structural weights, seed {summary['seed']}")
    return {k: v for k, v in out.items() if v is not None}


def wrap(text: str, width_inches: float, fontsize: float) -> str:
    """Each line of `text` wrapped to what fits `width_inches` at `fontsize` points."""
    chars = max(20, int(width_inches * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) if line.strip() else line for line in text.splitlines())


# --- a sweep's figures (aggregate) ---------------------------------------------------------------
def sweep_learning_curves(curves: Sequence[tuple[str, list[float], list[float], bool]], metric: str, log_scale: bool):
    """learning_curves.png: (label, steps, mean metric, is DiffQAS) per configuration."""
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    for i, (label, x, y, wide) in enumerate(curves):
        if x:
            ax.plot(x, y, lw=2.2 if wide else 1.0, marker=_marker(len(x)), ms=3, color=colors[i % 20], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    if log_scale:
        ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    return fig


def sweep_structural_weights(panels: Sequence[tuple[str, list[dict], dict]]):
    """structural_weights.png: one panel per DiffQAS configuration (title, one seed's rows, its summary)."""
    fig = _figure(9, 3.2 * len(panels))
    for ax, (title, rows, summary) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        draw_structural_weights(
            ax, rows, summary.get("ranking_groups"), summary.get("angle_independent"), summary.get("candidates")
        )
        ax.set_title(title, fontsize=9)
    return fig


def final_metric(
    labels: list[str], values: list[list[float]], papers: list, diffqas: list[bool], metric: str, log_scale: bool,
    title: str = "",
):  # fmt: skip
    """final_metric.png: the final metric per configuration over its seeds, the paper's number
    marked. Linear axes: bars of the mean with +-1 std. Log axes (MSE): the mean as a point with a
    bar from the lowest to the highest seed, which a log axis can show (mean - std can be <= 0)."""
    finite = [[v for v in vals if isinstance(v, int | float) and math.isfinite(v)] for vals in values]
    means = [statistics.fmean(v) if v else math.nan for v in finite]
    colors = ["tab:red" if d else "tab:blue" for d in diffqas]
    fig = _figure(max(6, 0.55 * len(labels) + 2), 4.4)
    ax = fig.subplots()
    xs = list(range(len(labels)))
    if log_scale:
        for x, m, v, c in zip(xs, means, finite, colors):
            if v:
                ax.errorbar([x], [m], yerr=[[m - min(v)], [max(v) - m]], fmt="o", color=c, capsize=3)
        ax.set_yscale("log")
        spread = "mean; bar: lowest to highest seed"
    else:
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in finite]
        ax.bar(xs, means, yerr=stds, color=colors, capsize=2)
        spread = "mean ± std over seeds"
    marked = [(x, p) for x, p in zip(xs, papers) if p is not None]
    if marked:
        ax.scatter(*zip(*marked), marker="_", s=300, color="k", zorder=3, label="paper")
        ax.legend(fontsize=8)
    ax.set_xticks(xs, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"final {metric}\n({spread})", fontsize=8)
    counts = sorted({len(v) for v in finite})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.set_title(f"{title or 'final ' + metric} ({seeds} seeds each)", fontsize=9)
    return fig
