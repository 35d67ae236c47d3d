"""Synchronous advantage actor-critic (A2C) with n-step returns, on QT-generated actor and critic.

The paper trains with A3C (16 asynchronous workers). Here 16 environment copies step in lockstep
(gymnasium SyncVectorEnv, same-step autoreset) and one update follows every `n_steps` steps of all
of them: the synchronous variant SPEC.md section 4 accepts. The generators run once per update,
not per environment step: the rollout uses the weights generated for the update.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from ..tasks.minigrid import make_vector_env
from .supervised import NonFiniteLoss


@dataclass
class RLResult:
    metrics: dict[str, float | None]
    steps: int  # updates (optimisation steps)
    episodes: int
    seconds: float
    returns: list[float]


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


def train_a2c(task, model, generator, optimizer, train_cfg, recorder, progress=None, seed: int = 0) -> RLResult:
    n_envs, n_steps, gamma = train_cfg.workers, train_cfg.n_steps, train_cfg.gamma
    envs = make_vector_env(task.env_id, n_envs)
    obs_np, _ = envs.reset(seed=seed)
    actions_rng = torch.Generator().manual_seed(seed)
    ep_return, ep_length = np.zeros(n_envs), np.zeros(n_envs, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    since_log = {"returns": [], "lengths": [], "policy": [], "value": [], "entropy": []}
    update, env_steps = 0, 0
    start = last_log = time.perf_counter()
    last_log_steps = 0
    bar = progress(total=train_cfg.episodes) if progress else None

    def as_tensor(x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32)

    try:
        while len(returns) < train_cfg.episodes and (train_cfg.max_steps is None or update < train_cfg.max_steps):
            params = generator()
            frozen = {k: v.detach() for k, v in params.items()}
            obs, acts = [], []
            rew = torch.zeros(n_steps, n_envs)
            term = torch.zeros(n_steps, n_envs, dtype=torch.bool)
            trunc = torch.zeros(n_steps, n_envs, dtype=torch.bool)
            final_obs = torch.zeros(n_steps, n_envs, obs_np.shape[1])
            finished = 0
            for t in range(n_steps):
                o = as_tensor(obs_np)
                with torch.no_grad():
                    logits, _ = functional_call(model, frozen, (o,))
                    action = torch.multinomial(torch.softmax(logits, -1), 1, generator=actions_rng).squeeze(1)
                obs_np, r, te, tr, info = envs.step(action.numpy())
                obs.append(o)
                acts.append(action)
                rew[t], term[t], trunc[t] = as_tensor(r), torch.as_tensor(te), torch.as_tensor(tr)
                ep_return += r
                ep_length += 1
                for i in np.flatnonzero(te | tr):
                    final_obs[t, i] = as_tensor(info["final_obs"][i])
                    returns.append(float(ep_return[i]))
                    lengths.append(int(ep_length[i]))
                    since_log["returns"].append(returns[-1])
                    since_log["lengths"].append(lengths[-1])
                    ep_return[i], ep_length[i] = 0.0, 0
                    finished += 1
            env_steps += n_steps * n_envs

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
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss became {loss.item()} at update {update + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            update += 1
            since_log["policy"].append(policy_loss.item())
            since_log["value"].append(value_loss.item())
            since_log["entropy"].append(entropy.item())
            if bar and finished:
                bar.update(min(finished, train_cfg.episodes - bar.n))
            done = len(returns) >= train_cfg.episodes or (train_cfg.max_steps is not None and update >= train_cfg.max_steps)
            if update % train_cfg.log_every == 0 or done:
                now = time.perf_counter()
                row = {
                    "step": update,
                    "global_step": env_steps,
                    "episodes": len(returns),
                    "losses/policy_loss": statistics.fmean(since_log["policy"]),
                    "losses/value_loss": statistics.fmean(since_log["value"]),
                    "losses/entropy": statistics.fmean(since_log["entropy"]),
                    "charts/SPS": (env_steps - last_log_steps) / max(now - last_log, 1e-9),
                }
                if since_log["returns"]:
                    row["charts/episodic_return"] = statistics.fmean(since_log["returns"])
                    row["charts/episodic_length"] = statistics.fmean(since_log["lengths"])
                weights = generator.structural_weights()
                if weights is not None:
                    row["structural_weights"] = weights.detach().tolist()
                row["wall_seconds"] = now - start
                recorder.log(row)
                since_log = {k: [] for k in since_log}
                last_log, last_log_steps = now, env_steps
    finally:
        envs.close()
        if bar:
            bar.close()
    tail = returns[-max(1, len(returns) // 10) :]  # the last 10% of episodes: the paper's last 5,000 of 50,000
    metrics = {
        "mean_return": statistics.fmean(tail) if returns else None,
        "std_return": statistics.pstdev(tail) if returns else None,
        "episodes": len(returns),
        "env_steps": env_steps,
    }
    return RLResult(metrics, update, len(returns), time.perf_counter() - start, returns)


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
