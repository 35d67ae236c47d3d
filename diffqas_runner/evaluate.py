"""Play a finished MiniGrid run's exported actor: `python -m diffqas_runner.evaluate RUN_DIR [--episodes N]`.

Loads `model.pt` (a plain state_dict) into the ordinary ActorCritic network: no quantum software,
no generator, no Hydra.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import yaml

from .tasks.minigrid import ActorCritic, play


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=10_000, help="environment seeds seed, seed+1, ...")
    parser.add_argument("--greedy", action="store_true", help="take the most probable action instead of sampling")
    parser.add_argument("--env-id", help="default: the run's task.env_id")
    args = parser.parse_args(argv)
    model_path = args.run_dir / "model.pt"
    if not model_path.is_file():
        raise SystemExit(f"Error: {model_path} not found: RUN_DIR must be a finished task=minigrid run")
    config = yaml.safe_load((args.run_dir / ".hydra" / "config.yaml").read_text()) if (args.run_dir / ".hydra").is_dir() else {}
    task = config.get("task", {})
    env_id = args.env_id or task.get("env_id") or "MiniGrid-Empty-5x5-v0"
    model = ActorCritic(tuple(task.get("hidden", (32, 32))))
    model.load_state_dict(torch.load(model_path, weights_only=True))
    returns = play(model, env_id, args.episodes, seed=args.seed, greedy=args.greedy)
    result = {
        "env_id": env_id,
        "episodes": args.episodes,
        "greedy": args.greedy,
        "mean_return": statistics.fmean(returns),
        "std_return": statistics.pstdev(returns),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
