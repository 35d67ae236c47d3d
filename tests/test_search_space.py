"""Search spaces as configuration (issue 19): parsing, exact simulation of any candidate (against
PennyLane and the gate-by-gate reference), fast paths chosen by structure, groups and
angle-independence from structure confirmed numerically, the generator and the CLI."""

import json
import random
from pathlib import Path

import pytest
import reference
import torch
import yaml
from helpers import cli, confirm, first_by_default

from diffqas_runner.config import ConfigError, search_space_file
from diffqas_runner.qt.generator import Generator, GeneratorOptions
from diffqas_runner.quantum import CANDIDATES, native, probabilities
from diffqas_runner.quantum.candidates import (
    MAX_CANDIDATES,
    Candidate,
    Entangler,
    SpaceError,
    build_space,
    layer_op,
)
from diffqas_runner.quantum.groups import angle_independent, output_groups

WIDE = search_space_file("wide32")


def _random_candidates(count: int, n: int, seed: int) -> list[Candidate]:
    """User candidates with random parts: explicit pairs, either gate, 1-3 random rotations."""
    rng = random.Random(seed)
    specs = []
    for _ in range(count):
        pairs = [rng.sample(range(n), 2) for _ in range(rng.randint(1, 2 * n))]
        axes = [rng.choice("XYZ") for _ in range(rng.randint(1, 3))]
        specs.append(
            {"init": rng.choice(["H", "none"]), "entangler": pairs, "gate": rng.choice(["cnot", "cz"]), "rotation": axes}
        )
    return list(build_space(None, specs))


def _theta(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=torch.float64) * 4 * torch.pi - 2 * torch.pi


def _pennylane(theta, cands):
    """The structural claims are confirmed against a simulator that shares no code with them."""
    return probabilities(theta, cands, backend="pennylane")


def _value_and_grad(fn, theta, cands, coeffs):
    theta = theta.clone().requires_grad_()
    probs = fn(theta, cands)
    (coeffs * probs).sum().backward()
    return probs.detach(), theta.grad


# --- the spaces as data ---------------------------------------------------------------------
def test_paper12_file_is_the_papers_space_in_its_numbering():
    assert search_space_file("paper12") == CANDIDATES
    spec = "H-Ent-Rx H-Ent-Ry H-Ent-Rz H-Cyc-Rx H-Cyc-Ry H-Cyc-Rz Ent-Rx Ent-Ry Ent-Rz Cyc-Rx Cyc-Ry Cyc-Rz"  # SPEC.md 2
    assert [c.name for c in CANDIDATES] == spec.split()
    parts = [(c.init, c.entangler.gate, c.entangler.pattern, c.rotation.axes) for c in CANDIDATES]
    assert parts[:2] == [("H", "cnot", "chain", ("X",)), ("H", "cnot", "chain", ("Y",))]
    assert parts[10:] == [("none", "cnot", "ring", ("Y",)), ("none", "cnot", "ring", ("Z",))]


def test_wide32_holds_32_candidates_built_from_its_parts():
    assert len(WIDE) == 32 and [c.number for c in WIDE] == list(range(1, 33))
    assert WIDE[0].name == "H-Ent-Rx" and WIDE[15].name == "H-CZCyc-RyRz" and WIDE[31].name == "CZCyc-RyRz"
    assert {c.name for c in CANDIDATES} < {c.name for c in WIDE}  # paper12's circuits are in it
    assert WIDE[3].rotation.n_angles == 2


