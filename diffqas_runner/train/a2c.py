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


@dataclass
class Envs:
    """The environment copies and what a rollout carries from one update to the next."""

    vector: object  # gymnasium SyncVectorEnv
    obs: np.ndarray  # the current observation of every copy
    ep_return: np.ndarray  # the running episode's return and length, per copy
    ep_length: np.ndarray
    device: torch.device

    def tensor(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)


def rollout(envs: Envs, model, frozen: dict, actions_rng: torch.Generator, s: A2CState, n_steps: int, since: dict) -> Rollout:
    """n_steps of every copy with one update's (frozen) weights; finished episodes go into s and since."""
    n_envs, device = len(envs.ep_return), envs.device
    obs, acts = [], []
    rew = torch.zeros(n_steps, n_envs, device=device)
    term = torch.zeros(n_steps, n_envs, dtype=torch.bool, device=device)
    trunc = torch.zeros(n_steps, n_envs, dtype=torch.bool, device=device)
    final_obs = torch.zeros(n_steps, n_envs, envs.obs.shape[1], device=device)
    for t in range(n_steps):
        o = envs.tensor(envs.obs)
        with torch.no_grad():
            logits, _ = functional_call(model, frozen, (o,))
            action = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=actions_rng).squeeze(1)
        envs.obs, r, te, tr, info = envs.vector.step(action.numpy())
        obs.append(o)
        acts.append(action.to(device))
        rew[t], term[t], trunc[t] = envs.tensor(r), envs.tensor(te).bool(), envs.tensor(tr).bool()
        envs.ep_return += r
        envs.ep_length += 1
        for i in np.flatnonzero(te | tr):
            final_obs[t, i] = envs.tensor(info["final_obs"][i])
            s.returns.append(float(envs.ep_return[i]))
            s.lengths.append(int(envs.ep_length[i]))
            since["returns"].append(s.returns[-1])
            since["lengths"].append(s.lengths[-1])
            envs.ep_return[i], envs.ep_length[i] = 0.0, 0
    s.env_steps += n_steps * n_envs
    return Rollout(obs, acts, rew, term, trunc, final_obs, envs.tensor(envs.obs))


def a2c_loss(model, params: dict, frozen: dict, batch: Rollout, cfg) -> Losses:
    """The actor-critic loss on n-step returns: critic td^2, actor -log pi(a|s) td (td detached)."""
    n_steps, n_envs = batch.rewards.shape
    logits, values = functional_call(model, params, (torch.cat(batch.obs),))
    with torch.no_grad():
        _, bootstrap = functional_call(model, frozen, (batch.next_obs,))
        _, final_values = functional_call(model, frozen, (batch.final_obs.view(-1, batch.final_obs.shape[-1]),))
    returns = nstep_returns(
        batch.rewards, batch.terminated, batch.truncated, bootstrap, final_values.view(n_steps, n_envs), cfg.gamma
    )
    td = returns.view(-1) - values
    logp = torch.log_softmax(logits, -1)
    policy = -(logp.gather(1, torch.cat(batch.actions)[:, None]).squeeze(1) * td.detach()).mean()
    value = td.pow(2).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    return Losses(policy + cfg.value_coef * value - cfg.entropy_coef * entropy, policy, value, entropy)


def metrics_row(s: A2CState, since: dict, sps: float, generator, wall: float) -> dict:
    """One metrics row with CleanRL's names, over the updates since the last row."""
    row = {
        "step": s.update,
        "global_step": s.env_steps,
        "episodes": len(s.returns),
        "losses/policy_loss": statistics.fmean(since["policy"]),
        "losses/value_loss": statistics.fmean(since["value"]),
        "losses/entropy": statistics.fmean(since["entropy"]),
        "charts/SPS": sps,
    }
    if since["returns"]:
        row["charts/episodic_return"] = statistics.fmean(since["returns"])
        row["charts/episodic_length"] = statistics.fmean(since["lengths"])
    weights = generator.structural_weights()
    if weights is not None:
        row["structural_weights"] = weights.detach().tolist()
    row["wall_seconds"] = wall
    return row


def _since() -> dict[str, list]:
    return {"returns": [], "lengths": [], "policy": [], "value": [], "entropy": []}


