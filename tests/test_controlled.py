"""Quantum-Train at full capacity (issue 27): parametrised entanglers (CRx, CRy, CRz, CRot, CU3)
and U3 layers in the search-space language, checked against PennyLane and the textbook reference
(tests/reference.py) with gradients; the toolkit's U3 + CU3-ring circuit; the mapping settings
(bit coding, per-tensor gain and shift); the toolkit's CNN target; counts and refusals through
the CLI."""

import json
import math

import numpy as np
import pytest
import reference
import torch
from helpers import cli, confirm

from diffqas_runner.config import search_space_file
from diffqas_runner.nets import ToolkitCNN
from diffqas_runner.qt.generator import Generator, GeneratorOptions
from diffqas_runner.quantum import native, probabilities
from diffqas_runner.quantum.candidates import SpaceError, build_space, layer_op
from diffqas_runner.quantum.groups import angle_independent, output_groups

NEW_GATES = ("crx", "cry", "crz", "crot", "cu3")


def _space(n: int):
    """Every new gate on a pattern and on explicit pairs (control above and below the target),
    from both starts, under one-, two- and three-angle rotation layers."""
    product = {"init": ["H", "none"], "entangler": [f"{g}_ring" for g in NEW_GATES], "rotation": ["Ry", "U3"]}
    extra = [{"init": "H", "entangler": [[n - 1, 0], [1, 2], [n - 1, 0]], "gate": g, "rotation": "RxRz"} for g in NEW_GATES] + [
        {"init": "none", "entangler": f"{g}_chain", "rotation": "Rx"} for g in NEW_GATES
    ]
    return build_space(product, extra)


