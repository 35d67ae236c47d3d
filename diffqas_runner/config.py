"""Structured configs: the schema Hydra checks every override against at compose time.

Enum fields make a bad choice fail with OmegaConf's own message listing the allowed values;
`validate` checks what a type cannot express (ranges, pairs) before any work starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from .errors import ConfigError, file_problem


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


class Source(Enum):
    circuit = "circuit"  # the circuit's probabilities (the method)
    random = "random"  # a fixed, seeded random vector: the no-quantum control
    classical = "classical"  # a trainable classical generator with the circuit's parameter count


class ThetaInit(Enum):
    uniform = "uniform"
    normal = "normal"


class BitsInit(Enum):
    zero = "zero"
    default = "default"


class BitsCoding(Enum):
    pm1 = "pm1"  # each basis-state bit as -1 / +1 (the toolkit's)
    binary = "binary"  # as 0 / 1


class ImageModel(Enum):
    mlp = "mlp"  # MLP 784-hidden-K
    cnn = "cnn"  # the Quantum-Train toolkit's small CNN: conv 1->8 (5x5), pool, conv 8->12 (5x5), pool, 192-20-K


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


class PennyLaneDevice(Enum):
    default_qubit = "default.qubit"
    lightning_qubit = "lightning.qubit"


# --- task: one schema per kind, so a key that does not apply to a task is rejected -------------
@dataclass
class TaskConfig:
    """What every task has. The kinds below add their own keys."""

    name: str = MISSING
    kind: TaskKind = MISSING
    hidden: list[int] = MISSING  # the target's hidden widths (MLP), or [LSTM hidden size]
    depth: int = MISSING  # the paper's depth for this task; the top-level `depth` key overrides it


@dataclass
class ClassificationTaskConfig(TaskConfig):
    kind: TaskKind = TaskKind.classification
    # two or more distinct labels 0..9 (relabelled 0..K-1 in this order), or `all`: the ten classes
    classes: Any = field(default_factory=lambda: [1, 5])
    hidden: list[int] = field(default_factory=lambda: [128, 64])  # MLP 784-128-64-K (model=mlp)
    # the target network: mlp (784-hidden-K) | cnn (the toolkit's: 6,690 weights for ten classes,
    # 13 qubits; `hidden` is not used)
    model: ImageModel = ImageModel.mlp
    depth: int = 15
    # a stratified, seeded (by `seed`) hold-out of this fraction of the training images as a
    # validation split (val_accuracy, val_loss): what to choose settings on (0: none)
    validation: float = 0.0


@dataclass
class TimeSeriesTaskConfig(TaskConfig):
    kind: TaskKind = TaskKind.timeseries
    hidden: list[int] = field(default_factory=lambda: [20])  # LSTM hidden size: 1,781 weights
    depth: int = 10
    window: int = 4  # inputs per window: x = s[i:i+window], y = s[i+window]
    train_fraction: float = 0.67  # the first windows train, the rest test (no shuffling across)
    length: int | None = None  # series length where the task lets you choose it (NARMA)
    # the last fraction of the training windows, held out (not trained on) as a validation split:
    # `val_mse` is what to choose settings by, so the test split stays unseen (0: no validation)
    validation: float = 0.0
    # NARMA only (null for the other series): `authors` (the first author's generator: windows of
    # the input u predict y, raw values) | `autoregressive` (windows of the scaled y predict its next value)
    variant: str | None = None


@dataclass
class RLTaskConfig(TaskConfig):
    kind: TaskKind = TaskKind.rl
    env_id: str = "MiniGrid-Empty-5x5-v0"
    hidden: list[int] = field(default_factory=lambda: [32, 32])  # actor 147-32-32-7, critic 147-32-32-1
    depth: int = 10
    # no validation split exists for RL (returns come from training episodes): 0 only. The key is
    # here so a preset that sets it (search=race) composes, and the refusal says why
    validation: float = 0.0


TASK_SCHEMAS = {
    TaskKind.classification: ClassificationTaskConfig,
    TaskKind.timeseries: TimeSeriesTaskConfig,
    TaskKind.rl: RLTaskConfig,
}


@dataclass
class SearchConfig:
    mode: SearchMode = SearchMode.diffqas
    arch: int | None = None  # fixed mode: candidate 1..N of the search space (paper12: SPEC.md section 2)
    structural: Structural = Structural.raw  # raw (the paper's, initialised to 1/N) | softmax
    angles: Angles = Angles.shared  # DiffQAS: one angle tensor for all candidates (the paper's) | one each
    # how the search names its circuit (docs/design.md, "Selection strategies"): none (the ranking
    # only, no pick), weights, select, gumbel, perturb, race
    strategy: str = "none"
    # strategy=select: retrain the K best distinct angle-dependent groups alone (run_dir/select/arch_N) and
    # pick on the validation metric (the training metric without a validation split); K > 0 with
    # strategy=none means strategy=select (the old spelling); 0 with strategy=select means 3
    select: int = 0
    tau: list[float] = field(default_factory=lambda: [1.0, 0.1])  # gumbel: temperature from tau[0] to tau[1]
    eta: int = 3  # race: budgets grow, and survivors shrink, by this factor per rung
    min_steps: int | None = None  # race: the first rung's budget (null: the full run / eta^(rungs-1))
    # race: two contenders whose validation values differ by at most this fraction (of the worse
    # one's MSE or error rate) are within noise: both train again at a second seed and the mean of
    # the pair decides (at a cut, and between the final two); 0: decide on one seed
    tie: float = 0.3
    # false (race only): no DiffQAS search run at all, only the race's standalone runs; the run's
    # metrics and model.pt are then its pick's (docs/design.md, "Selection strategies")
    supernet: bool = True


@dataclass
class SearchSpaceConfig:
    """The candidates DiffQAS searches over and `search.arch` indexes: `product`'s combinations,
    then the `candidates` listed one by one, numbered from 1 (configs/search_space/*.yaml).

    product: {init: [none, H], entangler: [...], rotation: [...]}: every combination, rotation
    varying fastest. candidates: [{init, entangler, gate, rotation, name}, ...] where entangler is
    a pattern (chain, ring, all_to_all, stride2, none; cz_<pattern> for CZ gates) or
    [[control, target], ...], gate cnot | cz (for explicit pairs), rotation Rx | Ry | Rz | RyRz |
    ... | Rot (Rz Ry Rz) or a list of axes [Y, Z], name optional (default: from the parts).
    The parts are untyped here so that `search_space()` (quantum/candidates.py) checks them with
    one-line messages naming the key."""

    name: Any = None
    product: Any = None
    candidates: Any = None


@dataclass
class QTConfig:
    # what feeds the mapping: circuit | random | classical (controls for the quantum part,
    # qt/controls.py); the mapping, post-processing and target are the same for all three
    source: Source = Source.circuit
    postprocess: Postprocess = Postprocess.toolkit
    toolkit: list[float] = field(default_factory=lambda: [0.1, 0.8, 0.3])  # gamma, beta, alpha
    # entries the raw DiffQAS ensemble makes negative: clamp (to ~0, no gradient) | odd (-(-t)^alpha)
    toolkit_negative: ToolkitNegative = ToolkitNegative.clamp
    center_output: bool = True
    mapping_hidden: list[int] = field(default_factory=list)
    mapping_bits_init: BitsInit = BitsInit.zero
    mapping_bits: BitsCoding = BitsCoding.pm1  # how the mapping reads a basis state's bits: pm1 (-1/+1) | binary (0/1)
    # a learnable gain and shift per target tensor after `tensor_scale` (2 parameters per tensor;
    # init 1 and 0, so the first step's weights are today's): each layer finds its own scale
    tensor_affine: bool = False
    input_norm: InputNorm = InputNorm.standardize
    theta_init: ThetaInit = ThetaInit.uniform
    theta_std: float = 0.01
    tensor_scale: TensorScale = TensorScale.standardize
    # finite shots: the probabilities that make the weights are estimated from this many samples
    # of the circuit's distribution at every step (null: exact probabilities, the paper's)
    shots: Any = None  # an integer (1e6 is read as 1000000) or null
    eval_shots: Any = None  # shots for the weights evaluated: null (= qt.shots), an integer, or exact


@dataclass
class BackendConfig:
    name: BackendName = BackendName.native
    # native: the torch device, cpu | cuda | cuda:N; pennylane: its device, default.qubit | lightning.qubit
    device: str = "cpu"
    precision: Precision = Precision.float64
    # native: the simulation's working memory per step in MB, met by simulating candidates in
    # chunks (null: half the memory free when the run starts)
    memory_mb: int | None = None


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.wandb  # as configs/config.yaml chooses (logger: wandb)
    mode: WandbMode = WandbMode.offline
    project: str = "diffqas-qt"
    entity: str | None = None
    group: str | None = None  # null: the sweep's directory name in multirun, none for single runs
    tags: list[str] = field(default_factory=list)


# --- train: the keys every loop has, then the supervised and the actor-critic loop's own ---------
@dataclass
class TrainConfig:
    max_steps: int | None = None  # cap on optimisation steps (null = no cap)
    optimizer: OptimizerName = OptimizerName.adam
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam
    alpha: float = 0.99  # rmsprop smoothing constant
    eps: float = 1e-8
    threads: int | None = None  # torch intra-op threads (null = torch's default)
    checkpoint_every: int | None = 100  # steps between checkpoints (null: only on SIGTERM/SIGINT and at the end)


@dataclass
class SupervisedTrainConfig(TrainConfig):
    epochs: int = 10
    batch_size: int = 100
    lr_schedule: LrSchedule = LrSchedule.constant  # cosine: decay to 0 over the run (not the paper's)
    warmup_steps: int = 0  # linear warm-up of the lr over the first steps, then the schedule (0: none)
    eval_every: int | None = None  # steps between evaluations (null = once per epoch)


@dataclass
class RLTrainConfig(TrainConfig):
    """The paper's A3C settings, run as synchronous A2C (README)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.92, 0.999])
    episodes: int = 50_000  # stop after this many finished episodes
    workers: int = 16  # environment copies stepped in lockstep
    n_steps: int = 5  # environment steps per update (n-step returns)
    gamma: float = 0.9
    value_coef: float = 1.0
    entropy_coef: float = 0.0
    log_every: int = 20  # updates between metric rows


@dataclass
class RunConfig:
    task: Any = MISSING  # one of TASK_SCHEMAS, chosen by the task file
    search: SearchConfig = field(default_factory=SearchConfig)
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)  # chosen by search_space=...
    qt: QTConfig = field(default_factory=QTConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: Any = MISSING  # SupervisedTrainConfig or RLTrainConfig, chosen by the task file
    # circuit layers L: the task's paper depth unless given (`depth=5`, `-m depth=5,10,15`)
    depth: int = II("task.depth")
    seed: int = 0
    data_dir: str = II("oc.env:DIFFQAS_DATA_DIR,data")  # where image datasets live (torchvision layout)
    download: bool = False
    progress: Progress = Progress.auto
    resume: str | None = None  # a checkpoint.pt (or a run dir holding one) to continue from
    fresh: bool = False  # true: delete the results a previous run left in the run dir and start over
    figures: bool = True  # false: no PNG figures (sweeps of many small runs; race's shorter rungs)


# Keys that never change a run's numbers: a checkpoint written under other values still resumes,
# and a sweep's aggregate table does not tell configurations apart by them.
BOOKKEEPING_KEYS = (
    "logger", "progress", "resume", "fresh", "data_dir", "download", "train.threads", "train.checkpoint_every", "figures",
)  # fmt: skip
# Options added after runs were recorded, each with the value that does what running without it
# did: a checkpoint written before the option existed is the same run as one at that value.
# Only options whose default kept the old behaviour belong here (task.variant, which changed the
# NARMA data, does not).
ADDED_KEYS = {
    "search.strategy": "none", "search.tau": [1.0, 0.1], "search.eta": 3, "search.min_steps": None,
    "search.supernet": True, "search.tie": 0.3,
    "task.model": "mlp", "qt.mapping_bits": "pm1", "qt.tensor_affine": False,  # issue 27
    "qt.source": "circuit", "task.validation": 0.0,  # issue 35 (task.validation: RL had no such key)
}  # fmt: skip


NARMA_TASKS = ("narma5", "narma10")
NARMA_VARIANTS = ("authors", "autoregressive")  # task.variant for NARMA; the first is the task files' default


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _positive_int_or_null(cfg, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    _check(value is None or value >= 1, key, value, "null or an integer >= 1")


def _positive_ints(cfg, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        _check(value >= 1, key, value, "an integer >= 1")


SEED_MAX = 2**32 - 1  # numpy's seed range (torch and Python accept more)
MAX_DEPTH = 1000  # far past any depth in the papers; deeper runs would take hours per step at 17 qubits
MAX_SHOTS = 10**15  # counts are drawn by binomial splitting, exact as float64 counts up to 2**53
WANDB_NAME_MAX = 128  # wandb refuses longer project, entity and group names
WANDB_TAG_MAX = 64


def _check_known_keys(node, prefix: str = "") -> None:
    """Refuse keys the schema does not have (Hydra's `+key=value` can add them to a typed node)."""
    schema = OmegaConf.get_type(node)
    if schema is not None and is_dataclass(schema):
        known = {f.name for f in fields(schema)}
        for key in node:
            if key not in known:
                where = prefix.rstrip(".") or "the config"
                raise ConfigError(f"{prefix}{key} is not a key of {where}; allowed: {', '.join(sorted(known))}")
    for key in node:
        child = node._get_node(key)
        if OmegaConf.is_dict(child):
            _check_known_keys(child, f"{prefix}{key}.")


def validate(cfg) -> None:
    """Range and consistency checks that the schema's types cannot express, before any work."""
    _check_known_keys(cfg)
    schema = OmegaConf.get_type(cfg.task)
    if schema in TASK_SCHEMAS.values():
        allowed = next(kind for kind, s in TASK_SCHEMAS.items() if s is schema)
        _check(
            cfg.task.kind == allowed,
            "task.kind",
            choice(cfg.task.kind),
            f"{allowed.value}, the task file's own (choose task=...)",
        )
    _check(1 <= cfg.depth <= MAX_DEPTH, "depth", cfg.depth, f"an integer 1..{MAX_DEPTH}")
    _check(0 <= cfg.seed <= SEED_MAX, "seed", cfg.seed, f"an integer 0..{SEED_MAX}")
    _validate_search(cfg.search, len(search_space(cfg)))
    if cfg.search.select:
        _check(cfg.task.kind != TaskKind.rl, "search.select", cfg.search.select, "0 for RL (no validation split to pick on)")
    if cfg.search.strategy != "none":
        what = "search=race" if not cfg.search.supernet else f"search.strategy={cfg.search.strategy}"
        _check(
            cfg.task.kind != TaskKind.rl,
            "search.strategy",
            cfg.search.strategy,
            f"none for RL: {what} is judged on a validation split, and {cfg.task.name} (RL) has none",
        )
        if cfg.search.strategy == "gumbel":
            _check(cfg.qt.shots is None, "qt.shots", cfg.qt.shots, "null with search.strategy=gumbel (exact probabilities)")
    _validate_task(cfg)
    _validate_train(cfg)
    _validate_qt(cfg.qt)
    _validate_source(cfg)
    _check_read(cfg)
    _validate_backend(cfg.backend)
    _validate_logger(cfg.logger)


def search_space_file(name: str):
    """The candidates of a packaged space (`paper12`, `wide32`) or of a search-space YAML file, as
    a run would build them (for scripts and tests)."""
    from importlib.resources import files

    path = name if name.endswith(".yaml") else files("diffqas_runner.configs") / "search_space" / f"{name}.yaml"

    problem = file_problem(Path(str(path))) if os.path.lexists(str(path)) else f"{path} does not exist"
    if problem:
        raise ConfigError(f"search_space={name!r}: {problem.split('; allowed')[0]}; allowed: paper12, wide32 or a YAML file path")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # YAML that OmegaConf cannot hold (e.g. non-string keys)
        raise ConfigError(
            f"search_space={name!r}: {path} cannot be loaded ({type(err).__name__}: {err}); allowed: a mapping"
        ) from None
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"search_space={name!r}: {path} is not a mapping; allowed: a mapping with name, product, candidates")
    return search_space(OmegaConf.create({"search_space": node}))


def normalize_shots(qt: dict) -> dict:
    """A plain `qt` section with its shot counts as ints (`1e3` from the command line is 1000)."""
    for key in ("shots", "eval_shots"):
        if shot_count(qt.get(key)) is not None:
            qt[key] = shot_count(qt[key])
    return qt


def search_space(cfg):
    """The candidates of the run's search space (a ConfigError naming the key if one is malformed)."""
    from .quantum.candidates import SpaceError, build_space

    node = OmegaConf.to_container(cfg.search_space, resolve=True, enum_to_str=True)
    name = node.get("name")
    _check(
        name is None or (isinstance(name, str) and 0 < len(name) <= 64 and name.isprintable()),
        "search_space.name",
        name,
        "null or a printable name of 1..64 characters",
    )
    try:
        return build_space(node.get("product"), node.get("candidates") or ())
    except SpaceError as err:
        raise ConfigError(str(err)) from None


def _validate_search(search, n: int) -> None:
    if search.mode == SearchMode.fixed:
        arch = search.arch
        _check(
            arch is not None and 1 <= arch <= n,
            "search.arch",
            arch,
            f"an integer 1..{n} with search=fixed (the search space's candidates)",
        )
    else:
        _check(search.arch is None, "search.arch", search.arch, "null with search=diffqas (use search=fixed)")
    _check(0 <= search.select <= n, "search.select", search.select, f"0..{n} (angle-dependent groups to retrain)")
    if search.select:
        _check(search.mode == SearchMode.diffqas, "search.select", search.select, "0 with search=fixed")
    strategy = search.strategy
    _check(strategy in STRATEGIES, "search.strategy", strategy, ", ".join(STRATEGIES))
    if strategy != "none":
        _check(search.mode == SearchMode.diffqas, "search.strategy", strategy, "none with search=fixed")
    if search.select:
        _check(
            strategy in ("none", "select"), "search.select", search.select, f"0 with search.strategy={strategy} (K is select's)"
        )
    tau = list(search.tau)
    _check(
        len(tau) == 2 and all(_finite(t) and t > 0 for t in tau),
        "search.tau",
        tau,
        "two finite numbers > 0 [start, end] (gumbel's temperature)",
    )
    _check(2 <= search.eta <= 100, "search.eta", search.eta, "an integer 2..100 (race's reduction factor)")
    _check(search.min_steps is None or search.min_steps >= 1, "search.min_steps", search.min_steps, "null or an integer >= 1")
    _check(_finite(search.tie) and 0 <= search.tie < 1, "search.tie", search.tie, "a number in [0, 1) (race's noise margin)")
    if not (search.supernet or strategy == "race"):
        raise ConfigError(
            "search.supernet=false is not allowed; allowed: true (false only with search=diffqas "
            "search.strategy=race: the other strategies read the trained search run)"
        )


STRATEGIES = ("none", "weights", "select", "gumbel", "perturb", "race")


def strategy_of(search) -> str:
    """The selection strategy a run uses: `search.select=K` alone (strategy none) means select."""
    return "select" if search.strategy == "none" and search.select else str(search.strategy)


def _validate_task(cfg) -> None:
    task = cfg.task
    hidden = list(task.hidden)
    if task.kind == TaskKind.classification:
        classes = task.classes if not OmegaConf.is_list(task.classes) else list(task.classes)
        _check(
            classes == "all"
            or (
                isinstance(classes, list)
                and len(classes) >= 2
                and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in classes)
                and len(set(classes)) == len(classes)
            ),
            "task.classes",
            classes,
            "all, or two or more different class labels in 0..9",
        )
        _check(len(hidden) >= 1 and all(1 <= h <= 4096 for h in hidden), "task.hidden", hidden, "one or more widths 1..4096")
        _check(0 <= task.validation < 1, "task.validation", task.validation, "a number in [0, 1)")
    elif task.kind == TaskKind.timeseries:
        _check(len(hidden) == 1 and 1 <= hidden[0] <= 256, "task.hidden", hidden, "[H]: one LSTM hidden size 1..256")
        _check(1 <= task.window <= 1000, "task.window", task.window, "an integer 1..1000")
        _check(0 < task.train_fraction < 1, "task.train_fraction", task.train_fraction, "a number in (0, 1)")
        _check(
            task.length is None or 20 <= task.length <= 1_000_000, "task.length", task.length, "null or an integer 20..1000000"
        )
        _check(0 <= task.validation < 1, "task.validation", task.validation, "a number in [0, 1)")
        if task.name in NARMA_TASKS:
            _check(task.variant in NARMA_VARIANTS, "task.variant", task.variant, f"{' or '.join(NARMA_VARIANTS)} for {task.name}")
        else:
            _check(task.variant is None, "task.variant", task.variant, f"null for {task.name} (only NARMA has variants)")
    else:
        _check(task.env_id.startswith("MiniGrid-"), "task.env_id", task.env_id, "a MiniGrid-* environment id")
        _check(
            task.validation == 0,
            "task.validation",
            task.validation,
            "0 for RL (no validation split: returns come from training episodes)",
        )
        _check(len(hidden) >= 1 and all(1 <= h <= 4096 for h in hidden), "task.hidden", hidden, "one or more widths 1..4096")


def _validate_train(cfg) -> None:
    train = cfg.train
    _positive_int_or_null(cfg, "train.max_steps")
    _positive_int_or_null(cfg, "train.checkpoint_every")
    _positive_int_or_null(cfg, "train.threads")
    _positive_int_or_null(cfg, "backend.memory_mb")
    _check(_finite(train.lr) and train.lr > 0, "train.lr", train.lr, "a finite number > 0")
    betas = list(train.betas)
    _check(len(betas) == 2 and all(0 <= b < 1 for b in betas), "train.betas", betas, "two numbers in [0, 1)")
    _check(0 <= train.alpha < 1, "train.alpha", train.alpha, "a number in [0, 1)")
    _check(_finite(train.eps) and train.eps > 0, "train.eps", train.eps, "a finite number > 0")
    if cfg.task.kind == TaskKind.rl:
        _positive_ints(cfg, "train.episodes", "train.workers", "train.n_steps", "train.log_every")
        _check(train.workers <= 256, "train.workers", train.workers, "an integer 1..256")
        _check(0 <= train.gamma <= 1, "train.gamma", train.gamma, "a number in [0, 1]")
        for key in ("value_coef", "entropy_coef"):
            _check(_finite(train[key]) and train[key] >= 0, f"train.{key}", train[key], "a finite number >= 0")
    else:
        _positive_ints(cfg, "train.epochs", "train.batch_size")
        _check(train.warmup_steps >= 0, "train.warmup_steps", train.warmup_steps, "an integer >= 0")
        _positive_int_or_null(cfg, "train.eval_every")


def _validate_qt(qt) -> None:
    toolkit = list(qt.toolkit)
    _check(
        len(toolkit) == 3 and all(_finite(v) for v in toolkit), "qt.toolkit", toolkit, "three finite numbers [gamma, beta, alpha]"
    )
    _check(toolkit[2] > 0, "qt.toolkit", toolkit, "alpha (the third number) > 0")
    _check(_finite(qt.theta_std) and qt.theta_std > 0, "qt.theta_std", qt.theta_std, "a finite number > 0")
    hidden = list(qt.mapping_hidden)
    _check(all(1 <= h <= 4096 for h in hidden), "qt.mapping_hidden", hidden, "a list of widths 1..4096 ([] = Linear(n+1 -> 1))")
    _check(qt.shots is None or shot_count(qt.shots) is not None, "qt.shots", qt.shots, "null (exact) or an integer 1..10^15")
    _check(
        qt.eval_shots in (None, "exact") or shot_count(qt.eval_shots) is not None,
        "qt.eval_shots",
        qt.eval_shots,
        "null (= qt.shots), exact, or an integer 1..10^15",
    )


def _circuit(c) -> bool:
    return choice(c.qt.source) == Source.circuit.value


# Keys that only some choices read: (key, whether the run reads it, the choice that does). A value
# other than the schema's default where the run would not read it is refused, never ignored.
# (qt.toolkit_negative is not here: the time-series task files set it, whatever the post-processing.)
READ_ONLY_WHEN = (
    ("task.hidden", lambda c: c.task.kind != TaskKind.classification or choice(c.task.model) == "mlp", "task.model=mlp"),
    ("qt.toolkit", lambda c: choice(c.qt.postprocess) == "toolkit", "qt.postprocess=toolkit"),
    ("qt.theta_init", lambda c: choice(c.qt.source) == "circuit", "qt.source=circuit"),
    ("qt.theta_std", lambda c: choice(c.qt.theta_init) == "normal" and choice(c.qt.source) == "circuit",
     "qt.theta_init=normal with qt.source=circuit"),
    ("search.structural", lambda c: c.search.mode == SearchMode.diffqas and _circuit(c), "search=diffqas with qt.source=circuit"),
    ("search.angles", lambda c: c.search.mode == SearchMode.diffqas and _circuit(c), "search=diffqas with qt.source=circuit"),
    ("backend.name", _circuit, "qt.source=circuit"),
    ("backend.memory_mb", lambda c: c.backend.name == BackendName.native and _circuit(c), "backend=native, qt.source=circuit"),
    ("search.tau", lambda c: strategy_of(c.search) == "gumbel", "search.strategy=gumbel"),
    ("search.eta", lambda c: strategy_of(c.search) == "race", "search.strategy=race"),
    ("search.min_steps", lambda c: strategy_of(c.search) == "race", "search.strategy=race"),
    ("search.tie", lambda c: strategy_of(c.search) == "race", "search.strategy=race"),
    ("train.betas", lambda c: choice(c.train.optimizer) == "adam", "train.optimizer=adam"),
    ("train.alpha", lambda c: choice(c.train.optimizer) == "rmsprop", "train.optimizer=rmsprop"),
)  # fmt: skip


def _schema_default(cfg, key: str):
    """The schema's default of a dotted key (its node's dataclass), as plain data."""
    parent, _, leaf = key.rpartition(".")
    schema = OmegaConf.get_type(OmegaConf.select(cfg, parent))
    default = getattr(schema(), leaf)
    return default.value if isinstance(default, Enum) else default


def reset_unread(cfg) -> None:
    """Set every key the config's own choices never read back to the schema's default (a selection
    stage's child run: `search=fixed` does not read race's or DiffQAS's settings)."""
    for key, read, _ in READ_ONLY_WHEN:
        if not read(cfg):
            OmegaConf.update(cfg, key, _schema_default(cfg, key), merge=False)


def _check_read(cfg) -> None:
    """No key is silently ignored: a non-default value of a key the chosen options never read is refused."""
    for key, read, when in READ_ONLY_WHEN:
        value = OmegaConf.select(cfg, key)
        value = list(value) if OmegaConf.is_list(value) else choice(value) if isinstance(value, Enum) else value
        if not read(cfg) and value != _schema_default(cfg, key):
            raise ConfigError(
                f"{key}={value!r} is not used by this run (only with {when}); allowed: leave {key} at its default "
                f"({_schema_default(cfg, key)!r}) here, or choose {when}"
            )


def _validate_source(cfg) -> None:
    """A control (qt.source=random|classical) replaces the circuit: nothing to sample or select."""
    source = choice(cfg.qt.source)
    if source == Source.circuit.value:
        return
    for key in ("shots", "eval_shots"):
        value = cfg.qt[key]
        _check(value in (None, "exact"), f"qt.{key}", value, f"null with qt.source={source} (a control has no circuit to sample)")
    key, value = ("search.select", cfg.search.select) if cfg.search.select else ("search.strategy", cfg.search.strategy)
    _check(
        cfg.search.strategy == "none" and not cfg.search.select,
        key,
        value,
        f"{'0' if key == 'search.select' else 'none'} with qt.source={source} "
        "(a control is one more row beside the circuits, not a candidate to select)",
    )


def shot_count(value) -> int | None:
    """A number of shots as an int (1e6 from the command line arrives as a float), or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value) or value != int(value):
        return None
    return int(value) if 1 <= value <= MAX_SHOTS else None


def _validate_backend(backend) -> None:
    device = backend.device
    if backend.name == BackendName.native:
        from .quantum.kernel import check_environment

        message = check_environment()  # DIFFQAS_NATIVE_KERNEL: refused here, not after the model is built
        if message:
            raise ConfigError(message)
        ok = device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        _check(ok, "backend.device", device, "cpu, cuda or cuda:N with backend=native")
        if device.startswith("cuda"):
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(device[5:]) if ":" in device else 0
            _check(index < count, "backend.device", device, f"cpu (this machine sees {count} CUDA device(s))")
    else:
        allowed = [d.value for d in PennyLaneDevice]
        _check(device in allowed, "backend.device", device, f"{' or '.join(allowed)} with backend=pennylane")


def _validate_logger(logger) -> None:
    for key in ("project", "entity", "group"):
        value = logger[key]
        _check(
            value is None or (0 < len(value) <= WANDB_NAME_MAX and not set(value) & set("/\\#?%:")),
            f"logger.{key}",
            value,
            f"a name of 1..{WANDB_NAME_MAX} characters without / \\ # ? % :" + (" (or null)" if key != "project" else ""),
        )
    for tag in logger.tags:
        _check(0 < len(str(tag)) <= WANDB_TAG_MAX, "logger.tags", str(tag), f"tags of 1..{WANDB_TAG_MAX} characters")


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
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for kind, schema in TASK_SCHEMAS.items():  # task_base/*.yaml pick one of these
        store.store(group="schema/task", name=kind.value, node=schema)
    store.store(group="schema/train", name="supervised", node=SupervisedTrainConfig)
    store.store(group="schema/train", name="rl", node=RLTrainConfig)
    if not OmegaConf.has_resolver("qas_mode"):
        OmegaConf.register_new_resolver("qas_mode", qas_mode)