def _result(s: A2CState) -> RLResult:
    tail = s.returns[-max(1, len(s.returns) // 10) :]  # the last 10% of episodes: the paper's last 5,000 of 50,000
    metrics = {
        "mean_return": statistics.fmean(tail) if s.returns else None,
        "std_return": statistics.pstdev(tail) if s.returns else None,
        "episodes": len(s.returns),
        "env_steps": s.env_steps,
    }
    return RLResult(metrics, s.update, len(s.returns), s.seconds, s.returns, s)


@contextmanager
def abandoned_on_stop(s: A2CState, checkpointer, snapshot):
    """Rollout, loss and backward stop at once on SIGTERM/SIGINT: the episodes they finished are
    dropped again, and the checkpoint saved is the previous update's."""
    episodes_before, env_steps_before = len(s.returns), s.env_steps
    try:
        with checkpointer.signals.immediate() if checkpointer is not None else nullcontext():
            yield
    except StopRequested as stop:
        del s.returns[episodes_before:], s.lengths[episodes_before:]
        s.env_steps = env_steps_before
        raise checkpointer.stopped(stop, s.update, snapshot) from None


def _start(task, cfg, seed: int, s: A2CState) -> tuple[Envs, torch.Generator]:
    """Fresh environment copies (seeded by the update count, so a resumed run's differ) and the
    action RNG (continued from the state when resuming)."""
    vector = make_vector_env(task.env_id, cfg.workers)
    first, _ = vector.reset(seed=seed + s.update * cfg.workers)
    envs = Envs(vector, first, np.zeros(cfg.workers), np.zeros(cfg.workers, dtype=np.int64),
                getattr(task, "device", torch.device("cpu")))  # fmt: skip
    actions_rng = torch.Generator().manual_seed(seed)
    if s.actions_rng is not None:
        actions_rng.set_state(s.actions_rng)
    return envs, actions_rng


def train_a2c(
    task, model, generator, optimizer, train_cfg, recorder, progress=None, seed: int = 0, checkpointer=None,
    state: A2CState | None = None,
) -> RLResult:  # fmt: skip
    """A2C until `train.episodes` episodes have finished (or `train.max_steps` updates), one loop
    top to bottom in CleanRL's manner. Resuming from `state` continues the counters, the episode
    list and the action RNG; the environments start afresh (seeded by the update count), so an
    episode under way when the run stopped is not counted and the continuation is not bitwise the
    uninterrupted run."""
    cfg, s = train_cfg, state or A2CState()
    envs, actions_rng = _start(task, cfg, seed, s)
    since, seconds, start = _since(), s.seconds, time.perf_counter()
    last_log, last_log_steps = start, s.env_steps
    if progress is not None:
        progress.skip(len(s.returns))

    def snapshot() -> dict:
        s.actions_rng, s.seconds = actions_rng.get_state(), seconds + time.perf_counter() - start
        return s.to_dict()

    def finished() -> bool:
        return len(s.returns) >= cfg.episodes or (cfg.max_steps is not None and s.update >= cfg.max_steps)

    try:
        while not finished():
            episodes_before, update = len(s.returns), s.update + 1
            with abandoned_on_stop(s, checkpointer, snapshot):
                generator.at_step(s.update)  # 1. this update's weights (finite shots: its sample, also after a resume)
                params = generator()
                frozen = {k: v.detach() for k, v in params.items()}
                batch = rollout(envs, model, frozen, actions_rng, s, cfg.n_steps, since)  # 2. n_steps of every copy
                losses = a2c_loss(model, params, frozen, batch, cfg)  # 3. the loss on n-step returns
                if not torch.isfinite(losses.total):  # 4. gradients, checked before the update
                    raise NonFiniteLoss(f"loss became {losses.total.item()} at update {update}", step=update)
                optimizer.zero_grad(set_to_none=True)
                losses.total.backward()
                check_gradients(generator, f"update {update}")
            optimizer.step()  # 5. the update
            check_parameters(generator, f"update {update}", step=update)
            s.update = update
            for key, loss in (("policy", losses.policy), ("value", losses.value), ("entropy", losses.entropy)):
                since[key].append(loss.item())
            if progress is not None:
                progress.advance(len(s.returns) - episodes_before)
            if s.update % cfg.log_every == 0 or finished():  # 6. a metrics row every train.log_every updates
                now = time.perf_counter()
                row = metrics_row(s, since, (s.env_steps - last_log_steps) / max(now - last_log, 1e-9), generator,
                                  seconds + now - start)  # fmt: skip
                recorder.log(row)
                if progress is not None:
                    progress.report(row, f"update {s.update}")
                since, last_log, last_log_steps = _since(), now, s.env_steps
            if checkpointer is not None:  # 7. a checkpoint on schedule, or on SIGTERM/SIGINT (which stops the run)
                checkpointer.after_step(s.update, snapshot)
    finally:
        envs.vector.close()
    snapshot()
    return _result(s)
