"""Controls for the quantum part (issue 35, qt.source): a fixed seeded random vector or a trainable
classical generator of the circuit's size in place of the circuit's probabilities, on every task."""

import json

import pytest
import torch
from helpers import cli, compose

from diffqas_runner import aggregate
from diffqas_runner import run as run_module
from diffqas_runner.config import validate
from diffqas_runner.errors import ConfigError
from diffqas_runner.qt import Generator, GeneratorSet
from diffqas_runner.qt.controls import ClassicalSource, all_bits, classical_shape
from diffqas_runner.qt.generator import GeneratorOptions

BESSEL = {"w": torch.Size([1781])}  # 11 qubits


def options(**kw) -> GeneratorOptions:
    return GeneratorOptions(**kw)


@pytest.mark.parametrize("n", [2, 5, 11, 13, 17])
def test_the_classical_shape_matches_any_count_within_two(n):
    for target in range(0, 40 * (n + 2)):
        h, m = classical_shape(target, n)
        src = ClassicalSource(all_bits(n, torch.float64), target, 0, 0, torch.float64) if n <= 11 else None
        count = (n + 2) * h + 1 + (m + 2 if m else 0)
        assert 0 <= m <= n - 1
        if src is not None:  # the module has exactly the parameters the formula says
            assert sum(p.numel() for p in src.parameters()) == count == src.describe()["params"]
        if target >= n + 3:  # within two: within 10% from 20 parameters up (every packaged task has >= 110)
            assert abs(count - target) <= 2 and (target < 20 or abs(count - target) <= 0.1 * target), (target, h, m)


@pytest.mark.parametrize(
    "kw, circuit",
    [
        (dict(mode="fixed", arch=8), 110),  # Table II's fixed candidate: n * L angles (SPEC 3)
        (dict(mode="diffqas"), 122),  # DiffQAS: the angles and 12 structural weights
        (dict(mode="fixed", arch=1), 0),  # angle-independent: nothing trained, nothing to match
    ],
)
def test_a_classical_control_has_the_circuits_trained_parameter_count(kw, circuit):
    torch.manual_seed(0)
    base = Generator(BESSEL, 10, options(**kw))
    torch.manual_seed(0)
    control = Generator(BESSEL, 10, options(source="classical", **kw))
    mapping = base.trainable_parameters() - circuit
    assert base.describe_source() == {"kind": "circuit", "params": circuit}
    info = control.describe_source()
    assert info["matched_to"] == circuit and abs(info["params"] - circuit) <= max(2, 0.1 * circuit)
    assert control.trainable_parameters() == mapping + info["params"]
    assert control.theta is None and control.structural is None and control.structural_weights() is None
    assert control.ranking() is None and control.angle_independent() == []
    # the mapping starts where the circuit run's does (the control draws from its own stream)
    assert all(torch.equal(a, b) for a, b in zip(base.mapping.parameters(), control.mapping.parameters()))
    # the random control trains the mapping alone
    torch.manual_seed(0)
    rand = Generator(BESSEL, 10, options(source="random", **kw))
    assert rand.trainable_parameters() == mapping and rand.describe_source()["params"] == 0


