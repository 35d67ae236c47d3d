#!/usr/bin/env python
"""How good are the selection strategies' answers? A truth sweep against strategy runs.

    diffqas-run -m experiment=search_truth task=bessel hydra.sweep.dir=truth/bessel
    diffqas-run -m task=bessel task.validation=0.2 search.strategy=weights,select,gumbel,perturb,race \\
        seed=0,1,2 hydra.sweep.dir=strategies/bessel
    python scripts/search_study.py truth/bessel strategies/bessel

The truth sweep trains every candidate alone (search=fixed) with a validation split, at several
seeds; the strategy runs are DiffQAS runs with `search.strategy`, or `search=race` runs. Runs are
matched on (task, search space, depth). Only angle-dependent groups take part (groups from the
strategy runs' `ranking_groups`; a group's standalone result is its lowest-numbered member's). All
comparisons use the validation metric (val_*; train_* when the truth has none), never the test one.

Every pick is judged out of sample: a strategy run at seed s (one case) is scored on the truth
seeds other than those that chose its pick (s, and a race's second seed, `selection.settings.seeds`),
never on the run that selected it (a race child is exactly the truth run at its seed: scoring it
there would favour the strategies that see standalone numbers). On those held-out seeds: the best
group (best mean), hit (the pick's mean within one held-out std of the best's), top1 (the pick is
that best), regret (the relative gap of the means), and what a pick at random would score (`chance`:
the share of groups that are hits; `chance_regret`: the groups' mean regret). The "exhaustive (one
seed)" rows are the sweep the strategies replace, judged the same way: every group alone at seed s,
s's best picked, scored on the other seeds. Kendall's tau: the strategy's scores against the
held-out means. `ensemble_regret`: DiffQAS's own model (one run) against the truth at its seed.
A race run with its search run (search.supernet=true) also gives a "race (supernet=false,
derived)" row: the same pick, at the cost of its child runs alone. Cases with fewer than two
held-out seeds are left out (no spread to judge against).

The summary per (task, space) and overall, per strategy: hits with a Wilson 95% interval, top1,
chance and the exhaustive sweep's hits on the same cases, the median regret with a bootstrap 95%
interval beside a random pick's and the exhaustive sweep's, tau, costs, and whether the issue's
target holds (the hit rate's lower bound above both baselines, median regret at most a quarter of
a random pick's, cost at most 0.4 of exhaustive in candidate-steps). `--seeds 3,4,5` keeps only
the strategy runs at those seeds (tune on some seeds, report on others); the truth keeps all.
Writes search_study.md and search_study.csv (in --out, default TRUTH_DIR) and prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau


def summaries(root: Path) -> list[dict]:
    """Every finished run under root, but the child runs of a selection stage (select/...).
    Symbolic links to directories are followed: sweeps kept elsewhere can be gathered under one root."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        if "summary.json" in files:
            found.append(Path(folder) / "summary.json")
    return [json.loads(path.read_text()) for path in sorted(found) if "select" not in path.relative_to(root).parts]


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


def _held_out(values: dict[int, dict[int, float]], used: set[int]) -> tuple[list[int], dict[int, list[float]]]:
    """The truth seeds no selection used, and each group's values at them (groups missing one are left out)."""
    seeds = sorted({seed for v in values.values() for seed in v} - used)
    return seeds, {a: [v[seed] for seed in seeds] for a, v in values.items() if all(seed in v for seed in seeds)}


def judge(values: dict[int, dict[int, float]], pick, used: set[int], m: str) -> dict | None:
    """A pick judged out of sample: on the truth seeds that `used` (the seeds that chose it) leaves.
    The best group is the best held-out mean; a hit is a pick whose held-out mean is within one
    held-out std of the best's; regret is the relative gap of the means; a random pick's hit rate
    (`chance`) and regret (`chance_regret`) are the shares and the mean over the groups. None when
    fewer than two held-out seeds remain (no spread to judge against)."""
    seeds, held = _held_out(values, used)
    if len(seeds) < 2 or not held:
        return None
    means = {a: statistics.fmean(v) for a, v in held.items()}
    sign = 1 if lower_is_better(m) else -1
    best = min(means, key=lambda a: (sign * means[a], a))
    spread = statistics.stdev(held[best])
    hits = {a: abs(means[a] - means[best]) <= spread for a in means}
    regrets = {a: regret(means[a], means[best], m) for a in means}
    # a strategy that named no circuit (or one the truth lacks) is scored as the worst group, a miss
    return {
        "held_seeds": seeds, "best_arch": best, "value": means.get(pick), "hit": hits.get(pick, False), "top1": pick == best,
        "regret": regrets.get(pick, max(regrets.values())), "chance": sum(hits.values()) / len(hits),
        "chance_regret": statistics.fmean(regrets.values()), "means": means,
    }  # fmt: skip


