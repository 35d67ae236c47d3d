"""The simulator and the structural claims against tests/reference.py, a dense textbook state
vector that shares no code with diffqas_runner.quantum (issue 23), and the search-space language
of docs/design.md, statement by statement."""

import re
from pathlib import Path

import numpy as np
import pytest
import reference
import scipy.linalg
import torch
import yaml
from helpers import cli, confirm, env, kernel_required

from diffqas_runner.config import search_space_file
from diffqas_runner.quantum import (
    CANDIDATES,
    Candidate,
    build_space,
    candidate,
    candidate_probabilities,
    groups,
    kernel,
    native,
    probabilities,
)
from diffqas_runner.quantum.candidates import PATTERNS, Entangler, Rotation, SpaceError
from diffqas_runner.quantum.groups import angle_independent

WIDE = search_space_file("wide32")
DESIGN = (Path(__file__).parents[1] / "docs" / "design.md").read_text()


def _theta(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=torch.float64) * 4 * torch.pi - 2 * torch.pi


def _pennylane(theta, cands):
    return probabilities(theta, cands, backend="pennylane")


# --- the reference itself, against textbook facts and PennyLane -------------------------------
def test_reference_rotations_are_the_matrix_exponentials():
    for axis, sigma in reference.PAULI.items():
        for t in (0.3, -1.7, 2.9):
            np.testing.assert_allclose(reference.rotation(axis, t), scipy.linalg.expm(-0.5j * t * sigma), atol=1e-14)


def test_reference_agrees_with_pennylane_on_wide32_and_explicit_pairs():
    space = [
        *WIDE[1::3],  # every entangler and rotation of wide32, both starts
        *build_space(
            None, [{"init": "H", "entangler": [[2, 0], [1, 3], [2, 0]], "gate": g, "rotation": "Rot"} for g in ("cnot", "cz")]
        ),
    ]
    theta = _theta((3, 4, 3), seed=1)
    torch.testing.assert_close(reference.probabilities(theta, space), _pennylane(theta, space), rtol=0, atol=1e-12)


