"""One experiment, start to finish: validate, build, restore, train, select, write. Callable without Hydra."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict
from torch.func import functional_call

from . import tasks, threads
from .config import (
    ADDED_KEYS,
    BOOKKEEPING_KEYS,
    BackendName,
    ConfigError,
    SearchMode,
    TaskKind,
    choice,
    normalize_shots,
    strategy_of,
    validate,
)
from .device import place, run_device
from .qt import GeneratorSet
from .qt.generator import GeneratorOptions
from .quantum import kernel
from .quantum.candidates import space_digest
from .record import Recorder
from .record import figures as plots
from .record.circuit_figure import draw_candidate
from .record.failures import FAILURE, clear_failure, write_failure
from .record.lock import DirectoryInUse, lock_directory, unlock_directory
from .record.progress import Progress
from .selection import select
from .train import checkpoint, fused_step, optim
from .train.checkpoint import (
    CHECKPOINT,
    Checkpointer,
    Interrupted,
    StopRequested,
    StopSignals,
    describe_differences,
    differing_keys,
    fingerprint,
)
from .train.supervised import LoopState, NonFiniteLoss, total_steps, train_supervised

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(params, train_cfg) -> torch.optim.Optimizer:
    """The task's optimiser over the QT parameters (the task config sets the paper's choice): torch's
    own Adam or RMSprop, minus the torch.compile wrappers that import torch._dynamo (train/optim.py)."""
    name = choice(train_cfg.optimizer)
    if name == "adam":
        return optim.Adam(params, lr=train_cfg.lr, betas=tuple(train_cfg.betas), eps=train_cfg.eps)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=train_cfg.lr, alpha=train_cfg.alpha, eps=train_cfg.eps)
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


def _plain(cfg) -> dict:
    """The config as plain data, shot counts as ints (`qt.shots=1e3` and `=1000` are one run)."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    normalize_shots(plain.get("qt", {}))
    return plain


@dataclass
class Experiment:
    """Everything `build` makes from a config: the task and its target network, the generator that
    writes the target's weights, the optimiser and schedule over the generator's parameters."""

    task: Any
    model: torch.nn.Module
    groups: dict[str, dict[str, torch.Size]]
    generator: GeneratorSet
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device

    @property
    def rl(self) -> bool:
        return self.task.kind == TaskKind.rl.value

    @property
    def classical_params(self) -> int:
        return sum(s.numel() for g in self.groups.values() for s in g.values())


def _source_note(generator) -> str:
    """The build line's word on a control: what replaces the circuit's probabilities."""
    if generator.control is None:
        return ""
    info = generator.describe_source()
    size = f"{info['params']} params, the circuit's {info['matched_to']}" if "matched_to" in info else "fixed"
    return f" qt.source={info['kind']} (a control in place of the circuit: {size})"


def describe(cfg, exp: Experiment) -> None:
    """The run's first line: what is built, and how many parameters train."""
    generator, groups, device = exp.generator, exp.groups, exp.device
    log.info(
        "task=%s search=%s%s%s search_space=%s (%d candidates) depth=%d backend=%s device=%s: "
        "classical params %s -> %d qubits -> QT trainable %d%s",
        cfg.task.name, cfg.search.mode.value if cfg.search.supernet else "race (search.supernet=false: no DiffQAS run)",
        f" arch={cfg.search.arch}" if cfg.search.arch else "",
        _source_note(generator.first), cfg.search_space.name,
        len(generator.first.space), cfg.depth,
        cfg.backend.name.value, device, f"{exp.classical_params:,}", generator.n_qubits, generator.trainable_parameters(),
        "" if len(groups) == 1 else " (" + ", ".join(f"{k} {g.trainable_parameters()}" for k, g in generator.parts.items()) + ")",
    )  # fmt: skip


