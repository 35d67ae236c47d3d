"""MiniGrid: shapes, the n-step returns by hand, gradients into both generators, the CLI, evaluation."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call

from diffqas_runner.qt import GeneratorSet
from diffqas_runner.tasks.minigrid import ActorCritic, MiniGridTask, make_env, make_vector_env
from diffqas_runner.train.a2c import nstep_returns


def test_observation_and_action_shapes():
    env = make_env("MiniGrid-Empty-5x5-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (147,) and env.action_space.n == 7
    envs = make_vector_env("MiniGrid-Empty-6x6-v0", 4)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (4, 147)
    envs.close()
    model = ActorCritic()
    logits, values = model(torch.as_tensor(obs, dtype=torch.float32))
    assert logits.shape == (4, 7) and values.shape == (4,)
    assert sum(p.numel() for p in model.actor.parameters()) == 6023
    assert sum(p.numel() for p in model.critic.parameters()) == 5825


def test_nstep_returns_by_hand():
    gamma = 0.9
    # env 0: rewards 0, 0, 1 (terminated at t=2), then a new episode: 0 at t=3, bootstrap V=0.5
    # env 1: rewards 0, 0 (truncated at t=1, V(final obs)=0.3), 0, 0, bootstrap V=0.2
    rewards = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    terminated = torch.tensor([[False, False], [False, False], [True, False], [False, False]])
    truncated = torch.tensor([[False, False], [False, True], [False, False], [False, False]])
    final_values = torch.tensor([[0.0, 0.0], [0.0, 0.3], [0.0, 0.0], [0.0, 0.0]])
    bootstrap = torch.tensor([0.5, 0.2])
    got = nstep_returns(rewards, terminated, truncated, bootstrap, final_values, gamma)
    want = torch.tensor(
        [
            [0.81, 0.81 * 0.3],  # env 0: 0 + .9 * (0 + .9 * 1); env 1: 0 + .9 * (0 + .9 * V(final))
            [0.9, 0.9 * 0.3],  # env 1 truncated here: r + gamma V(final obs)
            [1.0, 0.9 * 0.9 * 0.2],  # env 0 terminated: just r; env 1: two steps to the bootstrap
            [0.9 * 0.5, 0.9 * 0.2],
        ]
    )
    torch.testing.assert_close(got, want)


def test_gradients_reach_both_generators():
    torch.manual_seed(0)
    task = MiniGridTask("MiniGrid-Empty-5x5-v0")
    model = task.build_model()
    gens = GeneratorSet(task.parameter_groups(model), depth=2)
    assert (
        gens.n_qubits == 13 and [g.paper_parameters() for g in gens.parts.values()] == [2 * 13 + 12 + 15] * 2
    )  # angles, structural weights, Linear(14 -> 1)
    obs = torch.randint(0, 11, (8, 147)).float()
    logits, values = functional_call(model, gens(), (obs,))
    (torch.log_softmax(logits, -1)[:, 0].mean() + values.pow(2).mean()).backward()
    for name, p in gens.named_parameters():
        if p.requires_grad:  # the mappings' output biases are frozen (dead under the centred output)
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def _run_minigrid(out, *overrides, timeout=300) -> dict:
    args = ["task=minigrid", "logger=none", "progress=off", *overrides, f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "diffqas_runner", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "summary.json").read_text())


def test_smoke_run_and_evaluate_without_quantum_software(tmp_path):
    out = tmp_path / "run"
    summary = _run_minigrid(out, "debug=smoke", "train.max_steps=30")
    assert (summary["n_qubits"], summary["classical_params"], summary["qt_params"]) == (13, 6023 + 5825, 156 + 156)
    assert summary["qt_params_paper"] == 157 + 157
    assert summary["generators"]["actor"]["qt_params"] == 156 and summary["generators"]["critic"]["classical_params"] == 5825
    assert summary["steps"] == 30 and summary["metrics"]["env_steps"] == 30 * 16 * 5
    # 150 steps per environment copy, episodes end by step 100: every copy finishes at least one
    assert summary["metrics"]["episodes"] >= 16 and 0 <= summary["metrics"]["mean_return"] <= 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"charts/SPS", "losses/policy_loss", "losses/value_loss", "global_step"} <= rows[-1].keys()
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    check = (
        "import sys, json\nfrom diffqas_runner.evaluate import main\n"
        f"r = main([{str(out)!r}, '--episodes', '3'])\n"
        "assert not any(m.startswith(('pennylane', 'diffqas_runner.quantum', 'diffqas_runner.qt')) for m in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 3 and 0 <= result["mean_return"] <= 1


@pytest.mark.slow
def test_a2c_learns_empty_5x5(tmp_path):
    """A short real run: the mean return over the last 10% of 600 episodes beats a random policy's (~0.1-0.2) clearly."""
    summary = _run_minigrid(tmp_path / "run", "train.episodes=600", timeout=900)
    assert summary["metrics"]["mean_return"] > 0.6
