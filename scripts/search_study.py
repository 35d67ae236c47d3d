#!/usr/bin/env python
"""How good are the selection strategies' answers? A truth sweep against strategy runs.

    diffqas-run -m experiment=search_truth task=bessel hydra.sweep.dir=truth/bessel
    diffqas-run -m task=bessel task.validation=0.2 search.strategy=weights,select,gumbel,perturb,race \\
        seed=0,1,2 hydra.sweep.dir=strategies/bessel
    python scripts/search_study.py truth/bessel strategies/bessel

The truth sweep trains every candidate alone (search=fixed) with a validation split; the strategy
runs are DiffQAS runs with `search.strategy`. Runs are matched on (task, search space, depth, seed).
Only angle-dependent groups take part (groups from the strategy runs' `ranking_groups`; a group's
standalone result is its lowest-numbered member's). All comparisons use the validation metric
(val_*; train_* when the truth has none), never the test one.

Per (task, space, depth): each group's mean and std over seeds and the best group (best mean). Per
seed and strategy: the pick, its regret (relative validation gap to that seed's best group), hit
(the pick's mean within one seed std of the best group's mean), the run's cost relative to the
exhaustive sweep (`selection.cost.relative`), and Kendall's tau between the strategy's scores and
the standalone validation metric at that seed (over the contenders it scored; +1: the same order;
none for `select`, which ranks by that very metric). Also per run: top1 (the pick is that seed's
best group), the regret of DiffQAS's own model (the `arch: null` contender), and what a pick at
random would score: `chance` (the share of groups that are hits) and `chance_regret` (the groups'
mean regret at that seed). A summary per (task, space) and
overall, per strategy. `--seeds 3,4,5` keeps only those seeds, in the truth too (tune on some
seeds, report on others). A race run with its search run (search.supernet=true) also gives a
"race (supernet=false, derived)" row: the same pick, at the cost of its child runs alone. The
"exhaustive (one seed)" rows are the sweep the strategies replace: every group alone at that
seed, the best picked (regret 0 by definition; its hits say how often one seed's best is the best
on average, the most a one-seed strategy can expect).
Writes search_study.md and search_study.csv (in --out, default TRUTH_DIR) and prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from scipy.stats import kendalltau


def summaries(root: Path) -> list[dict]:
    """Every finished run under root, but the child runs of a selection stage (select/...)."""
    out = []
    for path in sorted(Path(root).rglob("summary.json")):
        if "select" in path.relative_to(root).parts:
            continue
        out.append(json.loads(path.read_text()))
    return out


def key(s: dict) -> tuple:
    return (s["task"], s.get("search_space") or s.get("search_space_digest"), s["depth"])


def metric_of(metrics: dict) -> str:
    name = next((m for m in metrics if m.startswith("val_")), None) or next(m for m in metrics if m.startswith("train_"))
    return name


def lower_is_better(metric: str) -> bool:
    return "mse" in metric or "loss" in metric


def regret(pick: float, best: float, metric: str) -> float:
    """Relative validation gap of the pick to the best: 0 when the pick is the best."""
    gap = pick - best if lower_is_better(metric) else best - pick
    if best:
        return gap / abs(best)
    return math.inf if gap > 0 else 0.0


def study(truth_dir: Path, strategy_dirs: list[Path], seeds: set[int] | None = None) -> list[dict]:
    """The study's rows; `seeds` keeps only those seeds, in the truth too (the groups' means and
    spreads, hence the best group and the hits, are over those seeds only)."""
    truth = [s for s in summaries(truth_dir) if s["search"] == "fixed"]
    runs = [s for d in strategy_dirs for s in summaries(d) if s["search"] in ("diffqas", "race") and s.get("selection")]
    if seeds is not None:
        truth = [s for s in truth if s["seed"] in seeds]
        runs = [s for s in runs if s["seed"] in seeds]
    standalone: dict[tuple, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))  # key -> arch -> seed
    independent: dict[tuple, set[int]] = defaultdict(set)
    metric = {}
    for s in truth:
        metric.setdefault(key(s), metric_of(s["metrics"]))
        standalone[key(s)][s["arch"]][s["seed"]] = s["metrics"][metric[key(s)]]
        if s["arch"] in s.get("angle_independent", []):
            independent[key(s)].add(s["arch"])
    groups: dict[tuple, list[list[int]]] = {}
    for s in runs:
        groups.setdefault(key(s), [g for g in s["ranking_groups"] if g[0] not in s["angle_independent"]])
    rows = []
    for k in sorted(standalone, key=str):
        m, lower = metric[k], lower_is_better(metric[k])
        dependent = groups.get(k) or [[a] for a in sorted(standalone[k]) if a not in independent[k]]
        seeds = sorted({seed for a in standalone[k] for seed in standalone[k][a]})
        per_group = {g[0]: standalone[k].get(g[0], {}) for g in dependent}
        stats = {
            a: (statistics.fmean(v.values()), statistics.stdev(v.values()) if len(v) > 1 else 0.0)
            for a, v in per_group.items()
            if v
        }
        sign = 1 if lower else -1
        best = min(stats, key=lambda a: (sign * stats[a][0], a))
        # a group is a hit when its mean is within one seed std of the best's: how many are is what
        # a pick at random would hit (the `chance` of every strategy row of this key)
        hits = {a: abs(stats[a][0] - stats[best][0]) <= stats[best][1] for a in stats}
        chance = sum(hits.values()) / len(hits)
        for a, (mean, std) in sorted(stats.items()):
            rows.append({"task": k[0], "space": k[1], "depth": k[2], "seed": "all", "what": "group", "arch": a,
                         "metric": m, "mean": mean, "std": std, "best": a == best, "hit": hits[a]})  # fmt: skip
        for seed in seeds:
            at_seed = {a: v[seed] for a, v in per_group.items() if seed in v}
            best_seed = min(at_seed, key=lambda a: (sign * at_seed[a], a))
            # a pick at random: its mean regret over the groups at this seed
            chance_regret = statistics.fmean(regret(v, at_seed[best_seed], m) for v in at_seed.values())
            rows.append({"task": k[0], "space": k[1], "depth": k[2], "seed": seed, "what": "best", "arch": best_seed,
                         "metric": m, "value": at_seed[best_seed]})  # fmt: skip
            # the sweep the strategies replace, at this seed: its pick is this seed's best group
            rows.append({"task": k[0], "space": k[1], "depth": k[2], "seed": seed, "what": "exhaustive (one seed)",
                         "arch": best_seed, "metric": m, "value": at_seed[best_seed], "regret": 0.0,
                         "hit": abs(stats[best_seed][0] - stats[best][0]) <= stats[best][1], "top1": True,
                         "chance": chance, "chance_regret": chance_regret, "cost_steps": 1.0, "cost_wall": 1.0})  # fmt: skip
            for s in (r for r in runs if key(r) == k and r["seed"] == seed):
                row = {**_strategy_row(s, k, seed, m, at_seed, best_seed, stats, best, dependent),
                       "chance": chance, "chance_regret": chance_regret}  # fmt: skip
                rows.append(row)
                cost = s["selection"].get("cost", {})
                if row["what"] == "race" and s["selection"].get("supernet", True) and cost.get("exhaustive"):
                    # the same race with search.supernet=false: the same child runs and pick (its
                    # rungs do not depend on the search run), without the search run's cost
                    alone = {k: cost["children"][k] / cost["exhaustive"][k] if cost["exhaustive"][k] else None
                             for k in ("candidate_steps", "wall_seconds")}  # fmt: skip
                    rows.append({**row, "what": "race (supernet=false, derived)", "ensemble_regret": None,
                                 "cost_steps": alone["candidate_steps"], "cost_wall": alone["wall_seconds"]})  # fmt: skip
    return rows


def _strategy_row(s, k, seed, m, at_seed, best_seed, stats, best, dependent) -> dict:
    table = s["selection"]
    group_of = {a: g[0] for g in dependent for a in g}
    pick = group_of.get(s["selected_arch"])
    scored = [(r["score"], at_seed.get(group_of.get(r["arch"]))) for r in table["contenders"] if r["arch"] is not None]
    scored = [(x, y) for x, y in scored if x is not None and y is not None]
    tau = None
    # select ranks by the standalone metric itself (the truth's own runs): its tau would be 1 by construction
    if len(scored) >= 2 and table.get("ranked_by") != m:
        orient = -1 if lower_is_better(m) else 1  # +1: the strategy's order is the standalone order
        value = kendalltau([x for x, _ in scored], [orient * y for _, y in scored]).statistic
        tau = None if value is None or math.isnan(value) else float(value)
    relative = table.get("cost", {}).get("relative", {})
    # DiffQAS's own model (the ensemble, or gumbel's argmax network), beside the pick
    ensemble = next((r.get(m) for r in table["contenders"] if r["arch"] is None), None)
    return {
        "task": k[0], "space": k[1], "depth": k[2], "seed": seed, "arch": pick, "metric": m,
        "what": table["strategy"] if table.get("supernet", True) else f"{table['strategy']} (supernet=false)",
        "value": at_seed.get(pick), "regret": None if pick not in at_seed else regret(at_seed[pick], at_seed[best_seed], m),
        "hit": None if pick not in stats else abs(stats[pick][0] - stats[best][0]) <= stats[best][1],
        "top1": pick == best_seed,
        "ensemble_regret": None if ensemble is None else regret(ensemble, at_seed[best_seed], m),
        "tau": tau, "n_ranked": len(scored),
        "cost_steps": relative.get("candidate_steps"), "cost_wall": relative.get("wall_seconds"),
    }  # fmt: skip


COLUMNS = ["task", "space", "depth", "seed", "what", "arch", "metric", "value", "mean", "std", "best", "regret", "hit",
           "top1", "chance", "chance_regret", "ensemble_regret", "tau", "n_ranked", "cost_steps", "cost_wall"]  # fmt: skip
SUMMARY = ["runs", "hits", "top1", "chance", "median regret", "mean regret", "chance regret", "median ensemble regret",
           "mean tau", "cost (steps)", "cost (wall)"]  # fmt: skip


def fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def summary(mine: list[dict]) -> list[str]:
    """One strategy's line: hits (and top1: the pick is that seed's best) out of its runs, the hit
    rate and mean regret a random pick would have (chance, chance regret), regrets (the pick's, and DiffQAS's own model's),
    tau and costs relative to the exhaustive sweep (means)."""

    def vals(col):
        return [r[col] for r in mine if r.get(col) is not None and math.isfinite(r[col])]

    def mean(col):
        return statistics.fmean(vals(col)) if vals(col) else None

    n = len(mine)
    return [str(n), f"{sum(1 for r in mine if r['hit'])}/{n}", f"{sum(1 for r in mine if r['top1'])}/{n}",
            fmt(mean("chance")), fmt(statistics.median(vals("regret")) if vals("regret") else None), fmt(mean("regret")),
            fmt(mean("chance_regret")),
            fmt(statistics.median(vals("ensemble_regret")) if vals("ensemble_regret") else None), fmt(mean("tau")),
            fmt(mean("cost_steps")), fmt(mean("cost_wall"))]  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    strategies = sorted({r["what"] for r in rows if "regret" in r})
    if strategies:
        keys = sorted({(r["task"], r["space"]) for r in rows if "regret" in r}, key=str)
        lines += ["", "| task | space | strategy | " + " | ".join(SUMMARY) + " |", "|---|---|---|" + "---:|" * len(SUMMARY)]
        for task, space in [*keys, ("all", "all")]:
            for name in strategies:
                mine = [r for r in rows if r["what"] == name and "regret" in r and task in ("all", r["task"])
                        and space in ("all", r["space"])]  # fmt: skip
                if mine:
                    lines.append(f"| {task} | {space} | {name} | " + " | ".join(summary(mine)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truth_dir", type=Path)
    parser.add_argument("strategy_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="where to write search_study.md/.csv (default: TRUTH_DIR)")
    parser.add_argument(
        "--seeds", default=None, help="only these seeds, e.g. 3,4,5 (truth and strategies; default: every seed found)"
    )
    args = parser.parse_args(argv)
    seeds = None if args.seeds is None else {int(x) for x in args.seeds.split(",")}
    rows = study(args.truth_dir, args.strategy_dirs, seeds)
    out = args.out or args.truth_dir
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows)
    (out / "search_study.md").write_text(text)
    with open(out / "search_study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c) for c in COLUMNS} for r in rows)
    print(text, end="")
    return rows


if __name__ == "__main__":
    main()
