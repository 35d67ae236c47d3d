"""One experiment, start to finish: validate, seed, build, train, write. Callable without Hydra."""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from torch.func import functional_call

from . import tasks
from .config import BackendName, ConfigError, Progress, SearchMode, choice, validate
from .qt import GeneratorSet
from .qt.generator import GeneratorOptions
from .quantum import candidate
from .quantum.draw import draw_candidate
from .record import Recorder
from .train import checkpoint
from .train.checkpoint import CHECKPOINT, Checkpointer, differing_keys, fingerprint
from .train.supervised import LoopState, total_steps, train_supervised

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
        angles=cfg.search.angles.value,
        postprocess=cfg.qt.postprocess.value,
        toolkit=tuple(cfg.qt.toolkit),
        toolkit_negative=cfg.qt.toolkit_negative.value,
        center_output=cfg.qt.center_output,
        mapping_hidden=tuple(cfg.qt.mapping_hidden),
        mapping_bits_init=cfg.qt.mapping_bits_init.value,
        input_norm=cfg.qt.input_norm.value,
        theta_init=cfg.qt.theta_init.value,
        theta_std=cfg.qt.theta_std,
        tensor_scale=cfg.qt.tensor_scale.value,
        backend=cfg.backend.name.value,
        device="default.qubit" if native else cfg.backend.device,
        dtype=torch.float64 if cfg.backend.precision.value == "float64" else torch.float32,
    )


def build_optimizer(params, train_cfg) -> torch.optim.Optimizer:
    """The task's optimiser over the QT parameters (the task config sets the paper's choice)."""
    name = choice(train_cfg.optimizer)
    if name == "adam":
        return torch.optim.Adam(params, lr=train_cfg.lr, betas=tuple(train_cfg.betas), eps=train_cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=train_cfg.lr, alpha=train_cfg.alpha, eps=train_cfg.eps)
    raise ConfigError(f"train.optimizer={name!r} is not allowed; allowed: adam, rmsprop")


def build_scheduler(optimizer, train_cfg, total: int):
    """The per-step lr schedule: an optional linear warm-up over `train.warmup_steps`, then constant
    or a cosine decay to 0 over the remaining steps (None when the lr never changes)."""
    sched = torch.optim.lr_scheduler
    warmup = min(train_cfg.warmup_steps, total)
    after = None
    if choice(train_cfg.lr_schedule) == "cosine":
        after = sched.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    if not warmup:
        return after
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    return ramp if after is None else sched.SequentialLR(optimizer, [ramp, after], milestones=[warmup])


def _progress(cfg, interactive: bool):
    on = cfg.progress == Progress.on or (cfg.progress == Progress.auto and interactive and sys.stderr.isatty())
    if not on:
        return None
    from tqdm.auto import tqdm

    return lambda total: tqdm(total=total, desc="train", unit="step", leave=False)


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def _sinks(cfg, run_dir: Path, group: str | None, name: str | None, run_id: str | None = None):
    if cfg.logger.name.value != "wandb" or cfg.logger.mode.value == "disabled":
        return []
    from .record.wandb_sink import WandbSink

    return [WandbSink(cfg.logger, run_dir, _plain(cfg), group, name, run_id)]


# Keys that do not change a run's numbers: a checkpoint written under other values still resumes.
FINGERPRINT_IGNORES = ("logger", "progress", "resume", "data_dir", "download", "train.threads", "train.checkpoint_every")


