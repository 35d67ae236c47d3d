"""After a DiffQAS run: retrain candidates alone to turn the ranking into an answer.

`select` (search.select=K) retrains the K best distinct angle-dependent groups and names the
architecture on the validation metric. It calls back into `run` (passed in) for each child, in
run_dir/select/arch_N.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from omegaconf import open_dict

from . import tasks
from .config import SearchMode, TaskKind

log = logging.getLogger(__name__)


def child_config(cfg, arch: int):
    """The same experiment with one fixed candidate, for retraining after DiffQAS."""
    sub = cfg.copy()
    with open_dict(sub):
        sub.search.mode = SearchMode.fixed.value
        sub.search.arch = arch
        sub.search.select = 0
        sub.resume = None
        sub.fresh = False
        sub.logger.name = "none"  # the parent's wandb run gets the results in its summary
    return sub


def selection_metric(task) -> str:
    """What the selection stage picks on: the validation metric, else the training one (never test)."""
    main = "accuracy" if task.kind == TaskKind.classification.value else "mse"
    return f"val_{main}" if getattr(task, "val", None) is not None else f"train_{main}"


def select(run, cfg, task, run_dir: Path, summary: dict) -> dict:
    """Retrain the `search.select` best distinct angle-dependent groups alone (their lowest-numbered
    member) in run_dir/select/arch_N, and name the architecture with the best selection metric.
    DiffQAS's ensemble is a contender in the table too (`best_model`)."""
    metric, test = selection_metric(task), task.metric
    pick = max if tasks.higher_is_better(metric) else min
    independent = set(summary["angle_independent"])
    groups = [g for g in summary["ranking_groups"] if g[0] not in independent][: cfg.search.select]
    rows = []
    for group in groups:
        arch = group[0]
        log.info("selection: retraining candidate %d (%s) alone", arch, summary["candidates"][arch - 1])
        child = run(child_config(cfg, arch), run_dir / "select" / f"arch_{arch}", interactive=False)
        rows.append({
            "arch": arch, "arch_name": summary["candidates"][arch - 1], "group": group,
            "structural_weight": summary["group_weights"][summary["ranking_groups"].index(group)],
            metric: child["metrics"].get(metric), test: child["metrics"].get(test),
        })  # fmt: skip
    rows.append({
        "arch": None, "arch_name": "DiffQAS ensemble", "group": None, "structural_weight": None,
        metric: summary["metrics"].get(metric), test: summary["metrics"].get(test),
    })  # fmt: skip
    scored = [r for r in rows if r[metric] is not None and math.isfinite(r[metric])]
    best = pick((r for r in scored if r["arch"] is not None), key=lambda r: r[metric], default=None)
    overall = pick(scored, key=lambda r: r[metric], default=None)
    if best is not None:
        shutil.copyfile(run_dir / "select" / f"arch_{best['arch']}" / "model.pt", run_dir / "selected_model.pt")
    return {
        "selected_arch": None if best is None else best["arch"],
        "selected_name": None if best is None else best["arch_name"],
        "selection": {
            "metric": metric,
            "candidates": rows,
            "best_model": None if overall is None else ("diffqas" if overall["arch"] is None else overall["arch"]),
        },
    }