def build(cfg) -> Experiment:
    """Data (or environment), target network, generator, optimiser: all on the run's device."""
    task = tasks.build(cfg.task, cfg.data_dir, cfg.download, cfg.seed)
    model = task.build_model()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    groups = task.parameter_groups(model) if hasattr(task, "parameter_groups") else {"target": shapes}
    generator = GeneratorSet(groups, cfg.depth, GeneratorOptions.from_config(cfg))
    device = run_device(cfg.backend)
    place(device, task, model, generator)
    if hasattr(model, "native"):  # a target with a kernel.cpp path (nets.LSTMRegressor): with the simulator's
        model.native = choice(cfg.backend.name) == BackendName.native.value and device.type == "cpu"
        if model.native:  # decided now, not at the first simulation: a control's run takes the same path
            kernel.load()
    optimizer = build_optimizer(generator.parameters(), cfg.train)
    scheduler = None
    if choice(cfg.task.kind) != TaskKind.rl.value:
        total = total_steps(len(task.train.y), cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, total)
        for part in generator.parts.values():
            part.anneal_steps = total  # gumbel's temperature schedule spans the run
    exp = Experiment(task, model, groups, generator, optimizer, scheduler, device)
    return exp


# --- restore: the checkpoint to continue from -----------------------------------------------
class DirectoryConflict(ConfigError):
    """The run directory holds another run's results (a checkpoint of other settings, a finished run)."""


def _carry_over_metrics(source: Path, run_dir: Path) -> None:
    """resume=PATH into a new directory: start its metrics.jsonl from the source run's rows."""
    source = (source if source.is_dir() else source.parent) / "metrics.jsonl"
    target = run_dir / "metrics.jsonl"
    if source.is_file() and source.resolve() != target.resolve() and not target.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def find_checkpoint(cfg, run_dir: Path, fp: str) -> dict | None:
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
    if differing_keys(ckpt["meta"]["fingerprint"], fp, ADDED_KEYS):
        raise DirectoryConflict(
            f"{path} was written by a run with other settings "
            f"({describe_differences(ckpt['meta']['fingerprint'], fp, ADDED_KEYS)}); "
            "allowed: the same config to resume, another hydra.run.dir (hydra.sweep.dir in a sweep) for a new run, "
            "or fresh=true to delete its results and start over"
        )
    return ckpt


def restore(cfg, exp: Experiment, run_dir: Path, ckpt: dict | None, meta: dict, signals: StopSignals):
    """The run's checkpointer, and the loop state to continue from (None: a fresh start):
    a LoopState for the supervised loop, an A2CState for RL."""
    objects = {"generator": exp.generator, "optimizer": exp.optimizer}
    if exp.scheduler is not None:
        objects["scheduler"] = exp.scheduler
    checkpointer = Checkpointer(run_dir / CHECKPOINT, cfg.train.checkpoint_every, objects, meta, signals)
    if ckpt is None:
        return checkpointer, None
    loop = checkpointer.restore(ckpt)
    meta["wandb_id"] = ckpt["meta"].get("wandb_id")
    if exp.rl:
        from .train.a2c import A2CState

        resumed = A2CState(**loop)
        log.info(
            "resuming from %s at update %d (%d episodes; the environments start afresh)",
            cfg.resume or run_dir / CHECKPOINT, resumed.update, len(resumed.returns),
        )  # fmt: skip
    else:
        resumed = LoopState(**loop)
        log.info("resuming from %s at step %d (epoch %d)", cfg.resume or run_dir / CHECKPOINT, resumed.step, resumed.epoch)
    if cfg.resume:
        _carry_over_metrics(Path(cfg.resume), run_dir)
    return checkpointer, resumed


# --- train ------------------------------------------------------------------------------------
@dataclass
class Trained:
    loop: LoopState
    figures: dict