def study(truth_dir: Path, strategy_dirs: list[Path], seeds: set[int] | None = None) -> list[dict]:
    """The study's rows. Every pick is judged out of sample (`judge`): on the truth seeds other than
    those that chose it (the run's seed, and a race's second seed). `seeds` keeps only the strategy
    runs (the cases) at those seeds; the truth keeps every seed, for judging."""
    truth = [s for s in summaries(truth_dir) if s["search"] == "fixed"]
    runs = [s for d in strategy_dirs for s in summaries(d) if s["search"] in ("diffqas", "race") and s.get("selection")]
    if seeds is not None:
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
        m = metric[k]
        dependent = groups.get(k) or [[a] for a in sorted(standalone[k]) if a not in independent[k]]
        values = {g[0]: dict(standalone[k].get(g[0], {})) for g in dependent if standalone[k].get(g[0])}
        where = {"task": k[0], "space": k[1], "depth": k[2], "metric": m}
        everything = judge(values, None, set(), m)  # descriptive: every seed (no pick is judged here)
        for a, v in sorted(values.items()):
            rows.append({**where, "seed": "all", "what": "group", "arch": a, "mean": statistics.fmean(v.values()),
                         "std": statistics.stdev(v.values()) if len(v) > 1 else 0.0,
                         "best": everything is not None and a == everything["best_arch"]})  # fmt: skip
        mine = [r for r in runs if key(r) == k]
        case_seeds = sorted({r["seed"] for r in mine}) if mine else sorted({x for v in values.values() for x in v})
        for seed in case_seeds:
            at_seed = {a: v[seed] for a, v in values.items() if seed in v}
            sign = 1 if lower_is_better(m) else -1
            best_seed = min(at_seed, key=lambda a: (sign * at_seed[a], a)) if at_seed else None
            if at_seed:  # the truth has this seed: its best, and the one-seed sweep that picks it
                rows.append({**where, "seed": seed, "what": "best", "arch": best_seed, "value": at_seed[best_seed]})
                # the sweep the strategies replace: every group alone at this seed, its best picked, judged on the others
                verdict = judge(values, best_seed, {seed}, m)
                if verdict is not None:
                    rows.append({**where, "seed": seed, "what": "exhaustive (one seed)", "arch": best_seed,
                                 **_scores(verdict), "cost_steps": 1.0, "cost_wall": 1.0})  # fmt: skip
            for s in (r for r in mine if r["seed"] == seed):
                row = _strategy_row(s, where, seed, values, at_seed, best_seed, dependent)
                if row is None:
                    continue
                rows.append(row)
                cost = s["selection"].get("cost", {})
                if row["what"] == "race" and s["selection"].get("supernet", True) and cost.get("exhaustive"):
                    # the same race with search.supernet=false: the same child runs and pick (its
                    # rungs do not depend on the search run), without the search run's cost
                    alone = {c: cost["children"][c] / cost["exhaustive"][c] if cost["exhaustive"][c] else None
                             for c in ("candidate_steps", "wall_seconds")}  # fmt: skip
                    rows.append({**row, "what": "race (supernet=false, derived)", "ensemble_regret": None,
                                 "cost_steps": alone["candidate_steps"], "cost_wall": alone["wall_seconds"]})  # fmt: skip
    return rows


def _scores(verdict: dict) -> dict:
    return {c: verdict[c] for c in ("value", "hit", "top1", "regret", "chance", "chance_regret")} | {
        "held_out": " ".join(map(str, verdict["held_seeds"]))
    }


