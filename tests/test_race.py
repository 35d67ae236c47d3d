"""Race's decisions with scripted metrics (issue 35 item 3, issue 37 item 5): which groups each rung
keeps, that the full-length rung compares at least two, the second seed where two are within noise,
the pick, the runner-up and the margin, and exact costs. No training: `run` is a script."""

import json
import math
from types import SimpleNamespace

import pytest
from helpers import compose
from omegaconf import open_dict

from diffqas_runner import run as run_module
from diffqas_runner import selection
from diffqas_runner.run import closing_lines

FULL = 27
NAMES = [f"c{i}" for i in range(1, 41)]
PAPER_INDEPENDENT = (1, 3, 4, 6, 9, 12)


class Script:
    """A stand-in for `run`: a child's validation MSE is `value(arch, steps, seed)`; every call is logged."""

    def __init__(self, value):
        self.value, self.calls = value, []

    def __call__(self, cfg, where, interactive=False):
        arch, steps, seed = cfg.search.arch, cfg.train.max_steps or FULL, cfg.seed
        self.calls.append((arch, steps, seed))
        where.mkdir(parents=True, exist_ok=True)
        (where / "model.pt").write_bytes(b"model of %d" % arch)
        v = self.value(arch, steps, seed)
        return {"metrics": {"val_mse": v, "test_mse": 99.0}, "steps": steps, "wall_seconds": 0.5}


def race(tmp_path, value, groups=(2, 5, 7, 8, 10, 11), eta=3, tie=0.0, seed=0, independent=PAPER_INDEPENDENT):
    cfg = compose(["task=bessel", "logger=none", f"train.max_steps={FULL}", f"seed={seed}", "search.strategy=race"])
    with open_dict(cfg):
        cfg.search.supernet = False
        cfg.search.eta = eta
        cfg.search.tie = tie
    task = SimpleNamespace(kind="timeseries", val=object(), train=SimpleNamespace(y=range(1000)), metric="test_mse")
    gen = SimpleNamespace(candidates=[], n_qubits=11, depth=10, sampling="none")
    exp = SimpleNamespace(task=task, generator=SimpleNamespace(first=gen))
    summary = {
        "angle_independent": list(independent), "candidates": NAMES, "steps": 0, "wall_seconds": 0.0, "metrics": {},
        "ranking_groups": [[g] for g in groups] + [[i] for i in independent],
        "group_weights": [None] * (len(groups) + len(independent)),
    }  # fmt: skip
    script = Script(value)
    out = selection.select(script, cfg, exp, tmp_path, summary)
    return out, script


def test_each_rung_keeps_the_best_third_and_the_full_rung_compares_two(tmp_path):
    # lower is better; the order at the short rung differs from the one at the full run
    short = {2: 0.9, 5: 0.3, 7: 0.8, 8: 0.2, 10: 0.5, 11: 0.7}
    full = {8: 0.4, 5: 0.1}
    out, script = race(tmp_path, lambda a, steps, seed: short[a] if steps < FULL else full[a])
    assert selection.rungs(FULL, 6, 3, None) == [9, 27]
    assert sorted(script.calls) == sorted([(a, 9, 0) for a in short] + [(8, 27, 0), (5, 27, 0)])
    table = out["selection"]
    # the short rung's leader (8) is not the pick: the full-length rung decides between two
    assert out["selected_arch"] == 5 and out["selected_name"] == "c5"
    assert [r["arch"] for r in table["contenders"]] == [5, 8, 10, 11, 7, 2]
    assert [r["steps"] for r in table["contenders"]] == [27, 27, 9, 9, 9, 9]
    assert table["runner_up"] == {"arch": 8, "arch_name": "c8", "val_mse": 0.4, "margin": pytest.approx(0.75)}
    assert table["tiebreaks"] == []
    cost = table["cost"]
    assert cost["candidate_steps"] == 6 * 9 + 2 * 27 and cost["children"]["runs"] == 8
    assert cost["exhaustive"]["candidate_steps"] == 6 * 27
    assert cost["relative"]["candidate_steps"] == pytest.approx(108 / 162)
    assert cost["children"]["wall_seconds"] == pytest.approx(8 * 0.5)
    assert (tmp_path / "selected_model.pt").read_bytes() == b"model of 5"