# --- the search-space language (docs/design.md), statement by statement ---------------------------
def _documented_pairs() -> dict[str, list[tuple[int, int]]]:
    """The n = 5 column of design.md's pattern table (in its search-space language section)."""
    section = DESIGN.split("### The search-space language", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)`.*\|([^|]*)\|$", line)
        if match:
            rows[match[1]] = [tuple(map(int, p)) for p in re.findall(r"\((\d+),(\d+)\)", match[2])]
    return rows


def test_pattern_pairs_are_what_the_design_table_says():
    documented = _documented_pairs()
    assert set(documented) == set(PATTERNS)
    for pattern, pairs in documented.items():
        assert reference.pattern_pairs(pattern, 5) == pairs, pattern
    assert reference.pattern_pairs("ring", 2) == [(0, 1), (1, 0)] and reference.pattern_pairs("stride2", 2) == []


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pairs_on_follows_the_written_language(pattern):
    for n in range(2, 10):
        assert Entangler("cnot", pattern).pairs_on(n) == reference.pattern_pairs(pattern, n), (pattern, n)


@pytest.mark.parametrize("n", [3, 5, 6])
def test_every_pattern_gate_and_start_simulates_as_written(n):
    specs = [
        {"init": i, "entangler": e, "gate": g, "rotation": "RyRx"}
        for i in ("H", "none")
        for e in PATTERNS
        for g in ("cnot", "cz")
    ]
    space = build_space(None, specs)
    theta = _theta((2, n, 2), seed=n)
    torch.testing.assert_close(probabilities(theta, space), reference.probabilities(theta, space), rtol=0, atol=1e-12)


def test_rotation_sign_convention_and_order():
    """R(t) = exp(-i t sigma / 2), the rotations of a wire in the order written, each its own angle
    slot: on one wire (no entangler), by hand, P(0) after H then Ry(t) is (1 - sin t) / 2, and
    after H then Rz(a) then Rx(b) it is (1 + sin a sin b) / 2; Rx then Rz from H leaves P(0) = 1/2."""
    a, b = 0.7, 1.9
    space = build_space(None, [{"init": "H", "entangler": "none", "rotation": r} for r in ("Ry", "RzRx", "RxRz")])
    theta = torch.tensor([[[a, b], [0.0, 0.0]]], dtype=torch.float64)  # wire 0: (a, b); wire 1: nothing
    p_wire0 = [candidate_probabilities(k, theta, space=space).view(2, 2).sum(1)[0].item() for k in (1, 2, 3)]
    assert p_wire0[0] == pytest.approx((1 - np.sin(a)) / 2, abs=1e-14)
    assert p_wire0[1] == pytest.approx((1 + np.sin(a) * np.sin(b)) / 2, abs=1e-14)
    assert p_wire0[2] == pytest.approx(0.5, abs=1e-14)
    torch.testing.assert_close(probabilities(theta, space), reference.probabilities(theta, space), rtol=0, atol=1e-14)


def test_explicit_pairs_apply_in_list_order_and_may_repeat():
    specs = [
        {"entangler": [[0, 1], [1, 2]], "rotation": "Ry"},
        {"entangler": [[1, 2], [0, 1]], "rotation": "Ry"},
        {"entangler": [[0, 1], [0, 1]], "rotation": "Ry"},  # CNOT twice: nothing
        {"entangler": "none", "rotation": "Ry"},
        {"entangler": [[2, 0], [1, 0], [2, 0]], "gate": "cz", "rotation": "Ry"},  # CZ(2,0) twice: CZ(1,0) alone
        {"entangler": [[0, 1]], "gate": "cz", "rotation": "Ry"},
    ]
    space = build_space(None, specs)
    theta = _theta((3, 3), seed=4)
    p, ref = probabilities(theta, space), reference.probabilities(theta, space)
    torch.testing.assert_close(p, ref, rtol=0, atol=1e-12)
    assert (ref[0] - ref[1]).abs().max() > 1e-3  # order matters
    torch.testing.assert_close(ref[2], ref[3], rtol=0, atol=1e-12)  # repeats apply (and here cancel)
    torch.testing.assert_close(ref[4], ref[5], rtol=0, atol=1e-12)


def test_omitted_keys_take_the_documented_defaults():
    plain, cz, named, null_init = build_space(
        None,
        [
            {"rotation": "Ry"},
            {"entangler": "cz_ring", "rotation": "RyRz"},
            {"rotation": "Rot", "name": " mine "},
            {"init": None, "rotation": "Rx"},
        ],
    )
    assert (plain.init, plain.entangler, plain.rotation, plain.name) == (
        "none",
        Entangler("cnot", "chain"),
        Rotation(("Y",)),
        "Ent-Ry",
    )
    assert cz.entangler == Entangler("cz", "ring") and cz.name == "CZCyc-RyRz"
    assert named.rotation.axes == ("Z", "Y", "Z") and named.name == "mine"
    assert null_init.init == "none"
    pairs = build_space(None, [{"init": "H", "entangler": [[0, 2], [2, 1]], "gate": "cz", "rotation": ["Y", "Z"]}])[0]
    assert pairs.name == "H-CZPairs0-2_2-1-RyRz"
    with pytest.raises(SpaceError, match="rotation=None is not allowed"):  # rotation has no default
        build_space(None, [{"init": "H"}])
    with pytest.raises(SpaceError, match=r"product\.gate is not a key"):
        build_space({"init": ["H"], "entangler": ["ring"], "rotation": ["Ry"], "gate": ["cz"]})


def test_the_design_yaml_example_builds_as_described():
    block = DESIGN.split("```yaml\nname: mine", 1)[1].split("```", 1)[0]
    spec = yaml.safe_load("name: mine" + block)
    space = build_space(spec["product"], spec["candidates"])
    assert [c.name for c in space] == [
        "H-Ent-Ry",
        "H-Ent-RyRz",
        "H-Cyc-Ry",
        "H-Cyc-RyRz",
        "Ent-Ry",
        "Ent-RyRz",
        "Cyc-Ry",
        "Cyc-RyRz",
        "my-cz",
    ]
    assert [c.number for c in space] == list(range(1, 10))


def test_python_entry_points(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ncandidates:\n  - {init: H, entangler: stride2, gate: cz, rotation: RxRy}\n")
    mine = search_space_file(str(path))
    assert [c.name for c in mine] == ["H-CZStr2-RxRy"]
    theta = _theta((2, 4, 2), seed=3)
    for arch, space in ((1, mine), (16, WIDE), (30, WIDE)):
        torch.testing.assert_close(
            candidate_probabilities(arch, theta, space=space),
            reference.probabilities(theta, [space[arch - 1]])[0],
            rtol=0,
            atol=1e-12,
        )
    one = _theta((2, 4), seed=3)  # today's signature: paper12, (L, n) angles, any backend
    torch.testing.assert_close(
        candidate_probabilities(8, one), reference.probabilities(one, [CANDIDATES[7]])[0], rtol=0, atol=1e-12
    )
    torch.testing.assert_close(candidate_probabilities(8, one, "pennylane"), candidate_probabilities(8, one), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"allowed: integers 1\.\.32"):
        candidate_probabilities(33, theta, space=WIDE)
    with pytest.raises(ValueError, match=r"allowed: integers 1\.\.12"):
        candidate_probabilities(13, one)


# --- every mode of the layer-by-layer path -------------------------------------------------------
def _group_cases():
    for init in ("H", "none"):
        for gate in ("cnot", "cz"):
            for pattern in ("chain", "ring"):
                ent = Entangler(gate, pattern)
                yield "ry", Candidate(1, init, ent, Rotation(("Y",)))
                yield "rx", Candidate(1, init, ent, Rotation(("X",)))
                for axes in (("X",), ("Y",), ("Y", "Z"), ("Z", "Y"), ("Z", "Y", "Z")):
                    yield "complex", Candidate(1, init, ent, Rotation(axes))


@pytest.mark.parametrize("n,layers", [(2, 1), (5, 3), (8, 2)])  # n >= 8: four Kronecker blocks
def test_simulate_group_in_every_mode_matches_the_reference(n, layers, kernel_mode):
    """`native._simulate_group` directly (not behind the static path or the closed form, which take
    some of these first in `probabilities`): H and |0..0> starts, CNOT and CZ layers."""
    for mode, cand in _group_cases():
        k = cand.rotation.n_angles
        theta = _theta((layers, n) if k == 1 else (layers, n, k), seed=n * layers + k)
        got = native._simulate_group(theta, (cand,), mode)
        torch.testing.assert_close(got, reference.probabilities(theta, [cand]), rtol=0, atol=1e-12, msg=f"{mode} {cand.name}")


def test_simulate_group_batches_mixed_starts_and_refuses_what_it_cannot_simulate():
    theta = _theta((3, 4), seed=9)
    fixed_starts = (candidate(1), candidate(4), candidate(7), candidate(10))  # the first layer as a Kronecker product
    dense_start = (*fixed_starts, Candidate(13, "H", Entangler("cz", "ring"), Rotation(("X",))))  # every layer
    for cands in (fixed_starts, dense_start):
        torch.testing.assert_close(
            native._simulate_group(theta, cands, "rx"), reference.probabilities(theta, cands), rtol=0, atol=1e-12
        )
    with pytest.raises(ValueError, match="Y rotations only"):
        native._simulate_group(theta, (candidate(1),), "ry")
    with pytest.raises(ValueError, match="one rotation layer per group"):
        native._simulate_group(theta, (candidate(1), candidate(2)), "complex")
    with pytest.raises(ValueError, match="needs 2 angles per wire"):
        native._simulate_group(theta, (WIDE[3],), "complex")


# --- the C++ kernel and pure torch, both against the reference -----------------------------------
def test_kernel_and_torch_paths_both_match_the_reference(kernel_mode, monkeypatch):
    calls = []
    real = kernel.RyLayers.apply
    monkeypatch.setattr(kernel.RyLayers, "apply", lambda *args: calls.append(1) or real(*args))
    n, layers = 13, 3
    ry = [c for c in CANDIDATES if c.rotation.axes == ("Y",)]  # sign-free Ry rows: the kernel's
    theta = _theta((layers, n), seed=21)
    torch.testing.assert_close(native.probabilities(theta, ry), reference.probabilities(theta, ry), rtol=0, atol=1e-12)
    assert bool(calls) == (kernel_mode == "cpp")  # the path under test is the one that ran


_KERNEL_ROWS = [  # one of each kernel path: signed real rows, complex rows with and without signs
    ("ry", Candidate(1, "H", Entangler("cz", "ring"), Rotation(("Y",)))),  # CZ on |+..+>: dense start
    ("ry", Candidate(2, "none", Entangler("cz", "chain"), Rotation(("Y",)))),
    ("rx", Candidate(3, "none", Entangler("cz", "ring"), Rotation(("X",)))),
    ("complex", Candidate(4, "H", Entangler("cnot", "ring"), Rotation(("Y", "Z")))),
    ("complex", Candidate(5, "none", Entangler("cz", "chain"), Rotation(("Z", "Y", "Z")))),
    ("complex", Candidate(6, "H", Entangler("cz", "ring"), Rotation(("Z",)))),
    ("complex", Candidate(7, "none", Entangler("cnot", "chain"), Rotation(("Z", "Y")))),
]


@pytest.mark.parametrize("n,layers", [(6, 3), (13, 2)])  # n = 13: the kernel's high-bit tiles too
def test_signed_and_complex_rows_match_the_reference_with_gradients(n, layers, kernel_mode, monkeypatch):
    """Every kernel path (and its pure-torch twin) against the textbook simulator: probabilities,
    and the gradient along random directions against a central difference; float32 too."""
    calls = []
    for cls in (kernel.RyLayers, kernel.ComplexLayers, kernel.YZLayers):
        real = cls.apply
        monkeypatch.setattr(cls, "apply", lambda *a, real=real, cls=cls: calls.append(cls) or real(*a))
    gen = torch.Generator().manual_seed(n)
    for mode, cand in _KERNEL_ROWS:
        k = cand.rotation.n_angles
        theta = _theta((layers, n) if k == 1 else (layers, n, k), seed=n + cand.number).requires_grad_()
        coeffs = torch.randn(1, 2**n, generator=gen, dtype=torch.float64)
        probs = native._simulate_group(theta, (cand,), mode)
        torch.testing.assert_close(probs, reference.probabilities(theta, [cand]), rtol=0, atol=1e-12, msg=cand.name)
        (grad,) = torch.autograd.grad((coeffs * probs).sum(), theta)
        for _ in range(2):
            direction = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
            slope = reference.directional_derivative(theta, [cand], coeffs, direction)
            assert abs(float((grad * direction).sum()) - slope) < 1e-7 * max(1.0, abs(slope)), cand.name
        low = theta.detach().float().requires_grad_()
        probs32 = native._simulate_group(low, (cand,), mode)
        assert probs32.dtype == torch.float32
        torch.testing.assert_close(probs32.double(), probs.detach(), rtol=0, atol=2e-6, msg=cand.name)
        (grad32,) = torch.autograd.grad((coeffs.float() * probs32).sum(), low)
        torch.testing.assert_close(grad32.double(), grad, rtol=1e-3, atol=1e-4, msg=cand.name)
    assert bool(calls) == (kernel_mode == "cpp")  # the path under test is the one that ran
    if kernel_mode == "cpp":  # RyRz, Rot and RzRy rows on the Ry + Z-phase kernel, Z alone on the 2x2 one
        assert calls.count(kernel.YZLayers) == 2 * 3 and kernel.ComplexLayers in calls


def test_kernel_builds_where_ci_requires_it(monkeypatch):
    if not kernel_required():
        pytest.skip("DIFFQAS_REQUIRE_KERNEL=1 (CI) with a C++ compiler on PATH only")
    monkeypatch.setenv(kernel.ENV, "cpp")
    assert kernel.load() is not None


def test_a_failed_build_is_an_error_in_cpp_mode_on_every_later_call(monkeypatch):
    monkeypatch.setattr(kernel, "_tried", True)  # an earlier call in auto mode tried and failed
    monkeypatch.setattr(kernel, "_module", None)
    monkeypatch.setattr(kernel, "_error", OSError("c++: not found"))
    monkeypatch.setenv(kernel.ENV, "auto")
    assert kernel.load() is None
    monkeypatch.setenv(kernel.ENV, "cpp")
    with pytest.raises(RuntimeError, match=r"DIFFQAS_NATIVE_KERNEL=cpp but the C\+\+ kernel did not build: .*c\+\+: not found"):
        kernel.load()


def test_kernel_environment_check(monkeypatch):
    for value in ("auto", "torch", "cpp", " CPP ", ""):
        monkeypatch.setenv(kernel.ENV, value)
        assert kernel.check_environment() is None
    monkeypatch.delenv(kernel.ENV)
    assert kernel.check_environment() is None
    monkeypatch.setenv(kernel.ENV, "bogus")
    assert (
        kernel.check_environment() == "DIFFQAS_NATIVE_KERNEL='bogus' is not allowed; allowed: auto, torch, cpp (or unset: auto)"
    )


def test_a_bad_kernel_setting_is_refused_before_any_work(tmp_path):
    args = ["task=bessel", "debug=smoke", "figures=false", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    res = cli(args, tmp_path, environ=env(DIFFQAS_NATIVE_KERNEL="bogus"))
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert errors == ["Error: DIFFQAS_NATIVE_KERNEL='bogus' is not allowed; allowed: auto, torch, cpp (or unset: auto)"], (
        res.stderr
    )
    assert not (tmp_path / "run" / "summary.json").exists()


# --- the structural claims against the reference ---------------------------------------------------
@pytest.mark.parametrize("space_name,n,depth", [("paper12", 13, 2), ("paper12", 14, 1), ("wide32", 13, 2)])
def test_groups_independence_and_fingerprints_hold_at_13_to_14_qubits(space_name, n, depth):
    space = search_space_file(space_name)
    confirm(space, n, depth, reference.probabilities)


@pytest.mark.slow
def test_paper12_claims_hold_at_17_qubits():
    space = [candidate(k) for k in (1, 2, 3, 8, 9, 12)]  # uniform, live, uniform, live, |0..0>, |0..0>
    confirm(space, 17, 2, reference.probabilities)


def test_a_false_claim_of_angle_independence_is_caught(monkeypatch):
    """Paper12's 2 (H-Ent-Ry) and 8 (Ent-Ry) called angle-independent. The native simulator would
    then simulate them once at theta = 0 (uniform and |0..0>), so a check against it passes; the
    reference simulates the circuits."""
    real = Candidate.theta_independent
    monkeypatch.setattr(Candidate, "theta_independent", lambda c, n, depth=None: c.number in (2, 8) or real(c, n, depth))
    assert angle_independent(CANDIDATES, 4, 3) == [1, 2, 3, 4, 6, 8, 9, 12]
    with pytest.raises(AssertionError, match=r"group \(1, 2, 3, 4, 6\) differs"):
        confirm(CANDIDATES, 4, 3, reference.probabilities)
    monkeypatch.undo()
    # the independence check alone (groups left as they are): 2 and 8 depend on theta
    monkeypatch.setattr(groups, "angle_independent", lambda cands, n, depth=None: [1, 2, 3, 4, 6, 8, 9, 12])
    with pytest.raises(AssertionError, match="2 depends on theta"):
        confirm(CANDIDATES, 13, 2, reference.probabilities)


def test_a_false_fingerprint_is_caught(monkeypatch):
    """Candidate 9 (Ent-Rz, |0..0>) given the uniform signature of its H twin 3."""
    real = groups._signature
    monkeypatch.setattr(groups, "_signature", lambda c, n, depth=None: ("uniform",) if c.number == 9 else real(c, n, depth))
    with pytest.raises(AssertionError, match="9 is not uniform"):
        confirm([candidate(9), candidate(2)], 5, 2, reference.probabilities)
