"""Synchronous advantage actor-critic (A2C) with n-step returns, on QT-generated actor and critic.

The paper trains with A3C (16 asynchronous workers). Here 16 environment copies step in lockstep
(gymnasium SyncVectorEnv, same-step autoreset) and one update follows every `n_steps` steps of all
of them: the synchronous variant SPEC.md section 4 accepts. The generators run once per update,
not per environment step: the rollout uses the weights generated for the update.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
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


def train_a2c(
    task, model, generator, optimizer, train_cfg, recorder, progress=None, seed: int = 0, checkpointer=None,
    state: A2CState | None = None,
) -> RLResult:  # fmt: skip
    """A2C until `train.episodes` episodes have finished (or `train.max_steps` updates).

    Resuming from `state` continues the counters, the episode list and the action RNG; the
    environments start afresh (seeded by the update count), so an episode that was under way
    when the run stopped is not counted, and the continuation is not bitwise the uninterrupted run.
    """
    n_envs, n_steps, gamma = train_cfg.workers, train_cfg.n_steps, train_cfg.gamma
    device = getattr(task, "device", torch.device("cpu"))
    s = state or A2CState()
    envs = make_vector_env(task.env_id, n_envs)
    obs_np, _ = envs.reset(seed=seed + s.update * n_envs)
    actions_rng = torch.Generator().manual_seed(seed)
    if s.actions_rng is not None:
        actions_rng.set_state(s.actions_rng)
    ep_return, ep_length = np.zeros(n_envs), np.zeros(n_envs, dtype=np.int64)
    since_log = {"returns": [], "lengths": [], "policy": [], "value": [], "entropy": []}
    seconds, start = s.seconds, time.perf_counter()
    last_log, last_log_steps = start, s.env_steps
    if progress is not None:
        progress.advance(len(s.returns))

    def as_tensor(x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)

    def snapshot() -> dict:
        s.actions_rng = actions_rng.get_state()
        s.seconds = seconds + time.perf_counter() - start
        return s.to_dict()

    def finished() -> bool:
        return len(s.returns) >= train_cfg.episodes or (train_cfg.max_steps is not None and s.update >= train_cfg.max_steps)

    try:
        while not finished():
            # Steps 1-3 (rollout, loss, backward) are abandoned at once on SIGTERM/SIGINT: the
            # episodes they finished are dropped again and the checkpoint is the previous update's.
            episodes_before, env_steps_before = len(s.returns), s.env_steps
            try:
                with checkpointer.signals.immediate() if checkpointer is not None else nullcontext():
                    # 1. rollout: n_steps of every environment copy with this update's (frozen) weights
                    generator.at_step(s.update)  # finite shots: this update's sample (also after a resume)
                    params = generator()
                    frozen = {k: v.detach() for k, v in params.items()}
                    obs, acts = [], []
                    rew = torch.zeros(n_steps, n_envs, device=device)
                    term = torch.zeros(n_steps, n_envs, dtype=torch.bool, device=device)
                    trunc = torch.zeros(n_steps, n_envs, dtype=torch.bool, device=device)
                    final_obs = torch.zeros(n_steps, n_envs, obs_np.shape[1], device=device)
                    for t in range(n_steps):
                        o = as_tensor(obs_np)
                        with torch.no_grad():
                            logits, _ = functional_call(model, frozen, (o,))
                            probs = torch.softmax(logits, -1).cpu()
                            action = torch.multinomial(probs, 1, generator=actions_rng).squeeze(1)
                        obs_np, r, te, tr, info = envs.step(action.numpy())
                        obs.append(o)
                        acts.append(action.to(device))
                        rew[t], term[t], trunc[t] = as_tensor(r), as_tensor(te).bool(), as_tensor(tr).bool()
                        ep_return += r
                        ep_length += 1
                        for i in np.flatnonzero(te | tr):
                            final_obs[t, i] = as_tensor(info["final_obs"][i])
                            s.returns.append(float(ep_return[i]))
                            s.lengths.append(int(ep_length[i]))
                            since_log["returns"].append(s.returns[-1])
                            since_log["lengths"].append(s.lengths[-1])
                            ep_return[i], ep_length[i] = 0.0, 0
                    s.env_steps += n_steps * n_envs

                    # 2. the actor-critic loss on n-step returns
                    logits, values = functional_call(model, params, (torch.cat(obs),))
                    with torch.no_grad():
                        _, bootstrap = functional_call(model, frozen, (as_tensor(obs_np),))
                        _, final_values = functional_call(model, frozen, (final_obs.view(-1, final_obs.shape[-1]),))
                    target = nstep_returns(rew, term, trunc, bootstrap, final_values.view(n_steps, n_envs), gamma).view(-1)
                    td = target - values
                    logp = torch.log_softmax(logits, -1)
                    policy_loss = -(logp.gather(1, torch.cat(acts)[:, None]).squeeze(1) * td.detach()).mean()
                    value_loss = td.pow(2).mean()
                    entropy = -(logp.exp() * logp).sum(-1).mean()
                    loss = policy_loss + train_cfg.value_coef * value_loss - train_cfg.entropy_coef * entropy

                    # 3. the update (never with a non-finite loss or gradient)
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(f"loss became {loss.item()} at update {s.update + 1}", step=s.update + 1)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    check_gradients(generator, f"update {s.update + 1}")
            except StopRequested as stop:
                del s.returns[episodes_before:], s.lengths[episodes_before:]
                s.env_steps = env_steps_before
                raise checkpointer.stopped(stop, s.update, snapshot) from None
            optimizer.step()
            check_parameters(generator, f"update {s.update + 1}", step=s.update + 1)
            s.update += 1
            since_log["policy"].append(policy_loss.item())
            since_log["value"].append(value_loss.item())
            since_log["entropy"].append(entropy.item())
            if progress is not None:
                progress.advance(len(s.returns) - episodes_before)

            # 4. a metrics row every train.log_every updates (CleanRL's names)
            if s.update % train_cfg.log_every == 0 or finished():
                now = time.perf_counter()
                row = {
                    "step": s.update,
                    "global_step": s.env_steps,
                    "episodes": len(s.returns),
                    "losses/policy_loss": statistics.fmean(since_log["policy"]),
                    "losses/value_loss": statistics.fmean(since_log["value"]),
                    "losses/entropy": statistics.fmean(since_log["entropy"]),
                    "charts/SPS": (s.env_steps - last_log_steps) / max(now - last_log, 1e-9),
                }
                if since_log["returns"]:
                    row["charts/episodic_return"] = statistics.fmean(since_log["returns"])
                    row["charts/episodic_length"] = statistics.fmean(since_log["lengths"])
                weights = generator.structural_weights()
                if weights is not None:
                    row["structural_weights"] = weights.detach().tolist()
                row["wall_seconds"] = seconds + now - start
                recorder.log(row)
                if progress is not None:
                    progress.report(row, f"update {s.update}")
                since_log = {k: [] for k in since_log}
                last_log, last_log_steps = now, s.env_steps

            # 5. a checkpoint on schedule or on SIGTERM/SIGINT (which then stops the run)
            if checkpointer is not None:
                checkpointer.after_step(s.update, snapshot)
    finally:
        envs.close()
    snapshot()
    tail = s.returns[-max(1, len(s.returns) // 10) :]  # the last 10% of episodes: the paper's last 5,000 of 50,000
    metrics = {
        "mean_return": statistics.fmean(tail) if s.returns else None,
        "std_return": statistics.pstdev(tail) if s.returns else None,
        "episodes": len(s.returns),
        "env_steps": s.env_steps,
    }
    return RLResult(metrics, s.update, len(s.returns), s.seconds, s.returns, s)


def learning_curve(returns: list[float], title: str):
    """Episode returns with a moving average, for learning_curve.png."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    if returns:
        x = np.arange(1, len(returns) + 1)
        ax.plot(x, returns, ".", ms=1.5, alpha=0.3, color="tab:blue", label="episode return")
        k = max(1, len(returns) // 50)
        smooth = np.convolve(returns, np.ones(k) / k, mode="valid")
        ax.plot(x[k - 1 :], smooth, color="tab:red", lw=1.5, label=f"moving average ({k})")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(title)
    return fig
