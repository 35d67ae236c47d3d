"""MiniGrid reinforcement learning (SPEC.md section 4): actor and critic MLPs on the flattened 7x7x3 view.

No quantum code here: `ActorCritic` is the plain target network that `model.pt` loads into, and
`play` runs it on the environment (used by `python -m diffqas_runner.evaluate`).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from minigrid.wrappers import ImgObsWrapper
from torch import nn

from ..nets import mlp

OBS_SIZE = 7 * 7 * 3
N_ACTIONS = 7
OBS_SCALE = 10.0  # MiniGrid's encoding uses small integers (object index up to 10): scaled to [0, 1]


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """One MiniGrid environment whose observation is the agent's 7x7x3 view flattened to 147 numbers."""
    import minigrid  # noqa: F401  (registers the MiniGrid-* ids)

    return gym.wrappers.FlattenObservation(ImgObsWrapper(gym.make(env_id, render_mode=render_mode)))


def make_vector_env(env_id: str, n: int) -> gym.vector.VectorEnv:
    """n synchronous copies; same-step autoreset, so a finished episode's last observation is in info['final_obs']."""
    return gym.vector.SyncVectorEnv([lambda: make_env(env_id)] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class ActorCritic(nn.Module):
    """Actor MLP 147-32-32-7 (6,023 weights) and critic MLP 147-32-32-1 (5,825 weights)."""

    def __init__(self, hidden=(32, 32)):
        super().__init__()
        self.actor = mlp([OBS_SIZE, *hidden, N_ACTIONS])
        self.critic = mlp([OBS_SIZE, *hidden, 1])

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (batch, 147) as the environment gives it -> (action logits (batch, 7), state values (batch,))."""
        x = obs / OBS_SCALE
        return self.actor(x), self.critic(x).squeeze(-1)


class MiniGridTask:
    kind = "rl"
    metric = "mean_return"
    objective = metric  # what a sweeper optimises (summary.json "objective")

    def __init__(self, env_id: str, hidden=(32, 32)):
        make_env(env_id).close()  # an unknown id fails here, before any work
        self.env_id = env_id
        self.hidden = tuple(hidden)

    def build_model(self) -> nn.Module:
        return ActorCritic(self.hidden)

    def parameter_groups(self, model: nn.Module) -> dict[str, dict[str, torch.Size]]:
        """One generator per network: {generator name: {parameter name: shape}}."""
        return {
            part: {k: v.shape for k, v in model.named_parameters() if k.startswith(f"{part}.")} for part in ("actor", "critic")
        }


@torch.no_grad()
def play(model: ActorCritic, env_id: str, episodes: int, seed: int = 0, greedy: bool = False) -> list[float]:
    """Returns of `episodes` episodes played by the actor (sampling its policy, or its argmax if greedy)."""
    env = make_env(env_id)
    rng = torch.Generator().manual_seed(seed)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            logits, _ = model(torch.as_tensor(np.asarray(obs), dtype=torch.float32)[None])
            action = logits.argmax(-1) if greedy else torch.multinomial(torch.softmax(logits, -1), 1, generator=rng)
            obs, reward, terminated, truncated, _ = env.step(int(action.item()))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns
