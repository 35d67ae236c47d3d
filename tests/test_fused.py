"""The generator's classical part as one autograd node (qt/fused.py) against the same steps recorded
by autograd op by op (`Generator.flat_weights`), and its hand-written backward against finite
differences (torch's gradcheck), which share none of its code."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd import gradcheck

from diffqas_runner.nets import mlp
from diffqas_runner.qt.fused import MapSpec, mapped_weights
from diffqas_runner.qt.generator import Generator, GeneratorOptions
from diffqas_runner.quantum import kernel


@pytest.fixture
def torch_path(monkeypatch):
    """The node's torch path (its forward is the recorded chain's own code: bitwise equal)."""
    monkeypatch.setenv(kernel.ENV, "torch")


def _shapes(model):
    return {k: v.shape for k, v in model.named_parameters()}


def _recorded(gen: Generator) -> dict[str, torch.Tensor]:
    flat = gen.flat_weights().to(gen.options.out_dtype)
    return {name: t.view(shape) for name, t, shape in zip(gen.names, flat.split(gen.sizes), gen.shapes)}


def _gradients(gen: Generator, weights: dict, cotangent: dict) -> dict[str, torch.Tensor]:
    gen.zero_grad(set_to_none=True)
    torch.autograd.backward(list(weights.values()), [cotangent[k] for k in weights])
    return {name: p.grad.clone() for name, p in gen.named_parameters() if p.grad is not None}


OPTIONS = list(
    itertools.product(
        ["toolkit", "scale", "none"],  # postprocess
        ["standardize", "none"],  # input_norm
        [True, False],  # center_output
        ["standardize", "init", "fan_in", "none"],  # tensor_scale
        [False, True],  # tensor_affine
    )
)


def _options(postprocess, input_norm, center, tensor_scale, affine, bits="pm1", dtype=torch.float64):
    return GeneratorOptions(
        postprocess=postprocess, input_norm=input_norm, center_output=center, tensor_scale=tensor_scale,
        tensor_affine=affine, mapping_bits_init="default", mapping_bits=bits, toolkit_negative="odd",
        dtype=dtype, out_dtype=torch.float64,
    )  # fmt: skip


def _mixed_signs(gen: Generator) -> None:
    with torch.no_grad():  # raw structural weights of both signs: some entries of P go negative
        gen.structural.copy_(torch.linspace(-0.2, 0.35, 12, dtype=gen.structural.dtype))
        if gen.options.tensor_affine:
            gen.gain.uniform_(0.5, 1.5), gen.shift.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("postprocess,input_norm,center,tensor_scale,affine", OPTIONS)
def test_one_node_gives_the_recorded_chains_weights_and_gradients(
    torch_path, postprocess, input_norm, center, tensor_scale, affine
):
    """Every combination of the options the node covers: the weights bitwise (the forward is the
    same code), every parameter's gradient to 1e-10 (the backward is written by hand)."""
    torch.manual_seed(0)
    options = _options(postprocess, input_norm, center, tensor_scale, affine)
    gen = Generator(_shapes(mlp([7, 5, 3])), 3, options)  # 58 weights on 6 qubits: P is longer than p
    assert gen.fused
    _mixed_signs(gen)
    fused, recorded = gen(), _recorded(gen)
    assert fused.keys() == recorded.keys()
    cotangent = {k: torch.randn_like(v) for k, v in fused.items()}
    for name in fused:
        assert torch.equal(fused[name], recorded[name]), name
    got, expected = _gradients(gen, fused, cotangent), _gradients(gen, recorded, cotangent)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("negative", ["clamp", "odd"])
@pytest.mark.parametrize("arch", [None, 1, 8, 9])
def test_one_node_on_the_candidates_and_both_negative_modes(torch_path, negative, arch):
    """A DiffQAS ensemble and fixed candidates, among them 1 (a flat P: the input norm's divisor is
    held at 1) and 9 (one spike), in float32 weights as a run makes them."""
    torch.manual_seed(1)
    mode = {"mode": "fixed", "arch": arch} if arch else {}
    gen = Generator(_shapes(mlp([6, 4, 2])), 2, GeneratorOptions(toolkit_negative=negative, **mode))
    fused, recorded = gen(), _recorded(gen)
    cotangent = {k: torch.randn_like(v) for k, v in fused.items()}
    for name in fused:
        assert torch.equal(fused[name], recorded[name]), name
    got, expected = _gradients(gen, fused, cotangent), _gradients(gen, recorded, cotangent)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.isfinite(got[name]).all()
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)


def test_a_mapping_with_hidden_layers_keeps_the_recorded_chain():
    gen = Generator({"w": torch.Size([40])}, 2, GeneratorOptions(mapping_hidden=(4,)))
    assert not gen.fused
    torch.testing.assert_close(gen()["w"], gen.flat_weights().float(), rtol=0, atol=0)