def test_the_order_is_not_reversed_and_ties_go_to_the_lower_number(tmp_path):
    """Larger MSE is worse: reversing the sort would keep 2 and 7 here."""
    out, _ = race(tmp_path, lambda a, steps, seed: {2: 0.9, 7: 0.8}.get(a, 0.1) if steps < FULL else 0.1)
    assert out["selected_arch"] == 5  # 5, 8, 10, 11 tie at 0.1: the lowest numbers go on, and win
    assert [r["arch"] for r in out["selection"]["contenders"]][:2] == [5, 8]


def test_contenders_within_noise_at_the_end_get_a_second_seed_and_the_pair_mean_decides(tmp_path):
    second = selection.second_seed(0)

    def value(a, steps, seed):
        if steps < FULL:
            return {5: 0.1, 8: 0.2}.get(a, 1.0)
        if seed == 0:
            return {5: 0.30, 8: 0.32}[a]  # within 10 %: noise at one seed
        return {5: 0.50, 8: 0.20}[a]  # the second seed says 8

    out, script = race(tmp_path, value, tie=0.1)
    assert (5, FULL, second) in script.calls and (8, FULL, second) in script.calls
    table = out["selection"]
    assert out["selected_arch"] == 8 and table["settings"]["seeds"] == [0, second]
    assert table["runner_up"]["arch"] == 5 and table["runner_up"]["val_mse"] == pytest.approx(0.40)
    assert table["runner_up"]["margin"] == pytest.approx((0.40 - 0.26) / 0.40)
    (tiebreak,) = table["tiebreaks"]
    assert tiebreak["rung"] == "final" and tiebreak["mean"] == {5: pytest.approx(0.40), 8: pytest.approx(0.26)}
    pick = next(r for r in table["contenders"] if r["arch"] == 8)
    assert pick["seeds"] == 2 and pick["mean_val_mse"] == pytest.approx(0.26) and pick["val_mse"] == 0.32
    # the model written is the pick's at the run's own seed
    assert (tmp_path / "selected_model.pt").read_bytes() == b"model of 8"
    assert table["cost"]["candidate_steps"] == 6 * 9 + 4 * FULL
    # and far apart, one seed decides
    out, script = race(tmp_path / "apart", lambda a, s, seed: {5: 0.1, 8: 0.2}.get(a, 1.0), tie=0.1)
    assert all(seed == 0 for _, _, seed in script.calls) and out["selection"]["tiebreaks"] == []


def test_a_cut_within_noise_gets_a_second_seed_before_cutting(tmp_path):
    """Six groups keep two: at the short rung 10 (the first cut) is within noise of 8 (the last
    kept); the second seed shows 10 better, so 10 goes on instead of 8."""

    def value(a, steps, seed):
        if steps < FULL:
            if seed == 0:
                return {5: 0.10, 8: 0.20, 10: 0.21}.get(a, 1.0)
            return {8: 0.50, 10: 0.10}[a]
        return {5: 0.1, 10: 0.3, 8: 0.0}[a]

    out, script = race(tmp_path, value, tie=0.1)
    second = selection.second_seed(0)
    assert {(8, 9, second), (10, 9, second)} <= set(script.calls)
    assert (8, FULL, 0) not in script.calls and (10, FULL, 0) in script.calls
    assert out["selected_arch"] == 5 and out["selection"]["runner_up"]["arch"] == 10
    assert out["selection"]["tiebreaks"][0]["rung"] == "cut after rung 0"


def test_a_diverged_contender_is_never_picked(tmp_path):
    out, _ = race(tmp_path, lambda a, steps, seed: math.nan if a == 5 else 0.1 * a, groups=(5, 8))
    assert out["selected_arch"] == 8 and out["selection"]["runner_up"]["val_mse"] is None
    lines = closing_lines({**out, "metrics": {"test_mse": 1.23456789e-5}, "wall_seconds": 3.21}, tmp_path)
    assert lines[0].startswith("search.strategy=race picked 8 (c8): val_mse 0.8") and "no finite val_mse" in lines[0]


def test_wide_spaces_cut_to_two_in_several_rungs(tmp_path):
    groups = tuple(range(1, 21))
    assert selection.rungs(FULL, 20, 3, None) == [1, 3, 9, 27]  # 20 -> 7 -> 3 -> 2
    assert [selection.survivors(k, 3) for k in (20, 7, 3, 2, 1)] == [7, 3, 2, 2, 1]
    out, script = race(tmp_path, lambda a, steps, seed: a / 100, groups=groups, independent=(21,))
    by_budget = {b: sorted(a for a, s, _ in script.calls if s == b) for b in (1, 3, 9, 27)}
    assert by_budget == {1: list(groups), 3: list(range(1, 8)), 9: [1, 2, 3], 27: [1, 2]}
    assert out["selected_arch"] == 1


