"""Play a finished MiniGrid run's exported actor: `python -m diffqas_runner.evaluate RUN_DIR [--episodes N]`.

Loads `model.pt` (a plain state_dict) into the ordinary ActorCritic network: no quantum software,
no generator, no Hydra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from .tasks.minigrid import ActorCritic, play


def _fail(message: str):
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=10_000, help="environment seeds seed, seed+1, ...")
    parser.add_argument("--greedy", action="store_true", help="take the most probable action instead of sampling")
    parser.add_argument("--env-id", help="default: the run's task.env_id")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes={args.episodes} is not allowed; allowed: an integer >= 1")
    if not 0 <= args.seed < 2**31:
        parser.error(f"--seed={args.seed} is not allowed; allowed: 0..{2**31 - 1}")
    model_path = args.run_dir / "model.pt"
    if not model_path.is_file():
        _fail(f"{model_path} not found: RUN_DIR must be a finished task=minigrid run")
    try:
        config_path = args.run_dir / ".hydra" / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        task = config.get("task", {}) if isinstance(config, dict) else {}
    except yaml.YAMLError as err:
        _fail(f"{config_path}: not readable YAML ({str(err).splitlines()[0]})")
    if task.get("kind", "rl") != "rl":
        _fail(f"{args.run_dir} is a task={task.get('name')} run; allowed: a finished task=minigrid run")
    env_id = args.env_id or task.get("env_id") or "MiniGrid-Empty-5x5-v0"
    if not env_id.startswith("MiniGrid-"):
        _fail(f"--env-id={env_id!r} is not allowed; allowed: a MiniGrid-* environment id")
    model = ActorCritic(tuple(task.get("hidden", (32, 32))))
    try:
        model.load_state_dict(torch.load(model_path, weights_only=True))
    except Exception as err:
        _fail(f"{model_path} does not load into the run's ActorCritic ({type(err).__name__}: {str(err).splitlines()[0]})")
    try:
        returns = play(model, env_id, args.episodes, seed=args.seed, greedy=args.greedy)
    except Exception as err:  # gymnasium: an unknown id
        _fail(f"--env-id={env_id!r} cannot be played ({type(err).__name__}: {str(err).splitlines()[0]})")
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