def _retrain_top_k(cfg, run_dir: Path, summary: dict, metric: str) -> dict:
    """Discretise: train the top-k ranked candidates alone (same config and seed) in run_dir/retrain/arch_N."""
    up = tasks.higher_is_better(metric)
    results = []
    for arch in summary["ranking"][: cfg.search.retrain_top_k]:
        sub = cfg.copy()
        with open_dict(sub):
            sub.search.mode = SearchMode.fixed.value
            sub.search.arch = arch
            sub.search.retrain_top_k = 0
            sub.resume = None
            sub.logger.name = "none"  # the parent's wandb run gets the results in its summary
        log.info("retraining candidate %d (%s) alone", arch, candidate(arch).name)
        child = run(sub, run_dir / "retrain" / f"arch_{arch}", interactive=False)
        results.append({"arch": arch, "arch_name": candidate(arch).name, "metrics": child["metrics"]})
    values = [r["metrics"][metric] for r in results if r["metrics"].get(metric) is not None]
    best = (max if up else min)(values) if values else None
    own = summary["metrics"].get(metric)
    return {
        "metric": metric,
        "candidates": results,
        "best": best,
        # discrete minus ensemble, signed so that > 0 means the discrete circuit is better
        "gap": None if best is None or own is None else (best - own if up else own - best),
    }


def _circuit_figure(cfg, generator: GeneratorSet):
    """The fixed candidate, or DiffQAS's top-ranked one, drawn for circuit.png."""
    if cfg.search.mode == SearchMode.fixed:
        number, note = cfg.search.arch, "fixed candidate"
    else:
        number = generator.ranking()[0]
        note = f"DiffQAS top-ranked (w = {generator.structural_weights()[number - 1].item():.3f})"
    cand = candidate(number)
    return draw_candidate(cand, generator.n_qubits, cfg.depth, f"{note} {cand.number}: {cand.name}")