def test_the_random_vector_is_fixed_seeded_and_a_distribution():
    a = Generator(BESSEL, 10, options(source="random", seed=3))
    b = Generator(BESSEL, 10, options(source="random", seed=3))
    c = Generator(BESSEL, 10, options(source="random", seed=4))
    pa = a.probabilities()
    assert pa.shape == (2**11,) and pa.min() > 0 and float(pa.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(pa, b.probabilities()) and not torch.equal(pa, c.probabilities())
    assert pa.std() > 0.2 * pa.mean()  # not flat: a flat vector would carry no per-weight information
    # training moves the mapping, never the vector
    opt = torch.optim.Adam([p for p in a.parameters() if p.requires_grad], lr=0.1)
    before = a.mapping[0].weight.detach().clone()
    loss = (a()["w"] ** 2).sum()
    loss.backward()
    opt.step()
    assert torch.equal(a.probabilities(), pa) and not torch.equal(before, a.mapping[0].weight)
    # a checkpoint carries it; actor and critic (streams) get different vectors
    assert "control.vector" in a.state_dict()
    pair = GeneratorSet({"actor": BESSEL, "critic": BESSEL}, 10, options(source="random"))
    assert not torch.equal(pair.parts["actor"].probabilities(), pair.parts["critic"].probabilities())


def test_the_classical_control_is_trained_and_its_gradient_reaches_every_parameter():
    gen = Generator(BESSEL, 10, options(mode="fixed", arch=8, source="classical", seed=1))
    p0 = gen.probabilities().detach().clone()
    assert float(p0.sum()) == pytest.approx(1.0) and p0.std() > 0  # uneven from the start, as a circuit's
    (gen()["w"] ** 2).sum().backward()
    grads = {name: p.grad for name, p in gen.control.named_parameters()}
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    again = Generator(BESSEL, 10, options(mode="fixed", arch=8, source="classical", seed=1))
    assert torch.equal(again.probabilities(), p0)  # seeded


@pytest.mark.parametrize(
    "args, needle",
    [
        (["qt.source=random", "qt.shots=100"], "qt.shots=100"),
        (["qt.source=classical", "qt.eval_shots=10"], "qt.eval_shots=10"),
        (["qt.source=random", "search.strategy=race"], "search.strategy='race'"),
        (["qt.source=classical", "search.select=2"], "search.select=2"),
        (["qt.source=random", "qt.theta_init=normal"], "qt.theta_init='normal'"),
        # what a control would not read is refused, not ignored
        (["qt.source=random", "backend=pennylane"], "backend.name='pennylane'"),
        (["qt.source=classical", "search.structural=softmax"], "search.structural='softmax'"),
        (["qt.source=random", "backend.memory_mb=100"], "backend.memory_mb=100"),
    ],
)
def test_settings_a_control_cannot_use_are_refused_naming_the_key(args, needle):
    with pytest.raises(ConfigError, match="allowed") as err:
        validate(compose(["task=bessel", *args]))
    assert needle in str(err.value)


def test_a_bad_source_is_refused_on_one_line_listing_the_sources(tmp_path):
    proc = cli(["task=bessel", "qt.source=noise", "logger=none", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "qt.source" in lines[0] and "noise" in lines[0] and all(s in lines[0] for s in ("circuit", "random", "classical"))


@pytest.mark.parametrize(
    "task, extra",
    [
        ("bessel", ["search=fixed", "search.arch=8"]),
        ("damped_shm", []),
        ("mnist", ["task.classes=all", "task.model=cnn"]),
        ("minigrid", ["train.max_steps=2", "train.workers=2", "train.n_steps=2"]),
    ],
)
def test_every_task_runs_with_each_control_and_records_it(tmp_path, data_dir, task, extra):
    for source in ("random", "classical"):
        cfg = compose([f"task={task}", "debug=smoke", "logger=none", "figures=false", f"data_dir={data_dir}",
                       "train.threads=1", f"qt.source={source}", *extra])  # fmt: skip
        s = run_module.run(cfg, tmp_path / source, interactive=False)
        assert s["qt_source"] == source and s["source"]["kind"] == source
        assert s["simulator"]["kernel"] == "none" and s["structural_weights"] is None
        # no circuit ran, but the target may have run on the kernel: then its build is recorded
        assert (s["simulator"]["kernel_build"] is not None) == (s["simulator"]["target"] == "cpp")
        generators = s.get("generators", {"target": s})
        for g in generators.values():
            assert g["ranking"] is None
        model = torch.load(tmp_path / source / "model.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for t in model.values())
        assert json.loads((tmp_path / source / "summary.json").read_text())["qt_source"] == source


def test_the_aggregate_table_keeps_controls_in_rows_of_their_own(tmp_path):
    sweep = tmp_path / "sweep"
    for source in ("circuit", "random", "classical"):
        for seed in (0, 1):
            cfg = compose(["task=bessel", "debug=smoke", "logger=none", "figures=false", "search=fixed", "search.arch=8",
                           f"qt.source={source}", f"seed={seed}", "train.threads=1"])  # fmt: skip
            run_module.run(cfg, sweep / f"{source}_{seed}", interactive=False)
    aggregate.main([str(sweep), "--no-plots"])
    table = (sweep / "results.md").read_text()
    rows = [line for line in table.splitlines() if "Ent-Ry" in line]
    assert len(rows) == 3, table
    assert any("random control" in r for r in rows) and any("classical control" in r for r in rows)
    circuit = next(r for r in rows if "control" not in r)
    assert "1.410e-04" in circuit  # the paper's number stands beside the circuit's row only
    assert all("1.410e-04" not in r for r in rows if "control" in r)


def test_a_control_run_draws_its_figures_but_no_circuit(tmp_path):
    cfg = compose(["task=bessel", "debug=smoke", "logger=none", "figures=true", "qt.source=random", "train.threads=1"])
    run_module.run(cfg, tmp_path / "run", interactive=False)
    names = {p.name for p in (tmp_path / "run").glob("*.png")}
    assert "learning_curve.png" in names and "circuit.png" not in names  # no circuit ran
