"""Identical-candidate groups are exact in every mode (issue 23.1): finite shots, per-candidate
angles, and one weight per group in every report.

Before the fix, members of paper12's uniform group 1/3/4/6 were sampled apart under `qt.shots`
(their structural-weight gradients differed by ~1e-8) and wide32's 29/30 were merged under
`search.angles=per_candidate` although each has angles of its own."""

import torch

from diffqas_runner.config import search_space_file
from diffqas_runner.qt.generator import Generator, GeneratorOptions

SHAPES = {"w": torch.Size([200])}  # 8 qubits
WIDE32 = search_space_file("wide32")


def _one_step_grads(options: GeneratorOptions, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    gen = Generator(SHAPES, 3, options)
    target = torch.linspace(-1, 1, 200, dtype=torch.float32)
    ((gen()["w"] - target) ** 2).sum().backward()
    return gen


def _assert_members_equal(gen: Generator, values: torch.Tensor, what: str) -> None:
    for group in gen.groups:
        for member in group[1:]:
            a, b = values[group[0] - 1], values[member - 1]
            assert torch.equal(a, b), f"{what}: group {group}: {a.item()!r} != {b.item()!r} (member {member})"


def test_finite_shots_measure_each_group_once_so_members_get_equal_gradients():
    gen = _one_step_grads(GeneratorOptions(shots=1000, seed=3))
    assert (1, 3, 4, 6) in gen.groups and (9, 12) in gen.groups
    grads = gen.structural.grad
    assert grads.abs().max() > 0
    _assert_members_equal(gen, grads, "structural gradient under qt.shots")
    # and over several Adam steps the members' weights stay bitwise equal
    opt = torch.optim.Adam(gen.parameters(), lr=0.05)
    for _ in range(5):
        opt.step()
        opt.zero_grad()
        (gen()["w"] ** 2).sum().backward()
    _assert_members_equal(gen, gen.structural.detach(), "structural weight after 5 steps under qt.shots")
    # the groups really are sampled (not exact): different groups get different frequencies
    exact = _one_step_grads(GeneratorOptions(seed=3))
    assert not torch.allclose(exact.structural.grad, grads, atol=1e-6)


def test_finite_shots_on_wide32_share_one_draw_per_angle_dependent_group():
    gen = _one_step_grads(GeneratorOptions(space=WIDE32, shots=10_000, seed=1))
    assert (29, 30) in gen.groups  # CZ ring with Rx and with Ry from |0..0>: one distribution
    _assert_members_equal(gen, gen.structural.grad, "wide32 structural gradient under qt.shots")


def test_per_candidate_angles_only_group_what_ignores_the_angles():
    gen = _one_step_grads(GeneratorOptions(space=WIDE32, angles="per_candidate"))
    assert (29,) in gen.groups and (30,) in gen.groups and (29, 30) not in gen.groups
    assert (1, 3, 5, 7, 9, 11, 15) in gen.groups  # uniform whatever the angles: still one group
    _assert_members_equal(gen, gen.structural.grad, "per_candidate structural gradient")
    # why they must be apart: with their own angles 29 and 30 really get different gradients
    assert gen.structural.grad[28] != gen.structural.grad[29]
    shared = _one_step_grads(GeneratorOptions(space=WIDE32))
    assert (29, 30) in shared.groups


def test_one_weight_per_group_everywhere():
    """The ranking orders groups by the same number (`group_weights`: the members' mean) that the
    summary, the selection table and circuit.png report."""
    torch.manual_seed(0)
    gen = Generator(SHAPES, 3, GeneratorOptions())
    with torch.no_grad():  # members made unequal on purpose: the group's number is their mean
        gen.structural.copy_(torch.tensor([0.5, 0.2, -0.5, 0.5, 0.3, 0.4, 0.1, 0.1, 0.9, 0.0, 0.1, 0.1], dtype=torch.float64))
    weights = gen.group_weights()
    assert weights[(1, 3, 4, 6)] == (0.5 - 0.5 + 0.5 + 0.4) / 4
    assert weights[(9, 12)] == (0.9 + 0.1) / 2
    ranking = gen.ranking_groups()
    assert ranking[0] == [9, 12]
    # by the mean 5 (0.3) ranks above 1/3/4/6 (0.225), though members 1 and 4 alone have 0.5
    assert ranking.index([5]) < ranking.index([1, 3, 4, 6])
    ordered = [weights[tuple(g)] for g in ranking]
    assert ordered == sorted(ordered, reverse=True)
