"""The Quantum-Train generator (SPEC.md sections 1 and 3).

One optimisation step runs the circuit(s) once, turns the 2**n probabilities into p weights
and returns them as a {name: tensor} dict for `torch.func.functional_call`, so gradients
reach the angles, the structural weights and the mapping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from omegaconf import OmegaConf
from torch import nn

from ..config import (
    Angles,
    BackendConfig,
    BackendName,
    BitsCoding,
    ConfigError,
    InputNorm,
    PennyLaneDevice,
    Postprocess,
    Precision,
    QTConfig,
    RunConfig,
    SearchConfig,
    Structural,
    TensorScale,
    ToolkitNegative,
    choice,
    normalize_shots,
    search_space,
    strategy_of,
)
from ..nets import mlp
from ..quantum import CANDIDATES, Candidate, candidate, mixture, probabilities
from ..quantum.candidates import SpaceError, check_wires
from ..quantum.groups import angle_independent, group_weight, output_groups
from . import shots as finite_shots
from .controls import SOURCES, ClassicalSource, RandomSource, all_bits
from .fused import MapSpec, linear_map, mapped_weights, mean_std, postprocess, scale_tensors, standardize


def _values(enum) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


# The allowed values are the CLI schema's (config.py), so a Python caller meets the same choices.
POSTPROCESS = _values(Postprocess)
STRUCTURAL = _values(Structural)
ANGLES = _values(Angles)
TENSOR_SCALES = _values(TensorScale)
INPUT_NORMS = _values(InputNorm)
TOOLKIT_NEGATIVE = _values(ToolkitNegative)
MAPPING_BITS = _values(BitsCoding)


def n_qubits_for(n_params: int) -> int:
    """ceil(log2 p) qubits hold p weights in their 2**n basis states."""
    return max(2, math.ceil(math.log2(n_params)))


_SEARCH, _QT, _BACKEND, _RUN_SEED = SearchConfig(), QTConfig(), BackendConfig(), RunConfig.seed
DTYPES = {Precision.float64.value: torch.float64, Precision.float32.value: torch.float32}  # backend.precision


@dataclass
class GeneratorOptions:
    """How the circuit output becomes weights, as plain values for Python callers.

    Every default is the CLI schema's (config.py: SearchConfig, QTConfig, BackendConfig), read
    from it here, so `Generator(shapes, depth)` builds what `diffqas-run` builds with no override;
    `from_config(cfg)` takes the values of a composed run config.
    """

    mode: str = _SEARCH.mode.value  # diffqas | fixed
    arch: int | None = _SEARCH.arch  # fixed mode: candidate 1..len(space)
    space: tuple[Candidate, ...] = CANDIDATES  # the search space (default: paper12, SPEC.md section 2)
    structural: str = _SEARCH.structural.value  # raw | softmax
    angles: str = _SEARCH.angles.value  # DiffQAS: one (L, n) angle tensor for all candidates | per_candidate
    postprocess: str = _QT.postprocess.value  # toolkit | scale | none
    toolkit: tuple[float, float, float] = tuple(_QT.toolkit)  # (gamma, beta, alpha)
    # raw structural weights can make ensemble entries negative: clamp them to ~0 before the power
    # (their gradient is then 0) | odd: -(-t)^alpha (gradient kept). Same result for P >= 0.
    toolkit_negative: str = _QT.toolkit_negative.value
    center_output: bool = _QT.center_output
    mapping_hidden: tuple[int, ...] = tuple(_QT.mapping_hidden)  # () = the paper's Linear(n+1 -> 1)
    mapping_bits_init: str = _QT.mapping_bits_init.value  # zero | default: initial weights on the bit inputs
    mapping_bits: str = _QT.mapping_bits.value  # pm1 | binary: a basis state's bits as -1/+1 or 0/1
    tensor_affine: bool = _QT.tensor_affine  # a learnable gain and shift per target tensor
    input_norm: str = _QT.input_norm.value  # x -> (x - mean) / std before the mapping | none
    # what feeds the mapping: circuit (its probabilities) | random (a fixed seeded vector: the
    # no-quantum control) | classical (a trainable classical generator of the circuit's size)
    source: str = _QT.source.value
    theta_init: str = _QT.theta_init.value  # uniform in [0, 2 pi) | normal (theta_std * N(0, 1))
    theta_std: float = _QT.theta_std
    # standardize: each tensor to mean 0, std 1 at every step, times 1/sqrt(fan_in); init: the same
    # shift and divisor, measured once at initialisation and then fixed; fan_in: the factor only; none
    tensor_scale: str = _QT.tensor_scale.value
    backend: str = _BACKEND.name.value
    device: str = PennyLaneDevice.default_qubit.value  # PennyLane device when backend=pennylane
    dtype: torch.dtype = DTYPES[_BACKEND.precision.value]  # of the simulation and the QT parameters
    memory_mb: int | None = _BACKEND.memory_mb  # native: the simulation's budget per step (None: half the free memory)
    out_dtype: torch.dtype = torch.float32  # of the generated weights (the target's dtype)
    shots: int | None = _QT.shots  # finite shots per circuit and step (None: exact probabilities)
    eval_shots: int | str | None = _QT.eval_shots  # for evaluation (eval mode): None (= shots), "exact", N
    seed: int = _RUN_SEED  # seeds the shot samples (with a step counter: see qt/shots.py) and gumbel's noise
    # DiffQAS: none (the paper's weighted mixture of every candidate) | gumbel (search.strategy=gumbel:
    # one group sampled per training step by straight-through Gumbel-softmax, the argmax group in eval mode)
    sampling: str = "none"
    tau: tuple[float, float] = tuple(_SEARCH.tau)  # gumbel's temperature, annealed from tau[0] to tau[1]
    stream: int = 0  # which generator of a GeneratorSet this is (its own samples)

    @classmethod
    def from_config(cls, cfg) -> GeneratorOptions:
        """The options of a composed run config (its `search`, `qt` and `backend` sections)."""
        qt = normalize_shots(OmegaConf.to_container(cfg.qt, resolve=True, enum_to_str=True))  # every QTConfig key
        qt = {k: tuple(v) if isinstance(v, list) else v for k, v in qt.items()}
        native = choice(cfg.backend.name) == BackendName.native.value
        return cls(
            mode=choice(cfg.search.mode),
            arch=cfg.search.arch,
            space=search_space(cfg),
            seed=cfg.seed,
            sampling="gumbel" if strategy_of(cfg.search) == "gumbel" else "none",
            tau=tuple(cfg.search.tau),
            structural=choice(cfg.search.structural),
            angles=choice(cfg.search.angles),
            backend=choice(cfg.backend.name),
            device=PennyLaneDevice.default_qubit.value if native else cfg.backend.device,
            dtype=DTYPES[choice(cfg.backend.precision)],
            memory_mb=cfg.backend.memory_mb,
            **qt,
        )


class _Evaluating:
    """`with generator.evaluating():` eval mode for the block (finite shots: `qt.eval_shots`, and no
    step counted), then the previous mode. For Generator and GeneratorSet alike."""

    @contextmanager
    def evaluating(self):
        was = self.training
        self.eval()
        try:
            yield self
        finally:
            self.train(was)


def fan_in(shape: torch.Size) -> int:
    """The fan-in `qt.tensor_scale` divides by: the trailing dimensions, or the length of a vector."""
    return int(shape[1:].numel()) if len(shape) > 1 else int(shape[0])


def _check_options(opts: GeneratorOptions) -> None:
    """The CLI's schema catches a bad choice first; this guards Python callers."""
    for key, value, allowed in (
        ("qt.postprocess", opts.postprocess, POSTPROCESS),
        ("search.structural", opts.structural, STRUCTURAL),
        ("search.angles", opts.angles, ANGLES),
        ("qt.tensor_scale", opts.tensor_scale, TENSOR_SCALES),
        ("qt.input_norm", opts.input_norm, INPUT_NORMS),
        ("qt.toolkit_negative", opts.toolkit_negative, TOOLKIT_NEGATIVE),
        ("qt.mapping_bits", opts.mapping_bits, MAPPING_BITS),
        ("qt.source", opts.source, SOURCES),
    ):
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")


