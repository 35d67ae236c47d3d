"""scripts/search_study.py on a tiny synthetic truth: fake summary.json files with known answers."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("search_study", REPO / "scripts" / "search_study.py")
search_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(search_study)

# val_mse of candidates alone per seed: 1 and 2 are one group, 4 is angle-independent; 3 is best
TRUTH = {1: [0.5, 0.6, 0.7], 2: [0.5, 0.6, 0.7], 3: [0.10, 0.12, 0.14], 4: [0.05, 0.05, 0.05], 5: [0.2, 0.11, 0.3]}
GROUPS = [[4], [1, 2], [5], [3]]  # ranking_groups of the DiffQAS runs (best weight first)


def _write(path: Path, summary: dict) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))


def _base(seed):
    return {"task": "bessel", "search_space": "tiny", "depth": 2, "seed": seed}


@pytest.fixture
def dirs(tmp_path):
    truth, runs = tmp_path / "truth", tmp_path / "runs"
    job = 0
    for arch, values in TRUTH.items():
        for seed, v in enumerate(values):
            independent = [4] if arch == 4 else []
            _write(truth / str(job), {**_base(seed), "search": "fixed", "arch": arch, "angle_independent": independent,
                                      "metrics": {"val_mse": v, "test_mse": 9.0}})  # fmt: skip
            job += 1
    for seed in range(3):
        for strategy, pick, scores in (
            ("weights", 1, {1: 0.9, 5: 0.5, 3: 0.1}),  # the reverse of the truth: tau -1
            ("select", 3, {3: -0.1, 5: -0.2}),
            ("gumbel", 5, {5: 0.6, 3: 0.3, 1: 0.1}),
        ):
            contenders = [{"arch": a, "score": sc} for a, sc in scores.items()] + [{"arch": None, "score": None}]
            ranked_by = "val_mse" if strategy == "select" else "w"
            _write(runs / f"{strategy}_{seed}", {
                **_base(seed), "search": "diffqas", "ranking_groups": GROUPS, "angle_independent": [4], "selected_arch": pick,
                "selection": {"strategy": strategy, "contenders": contenders, "ranked_by": ranked_by,
                              "cost": {"relative": {"candidate_steps": 1.5, "wall_seconds": 2.0}}},
            })  # fmt: skip
            # the selection stage's child runs are not strategy runs (nor truth)
            _write(runs / f"{strategy}_{seed}" / "select" / "arch_3", {**_base(seed), "search": "fixed", "arch": 3})
    return truth, runs


def test_race_rows_and_the_ensemble_beside_the_pick(dirs, tmp_path):
    """A race run (with its search run) also gives the derived supernet=false row, at the cost of
    its child runs alone; a real supernet=false run is its own strategy; the ensemble's regret."""
    truth, runs = dirs
    cost = {"children": {"candidate_steps": 30, "wall_seconds": 3.0}, "exhaustive": {"candidate_steps": 90, "wall_seconds": 12.0},
            "relative": {"candidate_steps": 4 / 3, "wall_seconds": 0.5}}  # fmt: skip
    for seed in range(3):
        contenders = [{"arch": 3, "score": 1}, {"arch": 5, "score": 0}, {"arch": None, "score": None, "val_mse": 0.2}]
        for name, supernet in (("race", True), ("alone", False)):
            _write(runs / f"{name}_{seed}", {
                **_base(seed), "search": "diffqas", "ranking_groups": GROUPS, "angle_independent": [4], "selected_arch": 3,
                "selection": {"strategy": "race", "supernet": supernet, "ranked_by": "x", "cost": cost,
                              "contenders": contenders if supernet else contenders[:2]},
            })  # fmt: skip
    rows = search_study.main([str(truth), str(runs), "--out", str(tmp_path / "out")])
    race = {r["seed"]: r for r in rows if r["what"] == "race"}
    derived = {r["seed"]: r for r in rows if r["what"] == "race (supernet=false, derived)"}
    alone = {r["seed"]: r for r in rows if r["what"] == "race (supernet=false)"}
    assert set(race) == set(derived) == set(alone) == {0, 1, 2}
    assert race[0]["cost_steps"] == pytest.approx(4 / 3) and derived[0]["cost_steps"] == pytest.approx(1 / 3)
    assert derived[0]["cost_wall"] == pytest.approx(0.25) and derived[0]["arch"] == race[0]["arch"] == 3
    assert race[0]["ensemble_regret"] == pytest.approx((0.2 - 0.1) / 0.1)  # seed 0's best: 3 at 0.10
    assert alone[0]["ensemble_regret"] is None and derived[0]["ensemble_regret"] is None
    assert search_study.regret(0.0, 0.0, "val_mse") == 0.0 and search_study.regret(0.1, 0.0, "val_mse") == math.inf