def _carry_over_metrics(source: Path, run_dir: Path) -> None:
    """resume=PATH into a new directory: start its metrics.jsonl from the source run's rows."""
    source = (source if source.is_dir() else source.parent) / "metrics.jsonl"
    target = run_dir / "metrics.jsonl"
    if source.is_file() and source.resolve() != target.resolve() and not target.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _find_checkpoint(cfg, run_dir: Path, fp: str) -> dict | None:
    """The checkpoint to resume: `resume=PATH` (a file or a run dir), else one already in run_dir."""
    if cfg.resume:
        path = Path(cfg.resume)
        path = path / CHECKPOINT if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(
                f"resume={cfg.resume!r}: no checkpoint there; allowed: a {CHECKPOINT} file or a run dir holding one"
            )
    else:
        path = run_dir / CHECKPOINT
        if not path.is_file():
            return None
    key = "resume" if cfg.resume else "checkpoint"
    try:
        ckpt = checkpoint.load(path)
    except Exception as err:
        raise ConfigError(
            f"{key}={str(path)!r}: cannot read the checkpoint ({type(err).__name__}: {err}); "
            "allowed: a checkpoint written by diffqas-run (delete a damaged one to start over)"
        ) from err
    if ckpt["meta"]["fingerprint"] != fp:
        keys = differing_keys(ckpt["meta"]["fingerprint"], fp)
        raise ConfigError(
            f"{path} was written by a run with other settings ({', '.join(keys)}); "
            "allowed: the same config to resume, or a new hydra.run.dir for a new run"
        )
    return ckpt


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
    groups = task.parameter_groups(model) if hasattr(task, "parameter_groups") else {"target": shapes}
    device = cfg.backend.device if cfg.backend.name == BackendName.native else "cpu"
    generator = GeneratorSet(groups, cfg.depth, generator_options(cfg)).to(device)
    classical = sum(s.numel() for s in shapes.values())
    log.info(
        "task=%s search=%s%s depth=%d backend=%s: classical params %s -> %d qubits -> QT trainable %d%s",
        cfg.task.name, cfg.search.mode.value, f" arch={cfg.search.arch}" if cfg.search.arch else "",
        cfg.depth, cfg.backend.name.value, f"{classical:,}", generator.n_qubits, generator.trainable_parameters(),
        "" if len(groups) == 1 else " (" + ", ".join(f"{k} {g.trainable_parameters()}" for k, g in generator.parts.items()) + ")",
    )  # fmt: skip
    optimizer = build_optimizer(generator.parameters(), cfg.train)
    rl = task.kind == "rl"
    scheduler = None if rl else build_scheduler(optimizer, cfg.train, total_steps(len(task.train.y), cfg.train))
    objects = {"generator": generator, "optimizer": optimizer}
    if scheduler is not None:
        objects["scheduler"] = scheduler
    meta = {"fingerprint": fingerprint(_plain(cfg), FINGERPRINT_IGNORES), "wandb_id": None}
    ckpt = _find_checkpoint(cfg, run_dir, meta["fingerprint"])
    if ckpt is not None and ckpt["finished"] and (run_dir / "summary.json").exists():
        log.info("%s already holds this finished run: nothing to do (delete it or pick another hydra.run.dir to rerun)", run_dir)
        return json.loads((run_dir / "summary.json").read_text())
    checkpointer = Checkpointer(run_dir / CHECKPOINT, cfg.train.checkpoint_every, objects, meta)
    resumed = None
    if ckpt is not None and rl:
        log.warning("RL runs do not resume mid-run (the environments' state is not saved): starting over")
    elif ckpt is not None:
        resumed = LoopState(**checkpointer.restore(ckpt))
        meta["wandb_id"] = ckpt["meta"].get("wandb_id")
        log.info("resuming from %s at step %d (epoch %d)", cfg.resume or run_dir / CHECKPOINT, resumed.step, resumed.epoch)

    resumed_step, prior_seconds = (resumed.step, resumed.seconds) if resumed else (None, 0.0)
    if resumed is not None and cfg.resume:
        _carry_over_metrics(Path(cfg.resume), run_dir)
    recorder = Recorder(run_dir, _sinks(cfg, run_dir, group, name, meta["wandb_id"]), resume_step=resumed_step)
    meta["wandb_id"] = recorder.run_id()
    try:
        progress = _progress(cfg, interactive)
        if rl:
            from .train.a2c import learning_curve, train_a2c  # gymnasium and MiniGrid only when needed

            result = train_a2c(task, model, generator, optimizer, cfg.train, recorder, progress, cfg.seed)
            figures = {"learning_curve.png": learning_curve(result.returns, f"{task.env_id}: episode returns")}
            loop = LoopState(step=result.steps, epoch=result.episodes, seconds=result.seconds)
        else:
            with checkpointer.signals:
                result = train_supervised(
                    task, model, generator, optimizer, cfg.train, recorder, progress, cfg.seed, scheduler, checkpointer, resumed
                )
            figures = {}
            loop = LoopState(step=result.steps, epoch=result.epochs, metrics=result.metrics, seconds=result.seconds)
        checkpointer.save(loop.to_dict(), finished=True)
        with torch.no_grad():
            generated = generator()
            state = model.state_dict()
            state.update(generated)
            if not rl:
                figures = task.figures(lambda x: functional_call(model, generated, (x,)))
        figures["circuit.png"] = _circuit_figure(cfg, generator)
        for fig_name, figure in figures.items():
            recorder.save_figure(fig_name, figure)
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
            "objective": task.objective,
            "wall_seconds": time.perf_counter() - started + prior_seconds,
            "steps": result.steps,
            "resumed_from_step": resumed_step,
        }
        if len(groups) > 1:  # RL: the first group (actor) is reported above; every group here
            summary["generators"] = {
                k: {
                    "n_qubits": g.n_qubits,
                    "classical_params": g.n_params,
                    "qt_params": g.trainable_parameters(),
                    "structural_weights": None if g.structural_weights() is None else g.structural_weights().detach().tolist(),
                    "ranking": g.ranking(),
                }
                for k, g in generator.parts.items()
            }
        if cfg.search.mode == SearchMode.diffqas and cfg.search.retrain_top_k:
            summary["retrain"] = _retrain_top_k(cfg, run_dir, summary, task.metric)
        recorder.write_summary(summary)
        log.info("done in %.1f s: %s", summary["wall_seconds"], result.metrics)
        return summary
    finally:
        recorder.close()