def train(cfg, exp: Experiment, recorder: Recorder, checkpointer: Checkpointer, resumed, interactive: bool) -> Trained:
    """The task's loop (supervised or actor-critic), then its final checkpoint."""
    mode = Progress.choose(choice(cfg.progress), interactive)
    if exp.rl:
        from .train.a2c import train_a2c  # gymnasium and MiniGrid only when needed

        progress = Progress(mode, cfg.train.episodes, "episode", "charts/episodic_return")
        try:
            result = train_a2c(
                exp.task, exp.model, exp.generator, exp.optimizer, cfg.train, recorder, progress, cfg.seed, checkpointer, resumed
            )
        finally:
            progress.close()
        figures = (
            {"learning_curve.png": plots.returns(result.returns, f"{exp.task.env_id}: episode returns")} if cfg.figures else {}
        )
        loop = LoopState(step=result.steps, epoch=result.episodes, metrics=result.metrics, seconds=result.seconds)
        final = result.state.to_dict()
    else:
        total = total_steps(len(exp.task.train.y), cfg.train)
        shown = exp.task.objective if exp.task.objective.startswith("val_") else exp.task.metric  # shown, not chosen on
        progress = Progress(mode, total, "step", shown, done=resumed.step if resumed else 0)
        try:
            result = train_supervised(
                exp.task, exp.model, exp.generator, exp.optimizer, cfg.train, recorder, progress, cfg.seed,
                exp.scheduler, checkpointer, resumed,
            )  # fmt: skip
        finally:
            progress.close()
        figures = {}
        loop = LoopState(step=result.steps, epoch=result.epochs, metrics=result.metrics, seconds=result.seconds)
        final = loop.to_dict()
    checkpointer.save(final, finished=True)
    return Trained(loop, figures)


# --- write ------------------------------------------------------------------------------------
def _circuit_figure(cfg, generator: GeneratorSet):
    """The fixed candidate, or DiffQAS's top angle-dependent group (its lowest number), for circuit.png."""
    if cfg.search.mode == SearchMode.fixed:
        number, note = cfg.search.arch, "fixed candidate"
    else:
        independent = set(generator.angle_independent())
        groups = generator.ranking_groups()
        top = next((g for g in groups if g[0] not in independent), groups[0])
        above = groups[: groups.index(top)]
        weight = generator.group_weights()[tuple(top)]
        members = f" (group {', '.join(map(str, top))})" if len(top) > 1 else ""
        note = f"DiffQAS top angle-dependent{members}, w = {weight:.3f}"
        if above:
            note += "; ranked above it: angle-independent " + "; ".join(",".join(map(str, g)) for g in above)
        note += "\n"
        number = top[0]
    cand = generator.first.space[number - 1]
    return draw_candidate(cand, generator.n_qubits, cfg.depth, f"{note} {cand.number}: {cand.name}")


GROUP_KEYS = ("structural_weights", "ranking", "ranking_groups", "group_weights")


def _generator_summary(g) -> dict:
    weights = g.structural_weights()
    group_weights = g.group_weights()
    return {
        "n_qubits": g.n_qubits,
        "classical_params": g.n_params,
        "qt_params": g.trainable_parameters(),
        "qt_params_paper": g.paper_parameters(),
        "structural_weights": None if weights is None else weights.detach().tolist(),
        "ranking": g.ranking(),
        "ranking_groups": g.ranking_groups(),
        "group_weights": None if group_weights is None else [group_weights[tuple(grp)] for grp in g.ranking_groups()],
    }


