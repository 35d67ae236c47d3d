"""Structured configs: the schema Hydra checks every override against at compose time.

Enum fields make a bad choice fail with OmegaConf's own message listing the allowed values;
`validate` checks what a type cannot express (ranges, pairs) before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class TaskKind(Enum):
    classification = "classification"
    timeseries = "timeseries"
    rl = "rl"


class SearchMode(Enum):
    diffqas = "diffqas"
    fixed = "fixed"


class Structural(Enum):
    raw = "raw"
    softmax = "softmax"


class Angles(Enum):
    shared = "shared"
    per_candidate = "per_candidate"


class Postprocess(Enum):
    toolkit = "toolkit"
    scale = "scale"
    none = "none"


class ToolkitNegative(Enum):
    clamp = "clamp"
    odd = "odd"


class TensorScale(Enum):
    standardize = "standardize"
    init = "init"
    fan_in = "fan_in"
    none = "none"


class InputNorm(Enum):
    standardize = "standardize"
    none = "none"


class ThetaInit(Enum):
    uniform = "uniform"
    normal = "normal"


class BitsInit(Enum):
    zero = "zero"
    default = "default"


class BackendName(Enum):
    native = "native"
    pennylane = "pennylane"


class Precision(Enum):
    float64 = "float64"
    float32 = "float32"


class LoggerName(Enum):
    wandb = "wandb"
    none = "none"


class WandbMode(Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class OptimizerName(Enum):
    adam = "adam"
    rmsprop = "rmsprop"


class LrSchedule(Enum):
    constant = "constant"
    cosine = "cosine"


class Progress(Enum):
    auto = "auto"
    on = "on"
    off = "off"


@dataclass
class TaskConfig:
    name: str = MISSING
    kind: TaskKind = TaskKind.classification
    classes: list[int] = field(default_factory=lambda: [1, 5])
    hidden: list[int] = field(default_factory=lambda: [128, 64])  # MLP widths, or [LSTM hidden size]
    depth: int = 15  # the paper's depth for this task; the top-level `depth` key overrides it
    # time series
    window: int = 4  # inputs per window: x = s[i:i+window], y = s[i+window]
    train_fraction: float = 0.67  # the first windows train, the rest test (no shuffling across)
    length: int | None = None  # series length where the task lets you choose it (NARMA)
    # the last fraction of the training windows, held out (not trained on) as a validation split:
    # `val_mse` is what to choose settings by, so the test split stays unseen (0: no validation)
    validation: float = 0.0
    # reinforcement learning
    env_id: str = "MiniGrid-Empty-5x5-v0"


@dataclass
class SearchConfig:
    mode: SearchMode = SearchMode.diffqas
    arch: int | None = None  # fixed mode: candidate 1..12 (SPEC.md section 2)
    structural: Structural = Structural.raw
    angles: Angles = Angles.shared  # DiffQAS: one angle tensor for all 12 (the paper's) | one each
    retrain_top_k: int = 0  # after DiffQAS: train its K top-ranked candidates alone (run_dir/retrain/arch_N)


@dataclass
class QTConfig:
    postprocess: Postprocess = Postprocess.toolkit
    toolkit: list[float] = field(default_factory=lambda: [0.1, 0.8, 0.3])  # gamma, beta, alpha
    # entries the raw DiffQAS ensemble makes negative: clamp (to ~0, no gradient) | odd (-(-t)^alpha)
    toolkit_negative: ToolkitNegative = ToolkitNegative.clamp
    center_output: bool = True
    mapping_hidden: list[int] = field(default_factory=list)
    mapping_bits_init: BitsInit = BitsInit.zero
    input_norm: InputNorm = InputNorm.standardize
    theta_init: ThetaInit = ThetaInit.uniform
    theta_std: float = 0.01
    tensor_scale: TensorScale = TensorScale.standardize


@dataclass
class BackendConfig:
    name: BackendName = BackendName.native
    device: str = "cpu"  # native: cpu | cuda; pennylane: default.qubit | lightning.qubit
    precision: Precision = Precision.float64


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    mode: WandbMode = WandbMode.offline
    project: str = "diffqas-qt"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # cap on optimisation steps (null = no cap)
    batch_size: int = 100
    optimizer: OptimizerName = OptimizerName.adam
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam
    alpha: float = 0.99  # rmsprop smoothing constant
    eps: float = 1e-8
    lr_schedule: LrSchedule = LrSchedule.constant  # cosine: decay to 0 over the run (not the paper's)
    warmup_steps: int = 0  # linear warm-up of the lr over the first steps, then the schedule (0: none)
    # reinforcement learning (A2C)
    episodes: int = 50_000  # stop after this many finished episodes
    workers: int = 16  # environment copies stepped in lockstep
    n_steps: int = 5  # environment steps per update (n-step returns)
    gamma: float = 0.9
    value_coef: float = 1.0
    entropy_coef: float = 0.0
    log_every: int = 20  # updates between metric rows
    eval_every: int | None = None  # steps between evaluations (null = once per epoch)
    threads: int | None = None  # torch intra-op threads (null = torch's default)
    checkpoint_every: int | None = 100  # steps between checkpoints (null: only on SIGTERM/SIGINT and at the end)


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    qt: QTConfig = field(default_factory=QTConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    depth: int = MISSING  # circuit layers L; defaults to the task's paper depth (task.depth)
    seed: int = 0
    data_dir: str = "data"
    download: bool = False
    progress: Progress = Progress.auto
    resume: str | None = None  # a checkpoint.pt (or a run dir holding one) to continue from


class ConfigError(ValueError):
    """A user-facing key has a value outside what is allowed."""


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def validate(cfg) -> None:
    """Range and consistency checks that the schema's types cannot express."""
    _check(cfg.depth >= 1, "depth", cfg.depth, "an integer >= 1")
    if cfg.search.mode == SearchMode.fixed:
        arch = cfg.search.arch
        _check(arch is not None and 1 <= arch <= 12, "search.arch", arch, "an integer 1..12 with search=fixed")
    else:
        _check(cfg.search.arch is None, "search.arch", cfg.search.arch, "null with search=diffqas (use search=fixed)")
    _check(
        cfg.search.retrain_top_k >= 0 and cfg.search.retrain_top_k <= 12,
        "search.retrain_top_k",
        cfg.search.retrain_top_k,
        "0..12",
    )
    classes = list(cfg.task.classes)
    if cfg.task.kind == TaskKind.classification:
        _check(
            len(classes) == 2 and all(0 <= c <= 9 for c in classes) and classes[0] != classes[1],
            "task.classes",
            classes,
            "two different class labels in 0..9",
        )
    if cfg.task.kind == TaskKind.timeseries:
        _check(
            len(cfg.task.hidden) == 1 and cfg.task.hidden[0] >= 1,
            "task.hidden",
            list(cfg.task.hidden),
            "[H]: one LSTM hidden size >= 1",
        )
        _check(cfg.task.window >= 1, "task.window", cfg.task.window, "an integer >= 1")
        _check(0 < cfg.task.train_fraction < 1, "task.train_fraction", cfg.task.train_fraction, "a number in (0, 1)")
        _check(cfg.task.length is None or cfg.task.length >= 20, "task.length", cfg.task.length, "null or an integer >= 20")
        _check(0 <= cfg.task.validation < 1, "task.validation", cfg.task.validation, "a number in [0, 1)")
    if cfg.task.kind == TaskKind.rl:
        _check(cfg.task.env_id.startswith("MiniGrid-"), "task.env_id", cfg.task.env_id, "a MiniGrid-* environment id")
        for key in ("episodes", "workers", "n_steps", "log_every"):
            value = cfg.train[key]
            _check(value >= 1, f"train.{key}", value, "an integer >= 1")
        _check(0 <= cfg.train.gamma <= 1, "train.gamma", cfg.train.gamma, "a number in [0, 1]")
    _check(cfg.train.epochs >= 1, "train.epochs", cfg.train.epochs, "an integer >= 1")
    _check(cfg.train.max_steps is None or cfg.train.max_steps >= 1, "train.max_steps", cfg.train.max_steps, "null or >= 1")
    _check(
        cfg.train.checkpoint_every is None or cfg.train.checkpoint_every >= 1,
        "train.checkpoint_every",
        cfg.train.checkpoint_every,
        "null or >= 1",
    )
    _check(cfg.train.batch_size >= 1, "train.batch_size", cfg.train.batch_size, "an integer >= 1")
    _check(cfg.train.lr > 0, "train.lr", cfg.train.lr, "a number > 0")
    _check(cfg.train.warmup_steps >= 0, "train.warmup_steps", cfg.train.warmup_steps, "an integer >= 0")
    _check(
        cfg.train.eval_every is None or cfg.train.eval_every >= 1,
        "train.eval_every",
        cfg.train.eval_every,
        "null or >= 1",
    )
    betas = list(cfg.train.betas)
    _check(len(betas) == 2 and all(0 <= b < 1 for b in betas), "train.betas", betas, "two numbers in [0, 1)")
    _check(0 <= cfg.train.alpha < 1, "train.alpha", cfg.train.alpha, "a number in [0, 1)")
    _check(cfg.train.eps > 0, "train.eps", cfg.train.eps, "a number > 0")
    _check(len(cfg.qt.toolkit) == 3, "qt.toolkit", list(cfg.qt.toolkit), "three numbers [gamma, beta, alpha]")
    if cfg.backend.name == BackendName.native:
        _check(
            cfg.backend.device in ("cpu", "cuda") or cfg.backend.device.startswith("cuda:"),
            "backend.device",
            cfg.backend.device,
            "cpu or cuda with backend=native",
        )
    else:
        _check(
            cfg.backend.device in ("default.qubit", "lightning.qubit"),
            "backend.device",
            cfg.backend.device,
            "default.qubit or lightning.qubit with backend=pennylane",
        )


def choice(value) -> str:
    """An option as its name, whether it arrives as the schema's Enum or as a plain string."""
    return value.value if isinstance(value, Enum) else str(value)


def flatten(node, prefix: str = "") -> dict:
    """A nested config dict as {dotted key: leaf value}."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def qas_mode(arch) -> str:
    """`search=auto`: DiffQAS when no candidate is named, else that fixed candidate."""
    return SearchMode.diffqas.value if arch is None else SearchMode.fixed.value


def register() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("qas_mode"):
        OmegaConf.register_new_resolver("qas_mode", qas_mode)
