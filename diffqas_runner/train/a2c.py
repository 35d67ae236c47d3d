"""Synchronous advantage actor-critic (A2C) with n-step returns, on QT-generated actor and critic.

The paper trains with A3C (16 asynchronous workers). Here 16 environment copies step in lockstep
(gymnasium SyncVectorEnv, same-step autoreset) and one update follows every `n_steps` steps of all
of them: the synchronous variant SPEC.md section 4 accepts. The generators run once per update,
not per environment step: the rollout uses the weights generated for the update.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from ..tasks.minigrid import make_vector_env
from .checkpoint import StopRequested
from .supervised import NonFiniteLoss, check_gradients, check_parameters


@dataclass
class RLResult:
    metrics: dict[str, float | None]
    steps: int  # updates (optimisation steps)
    episodes: int
    seconds: float
    returns: list[float]
    state: A2CState  # what the final checkpoint keeps


@dataclass
class A2CState:
    """What a checkpoint keeps of an RL run: counters, every finished episode, the action RNG.
    The environments are not saved: a resumed run makes new ones (see `train_a2c`)."""

    update: int = 0
    env_steps: int = 0
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seconds: float = 0.0
    actions_rng: torch.Tensor | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def nstep_returns(
    rewards: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor, bootstrap: torch.Tensor,
    final_values: torch.Tensor, gamma: float,
) -> torch.Tensor:  # fmt: skip
    """Bootstrapped n-step returns R_t for a (T, N) rollout.

    R_t = r_t                          if the episode terminated at t,
          r_t + gamma V(final obs_t)   if it was truncated at t (time limit: the state still has value),
          r_t + gamma R_{t+1}          otherwise, with R_T = V(s_T) (`bootstrap`, shape (N,)).
    """
    out = torch.empty_like(rewards)
    ret = bootstrap
    for t in reversed(range(rewards.shape[0])):
        ret = torch.where(terminated[t], torch.zeros_like(ret), torch.where(truncated[t], final_values[t], ret))
        ret = rewards[t] + gamma * ret
        out[t] = ret
    return out


@dataclass
class Rollout:
    """n_steps of every environment copy, taken with one update's (frozen) generated weights."""

    obs: list[torch.Tensor]  # n_steps x (N, 147)
    actions: list[torch.Tensor]  # n_steps x (N,)
    rewards: torch.Tensor  # (n_steps, N)
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor  # (n_steps, N, 147): the last observation of episodes that ended at t
    next_obs: torch.Tensor  # (N, 147): where the rollout leaves every copy


@dataclass
class Losses:
    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


