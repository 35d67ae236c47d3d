"""Gather a finished (or partly finished) sweep into tables and plots.

Reads only files inside the sweep directory (every `summary.json`, its `.hydra/config.yaml` and
`metrics.jsonl`), so a sweep copied back from a cluster aggregates the same way. One row per
configuration: jobs that differ only in `seed` (and in keys that do not change numbers) are one
configuration; the table shows mean and std over seeds, the training length (steps, epochs) and
the paper's value where SPEC has one, with whether the row's budget is the paper's (`comparable`).
Wall time is the median over seeds without the sweep's first job, which pays one-off warm-up (the
C++ kernel's first build, cold caches) and is reported apart.

`diffqas-aggregate SWEEP_DIR`, `python -m diffqas_runner.aggregate SWEEP_DIR`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .config import ADDED_KEYS, BOOKKEEPING_KEYS, flatten
from .paper import TABLE2_BUDGET, paper_value
from .record import atomic_write
from .record import figures as plots
from .record.failures import FAILURE, failed_jobs
from .record.files import read_rows
from .tasks import higher_is_better

# Keys that never distinguish configurations: bookkeeping (the same keys a checkpoint ignores),
# or the seed we average over.
IGNORED = {"seed", *BOOKKEEPING_KEYS}


@dataclass
class Job:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]  # flattened dotted keys
    rows: list[dict[str, Any]]

    @property
    def epochs(self) -> float | None:
        """Epochs (supervised) or episodes (RL) trained: the last metrics row's count."""
        last = self.rows[-1] if self.rows else {}
        value = last.get("epoch", last.get("episodes"))
        return value if isinstance(value, int | float) else None

    @property
    def comparable(self) -> bool:
        """Trained for the paper's budget (Table II's epochs and depth, uncapped), so its number
        can stand beside the paper's."""
        epochs = self.epochs
        return (
            epochs is not None
            and epochs >= TABLE2_BUDGET["epochs"] - 1e-9
            and self.summary.get("depth") == TABLE2_BUDGET["depth"]
            and self.config.get("train.max_steps") is None
        )


@dataclass
class Group:
    key: tuple
    jobs: list[Job] = field(default_factory=list)

    @property
    def first(self) -> dict[str, Any]:
        return self.jobs[0].summary

    @property
    def label(self) -> str:
        s = self.first
        if raced_alone(s):
            return "race (search.supernet=false)"  # no search run: the row is the race's picks
        label = "DiffQAS" if s["search"] == "diffqas" else f"{s['arch']} {s['arch_name']}"
        source = s.get("qt_source", "circuit")
        return label if source == "circuit" else f"{label}: {source} control"


def load_jobs(sweep_dir: Path) -> list[Job]:
    jobs = []
    for summary_path in sorted(sweep_dir.rglob("summary.json")):
        run = summary_path.parent
        if {"retrain", "select"} & set(run.relative_to(sweep_dir).parts):  # a DiffQAS run's own retraining: in its row
            continue
        try:
            summary = json.loads(summary_path.read_text())
            missing = [k for k in SUMMARY_KEYS if k not in summary]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            config_path = run / ".hydra" / "config.yaml"
            if config_path.exists():
                raw = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
                raw["search"] = {**raw.get("search", {}), "mode": summary["search"], "arch": summary["arch"]}
                if "depth" in summary:  # the record keeps `${task.depth}` unresolved: the run's own value
                    raw["depth"] = summary["depth"]
                flat = {**ADDED_KEYS, **flatten(raw)}  # recorded before an option existed: its old-behaviour value
                config = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flat.items()}
            else:  # a bare run directory: the summary's own fields identify it
                config = {k: summary[k] for k in ("task", "search", "arch", "depth", "backend", "seed")}
                config["qt.source"] = summary.get("qt_source", "circuit")
        except Exception as err:  # a damaged file is named and skipped, never the end of the table
            print(f"Warning: skipping {run}: unreadable summary.json or .hydra/config.yaml ({type(err).__name__}: {err})",
                  file=sys.stderr)  # fmt: skip
            continue
        jobs.append(Job(run, summary, config, read_rows(run / "metrics.jsonl")))
    return jobs


