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
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import open_dict
from torch.func import functional_call

from . import tasks
from .config import SearchMode, TaskKind, reset_unread, strategy_of
from .train.supervised import NonFiniteLoss, total_steps

log = logging.getLogger(__name__)

SELECT_DEFAULT_K = 3  # strategy=select with search.select=0


def child_config(cfg, arch: int, max_steps: int | None = None, seed: int | None = None):
    """The same experiment with one fixed candidate, for retraining after DiffQAS: exactly the run
    `search=fixed search.arch=N` with the other settings unchanged (`max_steps`: race's shorter
    rungs; `seed`: race's second seed for contenders within noise of each other)."""
    sub = cfg.copy()
    with open_dict(sub):
        if seed is not None:
            sub.seed = seed
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
    reset_unread(sub)  # race's and DiffQAS's own settings: a fixed run does not read them
    return sub


@contextmanager
def child_log(where: Path):
    """A child run logs into its own directory's cli.log; the terminal shows only its warnings and
    errors (the parent says which child it trains, and where its log is)."""
    where.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(where / "cli.log")
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    if files and files[0].formatter is not None:
        handler.setFormatter(files[0].formatter)
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]

    def important(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    for h in consoles:
        h.addFilter(important)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for h in consoles:
            h.removeFilter(important)


def selection_metric(task) -> str:
    """What the selection stage picks on: the validation metric, else the training one (never test)."""
    main = "accuracy" if task.kind == TaskKind.classification.value else "mse"
    return f"val_{main}" if getattr(task, "val", None) is not None else f"train_{main}"


def second_seed(seed: int) -> int:
    """The seed race spends on contenders within noise of each other: far from the small seeds a
    sweep uses (0, 1, 2, ...), so a study can keep the seeds that chose apart from those that judge."""
    return (seed + SECOND_SEED_OFFSET) % 2**32


SECOND_SEED_OFFSET = 100_003


def loss_like(metric: str, value: float) -> float:
    """A metric as a non-negative loss (an error rate for accuracy), for relative margins."""
    return 1.0 - value if "accuracy" in metric else value


def margin(metric: str, better: float, worse: float) -> float:
    """How far apart two values are, relative to the worse one's loss (0: equal, 1: the better is perfect)."""
    a, b = loss_like(metric, better), loss_like(metric, worse)
    return abs(b - a) / max(abs(a), abs(b)) if max(abs(a), abs(b)) > 0 else 0.0


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
        self.children: dict[tuple[int, int, int], dict] = {}  # (arch, steps, seed) -> child summary
        self.seed = int(cfg.seed)
        if not self.metric.startswith("val_"):  # said on the terminal: a pick on training data, never on test
            log.warning(
                "selection: no validation split (task.validation=0): search.strategy=%s picks on %s, the training "
                "data; set task.validation=0.2 to pick on held-out data", strategy_of(cfg.search), self.metric,
            )  # fmt: skip

    def child(self, arch: int, steps: int | None = None, seed: int | None = None) -> dict:
        """Train candidate `arch` alone for `steps` (None: the full run) at `seed` (None: the run's); its summary."""
        budget = self.full if steps is None else steps
        seed = self.seed if seed is None else seed
        if (arch, budget, seed) not in self.children:
            full = budget == self.full
            where = self.run_dir / "select" / ("" if full else f"race/steps_{budget}")
            where = where / ("" if seed == self.seed else f"seed_{seed}") / f"arch_{arch}"
            log.info(
                "selection: training candidate %d (%s) alone for %d steps%s (its log: %s)",
                arch, self.name(arch), budget, "" if seed == self.seed else f" at seed {seed}", where / "cli.log",
            )  # fmt: skip
            sub = child_config(self.cfg, arch, None if full else budget, None if seed == self.seed else seed)
            with child_log(where):
                try:
                    self.children[(arch, budget, seed)] = self.run(sub, where, interactive=False)
                except NonFiniteLoss as err:  # one diverging contender ranks last; the others go on
                    log.warning("selection: candidate %d diverged (%s); it ranks last", arch, err)
                    self.children[(arch, budget, seed)] = {
                        "metrics": {self.metric: None, self.test: None}, "steps": err.step or 0, "wall_seconds": 0.0,
                        "diverged": str(err),
                    }  # fmt: skip
        return self.children[(arch, budget, seed)]

    def name(self, arch: int) -> str:
        return self.summary["candidates"][arch - 1]

    def row(self, group, score=None, steps: int | None = None, **extra) -> dict:
        """A contender: a group (by its lowest number), its structural weight, the number the
        strategy ranked it by (`score`, higher is better), and its standalone metrics if trained."""
        arch = group[0]
        trained = self.children.get((arch, steps or self.full, self.seed))
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
                "best_model": None if overall is None else ("diffqas" if overall["arch"] is None else overall["arch"]),
                "cost": self.costs(),
            },
        }

    def costs(self) -> dict:
        """candidate_steps (circuit simulations x steps, exact) and wall_seconds (measured): the
        search run, the child runs, their total; the exhaustive sweep (every angle-dependent group
        alone for the full run, at one seed: its steps exact, its wall time an estimate from this
        run's full-length children, as `wall_seconds_is` says) and total / exhaustive."""
        child_steps = sum(s["steps"] for s in self.children.values())
        child_wall = sum(s["wall_seconds"] for s in self.children.values())
        cost = dict(self.cost)
        cost["children"] = {"candidate_steps": child_steps, "wall_seconds": child_wall, "runs": len(self.children)}
        total = {k: cost["search"][k] + cost["children"][k] for k in ("candidate_steps", "wall_seconds")}
        full = [s["wall_seconds"] for (_, steps, seed), s in self.children.items() if steps == self.full]
        exhaustive = {
            "candidate_steps": len(self.groups) * self.full,
            # not run, so not measured: the groups times the mean wall time of this run's full-length children
            "wall_seconds": len(self.groups) * sum(full) / len(full) if full else None,
            "wall_seconds_is": f"an estimate from {len(full)} full-length child run(s)",
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


def survivors(k: int, eta: int) -> int:
    """How many of k contenders go on to the next rung: ceil(k / eta), but never fewer than two,
    so the full-length rung compares at least two (one only where the space has one)."""
    return min(k, max(2, math.ceil(k / eta)))


def rungs(full: int, n: int, eta: int, min_steps: int | None) -> list[int]:
    """Race's budgets, growing by eta up to the full run: from min_steps, or from full / eta^c where
    c is the number of cuts that bring n contenders down to two (`survivors`), so the cuts end
    where the full-length rung begins."""
    if min_steps is None:
        cuts, k = 0, n
        while k > 2:
            k, cuts = survivors(k, eta), cuts + 1
        min_steps = max(1, math.ceil(full / eta**cuts))
    budgets, b = [], min(min_steps, full)
    while b < full:
        budgets.append(b)
        b *= eta
    return [*budgets, full]


class _Race:
    """Successive halving with evidence (`search.strategy=race`, docs/design.md): every
    angle-dependent group trains alone at the first budget; the best `survivors(k, eta)` go on to
    eta times the steps; the full-length rung compares at least two. Where the last kept and the
    first cut (or, at the end, the best two) are within `search.tie` of each other (relative, on
    the loss or the error rate), both train again at a second seed and the mean of the pair decides.
    Every value read is a validation metric (the training metric without a split), never test."""

    def __init__(self, sel: _Selection, eta: int, min_steps: int | None, tie: float):
        self.sel, self.eta, self.tie = sel, eta, tie
        self.budgets = rungs(sel.full, len(sel.groups), eta, min_steps)
        self.seeds = [sel.seed, second_seed(sel.seed)]
        self.reached: dict[tuple, tuple[int, int]] = {}  # group -> (rung, budget) of its last rung
        self.tiebreaks: list[dict] = []

    def values(self, group, budget: int) -> list[float]:
        """The group's metric at this budget, at every seed it has been trained at (the run's first)."""
        sel = self.sel
        got = [sel.children.get((group[0], budget, seed)) for seed in self.seeds]
        return [c["metrics"].get(sel.metric) for c in got if c is not None]

    def mean(self, group, budget: int) -> float | None:
        """The group's mean over its seeds at this budget (None if any value is not finite)."""
        vals = self.values(group, budget)
        return sum(vals) / len(vals) if vals and all(_finite(v) for v in vals) else None

    def score(self, group, budget: int) -> float:
        """Higher is better: the oriented mean (-inf when there is none)."""
        mean = self.mean(group, budget)
        return -math.inf if mean is None else self.sel.oriented(mean)

    def within_noise(self, a, b, budget: int) -> bool:
        va, vb = self.mean(a, budget), self.mean(b, budget)
        return self.tie > 0 and va is not None and vb is not None and margin(self.sel.metric, va, vb) <= self.tie

    def rank(self, groups, budget: int) -> list:
        return sorted(groups, key=lambda g: (-self.score(g, budget), g[0]))

    def second_look(self, a, b, budget: int, where: str) -> None:
        """a and b are within noise at one seed: train both at the second seed (paired) at this budget."""
        before = {g[0]: self.mean(g, budget) for g in (a, b)}
        for g in (a, b):
            self.sel.child(g[0], budget, self.seeds[1])
        self.tiebreaks.append({
            "rung": where, "steps": budget, "groups": [a[0], b[0]], "seeds": list(self.seeds),
            "one_seed": before, "mean": {g[0]: self.mean(g, budget) for g in (a, b)},
        })  # fmt: skip

    def run(self) -> list:
        """The groups, best first: those that reached the full run by their mean there, then the
        ones cut earlier, later rungs first."""
        sel, alive = self.sel, list(self.sel.groups)
        for i, budget in enumerate(self.budgets):
            last = i == len(self.budgets) - 1 or len(alive) <= 2
            budget = sel.full if last else budget
            for g in alive:
                sel.child(g[0], budget)
                self.reached[tuple(g)] = (i, budget)
            ranked = self.rank(alive, budget)
            if last:
                if len(ranked) >= 2 and self.within_noise(ranked[0], ranked[1], budget):
                    self.second_look(ranked[0], ranked[1], budget, "final")
                    ranked = self.rank(ranked[:2], budget) + ranked[2:]
                return self.order(ranked)
            keep = survivors(len(ranked), self.eta)
            if keep < len(ranked) and self.within_noise(ranked[keep - 1], ranked[keep], budget):
                self.second_look(ranked[keep - 1], ranked[keep], budget, f"cut after rung {i}")
                ranked = ranked[: keep - 1] + self.rank(ranked[keep - 1 : keep + 1], budget) + ranked[keep + 1 :]
            alive = ranked[:keep]
        return self.order(alive)

    def order(self, finalists: list) -> list:
        rest = [g for g in self.sel.groups if g not in finalists]
        rest.sort(key=lambda g: (-self.reached[tuple(g)][0], -self.score(g, self.reached[tuple(g)][1]), g[0]))
        return [*finalists, *rest]


def _race(sel: _Selection, eta: int, min_steps: int | None, tie: float) -> dict:
    """Race the angle-dependent groups alone (`_Race`); the pick is the best at the full run."""
    race = _Race(sel, eta, min_steps, tie)
    ordered = race.run()
    pick = ordered[0] if ordered and race.score(ordered[0], sel.full) > -math.inf else None
    rows = []
    for k, g in enumerate(ordered):
        rung, budget = race.reached[tuple(g)]
        seeds = len(race.values(g, budget))
        rows.append(sel.row(
            g, score=len(ordered) - 1 - k, steps=budget, rung=rung, seeds=seeds,
            **{f"mean_{sel.metric}": race.mean(g, budget)},
        ))  # fmt: skip
    result = sel.finish(
        "race", pick, rows, f"mean {sel.metric} over its seeds at the last rung reached",
        eta=eta, rungs=race.budgets, tie=tie, seeds=race.seeds,
    )  # fmt: skip
    finalists = [g for g in ordered if race.reached[tuple(g)][1] == sel.full]
    result["selection"]["tiebreaks"] = race.tiebreaks
    result["selection"]["runner_up"] = None
    if pick is not None and len(finalists) >= 2:
        best, second = race.mean(finalists[0], sel.full), race.mean(finalists[1], sel.full)
        result["selection"]["runner_up"] = {
            "arch": finalists[1][0], "arch_name": sel.name(finalists[1][0]), sel.metric: second,
            "margin": None if second is None else margin(sel.metric, best, second),
        }  # fmt: skip
    return result


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
        return _race(sel, cfg.search.eta, cfg.search.min_steps, cfg.search.tie)
    raise ValueError(f"search.strategy={strategy!r} has no selection stage")
