"""The Quantum-Train generator: parameter accounting, gradient flow, export."""

import pytest
import torch
from torch.func import functional_call

from diffqas_runner.nets import mlp
from diffqas_runner.qt import Generator, n_qubits_for
from diffqas_runner.qt.generator import GeneratorOptions


def _shapes(model):
    return {k: v.shape for k, v in model.named_parameters()}


@pytest.mark.parametrize(
    "n_params,depth,qubits,diffqas,fixed",
    [
        (108_866, 15, 17, 286, 274),  # classification MLP 784-128-64-2 (SPEC section 5)
        (1_781, 10, 11, 135, 123),  # time-series LSTM
        (6_023, 10, 13, 157, 145),  # MiniGrid actor
        (5_825, 10, 13, 157, 145),  # MiniGrid critic
    ],
)
def test_parameter_accounting_matches_spec(n_params, depth, qubits, diffqas, fixed):
    """SPEC's counts (`paper_parameters`) include the mapping's output bias, which the mean-centred
    output makes dead; the live count (`qt_params`) leaves it out, and so the angles of a fixed
    candidate whose output ignores them."""
    assert n_qubits_for(n_params) == qubits
    shapes = {"w": torch.Size([n_params])}
    gen = Generator(shapes, depth)
    assert gen.paper_parameters() == diffqas == qubits * depth + 12 + qubits + 2
    assert gen.trainable_parameters() == diffqas - 1
    gen = Generator(shapes, depth, GeneratorOptions(mode="fixed", arch=8))
    assert gen.paper_parameters() == fixed == qubits * depth + qubits + 2 and gen.trainable_parameters() == fixed - 1
    gen = Generator(shapes, depth, GeneratorOptions(mode="fixed", arch=9))  # |0..0> whatever the angles
    assert gen.paper_parameters() == fixed and gen.trainable_parameters() == qubits + 1
    gen = Generator(shapes, depth, GeneratorOptions(angles="per_candidate"))  # 6 of the 12 angle tensors are dead
    assert gen.paper_parameters() == 12 * qubits * depth + 12 + qubits + 2
    assert gen.trainable_parameters() == 6 * qubits * depth + 12 + qubits + 1
    gen = Generator(shapes, depth, GeneratorOptions(center_output=False))  # then the bias is live
    assert gen.trainable_parameters() == gen.paper_parameters() == diffqas


def _assert_live_gradients(gen):
    """Every trainable parameter gets a gradient that is not rounding noise: at least 1e-8 of the
    largest gradient entry (a dead parameter's residue is ~1e-15 of it); frozen ones get none."""
    grads = {name: p.grad for name, p in gen.named_parameters()}
    scale = max(g.abs().max().item() for g in grads.values() if g is not None)
    for name, param in gen.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max().item() > 1e-8 * scale, f"only rounding noise reaches {name}"


def test_mnist_mlp_has_the_paper_size():
    assert sum(p.numel() for p in mlp([784, 128, 64, 2]).parameters()) == 108_866


@pytest.mark.parametrize("postprocess", ["toolkit", "scale", "none"])
@pytest.mark.parametrize("tensor_scale", ["standardize", "init", "fan_in", "none"])
@pytest.mark.parametrize("input_norm", ["standardize", "none"])
def test_gradients_reach_angles_structural_weights_and_mapping(postprocess, tensor_scale, input_norm):
    torch.manual_seed(0)
    model = mlp([20, 8, 2])
    opts = GeneratorOptions(postprocess=postprocess, tensor_scale=tensor_scale, input_norm=input_norm)
    gen = Generator(_shapes(model), 3, opts)
    x, y = torch.randn(16, 20), torch.randint(0, 2, (16,))
    loss = torch.nn.functional.cross_entropy(functional_call(model, gen(), (x,)), y)
    loss.backward()
    _assert_live_gradients(gen)
    # The target's own parameters are never touched: the weights come only from the generator.
    assert all(p.grad is None for p in model.parameters())


def test_fixed_candidate_has_no_structural_weights_and_ranking():
    gen = Generator({"w": torch.Size([100])}, 2, GeneratorOptions(mode="fixed", arch=5))
    assert gen.structural_weights() is None and gen.ranking() is None
    with pytest.raises(ValueError, match="1..12"):
        Generator({"w": torch.Size([100])}, 2, GeneratorOptions(mode="fixed", arch=13))