def test_the_terminal_names_the_pick_runner_up_margin_and_directory(tmp_path):
    out, _ = race(tmp_path, lambda a, steps, seed: {5: 0.1, 8: 0.2}.get(a, 1.0))
    summary = {**out, "metrics": {"test_mse": 1.23456789e-5, "val_mse": 0.1}, "wall_seconds": 3.21}
    lines = closing_lines(summary, tmp_path / "run")
    assert lines == [
        "search.strategy=race picked 5 (c5): val_mse 0.1; runner-up 8 (c8): val_mse 0.2, margin 50%",
        "done in 3.2 s: test_mse=1.235e-05, val_mse=0.1",
        f"run directory: {tmp_path / 'run'}",
    ]
    json.dumps(out)  # the summary's keys are plain JSON


def test_a_race_or_strategy_with_its_own_settings_runs_its_children(tmp_path):
    """The child runs are `search=fixed`: race's and DiffQAS's own settings go back to their
    defaults there, so a parent with non-default ones is not refused by its own children."""
    base = ["task=bessel", "debug=smoke", "depth=2", "logger=none", "figures=false", "train.threads=1"]
    for i, extra in enumerate(
        (
            ["search=race", "search.tie=0.5", "search.eta=2", "search.min_steps=1"],
            ["search.strategy=weights", "search.structural=softmax"],
            ["search.strategy=gumbel", "search.tau=[2.0,0.5]"],
        )  # fmt: skip
    ):
        s = run_module.run(compose([*base, *extra]), tmp_path / str(i), interactive=False)
        assert s["selected_arch"] is not None, extra
        child = json.loads((tmp_path / str(i) / "select" / f"arch_{s['selected_arch']}" / "summary.json").read_text())
        assert child["search"] == "fixed"


def test_a_space_with_nothing_to_select_is_refused_on_one_line(tmp_path):
    from helpers import cli

    space = tmp_path / "cfg" / "search_space"
    space.mkdir(parents=True)
    flat = ["{init: H, entangler: none, rotation: Rz}", "{init: none, entangler: chain, rotation: Rz}"]
    (space / "flat.yaml").write_text("name: flat\ncandidates:\n" + "".join(f"  - {c}\n" for c in flat))
    out = tmp_path / "run"
    proc = cli(["--config-dir", str(tmp_path / "cfg"), "task=bessel", "search=race", "search_space=flat", "logger=none",
                f"hydra.run.dir={out}"], tmp_path)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "ignores its angles" in lines[0] and "search_space=flat" in lines[0] and not (out / "summary.json").exists()


def test_a_diverging_contender_ranks_last_and_the_race_goes_on(tmp_path):
    from diffqas_runner.train.supervised import NonFiniteLoss

    class Diverging(Script):
        def __call__(self, cfg, where, interactive=False):
            if cfg.search.arch == 8:
                self.calls.append((8, cfg.train.max_steps or FULL, cfg.seed))
                raise NonFiniteLoss("loss became nan at step 4", step=4)
            return super().__call__(cfg, where, interactive)

    script = Diverging(lambda a, steps, seed: {5: 0.2, 11: 0.3}.get(a, 1.0))
    cfg = compose(["task=bessel", "logger=none", f"train.max_steps={FULL}", "search.strategy=race"])
    with open_dict(cfg):
        cfg.search.supernet, cfg.search.tie = False, 0.0
    task = SimpleNamespace(kind="timeseries", val=object(), train=SimpleNamespace(y=range(1000)), metric="test_mse")
    exp = SimpleNamespace(task=task, generator=SimpleNamespace(first=SimpleNamespace(candidates=[], n_qubits=11, depth=10,
                                                                                    sampling="none")))  # fmt: skip
    groups = [[2], [5], [7], [8], [10], [11]]
    summary = {"angle_independent": [], "candidates": NAMES, "steps": 0, "wall_seconds": 0.0, "metrics": {},
               "ranking_groups": groups, "group_weights": [None] * 6}  # fmt: skip
    out = selection.select(script, cfg, exp, tmp_path, summary)
    assert out["selected_arch"] == 5 and out["selection"]["runner_up"]["arch"] == 11
    assert [r["arch"] for r in out["selection"]["contenders"]][-1] == 8  # ranked last, at its rung
    assert out["selection"]["cost"]["children"]["candidate_steps"] == 5 * 9 + 4 + 2 * FULL  # its 4 steps counted