SUMMARY_KEYS = ("task", "search", "arch", "arch_name", "seed", "metrics", "qt_params", "wall_seconds")


def raced_alone(summary: dict) -> bool:
    """A `search=race` run (search.supernet=false): no search run, so no structural weights; its
    metrics are its pick's. Its summary says `search: race` (before issue 35: diffqas, with null
    structural weights)."""
    if summary["search"] == "race":
        return True
    return summary["search"] == "diffqas" and summary.get("structural_weights") is None and bool(summary.get("selection"))


def _paper(summary: dict, metric: str) -> float | None:
    """The paper's number for this configuration: only in its own space (another space's arch N is
    another circuit), recognised by its circuits, not its name. Summaries from before search
    spaces existed are paper12's."""
    from .quantum.candidates import PAPER12_DIGEST

    if raced_alone(summary) or summary.get("qt_source", "circuit") != "circuit":
        return None  # the paper has no such row
    if "search_space_digest" in summary:
        if summary["search_space_digest"] != PAPER12_DIGEST:
            return None
    elif summary.get("search_space", "paper12") != "paper12":  # written before the digest existed
        return None
    return paper_value(summary["task"], summary["search"], summary["arch"], metric)


def group_jobs(jobs: list[Job]) -> tuple[list[Group], list[str]]:
    """Configurations (sorted: task, DiffQAS first, then candidates 1..12) and the keys that vary among them."""
    keys = sorted({k for j in jobs for k in j.config} - IGNORED)
    varying = [k for k in keys if len({json.dumps(j.config.get(k), default=str) for j in jobs}) > 1]
    groups: dict[tuple, Group] = {}
    for job in jobs:
        key = tuple(json.dumps(job.config.get(k), default=str) for k in varying)
        groups.setdefault(key, Group(key)).jobs.append(job)

    def order(g: Group):
        s = g.first
        return (s["task"], s["search"] != "diffqas", s["arch"] or 0, g.key)

    for g in groups.values():
        g.jobs.sort(key=lambda j: j.summary["seed"])
    return sorted(groups.values(), key=order), varying


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def first_job(jobs: list[Job]) -> Job | None:
    """The sweep's first job (Hydra's job number 0, else the first directory): it pays one-off
    warm-up (the C++ kernel's first build, cold caches), so its wall time is reported apart."""
    if len(jobs) < 2:
        return None

    def number(job: Job):
        try:
            num = OmegaConf.load(job.path / ".hydra" / "hydra.yaml").hydra.job.num
        except Exception:
            num = None
        return (0, num, str(job.path)) if isinstance(num, int) else (1, 0, str(job.path))

    return min(jobs, key=number)


