"""After a DiffQAS run: name the circuit to use (`search.strategy`, docs/design.md "Selection strategies").

Strategies: `weights` (the paper's: the top angle-dependent group by structural weight), `select`
(retrain the top K groups alone, pick on the validation metric), `gumbel` (the argmax group of a
Gumbel-softmax search, qt/generator.py), `perturb` (the group whose removal from the trained mixture
hurts most) and `race` (successive halving of the groups trained alone). Each writes the same keys:
`selected_arch`, `selected_name`, `selection` {strategy, metric, ranked_by, contenders, best_model,
cost}. Child runs go through `run` (passed in), in run_dir/select/arch_N (race's shorter rungs in
run_dir/select/race/steps_B/arch_N), so every pick has a standalone full run and `selected_model.pt`.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import torch
from omegaconf import open_dict
from torch.func import functional_call

from . import tasks
from .config import SearchMode, TaskKind, strategy_of
from .train.supervised import total_steps

log = logging.getLogger(__name__)

SELECT_DEFAULT_K = 3  # strategy=select with search.select=0


def child_config(cfg, arch: int, max_steps: int | None = None):
    """The same experiment with one fixed candidate, for retraining after DiffQAS: exactly the run
    `search=fixed search.arch=N` with the other settings unchanged (`max_steps`: race's shorter rungs)."""
    sub = cfg.copy()
    with open_dict(sub):
        sub.search.mode = SearchMode.fixed.value
        sub.search.arch = arch
        sub.search.select = 0
        sub.search.strategy = "none"
        sub.search.supernet = True  # the default: a child is exactly `search=fixed search.arch=N`
        if max_steps is not None:
            sub.train.max_steps = max_steps
            sub.figures = False  # a shorter rung of race: only its numbers are read
        sub.resume = None
        sub.fresh = False
        sub.logger.name = "none"  # the parent's wandb run gets the results in its summary
    return sub


def selection_metric(task) -> str:
    """What the selection stage picks on: the validation metric, else the training one (never test)."""
    main = "accuracy" if task.kind == TaskKind.classification.value else "mse"
    return f"val_{main}" if getattr(task, "val", None) is not None else f"train_{main}"


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


class _Selection:
    """What every strategy shares: the angle-dependent groups, child runs and their cost."""

    def __init__(self, run, cfg, exp, run_dir: Path, summary: dict):
        self.run, self.cfg, self.exp, self.run_dir, self.summary = run, cfg, exp, run_dir, summary
        self.task = exp.task
        self.metric, self.test = selection_metric(self.task), self.task.metric
        self.higher = tasks.higher_is_better(self.metric)
        independent = set(summary["angle_independent"])
        self.groups = [g for g in summary["ranking_groups"] if g[0] not in independent]  # by weight, best first
        self.weight = {tuple(g): w for g, w in zip(summary["ranking_groups"], summary["group_weights"])}
        self.full = total_steps(len(self.task.train.y), cfg.train)
        gen = exp.generator.first
        dependent = [c for c in gen.candidates if not c.theta_independent(gen.n_qubits, gen.depth)]
        # circuit simulations per step of the search run: every angle-dependent candidate (constant
        # outputs need none); gumbel simulates the one sampled group (and each group once at the start)
        self.supernet = bool(cfg.search.supernet)  # false: race alone, no search run was trained
        if not self.supernet:
            simulations = 0
            self.weight = dict.fromkeys(self.weight)  # no structural weights
        elif gen.sampling == "gumbel":
            simulations = summary["steps"] + len(self.groups)
        else:
            simulations = len(dependent) * summary["steps"]
        self.cost = {"search": {"candidate_steps": simulations, "wall_seconds": summary["wall_seconds"]}}
        self.children: dict[tuple[int, int], dict] = {}  # (arch, steps) -> child summary

    def child(self, arch: int, steps: int | None = None) -> dict:
        """Train candidate `arch` alone for `steps` (None: the full run); its summary."""
        budget = self.full if steps is None else steps
        if (arch, budget) not in self.children:
            full = budget == self.full
            where = self.run_dir / "select" / (f"arch_{arch}" if full else f"race/steps_{budget}/arch_{arch}")
            log.info("selection: training candidate %d (%s) alone for %d steps", arch, self.name(arch), budget)
            sub = child_config(self.cfg, arch, None if full else budget)
            self.children[(arch, budget)] = self.run(sub, where, interactive=False)
        return self.children[(arch, budget)]

    def name(self, arch: int) -> str:
        return self.summary["candidates"][arch - 1]

    def row(self, group, score=None, steps: int | None = None, **extra) -> dict:
        """A contender: a group (by its lowest number), its structural weight, the number the
        strategy ranked it by (`score`, higher is better), and its standalone metrics if trained."""
        arch = group[0]
        trained = self.children.get((arch, steps or self.full))
        metrics = trained["metrics"] if trained else {}
        return {
            "arch": arch, "arch_name": self.name(arch), "group": list(group),
            "structural_weight": self.weight[tuple(group)], "score": score, **extra,
            "steps": (steps or self.full) if trained else None,
            self.metric: metrics.get(self.metric), self.test: metrics.get(self.test),
        }  # fmt: skip

    def oriented(self, value: float) -> float:
        """A metric as a score: higher is better."""
        return value if self.higher else -value

    def best_standalone(self, groups) -> list[int] | None:
        scored = [g for g in groups if _finite(self.child(g[0])["metrics"].get(self.metric))]
        if not scored:
            return None
        return max(scored, key=lambda g: self.oriented(self.child(g[0])["metrics"][self.metric]))

    def finish(self, strategy: str, pick, contenders: list[dict], ranked_by: str, **settings) -> dict:
        """The summary keys: the pick (retrained alone if not yet), the table, best_model, cost."""
        if pick is not None:
            self.child(pick[0])  # the pick's standalone full run: selected_model.pt, reproducible
            for r in contenders:  # its row shows the standalone metrics
                if r["arch"] == pick[0] and r["steps"] in (None, self.full):
                    metrics = self.child(pick[0])["metrics"]
                    r.update({"steps": self.full, self.metric: metrics.get(self.metric), self.test: metrics.get(self.test)})
            shutil.copyfile(self.run_dir / "select" / f"arch_{pick[0]}" / "model.pt", self.run_dir / "selected_model.pt")
        ensemble_name = "DiffQAS gumbel (argmax group)" if strategy == "gumbel" else "DiffQAS ensemble"
        m = self.summary["metrics"]
        rows = list(contenders)
        if self.supernet:  # DiffQAS's own model stays a contender
            ensemble = {"arch": None, "arch_name": ensemble_name, "group": None, "structural_weight": None, "score": None}
            rows.append(
                {**ensemble, "steps": self.summary["steps"], self.metric: m.get(self.metric), self.test: m.get(self.test)}
            )
        full_rows = [r for r in rows if r["steps"] in (self.full, self.summary["steps"]) and _finite(r[self.metric])]
        overall = max(full_rows, key=lambda r: self.oriented(r[self.metric]), default=None)
        return {
            "selected_arch": None if pick is None else pick[0],
            "selected_name": None if pick is None else self.name(pick[0]),
            "selection": {
                "strategy": strategy,
                "metric": self.metric,
                "ranked_by": ranked_by,
                "settings": settings,
                "supernet": self.supernet,
                "contenders": rows,
                "candidates": rows,  # the name before issue 24
                "best_model": None if overall is None else ("diffqas" if overall["arch"] is None else overall["arch"]),
                "cost": self.costs(),
            },
        }

    def costs(self) -> dict:
        """candidate_steps (circuit simulations x steps) and wall_seconds: the search run, the child
        runs, their total, the exhaustive sweep (every angle-dependent group alone for the full run;
        its wall time estimated from this run's full-length children) and total / exhaustive."""
        child_steps = sum(s["steps"] for s in self.children.values())
        child_wall = sum(s["wall_seconds"] for s in self.children.values())
        cost = dict(self.cost)
        cost["children"] = {"candidate_steps": child_steps, "wall_seconds": child_wall, "runs": len(self.children)}
        total = {k: cost["search"][k] + cost["children"][k] for k in ("candidate_steps", "wall_seconds")}
        full = [s["wall_seconds"] for (_, steps), s in self.children.items() if steps == self.full]
        exhaustive = {
            "candidate_steps": len(self.groups) * self.full,
            "wall_seconds": len(self.groups) * sum(full) / len(full) if full else None,
            "runs": len(self.groups),
        }
        relative = {k: (total[k] / exhaustive[k] if exhaustive[k] else None) for k in ("candidate_steps", "wall_seconds")}
        return {**cost, **total, "exhaustive": exhaustive, "relative": relative}


def _weights(sel: _Selection) -> dict:
    """The paper's answer: the top angle-dependent group by structural weight."""
    rows = [sel.row(g, score=sel.weight[tuple(g)]) for g in sel.groups]
    return sel.finish("weights", sel.groups[0] if sel.groups else None, rows, "structural_weight")


def _select(sel: _Selection, k: int) -> dict:
    """Retrain the top K angle-dependent groups alone; pick on the selection metric."""
    top = sel.groups[:k]
    for g in top:
        sel.child(g[0])
    pick = sel.best_standalone(top)
    rows = []
    for g in top:
        value = sel.child(g[0])["metrics"].get(sel.metric)
        rows.append(sel.row(g, score=sel.oriented(value) if _finite(value) else None))
    return sel.finish("select", pick, rows, sel.metric, k=k)


def _gumbel(sel: _Selection) -> dict:
    """The argmax angle-dependent group of the Gumbel-softmax search's group logits."""
    gen = sel.exp.generator.first
    with torch.no_grad():
        probs = torch.softmax(gen.group_logits(), 0).tolist()
    prob = {tuple(g): p for g, p in zip(gen.groups, probs)}
    ordered = sorted(sel.groups, key=lambda g: (-prob[tuple(g)], g[0]))
    rows = [sel.row(g, score=prob[tuple(g)], group_probability=prob[tuple(g)]) for g in ordered]
    return sel.finish("gumbel", ordered[0] if ordered else None, rows, "group_probability", tau=list(gen.options.tau))


def _perturb(sel: _Selection) -> dict:
    """Remove each angle-dependent group from the trained mixture (its members' weights 0, or their
    logits -inf with softmax weights) and measure the selection metric: the pick is the group whose
    removal hurts most. Each removal is one evaluation of the mixture."""
    exp, gen = sel.exp, sel.exp.generator.first
    softmax = gen.options.structural == "softmax"

    def evaluate() -> float:
        with torch.no_grad(), exp.generator.evaluating():
            params = exp.generator()
            return exp.task.evaluate(lambda x: functional_call(exp.model, params, (x,)))[sel.metric]

    base = evaluate()
    position = {c.number: i for i, c in enumerate(gen.candidates)}
    hurt = {}
    for g in sel.groups:
        saved = gen.structural.detach().clone()
        with torch.no_grad():
            gen.structural[[position[m] for m in g]] = -math.inf if softmax else 0.0
        try:
            without = evaluate()
        finally:
            with torch.no_grad():
                gen.structural.copy_(saved)
        hurt[tuple(g)] = (without, sel.oriented(base) - sel.oriented(without))
    gen_dependent = [c for c in gen.candidates if not c.theta_independent(gen.n_qubits, gen.depth)]
    sel.cost["search"]["candidate_steps"] += len(gen_dependent) * (len(sel.groups) + 1)  # the evaluations
    ordered = sorted(sel.groups, key=lambda g: (-_nan_low(hurt[tuple(g)][1]), g[0]))
    rows = [sel.row(g, score=hurt[tuple(g)][1], without=hurt[tuple(g)][0]) for g in ordered]
    return sel.finish("perturb", ordered[0] if ordered else None, rows, f"drop in {sel.metric} without the group", base=base)


def _nan_low(x: float) -> float:
    return x if _finite(x) else -math.inf


def rungs(full: int, n: int, eta: int, min_steps: int | None) -> list[int]:
    """Race's budgets, growing by eta up to the full run: from min_steps, or from full / eta^(r-1)
    with r = ceil(log_eta n) + 1 rungs (so keeping ceil(k/eta) per rung leaves one at the full run)."""
    if min_steps is None:
        count = math.ceil(math.log(n, eta) - 1e-9) + 1 if n > 1 else 1
        min_steps = max(1, math.ceil(full / eta ** (count - 1)))
    budgets, b = [], min(min_steps, full)
    while b < full:
        budgets.append(b)
        b *= eta
    return [*budgets, full]


def _race(sel: _Selection, eta: int, min_steps: int | None) -> dict:
    """Successive halving: every angle-dependent group alone at the first budget, the best
    ceil(k/eta) go on to eta times the steps, ..., the last rung at the full run picks."""
    budgets = rungs(sel.full, len(sel.groups), eta, min_steps)
    alive, reached = list(sel.groups), {}
    for i, budget in enumerate(budgets):
        if len(alive) == 1 or i == len(budgets) - 1:
            budget = sel.full  # one left (or the last rung): the full run decides
        for g in alive:
            reached[tuple(g)] = (i, budget, sel.child(g[0], budget)["metrics"].get(sel.metric))
        alive.sort(key=lambda g: (-_nan_low(sel.oriented(v) if _finite(v := reached[tuple(g)][2]) else None), g[0]))
        if budget == sel.full:
            break
        alive = alive[: math.ceil(len(alive) / eta)]
    pick = alive[0] if alive and _finite(reached[tuple(alive[0])][2]) else None

    def order(g):
        i, _, value = reached[tuple(g)]
        return (-i, -_nan_low(sel.oriented(value) if _finite(value) else None), g[0])

    ordered = sorted(sel.groups, key=order)
    rows = [
        sel.row(g, score=len(ordered) - 1 - k, steps=reached[tuple(g)][1], rung=reached[tuple(g)][0])
        for k, g in enumerate(ordered)
    ]
    return sel.finish("race", pick, rows, f"{sel.metric} at the last rung reached", eta=eta, rungs=budgets)


def select(run, cfg, exp, run_dir: Path, summary: dict) -> dict:
    """The selection stage of a DiffQAS run (search.strategy other than none): summary.json's keys."""
    strategy = strategy_of(cfg.search)
    sel = _Selection(run, cfg, exp, Path(run_dir), summary)
    if strategy == "weights":
        return _weights(sel)
    if strategy == "select":
        return _select(sel, cfg.search.select or SELECT_DEFAULT_K)
    if strategy == "gumbel":
        return _gumbel(sel)
    if strategy == "perturb":
        return _perturb(sel)
    if strategy == "race":
        return _race(sel, cfg.search.eta, cfg.search.min_steps)
    raise ValueError(f"search.strategy={strategy!r} has no selection stage")