def _strategy_row(s, where, seed, values, at_seed, best_seed, dependent) -> dict | None:
    """One strategy run as a case, judged on the truth seeds it did not use (None: too few left)."""
    table, m = s["selection"], where["metric"]
    group_of = {a: g[0] for g in dependent for a in g}
    pick = group_of.get(s["selected_arch"])
    used = {seed, *table.get("settings", {}).get("seeds", [])}
    verdict = judge(values, pick, used, m)
    if verdict is None:
        return None
    scored = [(r["score"], verdict["means"].get(group_of.get(r["arch"]))) for r in table["contenders"] if r["arch"] is not None]
    scored = [(x, y) for x, y in scored if x is not None and y is not None]
    tau = None
    if len(scored) >= 2:  # the strategy's order against the held-out means (+1: the same order)
        orient = -1 if lower_is_better(m) else 1
        value = kendalltau([x for x, _ in scored], [orient * y for _, y in scored]).statistic
        tau = None if value is None or math.isnan(value) else float(value)
    relative = table.get("cost", {}).get("relative", {})
    # DiffQAS's own model (the ensemble, or gumbel's argmax network), beside the pick: one run, so
    # only comparable with the truth at its own seed
    ensemble = next((r.get(m) for r in table["contenders"] if r["arch"] is None), None)
    strategy = (
        table["strategy"] if table.get("supernet", True) and s["search"] != "race" else f"{table['strategy']} (supernet=false)"
    )
    return {
        **where, "seed": seed, "arch": pick, "what": strategy, **_scores(verdict),
        "ensemble_regret": None if ensemble is None or best_seed is None else regret(ensemble, at_seed[best_seed], m),
        "tau": tau, "n_ranked": len(scored),
        "cost_steps": relative.get("candidate_steps"), "cost_wall": relative.get("wall_seconds"),
    }  # fmt: skip


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a hit rate."""
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_median(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap 95% interval of the median (seeded: the same table every time)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    data = np.asarray(finite)
    medians = np.median(rng.choice(data, size=(resamples, len(data)), replace=True), axis=1)
    return (float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5)))


COLUMNS = ["task", "space", "depth", "seed", "what", "arch", "metric", "held_out", "value", "mean", "std", "best", "regret",
           "hit", "top1", "chance", "chance_regret", "ensemble_regret", "tau", "n_ranked", "cost_steps", "cost_wall"]  # fmt: skip
SUMMARY = ["cases", "hits", "hit rate [95% CI]", "top1", "chance", "exhaustive hits (same cases)", "median regret [95% CI]",
           "chance regret (median)", "exhaustive median regret", "mean tau", "cost (steps)", "cost (wall)", "target"]  # fmt: skip


def fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def summary(mine: list[dict], exhaustive: list[dict]) -> list[str]:
    """One strategy's line over its cases: hits with a Wilson interval, top1, what a random pick
    (chance) and the one-seed exhaustive sweep score on the same cases, the median regret with a
    bootstrap interval, tau and costs relative to the exhaustive sweep (means), and whether it meets
    the issue's target: the hit rate's lower bound above both baselines' rates, median regret at
    most a quarter of a random pick's, cost at most 0.4 of exhaustive in candidate-steps."""

    def vals(rows, col):
        return [r[col] for r in rows if r.get(col) is not None and math.isfinite(r[col])]

    def mean(rows, col):
        return statistics.fmean(vals(rows, col)) if vals(rows, col) else None

    def median(rows, col):
        return statistics.median(vals(rows, col)) if vals(rows, col) else None

    n, hits = len(mine), sum(1 for r in mine if r["hit"])
    low, high = wilson(hits, n)
    cases = {(r["task"], r["space"], r["depth"], r["seed"]) for r in mine}
    same = [r for r in exhaustive if (r["task"], r["space"], r["depth"], r["seed"]) in cases]
    ex_rate = sum(1 for r in same if r["hit"]) / len(same) if same else None
    r_lo, r_hi = bootstrap_median(vals(mine, "regret"))
    med, chance_med, cost = median(mine, "regret"), median(mine, "chance_regret"), mean(mine, "cost_steps")
    meets = (
        ex_rate is not None and mean(mine, "chance") is not None and med is not None and cost is not None
        and low > max(ex_rate, mean(mine, "chance")) and med <= 0.25 * chance_med and cost <= 0.4
    )  # fmt: skip
    return [str(n), f"{hits}/{n}", f"{hits / n:.2f} [{low:.2f}, {high:.2f}]", f"{sum(1 for r in mine if r['top1'])}/{n}",
            fmt(mean(mine, "chance")), "" if ex_rate is None else f"{sum(1 for r in same if r['hit'])}/{len(same)}",
            f"{fmt(med)} [{fmt(r_lo)}, {fmt(r_hi)}]", fmt(chance_med), fmt(median(same, "regret")), fmt(mean(mine, "tau")),
            fmt(cost), fmt(mean(mine, "cost_wall")), "met" if meets else "not met"]  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    judged = [r for r in rows if "regret" in r]
    strategies = sorted({r["what"] for r in judged})
    if strategies:
        keys = sorted({(r["task"], r["space"]) for r in judged}, key=str)
        lines += ["", "| task | space | strategy | " + " | ".join(SUMMARY) + " |", "|---|---|---|" + "---:|" * len(SUMMARY)]
        for task, space in [*keys, ("all", "all")]:
            here = [r for r in judged if task in ("all", r["task"]) and space in ("all", r["space"])]
            exhaustive = [r for r in here if r["what"] == "exhaustive (one seed)"]
            for name in strategies:
                mine = [r for r in here if r["what"] == name]
                if mine:
                    lines.append(f"| {task} | {space} | {name} | " + " | ".join(summary(mine, exhaustive)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truth_dir", type=Path)
    parser.add_argument("strategy_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=None, help="where to write search_study.md/.csv (default: TRUTH_DIR)")
    parser.add_argument(
        "--seeds", default=None, help="only the strategy runs at these seeds, e.g. 3,4,5 (the truth keeps every seed)"
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
