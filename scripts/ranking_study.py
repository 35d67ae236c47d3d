#!/usr/bin/env python
"""Does DiffQAS's ranking predict the best circuit? Kendall's tau between a DiffQAS run's structural
weights and the same candidates trained alone, on the validation metric.

Reads sweep directories made with a validation split, for example (one task):

    diffqas-run -m task=bessel task.validation=0.2 search=auto search.arch=null,2,5,7,8,10,11 seed=0,1,2 \\
        logger=none hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=study/bessel
    diffqas-run -m task=bessel task.validation=0.2 search.angles=per_candidate seed=0,1,2 \\
        logger=none hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=study/bessel_per
    python scripts/ranking_study.py study/bessel study/bessel_per

Only angle-dependent groups take part (the others cannot use their angles; each group is one
entry). Per task, seed and angle mode it prints: tau (weights against the standalone validation
metric, oriented so that +1 means DiffQAS's order is the standalone order), whether DiffQAS's
top angle-dependent group is the best standalone one, and how far its standalone validation
metric is from the best (relative), then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from scipy.stats import kendalltau


def _summaries(dirs: list[Path]) -> list[dict]:
    out = []
    for d in dirs:
        for p in sorted(Path(d).rglob("summary.json")):
            if {"retrain", "select"} & set(p.relative_to(d).parts):
                continue
            s = json.loads(p.read_text())
            angles = "shared"
            cfg = p.parent / ".hydra" / "config.yaml"
            if cfg.exists() and "per_candidate" in cfg.read_text():
                angles = "per_candidate"
            s["_angles"] = angles
            out.append(s)
    return out


def study(dirs: list[Path]) -> list[dict]:
    runs = _summaries(dirs)
    standalone: dict[tuple, dict[int, float]] = defaultdict(dict)  # (task, seed) -> arch -> val metric
    for s in runs:
        if s["search"] == "fixed":
            metric = s["objective"]
            standalone[(s["task"], s["seed"])][s["arch"]] = s["metrics"][metric]
    rows = []
    for s in runs:
        if s["search"] != "diffqas" or s.get("structural_weights") is None:  # no ranking (search=race)
            continue
        metric = s["objective"]
        if not metric.startswith("val_"):
            raise SystemExit(
                f"{s['task']} seed {s['seed']}: no validation split (objective {metric}); rerun with task.validation"
            )
        up = "accuracy" in metric
        alone = standalone.get((s["task"], s["seed"]), {})
        independent = set(s["angle_independent"])
        groups = [g for g in s["ranking_groups"] if g[0] not in independent and g[0] in alone]
        if len(groups) < 3:
            continue
        weights = [s["structural_weights"][g[0] - 1] for g in groups]
        values = [alone[g[0]] if up else -alone[g[0]] for g in groups]  # higher is better for both lists
        tau = kendalltau(weights, values).statistic
        top = groups[0][0]  # ranking_groups is best first
        best = max(groups, key=lambda g: alone[g[0]] if up else -alone[g[0]])[0]
        gap = (alone[best] - alone[top]) / abs(alone[best]) if up else (alone[top] - alone[best]) / abs(alone[best])
        rows.append({"task": s["task"], "angles": s["_angles"], "seed": s["seed"], "metric": metric, "tau": tau,
                     "n": len(groups), "diffqas_top": top, "best_alone": best, "hit": top == best, "gap": gap,
                     "ensemble": s["metrics"][metric], "best_alone_value": alone[best]})  # fmt: skip
    return sorted(rows, key=lambda r: (r["task"], r["angles"], r["seed"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep directories (DiffQAS and fixed runs with task.validation)")
    args = parser.parse_args()
    rows = study(args.dirs)
    if not rows:
        raise SystemExit("no DiffQAS run with at least 3 standalone angle-dependent candidates found")
    print(
        "| task | angles | seed | n | Kendall tau | DiffQAS top | best alone | hit | gap (rel.) | ensemble val | best alone val |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['angles']} | {r['seed']} | {r['n']} | {r['tau']:+.2f} | {r['diffqas_top']} | "
              f"{r['best_alone']} | {'yes' if r['hit'] else 'no'} | {r['gap']:.2f} | {r['ensemble']:.3g} | "
              f"{r['best_alone_value']:.3g} |")  # fmt: skip
    print()
    by = defaultdict(list)
    for r in rows:
        by[(r["task"], r["angles"])].append(r)
    print("| task | angles | seeds | mean tau | hits | mean gap |")
    print("|---|---|---:|---:|---:|---:|")
    for (task, angles), rs in sorted(by.items()):
        print(f"| {task} | {angles} | {len(rs)} | {statistics.fmean(r['tau'] for r in rs):+.2f} | "
              f"{sum(r['hit'] for r in rs)}/{len(rs)} | {statistics.fmean(r['gap'] for r in rs):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
