"""One experiment, start to finish: validate, seed, build, train, write. Callable without Hydra."""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from . import tasks
from .config import BackendName, Progress, SearchMode, validate
from .qt import Generator
from .qt.generator import GeneratorOptions
from .quantum import candidate
from .record import Recorder
from .train.supervised import train_supervised

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generator_options(cfg) -> GeneratorOptions:
    native = cfg.backend.name == BackendName.native
    return GeneratorOptions(
        mode=cfg.search.mode.value,
        arch=cfg.search.arch,
        structural=cfg.search.structural.value,
        postprocess=cfg.qt.postprocess.value,
        toolkit=tuple(cfg.qt.toolkit),
        center_output=cfg.qt.center_output,
        mapping_hidden=tuple(cfg.qt.mapping_hidden),
        mapping_bits_init=cfg.qt.mapping_bits_init.value,
        theta_init=cfg.qt.theta_init.value,
        theta_std=cfg.qt.theta_std,
        tensor_scale=cfg.qt.tensor_scale.value,
        backend=cfg.backend.name.value,
        device="default.qubit" if native else cfg.backend.device,
        dtype=torch.float64 if cfg.backend.precision.value == "float64" else torch.float32,
    )


def _progress(cfg, interactive: bool):
    on = cfg.progress == Progress.on or (cfg.progress == Progress.auto and interactive and sys.stderr.isatty())
    if not on:
        return None
    from tqdm.auto import tqdm

    return lambda total: tqdm(total=total, desc="train", unit="step", leave=False)


def _sinks(cfg, run_dir: Path, group: str | None, name: str | None):
    if cfg.logger.name.value != "wandb" or cfg.logger.mode.value == "disabled":
        return []
    from .record.wandb_sink import WandbSink

    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return [WandbSink(cfg.logger, run_dir, config, group, name)]


def run(
    cfg, run_dir: str | Path, *, group: str | None = None, name: str | None = None, interactive: bool = True
) -> dict[str, Any]:
    """Run the experiment `cfg` (a RunConfig-typed DictConfig) writing into run_dir; return summary."""
    validate(cfg)
    run_dir = Path(run_dir)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    started = time.perf_counter()

    task = tasks.build(cfg.task, cfg.data_dir, cfg.download)
    model = task.build_model()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    device = cfg.backend.device if cfg.backend.name == BackendName.native else "cpu"
    generator = Generator(shapes, cfg.depth, generator_options(cfg)).to(device)
    classical = sum(s.numel() for s in shapes.values())
    log.info(
        "task=%s search=%s%s depth=%d backend=%s: classical params %s -> %d qubits -> QT trainable %d",
        cfg.task.name, cfg.search.mode.value, f" arch={cfg.search.arch}" if cfg.search.arch else "",
        cfg.depth, cfg.backend.name.value, f"{classical:,}", generator.n_qubits, generator.trainable_parameters(),
    )  # fmt: skip
    optimizer = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr)

    recorder = Recorder(run_dir, _sinks(cfg, run_dir, group, name))
    try:
        result = train_supervised(task, model, generator, optimizer, cfg.train, recorder, _progress(cfg, interactive), cfg.seed)
        with torch.no_grad():
            state = model.state_dict()
            state.update(generator())
        recorder.save_model(state)
        arch = cfg.search.arch if cfg.search.mode == SearchMode.fixed else None
        weights = generator.structural_weights()
        summary = {
            "task": cfg.task.name,
            "search": cfg.search.mode.value,
            "arch": arch,
            "arch_name": candidate(arch).name if arch else None,
            "depth": cfg.depth,
            "backend": cfg.backend.name.value,
            "seed": cfg.seed,
            "n_qubits": generator.n_qubits,
            "classical_params": classical,
            "qt_params": generator.trainable_parameters(),
            "structural_weights": None if weights is None else weights.detach().tolist(),
            "ranking": generator.ranking(),
            "metrics": result.metrics,
            "wall_seconds": time.perf_counter() - started,
            "steps": result.steps,
        }
        recorder.write_summary(summary)
        log.info("done in %.1f s: %s", summary["wall_seconds"], result.metrics)
        return summary
    finally:
        recorder.close()