class Generator(_Evaluating, nn.Module):
    def __init__(self, shapes: Mapping[str, torch.Size], depth: int, options: GeneratorOptions | None = None):
        super().__init__()
        opts = options or GeneratorOptions()
        _check_options(opts)
        self.options = opts
        self.names = list(shapes)
        self.shapes = [torch.Size(s) for s in shapes.values()]
        self.sizes = [s.numel() for s in self.shapes]
        self.n_params = sum(self.sizes)
        self.n_qubits = n_qubits_for(self.n_params)
        self.depth = depth
        self.space = tuple(opts.space)
        self.candidates = self._choose_candidates(opts)
        # the order of the random draws is the checkpoints' and the published runs': angles, then the mapping
        self._make_angles(opts)
        self._make_mapping(opts)
        self._freeze_dead()
        self.control = self._control(opts)
        self._make_groups()
        self._make_sampling(opts)
        self.spec = MapSpec(
            n_qubits=self.n_qubits, postprocess=opts.postprocess, toolkit=tuple(opts.toolkit),
            odd=opts.toolkit_negative == "odd", standardize_input=opts.input_norm == "standardize",
            center=opts.center_output, tensor_scale=opts.tensor_scale, affine=opts.tensor_affine,
            bits_pm1=opts.mapping_bits == "pm1", sizes=tuple(self.sizes), shapes=tuple(self.shapes), out_dtype=opts.out_dtype,
        )  # fmt: skip
        # the paper's mapping (no hidden layer) runs as one autograd node (qt/fused.py); a mapping
        # with hidden layers is recorded op by op (`flat_weights`)
        self.fused = not opts.mapping_hidden
        self._make_scaling(opts)

    def _choose_candidates(self, opts: GeneratorOptions) -> tuple[Candidate, ...]:
        """The candidates this generator simulates: the whole space (DiffQAS) or the fixed one; every
        candidate of the space must fit the wires, used here or not."""
        if opts.mode == "diffqas":
            chosen = self.space
        elif opts.mode == "fixed":
            chosen = (candidate(opts.arch, self.space),)
        else:
            raise ValueError(f"search.mode={opts.mode!r}; allowed: diffqas, fixed")
        try:
            check_wires(self.space, self.n_qubits)
        except SpaceError as err:
            raise ConfigError(str(err)) from None
        return chosen

    def _make_angles(self, opts: GeneratorOptions) -> None:
        """theta (and phi for parametrised entanglers), drawn by qt.theta_init, and DiffQAS's
        structural weights (1/N each). per_candidate: one angle tensor per candidate, stacked (SPEC
        section 3's open question). Angles per wire and layer: 1, or k when a candidate has k
        rotations per wire (each candidate uses its first ones): (L, n) or (L, n, k)."""
        n, depth, dtype = self.n_qubits, self.depth, opts.dtype
        self.per_candidate = opts.mode == "diffqas" and opts.angles == "per_candidate"
        k = max(c.rotation.n_angles for c in self.candidates)
        shape = (depth, n) if k == 1 else (depth, n, k)
        shape = (len(self.candidates), *shape) if self.per_candidate else shape

        def initial_angles(size: tuple[int, ...]) -> torch.Tensor:  # qt.theta_init, for theta and phi alike
            if opts.theta_init == "uniform":
                return torch.rand(size, dtype=dtype) * 2 * math.pi
            return opts.theta_std * torch.randn(size, dtype=dtype)

        self.theta = nn.Parameter(initial_angles(shape))
        # Parametrised entanglers (CRx, ..., CU3): their angles phi, (L, P, m) with P pairs and m
        # angles per pair at most over the candidates, shared like theta (each uses its first ones)
        ent = [c for c in self.candidates if c.entangler.parametrised]
        if ent:
            pshape = (depth, max(len(c.entangler.pairs_on(n)) for c in ent), max(c.entangler.n_angles for c in ent))
            pshape = (len(self.candidates), *pshape) if self.per_candidate else pshape
            self.phi = nn.Parameter(initial_angles(pshape))
        else:
            self.register_parameter("phi", None)
        if opts.mode == "diffqas":
            count = len(self.candidates)
            self.structural = nn.Parameter(torch.full((count,), 1.0 / count, dtype=dtype))
        else:
            self.register_parameter("structural", None)

    def _make_mapping(self, opts: GeneratorOptions) -> None:
        """The mapping M_beta and its inputs: the bits of every used basis index (qubit 0 most
        significant), as -1/+1 (qt.mapping_bits=pm1) or 0/1 (binary)."""
        n = self.n_qubits
        index = torch.arange(self.n_params)
        bits = ((index[:, None] >> torch.arange(n - 1, -1, -1)) & 1).to(opts.dtype)
        self.register_buffer("bits", bits * 2 - 1 if opts.mapping_bits == "pm1" else bits, persistent=False)
        self.mapping = mlp([n + 1, *opts.mapping_hidden, 1], dtype=opts.dtype)
        if opts.mapping_bits_init == "zero":
            with torch.no_grad():
                self.mapping[0].weight[:, :n].zero_()

    def _freeze_dead(self) -> None:
        """Parameters that cannot change a generated weight are not trained (nor counted as live):
        the mapping's output bias when the output is mean-centred, and the angles of a fixed
        candidate whose output ignores them. SPEC's counts include them (`paper_parameters`)."""
        if self.options.center_output:
            self.mapping[-1].bias.requires_grad_(False)
        if all(c.theta_independent(self.n_qubits, self.depth) for c in self.candidates):
            self.theta.requires_grad_(False)
            if self.phi is not None:
                self.phi.requires_grad_(False)

    def _make_groups(self) -> None:
        """Candidates with identical outputs in this mode (see quantum/groups.py): with per-candidate
        angles only the angle-independent ones. Under finite shots a group is measured once per
        step and its members share those frequencies, so they stay identical there too."""
        self.groups = output_groups(self.candidates, self.n_qubits, self.depth, shared_angles=not self.per_candidate)
        position = {c.number: i for i, c in enumerate(self.candidates)}
        row_group = torch.empty(len(self.candidates), dtype=torch.int64)
        for k, group in enumerate(self.groups):
            row_group[[position[m] for m in group]] = k
        self.register_buffer("group_heads", torch.tensor([position[g[0]] for g in self.groups]), persistent=False)
        self.register_buffer("row_group", row_group, persistent=False)

    def _make_sampling(self, opts: GeneratorOptions) -> None:
        """Gumbel's one group per step (its cache of each group's last P) and the finite-shot counter."""
        self.sampling = opts.sampling if opts.mode == "diffqas" else "none"
        if self.sampling == "gumbel" and opts.shots is not None:
            raise ValueError("qt.shots must be null with gumbel sampling (exact probabilities)")
        self.step = 0  # the training step about to run (`at_step`): gumbel's noise and temperature
        self.anneal_steps = 1  # steps of the run, over which gumbel's temperature goes from tau[0] to tau[1]
        if self.sampling == "gumbel":  # each group's P as last simulated (checkpointed: a resume is exact)
            with torch.no_grad():
                cache = torch.stack([self._group_probabilities(k) for k in range(len(self.groups))])
            self.register_buffer("sample_cache", cache)
        if self.eval_shots is not None or opts.shots is not None:
            # which step's sample is drawn next: the trainers set it (`at_step`) before every step,
            # a training forward advances it; checkpointed with the generator
            self.register_buffer("shot_counter", torch.zeros((), dtype=torch.int64))

    def _make_scaling(self, opts: GeneratorOptions) -> None:
        """Per-tensor scaling of the mapped weights: qt.tensor_affine's gain and shift, the
        1/sqrt(fan_in) factors, and qt.tensor_scale=init's statistics fixed at initialisation."""
        dtype = opts.dtype
        if opts.tensor_affine:  # one gain and one shift per target tensor (qt.tensor_affine)
            self.gain = nn.Parameter(torch.ones(len(self.shapes), dtype=dtype))
            self.shift = nn.Parameter(torch.zeros(len(self.shapes), dtype=dtype))
        scales = [1.0 / math.sqrt(fan_in(s)) if opts.tensor_scale != "none" else 1.0 for s in self.shapes]
        self.register_buffer(
            "scale",
            torch.cat([torch.full((s.numel(),), c, dtype=dtype) for s, c in zip(self.shapes, scales)]),
            persistent=False,
        )
        # which tensor each of the p weights belongs to (tensor_scale=init, tensor_affine)
        index = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        self.register_buffer("tensor_index", index, persistent=False)
        if opts.tensor_scale == "init":
            # Each tensor's mean and std at initialisation, fixed from then on (and checkpointed), so
            # training can still change the scale of the weights through the mapping.
            with torch.no_grad():
                stats = [mean_std(t) for t in self._mapped().split(self.sizes)]
            self.register_buffer("init_mean", torch.stack([m for m, _ in stats]))
            self.register_buffer("init_std", torch.stack([sd for _, sd in stats]))

    def _control(self, opts: GeneratorOptions) -> nn.Module | None:
        """qt.source: None for the circuit; else the control that replaces it (qt/controls.py). The
        circuit's parameters are built first (the run's RNG advances as in a circuit run, so the
        mapping starts the same) and then dropped: a control run trains no angle and no weight."""
        if opts.source == "circuit":
            return None
        if opts.shots is not None or opts.sampling != "none":
            what = "qt.shots" if opts.shots is not None else "search.strategy=gumbel"
            raise ConfigError(
                f"qt.source={opts.source} with {what}: a control has no circuit to sample; "
                "allowed: qt.shots=null and no gumbel sampling with a control, or qt.source=circuit"
            )
        matched = self._circuit_parameters()  # the circuit's trained count, what a classical control matches
        for name in ("theta", "phi", "structural"):
            self.register_parameter(name, None)
        if opts.source == "random":
            return RandomSource(self.n_qubits, opts.seed, opts.stream, opts.dtype)
        return ClassicalSource(all_bits(self.n_qubits, opts.dtype), matched, opts.seed, opts.stream, opts.dtype)

    def describe_source(self) -> dict:
        """summary.json's account of what fed the mapping: the circuit, or the control and its size."""
        if self.control is None:
            return {"kind": "circuit", "params": self._circuit_parameters()}
        return self.control.describe()

    # --- the quantum part -------------------------------------------------------------
    def structural_weights(self) -> torch.Tensor | None:
        if self.structural is None:
            return None
        if self.options.structural == "softmax" or self.sampling == "gumbel":  # gumbel: the sampling probabilities
            return torch.softmax(self.structural, 0)
        return self.structural

    def at_step(self, step: int) -> None:
        """Finite shots: the next training sample is step `step`'s; evaluations after the step use
        the counter as the step left it, as the written model does. No-op with exact probabilities."""
        self.step = step
        if hasattr(self, "shot_counter"):
            self.shot_counter.fill_(step)

    # --- gumbel: one group per step -----------------------------------------------------
    def group_logits(self) -> torch.Tensor:
        """One logit per group (`self.groups` order): logsumexp of its members' structural
        parameters, so a group's softmax probability is the sum of its members'."""
        return torch.stack([torch.logsumexp(self.structural[self.row_group == k], 0) for k in range(len(self.groups))])

    def temperature(self) -> float:
        """Gumbel-softmax temperature at `self.step`: geometric from tau[0] (step 0) to tau[1] (last step)."""
        start, end = self.options.tau
        frac = min(self.step / max(self.anneal_steps - 1, 1), 1.0)
        return start * (end / start) ** frac

    def sampled_group(self) -> tuple[int, torch.Tensor | None]:
        """(group index, soft sample): training draws one group by Gumbel-max (noise seeded by seed,
        stream and step, so a resumed run draws the same) with its Gumbel-softmax relaxation at the
        current temperature; eval mode takes the argmax (ties: the lower-numbered group), no relaxation."""
        logits = self.group_logits()
        if not self.training:
            return int(torch.argmax(logits.detach())), None
        opts = self.options
        noise_gen = torch.Generator().manual_seed((opts.seed * 1_000_003 + opts.stream * 7919 + self.step) % 2**63)
        u = torch.rand(len(logits), generator=noise_gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        gumbel = (-torch.log(-torch.log(u))).to(logits)
        soft = torch.softmax((logits + gumbel) / self.temperature(), 0)
        return int(torch.argmax(soft.detach())), soft

    def _simulate(self, theta: torch.Tensor, phi: torch.Tensor | None, cands) -> torch.Tensor:
        opts = self.options
        return probabilities(theta, cands, backend=opts.backend, device=opts.device, memory_mb=opts.memory_mb, phi=phi)

    def _angles_of(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(theta, phi) candidate i (0-based) is simulated with: its own with per-candidate angles."""
        if not self.per_candidate:
            return self.theta, self.phi
        return self.theta[i], None if self.phi is None else self.phi[i]

    def _group_probabilities(self, k: int) -> torch.Tensor:
        head = int(self.group_heads[k])
        theta, phi = self._angles_of(head)
        return self._simulate(theta, phi, [self.candidates[head]])[0]

    def _sampled_probabilities(self) -> torch.Tensor:
        """Gumbel: only the chosen group's circuit is simulated (its lowest-numbered member).

        Straight-through: the value is the chosen group's P_k exactly; the structural logits get the
        gradient of the soft mixture sum_j soft_j P_j, where the groups not simulated this step
        contribute their P_j as last simulated (`sample_cache`, filled at initialisation). A one-hot
        gate alone would give almost no gradient: the post-processing standardises P, so scaling
        P_k does not change the weights."""
        k, soft = self.sampled_group()
        probs = self._group_probabilities(k)
        if soft is None:
            return probs
        if torch.is_grad_enabled():
            self.sample_cache[k] = probs.detach().to(self.sample_cache)
        outputs = self.sample_cache.clone().to(probs)
        outputs[k] = probs.detach()
        return probs + (soft - soft.detach()) @ outputs

    @property
    def eval_shots(self) -> int | None:
        """Shots for evaluation: qt.eval_shots, else qt.shots (None: exact)."""
        value = self.options.eval_shots
        return None if value == "exact" else (self.options.shots if value is None else int(value))

    def probabilities(self) -> torch.Tensor:
        """Ensemble probabilities P (2**n,): sum_j w_j P_j, or the fixed candidate's P. With finite
        shots each P_j is its sampled frequencies (qt/shots.py): `qt.shots` in training mode,
        `eval_shots` in eval mode (`generator.eval()`)."""
        opts = self.options
        if self.control is not None:
            return self.control()
        if self.sampling == "gumbel":
            return self._sampled_probabilities()
        shots = opts.shots if self.training else self.eval_shots
        weights = self.structural_weights()
        if weights is not None and shots is None and not self.per_candidate:  # the ensemble in one pass
            return mixture(weights, self.theta, self.candidates, opts.backend, opts.device, opts.memory_mb, self.phi)
        if self.per_candidate:
            probs = torch.cat([self._simulate(*self._angles_of(i), [c]) for i, c in enumerate(self.candidates)])
        else:
            probs = self._simulate(self.theta, self.phi, self.candidates)
        if shots is not None:  # one draw per group of identical candidates, shared by its members
            stream = finite_shots.TRAIN if self.training else finite_shots.EVAL
            key = (opts.seed, opts.stream, stream, int(self.shot_counter))
            probs = finite_shots.estimate(probs, shots, key, self.group_heads, self.row_group)
            if self.training and torch.is_grad_enabled():
                self.shot_counter += 1
        return probs[0] if weights is None else weights @ probs

    def group_weights(self) -> dict[tuple[int, ...], float] | None:
        """Each group's structural weight: its members' mean (`quantum.groups.group_weight`)."""
        weights = self.structural_weights()
        if weights is None:
            return None
        w = weights.detach().tolist()
        return {g: group_weight(w, g) for g in self.groups}

    def ranking_groups(self) -> list[list[int]] | None:
        """Groups of candidates with identical outputs in this mode (members ascending), best group
        first by `group_weights`; ties go to the lower candidate number."""
        weights = self.group_weights()
        if weights is None:
            return None
        return [list(g) for g in sorted(self.groups, key=lambda g: (-weights[g], g[0]))]

    def ranking(self) -> list[int] | None:
        """Each group once, by its lowest number, best first (see `ranking_groups`)."""
        groups = self.ranking_groups()
        return None if groups is None else [g[0] for g in groups]

    def angle_independent(self) -> list[int]:
        if self.control is not None:
            return []  # no circuit ran
        return angle_independent(self.candidates, self.n_qubits, self.depth)

    # --- probabilities -> weights ------------------------------------------------------
    def _postprocess(self, probs: torch.Tensor) -> torch.Tensor:
        return postprocess(probs, self.spec)[0]

    def _mapped(self) -> torch.Tensor:
        """kappa = M_beta(bits, x) for the p used basis states, before any per-tensor scaling."""
        x = self._postprocess(self.probabilities()[: self.n_params])
        if self.options.input_norm == "standardize":
            x = standardize(x)
        kappa = self.apply_mapping(x)
        return kappa - kappa.mean() if self.options.center_output else kappa

    def apply_mapping(self, x: torch.Tensor) -> torch.Tensor:
        """M_beta on the rows [bits_i, x_i] (`linear_map`, then any hidden layers)."""
        return self.mapping[1:](linear_map(x, self.bits, self.mapping[0].weight, self.mapping[0].bias)).squeeze(1)

    def _consts(self) -> dict[str, torch.Tensor]:
        """The fixed tensors of the per-tensor scaling and the mapping (buffers: on the run's device)."""
        consts = {"bits": self.bits, "tensor_index": self.tensor_index, "scale": self.scale}
        if self.options.tensor_scale == "init":
            consts.update(init_mean=self.init_mean, init_std=self.init_std)
        return consts

    def _affine(self) -> tuple[torch.Tensor, ...]:
        return (self.gain, self.shift) if self.options.tensor_affine else ()

    def flat_weights(self) -> torch.Tensor:
        """The p generated weights, recorded by autograd op by op (any mapping)."""
        return scale_tensors(self._mapped(), self.spec, self._consts(), *self._affine())[0]

    def forward(self) -> dict[str, torch.Tensor]:
        """The generated weights as {name: tensor}, in the target's named_parameters() order."""
        if self.fused:
            first = self.mapping[0]
            native = self.control is None and self.options.backend == "native"  # as `simulator.kernel` records it
            probs = self.probabilities()
            tensors = mapped_weights(self.spec, self._consts(), probs, first.weight, first.bias, *self._affine(), native=native)
            return dict(zip(self.names, tensors))
        flat = self.flat_weights().to(self.options.out_dtype)
        return {name: t.view(shape) for name, t, shape in zip(self.names, flat.split(self.sizes), self.shapes)}

    def trainable_parameters(self) -> int:
        """Live parameters: those that can change a generated weight (`qt_params`): the circuit's
        (or its control's) and the mapping's."""
        circuit = ("theta", "phi", "structural")
        live = sum(p.numel() for name, p in self.named_parameters() if p.requires_grad and name not in circuit)
        return live + (self._circuit_parameters() if self.control is None else 0)

    def _circuit_parameters(self) -> int:
        """The circuit's live parameters: the structural weights, and angles only where an
        angle-dependent candidate uses them: theta, every rotation slot it uses in every layer (as
        before issue 27: a leading Rz on |0> or a final Rz counts too); phi, its entangler's slots,
        but not layer 0's from |0..0>, where the gates act on no state."""
        live = 0 if self.structural is None else self.structural.numel()
        if not self.theta.requires_grad:
            return live
        n = self.n_qubits
        dependent = [c for c in self.candidates if not c.theta_independent(n, self.depth)]
        used = [c.rotation.n_angles for c in dependent]
        live += self.depth * n * (sum(used) if self.per_candidate else max(used))
        if self.phi is None:
            return live
        # entangler angles a run can change: each candidate's (pairs, angles) slots in every layer
        # but the first when it starts from |0..0> (no control is 1 there); shared: their union
        masks = []
        for c in dependent:
            mask = torch.zeros(self.phi.shape[-3:], dtype=torch.bool)
            mask[0 if c.hadamard else 1 :, : len(c.entangler.pairs_on(n)), : c.entangler.n_angles] = True
            masks.append(mask)
        if not masks:
            return live
        return live + int(sum(m.sum() for m in masks) if self.per_candidate else torch.stack(masks).any(0).sum())

    def paper_parameters(self) -> int:
        """Every parameter, as SPEC section 3 counts them (`qt_params_paper`)."""
        return sum(p.numel() for p in self.parameters())


class GeneratorSet(_Evaluating, nn.Module):
    """One generator per parameter group of the target (RL: actor and critic), called as one.

    Calling it returns every generated tensor, merged; the structural weights and ranking reported
    are the first group's (the whole target for supervised tasks, the actor for RL).
    """

    def __init__(self, groups: Mapping[str, Mapping[str, torch.Size]], depth: int, options: GeneratorOptions | None = None):
        super().__init__()
        opts = options or GeneratorOptions()
        self.parts = nn.ModuleDict(
            {name: Generator(shapes, depth, replace(opts, stream=i)) for i, (name, shapes) in enumerate(groups.items())}
        )
        self._first = next(iter(groups))

    @property
    def first(self) -> Generator:
        return self.parts[self._first]

    @property
    def n_qubits(self) -> int:
        return max(g.n_qubits for g in self.parts.values())

    def forward(self) -> dict[str, torch.Tensor]:
        return {k: v for g in self.parts.values() for k, v in g().items()}

    def at_step(self, step: int) -> None:
        for g in self.parts.values():
            g.at_step(step)

    def structural_weights(self) -> torch.Tensor | None:
        return self.first.structural_weights()

    def ranking(self) -> list[int] | None:
        return self.first.ranking()

    def ranking_groups(self) -> list[list[int]] | None:
        return self.first.ranking_groups()

    def group_weights(self) -> dict[tuple[int, ...], float] | None:
        return self.first.group_weights()

    def angle_independent(self) -> list[int]:
        return self.first.angle_independent()

    def trainable_parameters(self) -> int:
        return sum(g.trainable_parameters() for g in self.parts.values())

    def paper_parameters(self) -> int:
        return sum(g.paper_parameters() for g in self.parts.values())
