"""The circuit library against PennyLane, the SPEC fingerprint, gradients and precision."""

import subprocess
import sys

import pytest
import reference
import torch

from diffqas_runner.quantum import CANDIDATES, candidate, candidate_probabilities, probabilities

SHAPES = [(2, 1), (3, 2), (4, 3), (5, 2), (8, 2), (9, 3)]  # (n, L); n >= 8 uses 4 blocks


def _theta(n, layers, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(layers, n, generator=gen, dtype=torch.float64) * 4 * torch.pi - 2 * torch.pi).to(dtype)


def test_numbering_and_names_follow_the_paper_tables():
    names = [c.name for c in CANDIDATES]
    assert names == [
        "H-Ent-Rx", "H-Ent-Ry", "H-Ent-Rz", "H-Cyc-Rx", "H-Cyc-Ry", "H-Cyc-Rz",
        "Ent-Rx", "Ent-Ry", "Ent-Rz", "Cyc-Rx", "Cyc-Ry", "Cyc-Rz",
    ]  # fmt: skip
    assert [c.number for c in CANDIDATES] == list(range(1, 13))
    for bad in (0, 13, 2.0, "3", True):
        with pytest.raises(ValueError, match="1..12"):
            candidate(bad)


@pytest.mark.parametrize("device", ["default.qubit", "lightning.qubit"])
@pytest.mark.parametrize("n,layers", SHAPES)
def test_probabilities_match_pennylane(n, layers, device):
    theta = _theta(n, layers, seed=n * 10 + layers)
    native = probabilities(theta, CANDIDATES)
    reference = probabilities(theta, CANDIDATES, backend="pennylane", device=device)
    assert native.dtype == torch.float64 and native.shape == (12, 2**n)
    torch.testing.assert_close(native, reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(native.sum(1), torch.ones(12, dtype=torch.float64), rtol=0, atol=1e-12)


def test_candidate_probabilities_contract():
    theta = _theta(4, 3).tolist()  # plain nested lists are accepted too
    for arch in range(1, 13):
        p = candidate_probabilities(arch, torch.tensor(theta))
        q = candidate_probabilities(arch, torch.tensor(theta), backend="pennylane")
        assert p.dtype == torch.float64 and p.shape == (16,)
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    # Qubit 0 is the most significant bit: Ent-Ry with one layer and theta = (pi, 0, 0, 0)
    # flips qubit 0 only, so all the mass sits on |1000> = index 8.
    theta = torch.zeros(1, 4, dtype=torch.float64)
    theta[0, 0] = torch.pi
    assert candidate_probabilities(8, theta).argmax().item() == 8


@pytest.mark.parametrize("n,layers", [(3, 2), (6, 4), (9, 2), (13, 2)])
def test_fingerprint_uniform_and_one_hot_for_any_theta(n, layers):
    """SPEC's fingerprint, simulated by tests/reference.py (which shares no code with the package:
    the native simulator simulates angle-independent candidates at theta = 0 only), and the
    native simulator's output checked against it."""
    uniform = torch.full((2**n,), 2.0**-n, dtype=torch.float64)
    one_hot = torch.zeros(2**n, dtype=torch.float64)
    one_hot[0] = 1
    for seed in range(3 if n < 13 else 1):
        theta = _theta(n, layers, seed)
        probs = reference.probabilities(theta, CANDIDATES)
        torch.testing.assert_close(probabilities(theta, CANDIDATES), probs, rtol=0, atol=1e-12)
        for arch in (1, 3, 4, 6):
            torch.testing.assert_close(probs[arch - 1], uniform, rtol=0, atol=1e-12)
        for arch in (9, 12):
            torch.testing.assert_close(probs[arch - 1], one_hot, rtol=0, atol=1e-12)
        for arch in (2, 5, 7, 8, 10, 11):  # the others do move with theta
            assert (probs[arch - 1] - uniform).abs().max() > 1e-3 * min(1.0, 2.0 ** (9 - n))
    assert {c.number for c in CANDIDATES if c.theta_independent(5)} == {1, 3, 4, 6, 9, 12}


@pytest.mark.parametrize("n,layers", [(4, 3), (8, 2)])
def test_diffqas_gradients_match_pennylane(n, layers):
    weights = torch.linspace(0.5, 1.5, 12, dtype=torch.float64) / 12
    coeffs = torch.randn(2**n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(backend):
        theta = _theta(n, layers).requires_grad_()
        w = weights.clone().requires_grad_()
        ensemble = (w[:, None] * probabilities(theta, CANDIDATES, backend=backend)).sum(0)
        loss = (coeffs * ensemble).sum() + (ensemble**2).sum()
        loss.backward()
        return theta.grad, w.grad

    (g_theta, g_w), (r_theta, r_w) = grads("native"), grads("pennylane")
    assert g_theta.abs().max() > 1e-3  # a real gradient, not an all-zero pair
    torch.testing.assert_close(g_theta, r_theta, rtol=0, atol=1e-8)
    torch.testing.assert_close(g_w, r_w, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n,layers", [(5, 3), (10, 4)])
def test_float32_agrees_with_float64(n, layers):
    theta = _theta(n, layers)
    p64 = probabilities(theta, CANDIDATES)
    p32 = probabilities(theta.float(), CANDIDATES)
    assert p32.dtype == torch.float32
    torch.testing.assert_close(p32.double(), p64, rtol=0, atol=1e-5)


def test_bad_theta_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        probabilities(torch.zeros(3), CANDIDATES)
    with pytest.raises(ValueError, match="backend"):
        probabilities(torch.zeros(2, 3, dtype=torch.float64), CANDIDATES, backend="qiskit")


def test_native_backend_does_not_import_pennylane():
    code = (
        "import sys, torch; import diffqas_runner; from diffqas_runner.quantum import candidate_probabilities;"
        "candidate_probabilities(8, torch.rand(2, 4)); assert 'pennylane' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arch,n", [(2, 6), (12, 5)])
def test_circuit_drawing_has_every_gate_of_one_layer(arch, n):
    from matplotlib.patches import Circle, Rectangle

    from diffqas_runner.record.circuit_figure import draw_candidate

    cand = candidate(arch)
    ax = draw_candidate(cand, n, 10).axes[0]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    dots = [p for p in ax.patches if isinstance(p, Circle)]
    assert len(boxes) == n * (2 if cand.hadamard else 1)  # H column + one rotation per wire
    assert len(dots) == 2 * len(cand.entangler.pairs_on(n))  # control dot + target circle per CNOT
    assert any("x 10 layers" in t.get_text() for t in ax.texts)