def test_entangler_patterns_and_layer_ops():
    assert Entangler("cnot", "chain").pairs_on(5) == [(0, 1), (2, 3), (1, 2), (3, 4)]
    assert Entangler("cnot", "ring").pairs_on(3) == [(0, 1), (1, 2), (2, 0)]
    assert Entangler("cnot", "all_to_all").pairs_on(3) == [(0, 1), (0, 2), (1, 2)]
    assert Entangler("cnot", "stride2").pairs_on(4) == [(0, 2), (1, 3)]
    # CNOT(0,1) on 2 wires: |10> -> |11>, so (layer psi)[3] = psi[2]; no signs
    perm, sign = layer_op(Entangler("cnot", None, ((0, 1),)), 2)
    assert perm.tolist() == [0, 1, 3, 2] and sign is None
    # CZ: only |11> flips; two CZ on the same pair cancel to no sign at all
    perm, sign = layer_op(Entangler("cz", None, ((0, 1),)), 2)
    assert perm.tolist() == [0, 1, 2, 3] and sign.tolist() == [1, 1, 1, -1]
    assert layer_op(Entangler("cz", "ring"), 2)[1] is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"rotation": "Rw"}, r"candidates\[0\]\.rotation='Rw' is not allowed; allowed: one to three rotations"),
        ({"rotation": ["Y", "Z", "Y", "Z"]}, r"rotation=\['Y', 'Z', 'Y', 'Z'\] is not allowed"),
        ({"rotation": "Ry", "entangler": "star"}, r"entangler='star' is not allowed; allowed: chain, ring"),
        ({"rotation": "Ry", "entangler": [[0, 0]]}, r"entangler=\[\[0, 0\]\] is not allowed; allowed: .*distinct wires"),
        ({"rotation": "Ry", "entangler": [[0, -1]]}, r"distinct wires >= 0"),
        ({"rotation": "Ry", "entangler": []}, r"non-empty"),
        ({"rotation": "Ry", "entangler": "cz_ring", "gate": "cnot"}, r"names cz gates but gate=cnot"),
        ({"rotation": "Ry", "gate": "swap"}, r"candidates\[0\]\.gate='swap' is not allowed; allowed: cnot, cz"),
        ({"rotation": "Ry", "init": "X"}, r"candidates\[0\]\.init='X' is not allowed; allowed: none, H"),
        ({"rotation": "Ry", "shape": 3}, r"candidates\[0\]\.shape is not a key"),
        ({"rotation": "Ry", "name": ""}, r"candidates\[0\]\.name='' is not allowed"),
    ],
)
def test_bad_candidates_are_refused_naming_the_key(spec, message):
    with pytest.raises(SpaceError, match=message):
        build_space(None, [spec])


def test_bad_spaces_are_refused():
    with pytest.raises(SpaceError, match="has no candidates"):
        build_space(None, [])
    with pytest.raises(SpaceError, match=r"product\.rotation=\[\] is not allowed"):
        build_space({"init": ["H"], "entangler": ["ring"], "rotation": []})
    with pytest.raises(SpaceError, match=f"at most {MAX_CANDIDATES}"):
        build_space(None, [{"rotation": "Ry"}] * (MAX_CANDIDATES + 1))


def test_rotation_names_parse_to_axes():
    rotations = ("Rx", "ryrz", "Rot", ["y", "Z"], ["RX"])
    # distinct entanglers: two candidates with one (built) name are refused
    parsed = build_space(
        None, [{"rotation": r, "entangler": e} for r, e in zip(rotations, ["chain", "chain", "chain", "ring", "ring"])]
    )
    assert [c.rotation.axes for c in parsed] == [("X",), ("Y", "Z"), ("Z", "Y", "Z"), ("Y", "Z"), ("X",)]
    assert [c.rotation.label for c in parsed] == ["Rx", "RyRz", "Rot", "RyRz", "Rx"]