def _span(values: list) -> Any:
    """One value when the seeds agree, else 'lowest-highest'."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    low, high = min(values), max(values)
    return low if low == high else f"{_fmt_count(low)}-{_fmt_count(high)}"


def _fmt_count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def table(groups: list[Group], varying: list[str], warm: Job | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    metric_names = sorted({m for g in groups for j in g.jobs for m in j.summary["metrics"]})
    # a search space is told apart by its name (its parts still separate the groups)
    shown = [
        k
        for k in varying
        if k not in ("search.mode", "search.arch", "task.name")
        and not (k.startswith("search_space.") and k != "search_space.name")
    ]
    rl = any(j.rows and "episodes" in j.rows[-1] for g in groups for j in g.jobs)
    columns = ["task", "model", *shown, "n_seeds", "seeds", "steps", "episodes" if rl else "epochs"]
    rows = []
    for g in groups:
        s = g.first
        row: dict[str, Any] = {"task": s["task"], "model": g.label}
        row.update({k: g.jobs[0].config.get(k) for k in shown})
        row["n_seeds"] = len(g.jobs)
        row["seeds"] = " ".join(str(j.summary["seed"]) for j in g.jobs)
        row["steps"] = _span([j.summary.get("steps") for j in g.jobs])
        row[columns[-1]] = _span([j.epochs for j in g.jobs])
        for m in metric_names:
            # a metric a run could not measure (MiniGrid's return before any episode finished) is null
            values = [v for j in g.jobs if isinstance(v := j.summary["metrics"].get(m), int | float) and not isinstance(v, bool)]
            row[f"{m}_mean"] = statistics.fmean(values) if values else float("nan")
            row[f"{m}_std"] = _std(values)
            row[f"{m}_best"] = (max if higher_is_better(m) else min)(values) if values else float("nan")
            row[f"{m}_paper"] = _paper(s, m)
        row["comparable"] = "yes" if all(j.comparable for j in g.jobs) else "no"
        row["qt_params"] = s["qt_params"]
        timed = [j for j in g.jobs if j is not warm] or g.jobs
        row["wall_seconds_median"] = statistics.median(j.summary["wall_seconds"] for j in timed)
        rows.append(row)
    papers = False
    for m in metric_names:
        columns += [f"{m}_mean", f"{m}_std", f"{m}_best"]
        if any(row[f"{m}_paper"] is not None for row in rows):
            columns.append(f"{m}_paper")
            papers = True
    if papers:
        columns.append("comparable")
    columns += ["qt_params", "wall_seconds_median"]
    return columns, rows


NOTES = {
    "comparable": f"comparable: `yes` when every seed trained for the paper's budget ({TABLE2_BUDGET['epochs']} epochs at "
    f"depth {TABLE2_BUDGET['depth']}, no `train.max_steps` cap); a `no` row's numbers are not the paper's setting.",
    "wall_seconds_median": "wall_seconds_median: median over the row's seeds, "
    "without the sweep's first job when the row has others.",
}


def _fmt(value: Any, column: str = "") -> str:
    """One format per kind of column: metrics `.3e`, seconds `.1f` (two significant digits under 10 s),
    counts as integers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if column.startswith("wall_seconds"):  # 0.04 s stays 0.04, not 0.0
        return f"{value:.1f}" if value >= 10 else f"{value:.2g}"
    if column in ("steps", "epochs", "episodes", "qt_params", "n_seeds"):
        return _fmt_count(value)
    return f"{value:.3e}" if isinstance(value, float) else str(value)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    _write_text(path, buffer.getvalue())


def write_markdown(path: Path, columns: list[str], rows: list[dict[str, Any]], notes: list[str] = ()) -> None:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(k), k) for k in columns) + " |" for row in rows]
    lines += ["", *notes] if notes else []
    _write_text(path, "\n".join(lines) + "\n")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _main_metric(groups: list[Group]) -> str:
    names = {m for g in groups for j in g.jobs for m in j.summary["metrics"]}
    for m in ("test_accuracy", "test_mse", "mean_return"):
        if m in names:
            return m
    return sorted(names)[0]