def simulator_record(cfg, generator, model: torch.nn.Module | None = None, step: str = "autograd") -> dict:
    """How the probabilities were computed (CONTRACT "Reproducibility"): results are bitwise
    reproducible for one version, platform, thread count, kernel path and dtype, and equal within
    tolerance across them, so every summary says which it had. `kernel_build`: which build of
    kernel.cpp ran the circuit or the target (its source, flags, compiler and CPU; None when neither
    ran on it); `target`: where the target network
    ran, "cpp" for the LSTM on kernel.cpp (nets.LSTMRegressor.native), else "torch"; `step`: "fused"
    when a training step was one kernel call (train/fused_step.py), else "autograd"."""
    from . import __version__

    backend = cfg.backend.name.value
    if generator.control is not None:
        path = "none"  # a control: no circuit was simulated
    elif backend == "pennylane":
        path = f"pennylane ({cfg.backend.device})"
    else:
        path = kernel.in_use() or "torch"
    target = "cpp" if getattr(model, "native", False) and kernel.loaded() is not None else "torch"
    return {
        "backend": backend,
        "kernel": path,
        "kernel_build": kernel.build_id() if path.startswith("cpp") or target == "cpp" else None,  # which kernel.cpp
        "device": str(generator.theta.device if generator.theta is not None else generator.mapping[0].weight.device),
        "dtype": str(generator.options.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "version": __version__,  # of the code that ran, installed or not
        "torch": str(torch.__version__),  # a plain str (torch.__version__ is a str subclass a weights-only load refuses)
        "platform": f"{platform.system()} {platform.machine()}",
        "target": target,
        "step": step,
    }


def _step_path(exp: Experiment) -> str:
    return "fused" if fused_step.applies(exp.task, exp.model, exp.generator) else "autograd"


def summarize(cfg, exp: Experiment, trained: Trained, seconds: float, resumed_step, earlier: list | None = None) -> dict:
    """summary.json's content for a trained run (the selection stage adds its own keys)."""
    generator, loop = exp.generator, trained.loop
    arch = cfg.search.arch if cfg.search.mode == SearchMode.fixed else None
    summary = {
        "task": cfg.task.name,
        "search": cfg.search.mode.value,
        "arch": arch,
        "arch_name": generator.first.space[arch - 1].name if arch else None,
        "search_space": cfg.search_space.name,
        "search_space_digest": space_digest(generator.first.space),
        "n_candidates": len(generator.first.space),
        "candidates": [c.name for c in generator.first.space],
        "depth": cfg.depth,
        "backend": cfg.backend.name.value,
        "seed": cfg.seed,
        "n_qubits": generator.n_qubits,
        "classical_params": exp.classical_params,
        "qt_params": generator.trainable_parameters(),
        "qt_params_paper": generator.paper_parameters(),
        **{k: v for k, v in _generator_summary(generator.first).items() if k in GROUP_KEYS},
        "angle_independent": generator.angle_independent(),
        "metrics": loop.metrics,
        "objective": exp.task.objective,
        "wall_seconds": seconds,
        "steps": loop.step,
        "resumed_from_step": resumed_step,
        "torch_threads": torch.get_num_threads(),
        "shots": generator.first.options.shots,
        "eval_shots": generator.first.eval_shots,
        "qt_source": generator.first.options.source,
        "source": generator.first.describe_source(),
        "simulator": {**simulator_record(cfg, generator.first, exp.model, _step_path(exp)), "earlier": earlier or []},
    }
    if len(exp.groups) > 1:  # RL: the first group (actor) is reported above; every group here
        summary["generators"] = {k: _generator_summary(g) for k, g in generator.parts.items()}
    return summary


def check_contenders(cfg, exp: Experiment) -> None:
    """Before any training: a selection strategy needs an angle-dependent candidate to name (the
    others' outputs ignore their angles, so there is nothing to train or compare)."""
    if cfg.search.mode != SearchMode.diffqas or strategy_of(cfg.search) == "none":
        return
    gen = exp.generator.first
    if set(gen.angle_independent()) >= {c.number for c in gen.candidates}:
        raise ConfigError(
            f"search.strategy={strategy_of(cfg.search)}: every candidate of search_space={cfg.search_space.name} ignores "
            f"its angles at depth {cfg.depth} (constant outputs), so there is nothing to select; allowed: a search space "
            "with at least one angle-dependent candidate (e.g. paper12)"
        )


def select_stage(cfg, exp: Experiment, run_dir: Path, summary: dict) -> dict:
    """After DiffQAS: `search.strategy` (or `search.select=K`) names the circuit, training child
    runs through `run` (selection.py); its keys for summary.json ({} when there is nothing to select)."""
    if cfg.search.mode != SearchMode.diffqas or strategy_of(cfg.search) == "none":
        return {}
    return select(run, cfg, exp, run_dir, summary)


def pick_as_result(run_dir: Path, summary: dict) -> dict:
    """`search=race` (search.supernet=false): nothing but the race was trained, so the run's result
    is its pick's full standalone run (metrics, parameter counts, and in write() model.pt). The
    summary says `search: race`; there are no structural weights (null) and no group weights; the
    ranking is the race's order (finalists by their mean at the full run, then the groups cut
    earlier); `wall_seconds` is the whole race (the run's set-up and every child run)."""
    pick = json.loads((run_dir / "select" / f"arch_{summary['selected_arch']}" / "summary.json").read_text())
    order = [row["group"] for row in summary["selection"]["contenders"]]
    result = {
        "search": "race",
        "metrics": pick["metrics"],
        **{k: pick[k] for k in ("qt_params", "qt_params_paper", "classical_params", "simulator")},
        "structural_weights": None,
        "ranking": [g[0] for g in order],
        "ranking_groups": order,
        "wall_seconds": summary["selection"]["cost"]["wall_seconds"],
    }
    summary.pop("group_weights", None)
    return result


def stage_figures(cfg, exp: Experiment, summary: dict) -> dict:
    """The selection stage's figure for write(): selected_circuit.png, the circuit it named ({} if none)."""
    if summary.get("selected_arch") is None or not cfg.figures:
        return {}
    return {"selected_circuit.png": _selected_figure(cfg, exp.generator, summary)}


def _selected_figure(cfg, generator: GeneratorSet, summary: dict):
    cand = generator.first.space[summary["selected_arch"] - 1]
    strategy = summary["selection"]["strategy"]
    return draw_candidate(
        cand, generator.n_qubits, cfg.depth, f"selected by search.strategy={strategy}\n {cand.number}: {cand.name}"
    )


def write(cfg, exp: Experiment, recorder: Recorder, figures: dict, summary: dict, network: dict | None = None) -> None:
    """model.pt, the figures (the task's, the circuit, the learning curve and DiffQAS's structural
    weights from metrics.jsonl) and summary.json (last: a summary means the run finished)."""
    generator = exp.generator
    figures = dict(figures)
    with torch.no_grad(), generator.evaluating():
        generated = generator() if network is None else network
        state = exp.model.state_dict()
        state.update(generated)
        if not exp.rl and cfg.figures:
            figures.update(exp.task.figures(lambda x: functional_call(exp.model, generated, (x,))))
    if cfg.figures:
        if cfg.search.supernet and generator.first.control is None:  # a control simulated no circuit
            figures["circuit.png"] = _circuit_figure(cfg, generator)
        figures.update(plots.run_figures(recorder.rows(), summary, exp.rl))
        for fig_name, figure in figures.items():
            recorder.save_figure(fig_name, figure)
    recorder.save_model(state)
    recorder.write_summary(summary)


def _rounded(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def closing_lines(summary: dict, run_dir: Path) -> list[str]:
    """A run's last lines on the terminal: a selection's pick (its metric, the runner-up and the
    margin), then the wall time, the rounded final metrics and where the files are."""
    lines = []
    table = summary.get("selection")
    if table:
        metric, pick = table["metric"], summary.get("selected_arch")
        if pick is None:
            lines.append(f"search.strategy={table['strategy']} named no circuit (no contender had a finite {metric})")
        else:
            row = next(r for r in table["contenders"] if r["arch"] == pick)
            value = row.get(f"mean_{metric}", row.get(metric))
            seeds = f" (mean of {row['seeds']} seeds)" if row.get("seeds", 1) > 1 else ""
            line = f"search.strategy={table['strategy']} picked {pick} ({summary['selected_name']}): {metric} {value:.4g}{seeds}"
            runner = table.get("runner_up")
            if runner and runner[metric] is None:
                line += f"; runner-up {runner['arch']} ({runner['arch_name']}): no finite {metric}"
            elif runner:
                line += (
                    f"; runner-up {runner['arch']} ({runner['arch_name']}): {metric} {runner[metric]:.4g}, "
                    f"margin {runner['margin']:.0%}"
                )
            lines.append(line)
    lines.append(f"done in {summary['wall_seconds']:.1f} s: {_rounded(summary['metrics'])}")
    lines.append(f"run directory: {run_dir}")
    return lines


def _sinks(cfg, run_dir: Path, group: str | None, name: str | None, run_id: str | None = None):
    # WANDB_MODE=disabled in the environment wins over the config (the tests and CI rely on it)
    off = cfg.logger.mode.value == "disabled" or os.environ.get("WANDB_MODE") == "disabled"
    if cfg.logger.name.value != "wandb" or off:
        return []
    from .record.wandb_sink import WandbSink

    return [WandbSink(cfg.logger, run_dir, _plain(cfg), group, name, run_id)]


class FinishedRun(DirectoryConflict):
    """The run directory holds a finished run that this command would overwrite."""


def _start_fresh(run_dir: Path) -> None:
    """fresh=true: remove a previous run's results from run_dir (its .hydra/ is rewritten before the run)."""
    for name in ("summary.json", "metrics.jsonl", CHECKPOINT, "model.pt", "selected_model.pt", "selected_circuit.png", FAILURE):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "select", ignore_errors=True)


def _guard_finished(cfg, run_dir: Path, ckpt: dict | None) -> dict | None:
    """A directory holding a finished run: the same run again is 'nothing to do' (its summary is
    returned); anything else that would overwrite it is refused unless fresh=true."""
    summary = run_dir / "summary.json"
    if not summary.exists():
        return None
    if ckpt is not None and ckpt["finished"]:  # `run` says so, once (the CLI's checks come here first)
        return json.loads(summary.read_text())
    raise FinishedRun(
        f"{str(run_dir)!r} already holds a finished run (summary.json) but no finished checkpoint of this config; "
        "allowed: another hydra.run.dir (hydra.sweep.dir in a sweep), or fresh=true to delete its results and start over"
    )


def preflight(config, run_dir: Path) -> dict | None:
    """Before .hydra/ is written into a run's directory: refuse a directory that holds another
    run's checkpoint or a finished run (raises DirectoryConflict), so its record stays whole.
    Returns the summary when run_dir already holds this very run, finished. What it finds is kept
    for this process's `run` of the same config there (`_inspect_dir`): one inspection per run."""
    task_config = config.copy()
    with open_dict(task_config):
        task_config.pop("hydra", None)
    validate(task_config)
    return None if task_config.fresh else _inspect_dir(task_config, run_dir, keep=True)[2]


# (directory, config fingerprint, resume) -> what the latest pre-flight found, until this process's run takes it
_INSPECTED: dict[tuple[Path, str, str], tuple[str, dict | None, dict | None]] = {}


def _inspect_dir(cfg, run_dir: Path, keep: bool = False) -> tuple[str, dict | None, dict | None]:
    """(the config's fingerprint, the checkpoint to resume or None, the summary of this very run if
    it already finished there, else None); raises DirectoryConflict for another run's results.
    The directory is read once per run: the pre-flight keeps what it found (`keep`), the run takes
    it (nothing is written there in between but the run's record and cli.log)."""
    fp = fingerprint(_plain(cfg), BOOKKEEPING_KEYS)
    key = (run_dir.resolve(), fp, str(cfg.resume))
    found = _INSPECTED.get(key) if keep else _INSPECTED.pop(key, None)
    if found is None:
        ckpt = find_checkpoint(cfg, run_dir, fp)
        found = (fp, ckpt, _guard_finished(cfg, run_dir, ckpt))
        if keep:
            _INSPECTED.clear()  # one run at a time per process: only the latest pre-flight is kept
            _INSPECTED[key] = found
    return found


class _RunGuard:
    """What surrounds a run's stages: the directory's lock (taken here unless the CLI holds it), the
    stop signals, the exit code a failure maps to (recorded by the recorder's sinks), failure.json
    for any failure after the lock, and the recorder's close. `stoppable(step, path)` runs a block
    that a signal may stop at once (building, wandb's start, writing)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.signals, self.recorder = run_dir, StopSignals(), None
        self.started = time.perf_counter()
        self.resumed_step: int | None = None  # where a resumed run continues (its loop state moves on)
        self.prior_seconds = 0.0  # the training time of the pieces before it
        self.earlier: list[dict | None] = []  # the simulator records of earlier pieces that ran otherwise

    def resume_at(self, exp: Experiment, resumed) -> None:
        """Note where a resumed run starts, before training advances the loop state in place."""
        self.resumed_step = (resumed.update if exp.rl else resumed.step) if resumed else None
        self.prior_seconds = resumed.seconds if resumed else 0.0

    def record_paths(self, cfg, exp: Experiment, ckpt: dict | None, meta: dict) -> None:
        """The simulator record of every piece of the run (CONTRACT "Reproducibility"): the
        checkpoint keeps the list (`meta["simulators"]`, one entry per change of path), so a run
        resumed on another kernel path, step path, thread count or version says so in summary.json
        (`simulator.earlier`: the records before the last piece's, one per change of path, oldest
        first; null for a piece whose checkpoint predates this record)."""
        current = simulator_record(cfg, exp.generator.first, exp.model, _step_path(exp))
        stored = None if ckpt is None else ckpt["meta"].get("simulators")
        history = [] if ckpt is None else list(stored) if isinstance(stored, list) else [None]
        if not history or history[-1] != current:
            history.append(current)
        meta["simulators"] = history  # the checkpointer stores meta as given: every later save has it
        self.earlier = history[:-1]

    def seconds(self) -> float:
        """The run's wall time so far, with the resumed pieces' before it."""
        return time.perf_counter() - self.started + self.prior_seconds

    def __enter__(self) -> _RunGuard:
        self.acquired = lock_directory(self.run_dir)
        self.signals.__enter__()
        return self

    @contextmanager
    def stoppable(self, step: int = 0, checkpoint: Path | None = None):
        try:
            with self.signals.immediate():
                yield
        except StopRequested as stop:
            raise Interrupted(stop.signum, step, checkpoint) from None

    def __exit__(self, kind, err, tb) -> None:
        code = 0 if err is None else exit_code_of(err)
        try:
            recorded = err is not None and not isinstance(err, Interrupted | DirectoryConflict | DirectoryInUse)
            if recorded and not (self.run_dir / "summary.json").exists():  # never beside a finished run's summary
                write_failure(self.run_dir, err, getattr(err, "step", None))
            if self.recorder is not None:
                self.recorder.close(code)
        finally:
            self.signals.__exit__(kind, err, tb)
            if self.acquired:  # a lock taken here (not by the CLI's callback) ends with the run
                unlock_directory(self.run_dir)


def exit_code_of(err: BaseException) -> int:
    """The exit status a run's failure maps to: 128 + signal when stopped, 2 for bad input, a
    directory conflict or a diverged run, 1 for anything unexpected."""
    if isinstance(err, Interrupted):
        return 128 + err.signum
    return 2 if isinstance(err, ConfigError | NonFiniteLoss | DirectoryInUse) else 1


def prepare(cfg, run_dir: Path) -> tuple[str, dict | None, dict | None]:
    """Validate, clear a `fresh=true` directory, and inspect it: (fingerprint, checkpoint to
    resume, the summary when this very run already finished there)."""
    validate(cfg)
    if cfg.fresh:
        _start_fresh(run_dir)
        _INSPECTED.clear()  # what any pre-flight found there is gone
    return _inspect_dir(cfg, run_dir)


def make(cfg, guard: _RunGuard) -> Experiment:
    """Seed, build (stoppable), check that a selection has contenders, set the thread count."""
    seed_everything(cfg.seed)
    with guard.stoppable():
        exp = build(cfg)
    check_contenders(cfg, exp)  # refused before the run says anything
    describe(cfg, exp)
    threads.set_run_threads(cfg.train.threads, exp.generator.n_qubits)
    return exp


def open_recorder(cfg, run_dir: Path, guard: _RunGuard, meta: dict, step: int | None, group, name) -> Recorder:
    """The run's sinks (wandb's start can wait long for a server: stoppable) and its recorder,
    continuing after `step` when the run resumes."""
    with guard.stoppable(step or 0):
        sinks = _sinks(cfg, run_dir, group, name, meta["wandb_id"])
    guard.recorder = Recorder(run_dir, sinks, resume_step=step)
    meta["wandb_id"] = guard.recorder.run_id()
    clear_failure(run_dir)
    return guard.recorder


@dataclass
class Outcome:
    """What a run's training (or race) stage leaves for the writer."""

    trained: Trained
    summary: dict
    network: dict | None = None  # model.pt's weights when not the generator's own (the race's pick)