class _A2C:
    """The loop's state and its named steps; `train_a2c` runs them in order (CleanRL's shape)."""

    def __init__(self, task, model, generator, optimizer, train_cfg, recorder, progress, seed, checkpointer, state):
        self.task, self.model, self.generator, self.optimizer = task, model, generator, optimizer
        self.cfg, self.recorder, self.progress, self.checkpointer = train_cfg, recorder, progress, checkpointer
        self.device = getattr(task, "device", torch.device("cpu"))
        self.s = state or A2CState()
        self.envs = make_vector_env(task.env_id, train_cfg.workers)
        self.obs_np, _ = self.envs.reset(seed=seed + self.s.update * train_cfg.workers)
        self.actions_rng = torch.Generator().manual_seed(seed)
        if self.s.actions_rng is not None:
            self.actions_rng.set_state(self.s.actions_rng)
        self.ep_return, self.ep_length = np.zeros(train_cfg.workers), np.zeros(train_cfg.workers, dtype=np.int64)
        self.since_log = self._empty_log()
        self.seconds, self.start = self.s.seconds, time.perf_counter()
        self.last_log, self.last_log_steps = self.start, self.s.env_steps
        if progress is not None:
            progress.skip(len(self.s.returns))

    @staticmethod
    def _empty_log() -> dict[str, list]:
        return {"returns": [], "lengths": [], "policy": [], "value": [], "entropy": []}

    def as_tensor(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)

    def snapshot(self) -> dict:
        self.s.actions_rng = self.actions_rng.get_state()
        self.s.seconds = self.seconds + time.perf_counter() - self.start
        return self.s.to_dict()

    def finished(self) -> bool:
        cap = self.cfg.max_steps
        return len(self.s.returns) >= self.cfg.episodes or (cap is not None and self.s.update >= cap)

    # 1. rollout
    def rollout(self, frozen: dict[str, torch.Tensor]) -> Rollout:
        s, n_steps, n_envs, device = self.s, self.cfg.n_steps, self.cfg.workers, self.device
        obs, acts = [], []
        rew = torch.zeros(n_steps, n_envs, device=device)
        term = torch.zeros(n_steps, n_envs, dtype=torch.bool, device=device)
        trunc = torch.zeros(n_steps, n_envs, dtype=torch.bool, device=device)
        final_obs = torch.zeros(n_steps, n_envs, self.obs_np.shape[1], device=device)
        for t in range(n_steps):
            o = self.as_tensor(self.obs_np)
            with torch.no_grad():
                logits, _ = functional_call(self.model, frozen, (o,))
                probs = torch.softmax(logits, -1).cpu()
                action = torch.multinomial(probs, 1, generator=self.actions_rng).squeeze(1)
            self.obs_np, r, te, tr, info = self.envs.step(action.numpy())
            obs.append(o)
            acts.append(action.to(device))
            rew[t], term[t], trunc[t] = self.as_tensor(r), self.as_tensor(te).bool(), self.as_tensor(tr).bool()
            self.ep_return += r
            self.ep_length += 1
            for i in np.flatnonzero(te | tr):
                final_obs[t, i] = self.as_tensor(info["final_obs"][i])
                s.returns.append(float(self.ep_return[i]))
                s.lengths.append(int(self.ep_length[i]))
                self.since_log["returns"].append(s.returns[-1])
                self.since_log["lengths"].append(s.lengths[-1])
                self.ep_return[i], self.ep_length[i] = 0.0, 0
        s.env_steps += n_steps * n_envs
        return Rollout(obs, acts, rew, term, trunc, final_obs, self.as_tensor(self.obs_np))

    # 2. the actor-critic loss on n-step returns
    def loss(self, params: dict, frozen: dict, batch: Rollout) -> Losses:
        cfg, n_steps, n_envs = self.cfg, self.cfg.n_steps, self.cfg.workers
        logits, values = functional_call(self.model, params, (torch.cat(batch.obs),))
        with torch.no_grad():
            _, bootstrap = functional_call(self.model, frozen, (batch.next_obs,))
            _, final_values = functional_call(self.model, frozen, (batch.final_obs.view(-1, batch.final_obs.shape[-1]),))
        returns = nstep_returns(
            batch.rewards, batch.terminated, batch.truncated, bootstrap, final_values.view(n_steps, n_envs), cfg.gamma
        )
        td = returns.view(-1) - values
        logp = torch.log_softmax(logits, -1)
        policy = -(logp.gather(1, torch.cat(batch.actions)[:, None]).squeeze(1) * td.detach()).mean()
        value = td.pow(2).mean()
        entropy = -(logp.exp() * logp).sum(-1).mean()
        return Losses(policy + cfg.value_coef * value - cfg.entropy_coef * entropy, policy, value, entropy)

    # 3. gradients, checked before the update (never a non-finite loss or gradient)
    def backward(self, losses: Losses) -> None:
        update = self.s.update + 1
        if not torch.isfinite(losses.total):
            raise NonFiniteLoss(f"loss became {losses.total.item()} at update {update}", step=update)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        check_gradients(self.generator, f"update {update}")

    def step(self, losses: Losses, episodes_before: int) -> None:
        self.optimizer.step()
        check_parameters(self.generator, f"update {self.s.update + 1}", step=self.s.update + 1)
        self.s.update += 1
        self.since_log["policy"].append(losses.policy.item())
        self.since_log["value"].append(losses.value.item())
        self.since_log["entropy"].append(losses.entropy.item())
        if self.progress is not None:
            self.progress.advance(len(self.s.returns) - episodes_before)

    # 4. a metrics row every train.log_every updates (CleanRL's names)
    def log(self) -> None:
        s, since = self.s, self.since_log
        if s.update % self.cfg.log_every != 0 and not self.finished():
            return
        now = time.perf_counter()
        row = {
            "step": s.update,
            "global_step": s.env_steps,
            "episodes": len(s.returns),
            "losses/policy_loss": statistics.fmean(since["policy"]),
            "losses/value_loss": statistics.fmean(since["value"]),
            "losses/entropy": statistics.fmean(since["entropy"]),
            "charts/SPS": (s.env_steps - self.last_log_steps) / max(now - self.last_log, 1e-9),
        }
        if since["returns"]:
            row["charts/episodic_return"] = statistics.fmean(since["returns"])
            row["charts/episodic_length"] = statistics.fmean(since["lengths"])
        weights = self.generator.structural_weights()
        if weights is not None:
            row["structural_weights"] = weights.detach().tolist()
        row["wall_seconds"] = self.seconds + now - self.start
        self.recorder.log(row)
        if self.progress is not None:
            self.progress.report(row, f"update {s.update}")
        self.since_log = self._empty_log()
        self.last_log, self.last_log_steps = now, s.env_steps

    # 5. a checkpoint on schedule or on SIGTERM/SIGINT (which then stops the run)
    def checkpoint(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.after_step(self.s.update, self.snapshot)

    @contextmanager
    def abandoned_on_stop(self):
        """Rollout, loss and backward stop at once on SIGTERM/SIGINT: the episodes they finished
        are dropped again, and the checkpoint saved is the previous update's."""
        episodes_before, env_steps_before = len(self.s.returns), self.s.env_steps
        signals = self.checkpointer.signals.immediate() if self.checkpointer is not None else nullcontext()
        try:
            with signals:
                yield
        except StopRequested as stop:
            del self.s.returns[episodes_before:], self.s.lengths[episodes_before:]
            self.s.env_steps = env_steps_before
            raise self.checkpointer.stopped(stop, self.s.update, self.snapshot) from None

    def result(self) -> RLResult:
        s = self.s
        self.snapshot()
        tail = s.returns[-max(1, len(s.returns) // 10) :]  # the last 10% of episodes: the paper's last 5,000 of 50,000
        metrics = {
            "mean_return": statistics.fmean(tail) if s.returns else None,
            "std_return": statistics.pstdev(tail) if s.returns else None,
            "episodes": len(s.returns),
            "env_steps": s.env_steps,
        }
        return RLResult(metrics, s.update, len(s.returns), s.seconds, s.returns, s)


def train_a2c(
    task, model, generator, optimizer, train_cfg, recorder, progress=None, seed: int = 0, checkpointer=None,
    state: A2CState | None = None,
) -> RLResult:  # fmt: skip
    """A2C until `train.episodes` episodes have finished (or `train.max_steps` updates).

    Resuming from `state` continues the counters, the episode list and the action RNG; the
    environments start afresh (seeded by the update count), so an episode that was under way
    when the run stopped is not counted, and the continuation is not bitwise the uninterrupted run.
    """
    loop = _A2C(task, model, generator, optimizer, train_cfg, recorder, progress, seed, checkpointer, state)
    try:
        while not loop.finished():
            episodes_before = len(loop.s.returns)
            with loop.abandoned_on_stop():
                generator.at_step(loop.s.update)  # finite shots: this update's sample (also after a resume)
                params = generator()
                frozen = {k: v.detach() for k, v in params.items()}
                batch = loop.rollout(frozen)
                losses = loop.loss(params, frozen, batch)
                loop.backward(losses)
            loop.step(losses, episodes_before)
            loop.log()
            loop.checkpoint()
    finally:
        loop.envs.close()
    return loop.result()