def test_ranking_orders_groups_by_structural_weight():
    """Weights 1..12 (never unequal within a group in training, but set so here): a group ranks by
    its members' mean weight and is listed once, by its lowest number."""
    gen = Generator({"w": torch.Size([100])}, 2)
    with torch.no_grad():
        gen.structural.copy_(torch.arange(1, 13, dtype=torch.float64))
    assert gen.ranking_groups() == [[11], [9, 12], [10], [8], [7], [5], [1, 3, 4, 6], [2]]  # 9,12: 10.5; 1,3,4,6: 3.5
    assert gen.ranking() == [11, 9, 10, 8, 7, 5, 1, 2]


def test_generated_weights_export_to_a_plain_module():
    torch.manual_seed(1)
    model = mlp([10, 6, 2])
    gen = Generator(_shapes(model), 2)
    params = gen()
    x = torch.randn(5, 10)
    expected = functional_call(model, params, (x,))
    plain = mlp([10, 6, 2])
    plain.load_state_dict({k: v.detach() for k, v in params.items()})
    torch.testing.assert_close(plain(x), expected)
    # Weights are laid out in named_parameters() order: the first tensor holds kappa[0:60].
    flat = gen.flat_weights().float()
    torch.testing.assert_close(params["0.weight"].flatten(), flat[:60])


def test_fixed_theta_independent_candidates_give_identical_weights():
    """SPEC fingerprint at the generator level: 9 and 12 both generate from |0..0>."""
    shapes = {"w": torch.Size([200])}
    out = []
    for arch in (9, 12):
        torch.manual_seed(3)
        out.append(Generator(shapes, 4, GeneratorOptions(mode="fixed", arch=arch))()["w"])
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_unknown_generator_option_is_rejected_not_silently_replaced():
    with pytest.raises(ValueError, match="qt.postprocess='tanh'"):
        Generator({"w": torch.Size([100])}, 2, GeneratorOptions(postprocess="tanh"))


@pytest.mark.parametrize("postprocess", ["toolkit", "scale", "none"])
def test_input_norm_feeds_the_mapping_unit_spread_probabilities(postprocess):
    """qt.input_norm=standardize: the mapping sees x with mean 0 and std 1 whatever the
    post-processing and the ensemble average did to its scale, and gradients still flow."""
    torch.manual_seed(0)
    model = mlp([20, 8, 2])
    seen = {}
    gen = Generator(_shapes(model), 3, GeneratorOptions(postprocess=postprocess))  # the default
    assert gen.options.input_norm == "standardize"
    mapping = gen.apply_mapping
    gen.apply_mapping = lambda x: (seen.update(x=x.detach()), mapping(x))[1]  # what the mapping is given
    gen.flat_weights()  # the recorded chain: `gen()` runs the same steps as one node (qt/fused.py)
    x, y = torch.randn(16, 20), torch.randint(0, 2, (16,))
    torch.nn.functional.cross_entropy(functional_call(model, gen(), (x,)), y).backward()
    assert abs(seen["x"].mean().item()) < 1e-9 and seen["x"].std().item() == pytest.approx(1.0, abs=1e-9)
    _assert_live_gradients(gen)


@pytest.mark.parametrize("negative", ["clamp", "odd"])
def test_toolkit_on_a_negative_ensemble(negative):
    """Raw structural weights may go negative (SPEC: raw w) and with them entries of P. Both
    `qt.toolkit_negative` modes are exactly the toolkit formula for P >= 0; `clamp` maps negative
    entries to a constant, so no gradient passes there (a whole-negative ensemble freezes the
    circuit), `odd` is odd in P and keeps the gradient."""
    torch.manual_seed(0)
    gen = Generator({"w": torch.Size([200])}, 2, GeneratorOptions(toolkit_negative=negative))
    gamma, beta, alpha = gen.options.toolkit
    n = gen.n_qubits
    p = torch.rand(256, dtype=torch.float64) / 128
    x = gen._postprocess(p)
    expected = (beta * torch.tanh(gamma * 2 ** (n - 1) * p)) ** alpha
    torch.testing.assert_close(x, expected - expected.mean(), rtol=0, atol=1e-15)
    if negative == "odd":
        torch.testing.assert_close(gen._postprocess(-p), -x)  # x is already centred
    else:
        assert (gen._postprocess(-p) == 0).all()  # a constant, centred away
    with torch.no_grad():
        gen.structural.fill_(-1.0 / 12)  # the whole ensemble negative
    flat = gen.flat_weights()
    (flat * torch.randn_like(flat)).sum().backward()
    assert torch.isfinite(gen.theta.grad).all() and torch.isfinite(gen.structural.grad).all()
    if negative == "odd":
        assert gen.theta.grad.abs().max() > 1e-6 and gen.structural.grad.abs().max() > 1e-6
    else:
        assert gen.theta.grad.abs().max() == 0 and gen.structural.grad.abs().max() == 0


@pytest.mark.parametrize("arch", [1, 9])
def test_input_norm_leaves_constant_inputs_finite(arch):
    """Candidate 1 gives a flat distribution, so x has no spread to divide by (0/0 would be
    NaN), and candidate 9 a single spike; both must give finite, bounded weights."""
    torch.manual_seed(0)
    gen = Generator({"w": torch.Size([6, 50])}, 2, GeneratorOptions(mode="fixed", arch=arch, input_norm="standardize"))
    w = gen()["w"]
    assert torch.isfinite(w).all() and w.abs().max() < 10


def test_tensor_scale_init_starts_as_standardize_then_lets_the_mapping_set_the_scale():
    """qt.tensor_scale=init: the same weights as `standardize` at initialisation, but the shift and
    divisor are fixed there, so doubling the mapping doubles the spread of every (non-lone) tensor,
    where `standardize` would undo it; the fixed statistics travel with the state_dict."""
    model = mlp([20, 8, 2])
    gens = {}
    for mode in ("standardize", "init"):
        torch.manual_seed(0)
        gens[mode] = Generator(_shapes(model), 3, GeneratorOptions(tensor_scale=mode))
    before = {mode: g() for mode, g in gens.items()}
    for name in before["init"]:
        torch.testing.assert_close(before["init"][name], before["standardize"][name])
    for g in gens.values():
        with torch.no_grad():
            g.mapping[0].weight.mul_(2.0)
            g.mapping[0].bias.mul_(2.0)
    after = {mode: g() for mode, g in gens.items()}
    for name, w in before["init"].items():
        if w.numel() > 1:
            assert (after["init"][name].std() / w.std()).item() == pytest.approx(2.0, rel=1e-5)
            torch.testing.assert_close(after["standardize"][name], w)
    torch.manual_seed(1)  # another initialisation: only the loaded state_dict can make it equal
    clone = Generator(_shapes(model), 3, GeneratorOptions(tensor_scale="init"))
    clone.load_state_dict(gens["init"].state_dict())
    torch.testing.assert_close(clone()["0.weight"], after["init"]["0.weight"])


def test_per_candidate_angles_generalise_the_shared_ones():
    """search.angles=per_candidate (SPEC section 3's open question): 12 angle tensors, counted in the
    accounting; with all 12 set to the shared tensor it gives the shared ensemble's weights, and
    gradients reach exactly the angles of the six candidates whose output depends on them."""
    model = mlp([20, 8, 2])
    torch.manual_seed(0)
    shared = Generator(_shapes(model), 3, GeneratorOptions())
    torch.manual_seed(0)
    per = Generator(_shapes(model), 3, GeneratorOptions(angles="per_candidate"))
    n = per.n_qubits
    assert per.theta.shape == (12, 3, n)
    assert per.paper_parameters() == 12 * n * 3 + 12 + n + 2 == shared.paper_parameters() + 11 * n * 3
    assert per.trainable_parameters() == 6 * n * 3 + 12 + n + 1 == shared.trainable_parameters() + 5 * n * 3  # 6 live
    per.load_state_dict({**shared.state_dict(), "theta": shared.theta.detach().expand(12, -1, -1).clone()})
    for name, w in shared().items():
        torch.testing.assert_close(per()[name], w)
    x, y = torch.randn(16, 20), torch.randint(0, 2, (16,))
    torch.nn.functional.cross_entropy(functional_call(model, per(), (x,)), y).backward()
    moved = [j + 1 for j in range(12) if per.theta.grad[j].abs().max() > 0]
    assert moved == [2, 5, 7, 8, 10, 11]  # SPEC section 2: only these can learn
    fixed = Generator(_shapes(model), 3, GeneratorOptions(mode="fixed", arch=8, angles="per_candidate"))
    assert fixed.theta.shape == (3, n)  # one candidate has one tensor: the option changes nothing


@pytest.mark.parametrize("hidden", [(), (4, 20, 4)])
def test_mapping_without_its_assembled_input_is_the_sequential_on_it(hidden):
    """`apply_mapping` runs the first Linear as bits @ W_bits^T + b + x W_x: the same numbers, to
    rounding, as torch's Sequential on the assembled rows [bits, x]."""
    torch.manual_seed(0)
    gen = Generator({"w": torch.Size([300])}, 2, GeneratorOptions(mapping_hidden=hidden))
    x = torch.randn(gen.n_params, dtype=torch.float64)
    expected = gen.mapping(torch.cat([gen.bits, x[:, None]], 1)).squeeze(1)
    torch.testing.assert_close(gen.apply_mapping(x), expected, rtol=0, atol=1e-14)