def _angles(n: int, layers: int, pairs: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    theta = torch.rand(layers, n, 3, generator=gen, dtype=torch.float64) * 4 * math.pi
    phi = torch.rand(layers, pairs, 3, generator=gen, dtype=torch.float64) * 4 * math.pi
    return theta, phi


def test_every_new_gate_matches_pennylane_with_gradients(kernel_mode):
    n, layers = 4, 3
    space = _space(n)
    theta, phi = _angles(n, layers, n, 0)
    coeffs = torch.randn(len(space), 2**n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = {}
    for backend in ("native", "pennylane"):
        t, f = theta.clone().requires_grad_(), phi.clone().requires_grad_()
        probs = probabilities(t, space, backend=backend, phi=f)
        (coeffs * probs).sum().backward()
        grads[backend] = (probs.detach(), t.grad, f.grad)
    for got, want, what in zip(grads["native"], grads["pennylane"], ("probabilities", "d/dtheta", "d/dphi")):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=what)
    assert grads["native"][2].abs().max() > 0.01  # the entangler angles do move the output


def test_lightning_differentiates_every_new_gate_by_parameter_shift():
    """lightning.qubit has no backprop: CU3 must be written with gates that have shift rules."""
    n, layers = 3, 2
    space = build_space(None, [{"init": "H", "entangler": f"{g}_ring", "rotation": "U3"} for g in NEW_GATES])
    theta, phi = _angles(n, layers, n, 6)
    coeffs = torch.randn(len(space), 2**n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads = []
    for backend, device in (("native", "default.qubit"), ("pennylane", "lightning.qubit")):
        t, f = theta.clone().requires_grad_(), phi.clone().requires_grad_()
        probs = probabilities(t, space, backend=backend, device=device, phi=f)
        (coeffs * probs).sum().backward()
        grads.append((probs.detach(), t.grad, f.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


# 13: the 4-wire Kronecker blocks of the rotation layer; 15: gates whose jobs (2**14 amplitudes
# each) split a row in two, and rotation layers with high bits (the column tiles)
@pytest.mark.parametrize("n,layers", [(6, 3), (13, 2), pytest.param(15, 2, marks=pytest.mark.slow)])
def test_controlled_rows_match_the_textbook_reference_with_gradients(n, layers, kernel_mode):
    space = _space(n) if n < 13 else build_space(None, [
        {"init": "H", "entangler": "cu3_ring", "rotation": "U3"},
        {"init": "none", "entangler": "cry_chain", "rotation": "Ry"},
        {"init": "H", "entangler": "crz_ring", "rotation": "RyRz"},
    ])  # fmt: skip
    theta, phi = _angles(n, layers, n, 2)
    probs = probabilities(theta, space, phi=phi)
    torch.testing.assert_close(probs, reference.probabilities(theta, space, phi), rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(3)
    for cand in space[:: max(1, len(space) // 4)]:
        coeffs = torch.randn(2**n, generator=gen, dtype=torch.float64)
        d_theta, d_phi = (
            torch.randn(theta.shape, generator=gen, dtype=torch.float64),
            torch.randn(phi.shape, generator=gen, dtype=torch.float64),
        )
        t, f = theta.clone().requires_grad_(), phi.clone().requires_grad_()
        (coeffs * probabilities(t, [cand], phi=f)[0]).sum().backward()
        slope = float((t.grad * d_theta).sum() + (f.grad * d_phi).sum())
        want = reference.directional_derivative(theta, [cand], coeffs, d_theta, phi=phi, phi_direction=d_phi)
        assert slope == pytest.approx(want, abs=1e-7), cand.name


def test_float32_and_memory_chunking_keep_the_values(kernel_mode):
    n, layers = 6, 3
    space = _space(n)
    theta, phi = _angles(n, layers, n, 4)
    exact = probabilities(theta, space, phi=phi)
    torch.testing.assert_close(probabilities(theta.float(), space, phi=phi.float()).double(), exact, rtol=0, atol=1e-5)
    t, f = theta.clone().requires_grad_(), phi.clone().requires_grad_()
    (native.probabilities(t, space, memory_mb=1, phi=f) ** 2).sum().backward()  # 1 MB: every row checkpointed alone
    t2, f2 = theta.clone().requires_grad_(), phi.clone().requires_grad_()
    (native.probabilities(t2, space, phi=f2) ** 2).sum().backward()
    torch.testing.assert_close((t.grad, f.grad), (t2.grad, f2.grad), rtol=0, atol=1e-13)


def test_the_toolkit_space_holds_the_toolkits_circuit():
    """The toolkit's QNN is L blocks of (U3 on every wire, CU3 ring). Ours at depth L+1 from
    |0..0> is (CU3 ring acting on nothing, U3) then L x (CU3 ring, U3): with the last U3 layer at
    angle 0 it is the toolkit's circuit, checked against PennyLane written in the toolkit's order."""
    import pennylane as qml

    (cand,) = search_space_file("toolkit_u3")
    assert (cand.name, cand.entangler.gate, cand.entangler.pattern, cand.rotation.label) == ("U3-CU3Cyc", "cu3", "ring", "Rot")
    n, blocks = 5, 2
    gen = torch.Generator().manual_seed(5)
    u3 = torch.rand(blocks, n, 3, generator=gen, dtype=torch.float64) * 2 * math.pi  # (theta, phi, lambda) per wire
    cu3 = torch.rand(blocks, n, 3, generator=gen, dtype=torch.float64) * 2 * math.pi

    @qml.qnode(qml.device("default.qubit", wires=n))
    def toolkit():
        for b in range(blocks):
            for q in range(n):
                qml.U3(*u3[b, q], wires=q)
            for q in range(n):
                qml.ctrl(qml.U3, control=q)(*cu3[b, q], wires=(q + 1) % n)
        return qml.probs(wires=range(n))

    # U3(t, p, l) = Rz(p) Ry(t) Rz(l) up to a phase: as a Rot layer (Rz, Ry, Rz in slot order) that is (l, t, p)
    theta = torch.zeros(blocks + 1, n, 3, dtype=torch.float64)
    theta[:blocks] = u3[..., [2, 0, 1]]
    phi = torch.zeros(blocks + 1, n, 3, dtype=torch.float64)
    phi[1:] = cu3  # layer 0's ring acts on |0..0>: nothing
    torch.testing.assert_close(probabilities(theta, [cand], phi=phi)[0], torch.as_tensor(toolkit()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_groups_and_angle_independence_hold_for_the_new_gates(depth):
    n = 4
    space = build_space(
        {"init": ["H", "none"], "entangler": ["crx_ring", "crz_ring", "cu3_ring", "ring"], "rotation": ["Ry", "Rz", "U3"]},
        [{"entangler": "crz_ring", "rotation": "Rz", "init": "H", "name": "twin"}],
    )
    confirm(space, n, depth, reference.probabilities, distinct=False)
    # CRz on |+..+> with Z rotations changes phases only; from |0..0> no controlled gate ever acts
    independent = {space[i - 1].name for i in angle_independent(space, n, depth)}
    assert {"H-CRzCyc-Rz", "CRxCyc-Rz", "CU3Cyc-Rz"} <= independent and "H-CRxCyc-Rz" not in independent
    groups = output_groups(space, n, depth)
    twin = next(g for g in groups if len(space) in g)
    assert space[twin[0] - 1].name in ("H-CRzCyc-Rz", "H-CNOTCyc-Rz", "H-Cyc-Rz")  # uniform, with the other H-...-Rz


def test_the_language_reads_new_gates_and_refuses_bad_ones():
    a, b, c = build_space(None, [
        {"entangler": "CU3_ring", "rotation": "u3"},
        {"entangler": [[2, 0]], "gate": "cry", "rotation": "Ry"},
        {"entangler": "crot_all_to_all", "gate": "crot", "rotation": "Rot"},
    ])  # fmt: skip
    assert (a.name, a.entangler.n_angles, a.ent_angles(5)) == ("CU3Cyc-Rot", 3, 15)
    assert (b.name, b.ent_angles(5), c.ent_angles(4)) == ("CRyPairs2-0-Ry", 1, 18)
    with pytest.raises(ValueError, match="not a signed permutation"):
        layer_op(a.entangler, 5)
    for spec, message in [
        ({"entangler": "cxx_ring", "rotation": "Ry"}, r"entangler='cxx_ring' is not allowed; allowed: chain, ring"),
        ({"entangler": "cu3_ring", "gate": "crx", "rotation": "Ry"}, r"names cu3 gates but gate=crx"),
        ({"entangler": "ring", "gate": "cu4", "rotation": "Ry"}, r"gate='cu4' is not allowed; allowed: cnot, cz, crx"),
        ({"entangler": "ring", "rotation": "U4"}, r"rotation='U4' is not allowed"),
        ({"entangler": "cu3_none", "rotation": "Ry"}, r"cu3_none. with gate cu3 has no pairs.*allowed: none, or a pattern"),
        ({"entangler": "none", "gate": "cry", "rotation": "Ry"}, r"with gate cry has no pairs"),
    ]:
        with pytest.raises(SpaceError, match=message):
            build_space(None, [spec])
    with pytest.raises(ValueError, match=r"phi must have shape \(2, >= 5, >= 3\)"):
        probabilities(torch.zeros(2, 5), [build_space(None, [{"entangler": "cu3_ring", "rotation": "Ry"}])[0]])


def test_the_kernels_controlled_layer_refuses_what_it_would_misread(monkeypatch):
    from helpers import load_kernel_or_skip

    from diffqas_runner.quantum import kernel

    load_kernel_or_skip(monkeypatch)
    state = torch.zeros(1, 2, 16, dtype=torch.float64)
    u = torch.eye(2, dtype=torch.complex128).expand(2, 2, 2)
    with pytest.raises(ValueError, match=r"\(rows, 2, 2\*\*n\)"):
        kernel.ControlledLayer.apply(state[0], u, torch.tensor([[0, 1], [1, 2]], dtype=torch.int32))
    for pairs, message in [
        (torch.tensor([[0, 1], [1, 4]], dtype=torch.int32), "two different wires in 0..3"),
        (torch.tensor([[0, 1], [2, 2]], dtype=torch.int32), "two different wires in 0..3"),
        (torch.tensor([[0, 1], [1, 2]], dtype=torch.int64), "contiguous int32"),
        (torch.tensor([[0, 1]], dtype=torch.int32), r"int32 \(2, 2\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            kernel.ControlledLayer.apply(state, u, pairs)


def _shapes(n_params: int) -> dict:
    return {"w": torch.Size([n_params])}


def test_generator_counts_and_trains_entangler_angles_in_diffqas_and_fixed_modes():
    space = search_space_file("controlled16")
    assert len(space) == 16 and space[15].name == "CU3Cyc-Rot"
    n, depth = 6, 3
    gen = Generator(_shapes(2**n - 3), depth, GeneratorOptions(space=space))
    assert gen.phi.shape == (depth, n, 3) and gen.theta.shape == (depth, n, 3)
    # theta: 3 angles per wire and layer; phi: every slot (H rows use layer 0 too); 16 structural;
    # Linear(n+1 -> 1) less its dead bias
    assert gen.trainable_parameters() == 3 * depth * n + 3 * depth * n + 16 + (n + 1)
    weights = gen()["w"]
    weights.square().sum().backward()
    assert gen.phi.grad.abs().max() > 0 and gen.structural.grad.abs().max() > 0
    fixed = Generator(_shapes(2**n - 3), depth, GeneratorOptions(mode="fixed", arch=16, space=space))
    # CU3Cyc-Rot from |0..0>: layer 0's ring acts on nothing, so its angles are not counted
    assert fixed.trainable_parameters() == 3 * depth * n + 3 * (depth - 1) * n + (n + 1)
    per = Generator(_shapes(2**n - 3), depth, GeneratorOptions(space=space, angles="per_candidate"))
    assert per.phi.shape == (16, depth, n, 3)
    per().__getitem__("w").sum().backward()
    torch.testing.assert_close(per.phi.grad[:2].abs().sum(), torch.zeros((), dtype=torch.float64))  # the CNOT rows use no phi


def test_generator_on_pennylane_equals_native_with_entangler_angles():
    space = search_space_file("controlled16")[4:8]
    outs = []
    for backend in ("native", "pennylane"):
        torch.manual_seed(0)
        outs.append(Generator(_shapes(30), 2, GeneratorOptions(space=space, backend=backend))()["w"].detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)  # float32 weights from float64 simulations


def test_mapping_bit_coding_and_tensor_affine():
    shapes = {"a": torch.Size([6, 5]), "b": torch.Size([6])}
    pm1 = Generator(shapes, 2, GeneratorOptions(mode="fixed", arch=5))
    binary = Generator(shapes, 2, GeneratorOptions(mode="fixed", arch=5, mapping_bits="binary"))
    assert set(pm1.bits.unique().tolist()) == {-1.0, 1.0} and set(binary.bits.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(binary.bits * 2 - 1, pm1.bits)
    torch.manual_seed(7)
    plain = Generator(shapes, 2, GeneratorOptions(mode="fixed", arch=5))()
    torch.manual_seed(7)
    affine_gen = Generator(shapes, 2, GeneratorOptions(mode="fixed", arch=5, tensor_affine=True))
    affine = affine_gen()
    for key in shapes:  # gain 1 and shift 0 at the start: today's weights
        torch.testing.assert_close(affine[key], plain[key])
    assert (
        affine_gen.trainable_parameters()
        == Generator(shapes, 2, GeneratorOptions(mode="fixed", arch=5)).trainable_parameters() + 4
    )
    (affine["a"].sum() + affine["b"].square().sum()).backward()
    assert affine_gen.gain.grad.abs().min() > 0 and affine_gen.shift.grad.abs().min() > 0
    with torch.no_grad():
        affine_gen.gain[0] = 3.0
        affine_gen.shift[1] = 0.5
    moved = affine_gen()
    torch.testing.assert_close(moved["a"], 3 * plain["a"])
    torch.testing.assert_close(moved["b"], plain["b"] + 0.5)
    with pytest.raises(ValueError, match="qt.mapping_bits='ternary' is not allowed; allowed: pm1, binary"):
        Generator(shapes, 2, GeneratorOptions(mapping_bits="ternary"))


def test_the_toolkit_cnn_has_its_6690_weights_and_classifies_flat_images():
    net = ToolkitCNN(10)
    assert sum(p.numel() for p in net.parameters()) == 6690  # 208 + 2,412 + 3,860 + 210
    assert [tuple(p.shape) for p in net.parameters()] == [
        (8, 1, 5, 5),
        (8,),
        (12, 8, 5, 5),
        (12,),
        (20, 192),
        (20,),
        (10, 20),
        (10,),
    ]
    assert net(torch.randn(3, 784)).shape == (3, 10)
    # no activation but the max-pools, as the toolkit writes it: a positive scaling of the input scales the logits less the biases
    x = torch.rand(2, 784)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.zero_()
        np.testing.assert_allclose(net(2 * x).numpy(), 2 * net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_cli_counts_ten_class_cnn_runs_and_refuses_bad_settings(tmp_path, data_dir):
    args = [
        "task=mnist", "task.classes=all", "task.model=cnn", "search_space=toolkit_u3", "search=fixed", "search.arch=1",
        "task.depth=3", "qt.mapping_hidden=[4,20,4]", "qt.mapping_bits=binary", "qt.tensor_affine=true",
        "train.max_steps=2", "train.eval_every=1", f"data_dir={data_dir}", "logger=none", "figures=false",
    ]  # fmt: skip
    done = cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    mapping = (14 * 4 + 4) + (4 * 20 + 20) + (20 * 4 + 4) + 4  # toolkit MLP (n+1)->4->20->4->1, its output bias dead
    expected = (
        3 * 3 * 13 + 3 * 2 * 13 + mapping + 2 * 8
    )  # U3 angles, CU3 angles (not layer 0's), mapping, gain + shift per tensor
    assert (summary["n_qubits"], summary["classical_params"], summary["qt_params"]) == (13, 6690, expected)
    for bad, message in [
        ("task.model=resnet", "task.model"),
        ("qt.mapping_bits=ternary", "qt.mapping_bits"),
        ("qt.tensor_affine=maybe", "qt.tensor_affine"),
    ]:
        done = cli([*args, bad, f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)
        assert done.returncode != 0
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and bad.split("=")[1] in lines[0], done.stderr


@pytest.mark.slow
def test_ten_class_mnist_learns_with_the_recommended_settings(tmp_path, data_dir):
    """README's ten-class settings on real digits: well above chance within 150 steps, and improving."""
    from helpers import metrics_rows

    args = [
        "task=mnist", "task.classes=all", "task.model=cnn", "qt.tensor_affine=true", "train.lr=3e-3",
        "train.max_steps=150", "train.eval_every=50", f"data_dir={data_dir}", "logger=none", "figures=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    done = cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    rows = metrics_rows(tmp_path / "run")
    accuracy = [r["test_accuracy"] for r in rows]
    assert len(accuracy) == 3 and accuracy[-1] >= 0.6 and accuracy[-1] > accuracy[0], accuracy
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["qt_params"] == 13 * 15 + 12 + 14 + 16  # 237: 3.5% of the CNN's 6,690 weights


def test_a_checkpoint_from_before_issue_27_resumes_as_the_same_run():
    """Fingerprints written before task.model / qt.mapping_bits / qt.tensor_affine existed match
    today's defaults (classification), and a time-series run, which has no task.model, is not
    told it differs there."""
    from diffqas_runner.config import ADDED_KEYS
    from diffqas_runner.train.checkpoint import differing_keys

    old = {"task": {"kind": "classification", "classes": "all"}, "qt": {"shots": None}}
    now = {"task": {**old["task"], "model": "mlp"}, "qt": {"shots": None, "mapping_bits": "pm1", "tensor_affine": False}}
    assert differing_keys(json.dumps(old), json.dumps(now), ADDED_KEYS) == []
    now["task"]["model"], now["qt"]["tensor_affine"] = "cnn", True
    assert differing_keys(json.dumps(old), json.dumps(now), ADDED_KEYS) == ["qt.tensor_affine", "task.model"]
    series = {"task": {"kind": "timeseries"}, "qt": {"shots": None, "mapping_bits": "pm1", "tensor_affine": False}}
    assert (
        differing_keys(json.dumps({"task": {"kind": "timeseries"}, "qt": {"shots": None}}), json.dumps(series), ADDED_KEYS) == []
    )