def search_and_select(cfg, exp, run_dir, recorder, checkpointer, resumed, interactive, guard) -> Outcome:
    """The search run (DiffQAS or a fixed candidate) trained, then the selection stage if any."""
    trained = train(cfg, exp, recorder, checkpointer, resumed, interactive)
    summary = summarize(cfg, exp, trained, guard.seconds(), guard.resumed_step, guard.earlier)
    summary.update(select_stage(cfg, exp, run_dir, summary))  # child runs, each resumable
    return Outcome(trained, summary)


def race_alone(cfg, exp, run_dir, recorder, checkpointer, resumed, interactive, guard) -> Outcome:
    """`search=race` (search.supernet=false): no search run is trained; the race's child runs name
    the circuit, and the run's result is its pick's (`pick_as_result`)."""
    trained = Trained(LoopState(), {})
    checkpointer.save(trained.loop.to_dict(), finished=True)  # a rerun: "nothing to do"
    summary = summarize(cfg, exp, trained, guard.seconds(), guard.resumed_step, guard.earlier)
    summary.update(select_stage(cfg, exp, run_dir, summary))
    summary.update(pick_as_result(run_dir, summary))
    return Outcome(trained, summary, torch.load(run_dir / "selected_model.pt", weights_only=True))


def run(
    cfg, run_dir: str | Path, *, group: str | None = None, name: str | None = None, interactive: bool = True
) -> dict[str, Any]:
    """Run the experiment `cfg` (a RunConfig-typed DictConfig) writing into run_dir; return summary.

    The directory is locked for this process first (a second writer fails with DirectoryInUse).
    A failure after that leaves failure.json; SIGTERM/SIGINT raise Interrupted after a checkpoint.
    """
    run_dir = Path(run_dir)
    with _RunGuard(run_dir) as guard:
        fp, ckpt, done = prepare(cfg, run_dir)
        if done is not None:  # a finished run: nothing to load or build
            log.info("%s already holds this finished run: nothing to do (fresh=true reruns it)", run_dir)
            return done
        meta = {"fingerprint": fp, "wandb_id": None}
        exp = make(cfg, guard)
        checkpointer, resumed = restore(cfg, exp, run_dir, ckpt, meta, guard.signals)
        guard.resume_at(exp, resumed)
        guard.record_paths(cfg, exp, ckpt, meta)
        recorder = open_recorder(cfg, run_dir, guard, meta, guard.resumed_step, group, name)
        stage = search_and_select if cfg.search.supernet else race_alone
        out = stage(cfg, exp, run_dir, recorder, checkpointer, resumed, interactive, guard)
        with guard.stoppable(out.trained.loop.step, checkpointer.path):  # files are atomic: a rerun writes them again
            figures = {**out.trained.figures, **stage_figures(cfg, exp, out.summary)}
            write(cfg, exp, recorder, figures, out.summary, out.network)
        for line in closing_lines(out.summary, run_dir):
            log.info("%s", line)
        return out.summary