@pytest.mark.parametrize("postprocess,odd", [("toolkit", True), ("toolkit", False), ("scale", False), ("none", False)])
@pytest.mark.parametrize("tensor_scale,affine", [("standardize", True), ("init", False), ("fan_in", True), ("none", False)])
def test_the_hand_written_backward_matches_finite_differences(kernel_mode, postprocess, odd, tensor_scale, affine):
    """torch's gradcheck: the node's gradient for P, the mapping and the affine parameters against
    central differences of its own forward, in float64 throughout, on both paths (kernel.cpp's
    front half, and torch's)."""
    torch.manual_seed(2)
    n, sizes = 5, (6, 3, 12, 1)  # 22 of 32 basis states; a lone one-element tensor
    shapes = tuple(torch.Size([k]) for k in sizes)
    spec = MapSpec(
        n_qubits=n, postprocess=postprocess, toolkit=(0.1, 0.8, 0.3), odd=odd, standardize_input=True, center=True,
        tensor_scale=tensor_scale, affine=affine, bits_pm1=True, sizes=sizes, shapes=shapes, out_dtype=torch.float64,
    )  # fmt: skip
    index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    bits = ((torch.arange(sum(sizes))[:, None] >> torch.arange(n - 1, -1, -1)) & 1).double() * 2 - 1
    consts = {"bits": bits, "tensor_index": index, "scale": torch.rand(sum(sizes), dtype=torch.float64) + 0.5}
    consts.update(
        init_mean=torch.randn(len(sizes), dtype=torch.float64), init_std=torch.rand(len(sizes), dtype=torch.float64) + 0.5
    )
    probs = torch.rand(2**n, dtype=torch.float64) / 16
    if odd:
        probs[::3] *= -1  # negative entries of a raw ensemble
    weight, bias = torch.randn(1, n + 1, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    inputs = [probs.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()]
    if affine:
        inputs += [
            torch.rand(len(sizes), dtype=torch.float64).add(0.5).requires_grad_(),
            torch.randn(len(sizes), dtype=torch.float64).requires_grad_(),
        ]
    native = kernel_mode == "cpp"
    assert gradcheck(lambda *xs: mapped_weights(spec, consts, *xs, native=native), inputs, eps=1e-7, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bits", ["pm1", "binary"])
@pytest.mark.parametrize("postprocess,input_norm,center,tensor_scale,affine", OPTIONS[::3])
def test_kernels_front_half_gives_the_recorded_chains_weights_and_gradients(
    monkeypatch, bits, postprocess, input_norm, center, tensor_scale, affine
):
    """kernel.cpp's front half (post-processing to centring, sums in float64) against the recorded
    chain: weights to 1e-12 and gradients to 1e-10 in float64."""
    from helpers import load_kernel_or_skip

    load_kernel_or_skip(monkeypatch)
    torch.manual_seed(0)
    gen = Generator(_shapes(mlp([7, 5, 3])), 3, _options(postprocess, input_norm, center, tensor_scale, affine, bits))
    _mixed_signs(gen)
    fused, recorded = gen(), _recorded(gen)
    cotangent = {k: torch.randn_like(v) for k, v in fused.items()}
    for name in fused:
        torch.testing.assert_close(fused[name], recorded[name], rtol=1e-12, atol=1e-12, msg=name)
    got, expected = _gradients(gen, fused, cotangent), _gradients(gen, recorded, cotangent)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("arch", [None, 1, 8, 9])
def test_kernels_front_half_in_float32_and_on_the_candidates(monkeypatch, arch):
    """A run's own settings (float32 weights; a flat P, one spike, the DiffQAS ensemble) in float32
    and float64 simulation: the kernel rounds once from float64 sums, torch rounds every step."""
    from helpers import load_kernel_or_skip

    load_kernel_or_skip(monkeypatch)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
        torch.manual_seed(1)
        mode = {"mode": "fixed", "arch": arch} if arch else {}
        gen = Generator(_shapes(mlp([6, 4, 2])), 2, GeneratorOptions(toolkit_negative="odd", dtype=dtype, **mode))
        fused, recorded = gen(), _recorded(gen)
        if arch == 1:  # a flat P: exactly zero weights from the float64 sums, where torch's float32
            # chain leaves rounding residue that the per-tensor standardisation scales up to O(1)
            assert all((w == 0).all() for w in fused.values())
            continue
        cotangent = {k: torch.randn_like(v) for k, v in fused.items()}
        for name in fused:
            torch.testing.assert_close(fused[name], recorded[name], rtol=tol, atol=tol, msg=name)
        got, expected = _gradients(gen, fused, cotangent), _gradients(gen, recorded, cotangent)
        assert got.keys() == expected.keys()
        for name in expected:  # relative to the largest entry: float32 sums over p cancel in the small ones
            assert torch.isfinite(got[name]).all()
            assert (got[name] - expected[name]).abs().max() <= tol * expected[name].abs().max(), name


def test_a_control_or_pennylane_keeps_the_torch_path(monkeypatch):
    """The front half runs in kernel.cpp only for a circuit simulated on it, as `simulator.kernel`
    records: a control's weights are the recorded chain's bitwise, with the kernel loaded."""
    from helpers import load_kernel_or_skip

    load_kernel_or_skip(monkeypatch)
    torch.manual_seed(0)
    gen = Generator({"w": torch.Size([40])}, 2, GeneratorOptions(source="random"))
    assert torch.equal(gen()["w"], _recorded(gen)["w"])