# --- exact for every candidate ------------------------------------------------------------------
@pytest.mark.parametrize("n,layers", [(2, 2), (4, 3), (5, 1)])
def test_every_wide32_candidate_matches_pennylane_values_and_gradients(n, layers):
    theta = _theta((layers, n, 2), seed=n * 10 + layers)
    coeffs = torch.randn(len(WIDE), 2**n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p, g = _value_and_grad(lambda t, c: probabilities(t, c), theta, WIDE, coeffs)
    ref_p, ref_g = _value_and_grad(lambda t, c: probabilities(t, c, backend="pennylane"), theta, WIDE, coeffs)
    torch.testing.assert_close(p, ref_p, rtol=0, atol=1e-10)
    torch.testing.assert_close(g, ref_g, rtol=0, atol=1e-9)
    assert g.abs().max() > 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_random_user_candidates_match_pennylane(seed):
    n, layers = 3 + seed % 2, 2 + seed % 2
    cands = _random_candidates(10, n, seed)
    theta = _theta((layers, n, 3), seed=seed)
    coeffs = torch.randn(len(cands), 2**n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p, g = _value_and_grad(lambda t, c: probabilities(t, c), theta, cands, coeffs)
    ref_p, ref_g = _value_and_grad(lambda t, c: probabilities(t, c, backend="pennylane"), theta, cands, coeffs)
    torch.testing.assert_close(p, ref_p, rtol=0, atol=1e-10)
    torch.testing.assert_close(g, ref_g, rtol=0, atol=1e-9)


def test_fast_paths_are_chosen_by_structure():
    n = 17
    modes = {c.name: native._mode(c, n) for c in WIDE}
    assert {k for k, m in modes.items() if m == "static"} == {c.name for c in WIDE if c.rotation.label == "Rz"} | {
        "H-Ent-Rx", "H-Cyc-Rx", "H-All-Rx"
    }  # fmt: skip
    assert {k for k, m in modes.items() if m == "closed_form"} == {"Ent-Rx", "Cyc-Rx", "All-Rx"}
    assert modes["H-CZCyc-Rx"] == modes["CZCyc-Rx"] == "rx"  # CZ signs: no closed form, real (re, im) pairs
    assert modes["H-CZCyc-Ry"] == "ry" and modes["H-All-Ry"] == "ry"
    assert modes["Ent-RyRz"] == "complex"


def test_fast_paths_match_the_gate_by_gate_reference_at_13_qubits():
    """Values against tests/reference.py (no code shared); gradients against autograd through
    `native._simulate_any` (its values checked against the reference too) and, along one random
    direction, against a central difference of the reference."""
    n, layers = 13, 3
    live = [c for c in WIDE if not c.theta_independent(n)]
    theta = _theta((layers, n, 2), seed=7)
    coeffs = torch.randn(len(live), 2**n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p, g = _value_and_grad(native.probabilities, theta, live, coeffs)
    generic = lambda t, cands: torch.stack([native._simulate_any(t, c) for c in cands])  # noqa: E731
    generic_p, generic_g = _value_and_grad(generic, theta, live, coeffs)
    ref_p = reference.probabilities(theta, live)
    torch.testing.assert_close(p, ref_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(generic_p, ref_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, generic_g, rtol=0, atol=1e-9)
    few = [0, len(live) // 2, len(live) - 1]  # three candidates: four reference runs each
    direction = _theta((layers, n, 2), seed=8)
    coeffs_few = coeffs[few]
    _, g_few = _value_and_grad(native.probabilities, theta, [live[i] for i in few], coeffs_few)
    slope = reference.directional_derivative(theta, [live[i] for i in few], coeffs_few, direction)
    assert abs(float((g_few * direction).sum()) - slope) < 1e-7 * max(1.0, abs(slope))


def test_theta_shape_must_carry_the_angles_a_candidate_needs():
    with pytest.raises(ValueError, match="needs 2 angles per wire"):
        native.probabilities(torch.zeros(2, 3, dtype=torch.float64), [WIDE[3]])


# --- groups and angle-independence from structure, confirmed ------------------------------------
@pytest.mark.parametrize("n,depth", [(3, 2), (4, 3), (5, 1)])
def test_wide32_groups_and_independence_are_confirmed_numerically(n, depth):
    confirm(WIDE, n, depth, _pennylane)  # members equal, independent ones constant, groups distinct
    assert angle_independent(WIDE, n) == [1, 3, 5, 7, 9, 11, 15, 19, 23, 27, 31]


def test_wide32_grouping_at_17_qubits():
    groups = output_groups(WIDE, 17, 15)
    # Rx and Ry from |0..0> through a CZ layer (diagonal) give the same distribution: one group
    assert (30, 31) not in groups and [g for g in groups if 30 in g] == [(29, 30)]
    assert [g for g in groups if 1 in g] == [(1, 3, 5, 7, 9, 11, 15)]  # uniform
    assert [g for g in groups if 19 in g] == [(19, 23, 27, 31)]  # |0..0>


@pytest.mark.parametrize("seed", range(3))
def test_random_user_candidates_structure_claims_hold(seed):
    n = 4
    cands = _random_candidates(16, n, 100 + seed)
    confirm(cands, n, 3, reference.probabilities, distinct=False)
    # and nothing claimed angle-dependent is constant (the structural rule is complete here)
    thetas = [_theta((3, n, 3), s) for s in (1, 2)]
    probs = [reference.probabilities(t, cands) for t in thetas]
    for i, c in enumerate(cands):
        constant = torch.allclose(probs[0][i], probs[1][i], atol=1e-12)
        assert constant == c.theta_independent(n), c


# --- the generator follows the space --------------------------------------------------------------
def test_generator_sizes_follow_the_space():
    shapes = {"w": torch.Size([300])}  # 9 qubits
    gen = Generator(shapes, 4, GeneratorOptions(space=WIDE))
    assert gen.theta.shape == (4, 9, 2) and gen.structural.shape == (32,)
    live_angles = 4 * 9 * 2  # RyRz candidates use both angles
    assert gen.trainable_parameters() == live_angles + 32 + 10  # + the mapping's 9 + 1 weights (bias frozen)
    fixed = Generator(shapes, 4, GeneratorOptions(space=WIDE, mode="fixed", arch=2))  # H-Ent-Ry: one angle
    assert fixed.theta.shape == (4, 9) and fixed.structural is None
    gen().values()  # runs
    assert len(gen.ranking_groups()) == len(output_groups(WIDE, 9, 4))


def test_explicit_pairs_outside_the_circuit_are_refused():
    space = build_space(None, [{"entangler": [[0, 12]], "rotation": "Ry"}])
    with pytest.raises(ConfigError, match="uses wire 12, but this target needs 9 qubits; allowed: wires 0..8"):
        Generator({"w": torch.Size([300])}, 2, GeneratorOptions(space=space))


USER_SPACE = """\
name: mine
candidates:
  - {init: H, entangler: ring, rotation: Ry}
  - {entangler: [[0, 3], [3, 1]], gate: cz, rotation: [Y, Z], name: my-cz}
  - {init: H, entangler: stride2, rotation: Rot}
"""


@pytest.mark.parametrize("mode", first_by_default(["diffqas", "fixed"]))
def test_a_user_space_from_the_config_dir_runs(tmp_path, mode):
    (tmp_path / "cfg" / "search_space").mkdir(parents=True)
    (tmp_path / "cfg" / "search_space" / "mine.yaml").write_text(USER_SPACE)
    args = [
        "--config-dir",
        str(tmp_path / "cfg"),
        "task=bessel",
        "search_space=mine",
        "debug=smoke",
        "figures=false",
        "logger=none",
    ]
    if mode == "fixed":
        args += ["search=fixed", "search.arch=2"]
    res = cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["search_space"] == "mine" and summary["n_candidates"] == 3
    assert summary["candidates"] == ["H-Cyc-Ry", "my-cz", "H-Str2-Rot"]
    if mode == "fixed":
        assert summary["arch"] == 2 and summary["arch_name"] == "my-cz" and summary["structural_weights"] is None
    else:
        assert len(summary["structural_weights"]) == 3 and sorted(summary["ranking"]) == [1, 2, 3]


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_wide32_smoke_reports_its_candidates(tmp_path):
    res = cli(
        ["task=bessel", "search_space=wide32", "debug=smoke", "figures=false", "logger=none", f"hydra.run.dir={tmp_path}"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_candidates"] == 32 and len(summary["structural_weights"]) == 32
    assert summary["angle_independent"] == [1, 3, 5, 7, 9, 11, 15, 19, 23, 27, 31]


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_arch_beyond_the_space_is_refused(tmp_path):
    res = cli(["task=bessel", "search=fixed", "search.arch=13", "logger=none", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert res.returncode != 0 and "search.arch=13 is not allowed; allowed: an integer 1..12" in res.stderr
    res = cli(["task=bessel", "search_space=wide32", "search=fixed", "search.arch=33", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert "an integer 1..32" in res.stderr and not (tmp_path / "summary.json").exists()


def test_the_readme_search_space_example_builds():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("```yaml\nname: mine\n", 1)[1].split("```", 1)[0]
    spec = yaml.safe_load("name: mine\n" + block)
    space = build_space(spec["product"], spec["candidates"])
    assert [c.name for c in space] == ["H-Cyc-Ry", "H-Cyc-Rot", "H-CZEnt-Ry", "H-CZEnt-Rot", "my-cz"]
    confirm(space, 4, 2, _pennylane)


def test_cz_from_zero_state_x_and_y_layers_are_one_group_unless_they_mix():
    """From |0..0> through CZs only, X and Y rotations swap (groups.py says why) unless a layer
    holds X, Y and Z; with H first, or a CNOT, they do not."""
    rotations = ("RxRz", "RyRz", "RzRx", "RzRy", "RxRy", "RyRx", "Rx", "Ry", "RxRyRz", "RyRxRz")
    specs = [{"entangler": "cz_ring", "rotation": r} for r in rotations]
    specs += [{"init": "H", "entangler": "cz_ring", "rotation": r} for r in ("RxRz", "RyRz")]
    specs += [{"entangler": "ring", "rotation": r} for r in ("RxRz", "RyRz")]
    space = build_space(None, specs)
    groups = output_groups(space, 4, 3)
    assert groups == [(1, 2), (3, 4), (5, 6), (7, 8), (9,), (10,), (11,), (12,), (13,), (14,)]
    confirm(space, 4, 3, _pennylane)


def test_depth_one_drops_a_final_rz_before_deciding_independence():
    space = build_space(None, [{"init": "H", "entangler": "ring", "rotation": "RxRz"}, {"init": "H", "rotation": "RyRz"}])
    assert space[0].theta_independent(4, depth=1) and not space[0].theta_independent(4)
    assert angle_independent(space, 4, 1) == [1] and angle_independent(space, 4, 3) == []
    confirm(space, 4, 1, _pennylane)
    confirm(space, 4, 3, _pennylane)
    fixed = Generator({"w": torch.Size([10])}, 1, GeneratorOptions(space=space, mode="fixed", arch=1))
    assert not fixed.theta.requires_grad  # nothing to train in it at depth 1


@pytest.mark.parametrize(
    "text, message",
    first_by_default(
        [
            ("product: [H, none]", r"search_space\.product=\['H', 'none'\] is not allowed; allowed: null or a mapping"),
            ("candidates: [H-Cyc-Ry]", r"search_space\.candidates\[0\]='H-Cyc-Ry' is not allowed; allowed: a mapping"),
            ("candidates: {init: H}", r"search_space\.candidates=\{'init': 'H'\} is not allowed; allowed: a list"),
            ("candidates:\n  - {rotation: Ry, foo: 1}", r"search_space\.candidates\[0\]\.foo is not a key"),
            ("name: [1, 2]\ncandidates:\n  - {rotation: Ry}", r"search_space\.name=\[1, 2\] is not allowed"),
        ]
    ),
)
def test_malformed_space_files_get_one_line_errors(tmp_path, text, message):
    import re

    (tmp_path / "cfg" / "search_space").mkdir(parents=True)
    (tmp_path / "cfg" / "search_space" / "bad.yaml").write_text(text + "\n")
    args = [
        "--config-dir",
        str(tmp_path / "cfg"),
        "task=bessel",
        "search_space=bad",
        "debug=smoke",
        "figures=false",
        "logger=none",
    ]
    res = cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error")]
    assert res.returncode == 2 and len(errors) == 1 and re.search(message, errors[0]), res.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_gate_names_are_case_insensitive_and_every_candidate_wire_is_checked():
    assert build_space(None, [{"entangler": [[0, 1]], "gate": "CZ", "rotation": "Ry"}])[0].entangler.gate == "cz"
    space = build_space(None, [{"rotation": "Ry"}, {"entangler": [[0, 12]], "rotation": "Ry"}])
    with pytest.raises(ConfigError, match="candidate 2 .* uses wire 12"):  # not in use, still refused
        Generator({"w": torch.Size([300])}, 2, GeneratorOptions(space=space, mode="fixed", arch=1))


def test_the_schema_offers_the_devices_the_pennylane_backend_has():
    from diffqas_runner.config import PennyLaneDevice
    from diffqas_runner.quantum import pennylane

    assert tuple(d.value for d in PennyLaneDevice) == pennylane.DEVICES


# --- issue 23: one name per candidate, one line per unreadable file ---------------------------
def test_two_candidates_with_one_name_are_refused():
    """Used to give `candidates: ['twin', 'twin']` in summary.json."""
    ring = {"init": "H", "entangler": "ring", "rotation": "Ry"}
    with pytest.raises(SpaceError, match="candidates 1 and 2 are both named 'twin'"):
        build_space(None, [{**ring, "name": "twin"}, {**ring, "entangler": "chain", "name": "twin"}])
    with pytest.raises(SpaceError, match="both named 'H-Cyc-Ry'"):  # a user's name against a built one
        build_space(
            {"init": ["H"], "entangler": ["ring"], "rotation": ["Ry"]}, [{**ring, "entangler": "chain", "name": "H-Cyc-Ry"}]
        )


@pytest.mark.parametrize(
    "content,needle",
    [(None, "does not exist"), (b"a: [\n", "not valid YAML"), (b"\xff\xfe", "not UTF-8"), (b"- 1\n", "not a mapping")],
)
def test_search_space_file_errors_are_one_line(tmp_path, content, needle):
    path = tmp_path / "space.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        search_space_file(str(path))
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_packaged_spaces_name_each_candidate_once():
    assert len({c.name for c in search_space_file("wide32")}) == 32
    assert len({c.name for c in search_space_file("paper12")}) == 12