def _mean_curve(jobs: list[Job], metric: str) -> tuple[list[float], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for job in jobs:
        for row in job.rows:
            if metric in row and isinstance(row[metric], int | float):
                by_step[row["step"]].append(row[metric])
    steps = sorted(s for s, v in by_step.items() if len(v) == len(jobs)) or sorted(by_step)
    return [float(s) for s in steps], [statistics.fmean(by_step[s]) for s in steps]


def plot_all(sweep_dir: Path, groups: list[Group]) -> list[Path]:
    metric = _main_metric(groups)
    log_scale = not higher_is_better(metric)
    curves = [(f"{g.first['task']}: {g.label}", *_mean_curve(g.jobs, metric), g.first["search"] == "diffqas") for g in groups]
    figures = {"learning_curves.png": plots.sweep_learning_curves(curves, metric, log_scale)}
    diffqas = [g for g in groups if g.first["search"] == "diffqas" and g.first.get("structural_weights") is not None]
    if diffqas:  # one seed each: weights of different seeds are not comparable step by step
        panels = [(f"{g.first['task']} DiffQAS structural weights (seed {g.jobs[0].summary['seed']})", g.jobs[0].rows,
                   g.jobs[0].summary) for g in diffqas]  # fmt: skip
        figures["structural_weights.png"] = plots.sweep_structural_weights(panels)
    values = [[j.summary["metrics"].get(metric, float("nan")) for j in g.jobs] for g in groups]
    tasks = ", ".join(sorted({g.first["task"] for g in groups}))
    figures["final_metric.png"] = plots.final_metric(
        [g.label for g in groups], values, [_paper(g.first, metric) for g in groups],
        [g.first["search"] == "diffqas" for g in groups], metric, log_scale, f"{tasks}: final {metric} per configuration",
    )  # fmt: skip
    for name, fig in figures.items():
        _save(fig, sweep_dir / name)
    return [sweep_dir / name for name in figures]


@dataclass
class Failure:
    path: Path
    overrides: list[str]
    record: dict[str, Any]


def load_failures(sweep_dir: Path) -> list[Failure]:
    """Jobs that failed (failure.json, no summary.json), with their command-line overrides."""
    out = []
    for job in failed_jobs(sweep_dir):
        if {"retrain", "select"} & set(job.relative_to(sweep_dir).parts):
            continue
        try:
            overrides_path = job / ".hydra" / "overrides.yaml"
            overrides = OmegaConf.to_container(OmegaConf.load(overrides_path)) if overrides_path.exists() else []
            record = json.loads((job / FAILURE).read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except Exception as err:
            record, overrides = {"error": "unreadable failure.json", "message": f"{type(err).__name__}: {err}"}, []
        out.append(Failure(job, [str(o) for o in overrides], record))
    return out


def failures_markdown(sweep_dir: Path, failures: list[Failure]) -> str:
    lines = ["", f"## Failed jobs ({len(failures)})", "", "| job | overrides | error | step | message |", "|---|---|---|---|---|"]
    for f in failures:
        message = str(f.record.get("message", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {f.path.relative_to(sweep_dir)} | {' '.join(f.overrides)} | {f.record.get('error', '')} | "
            f"{'' if f.record.get('step') is None else f.record['step']} | {message} |"
        )
    return "\n".join(lines) + "\n"


def aggregate(sweep_dir: str | Path, plots: bool = True) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():  # bad input: exit 2, as the runner's
        print(f"Error: SWEEP_DIR={str(sweep_dir)!r} is not a directory; allowed: a sweep (or run) directory", file=sys.stderr)
        raise SystemExit(2)
    jobs = load_jobs(sweep_dir)
    failures = load_failures(sweep_dir)
    if not jobs and not failures:
        raise SystemExit(f"Error: no finished job (summary.json) and no failed job (failure.json) under {sweep_dir}")
    rows: list[dict[str, Any]] = []
    columns = ["task", "model"]
    groups: list[Group] = []
    notes = []
    if jobs:
        groups, varying = group_jobs(jobs)
        warm = first_job(jobs)
        columns, rows = table(groups, varying, warm)
        notes = [text for column, text in NOTES.items() if column in columns]
        if warm is not None:
            notes.append(
                f"The sweep's first job ({warm.path.relative_to(sweep_dir)}) took {warm.summary['wall_seconds']:.1f} s, "
                "one-off warm-up included (the C++ kernel's first build, cold caches)."
            )
    write_csv(sweep_dir / "results.csv", columns, rows)
    write_markdown(sweep_dir / "results.md", columns, rows, notes)
    if failures:  # listed, never skipped silently
        text = (sweep_dir / "results.md").read_text() + failures_markdown(sweep_dir, failures)
        _write_text(sweep_dir / "results.md", text)
        write_csv(
            sweep_dir / "failures.csv",
            ["job", "overrides", "error", "step", "message"],
            [{**f.record, "job": str(f.path.relative_to(sweep_dir)), "overrides": " ".join(f.overrides)} for f in failures],
        )
    if plots and groups:
        plot_all(sweep_dir, groups)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Aggregate a diffqas-run multirun directory into tables and plots.")
    parser.add_argument("sweep_dir", help="a multirun directory (or any directory holding run dirs)")
    parser.add_argument("--no-plots", action="store_true", help="write only results.csv and results.md")
    args = parser.parse_args(argv)
    rows = aggregate(args.sweep_dir, plots=not args.no_plots)
    print((Path(args.sweep_dir) / "results.md").read_text())
    failed = len(load_failures(Path(args.sweep_dir)))
    pngs = sorted(p.name for p in Path(args.sweep_dir).glob("*.png")) if not args.no_plots else []
    print(
        f"{len(rows)} configurations -> {Path(args.sweep_dir) / 'results.csv'}, results.md"
        + (f", {', '.join(pngs)}" if pngs else "")
        + (f"; {failed} failed job(s) listed" if failed else "")
    )


if __name__ == "__main__":
    main()