def test_the_study_reads_truth_and_strategies(dirs, tmp_path):
    truth, runs = dirs
    rows = search_study.main([str(truth), str(runs), "--out", str(tmp_path / "out")])
    groups = {r["arch"]: r for r in rows if r["what"] == "group"}
    assert set(groups) == {1, 3, 5}  # the angle-independent 4 never takes part, 2 is in 1's group
    assert groups[3]["best"] and not groups[5]["best"]
    assert groups[3]["mean"] == pytest.approx(0.12) and groups[3]["std"] == pytest.approx(0.02)
    best = {r["seed"]: r["arch"] for r in rows if r["what"] == "best"}
    assert best == {0: 3, 1: 5, 2: 3}  # seed 1: 5 is best at that seed
    weights = {r["seed"]: r for r in rows if r["what"] == "weights"}
    select = {r["seed"]: r for r in rows if r["what"] == "select"}
    assert weights[0]["arch"] == 1 and weights[0]["regret"] == pytest.approx((0.5 - 0.1) / 0.1)
    assert select[0]["regret"] == 0 and select[1]["regret"] == pytest.approx((0.12 - 0.11) / 0.11)
    assert not weights[0]["hit"] and all(r["hit"] for r in select.values())
    assert weights[0]["tau"] == pytest.approx(-1.0) and weights[0]["n_ranked"] == 3
    assert select[0]["tau"] is None and select[0]["n_ranked"] == 2  # ranked by the standalone metric itself
    gumbel = {r["seed"]: r for r in rows if r["what"] == "gumbel"}
    assert gumbel[0]["tau"] == pytest.approx(1 / 3)  # scores 5 > 3 > 1; at seed 0 the order is 3, 5, 1
    assert gumbel[1]["tau"] == pytest.approx(1.0)  # at seed 1: 5, 3, 1
    assert weights[2]["cost_steps"] == 1.5 and weights[2]["cost_wall"] == 2.0
    md = (tmp_path / "out" / "search_study.md").read_text()
    assert "| bessel | tiny | weights | 3 | 0/3 | 0/3 |" in md and "| all | all | select | 3 | 3/3 | 2/3 |" in md
    # only group 3 is a hit (5: 0.203, 1: 0.6, both > 0.12 + 0.02): a pick at random hits 1 time in 3
    assert [r["chance"] for r in rows if r["what"] == "select"] == pytest.approx([1 / 3] * 3)
    assert [select[s]["top1"] for s in range(3)] == [True, False, True]
    # seed 0: groups 1 (0.5), 3 (0.10, best), 5 (0.2): regrets 4, 0, 1, a random pick's mean 5/3
    assert select[0]["chance_regret"] == pytest.approx(5 / 3)
    table = list(csv.DictReader((tmp_path / "out" / "search_study.csv").read_text().splitlines()))
    assert len(table) == len(rows) == 3 + 3 + 3 + 9
    exhaustive = {r["seed"]: r for r in rows if r["what"] == "exhaustive (one seed)"}
    assert {s: r["arch"] for s, r in exhaustive.items()} == best and [r["hit"] for r in exhaustive.values()] == [
        True,
        False,
        True,
    ]


def test_the_study_can_keep_some_seeds_only(dirs, tmp_path):
    """--seeds 1: the truth too is seed 1's only, so group 5 (0.11 there) is the best and a hit."""
    truth, runs = dirs
    rows = search_study.main([str(truth), str(runs), "--out", str(tmp_path / "out"), "--seeds", "1"])
    assert {r["seed"] for r in rows if r["what"] != "group"} == {1}
    groups = {r["arch"]: r for r in rows if r["what"] == "group"}
    assert groups[5]["best"] and groups[5]["mean"] == pytest.approx(0.11) and groups[5]["std"] == 0.0
    gumbel = next(r for r in rows if r["what"] == "gumbel")
    assert gumbel["hit"] and gumbel["top1"] and gumbel["regret"] == 0
