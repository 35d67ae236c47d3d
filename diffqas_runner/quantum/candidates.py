"""Candidate circuits as plain data, and the search spaces built from them.

A candidate is: an initial layer (nothing, or H on every wire), then L layers of (entangler,
rotation layer on every wire). An entangler is a list of two-qubit gates given by a named pattern
or by explicit (control, target) pairs: CNOT or CZ, or a parametrised controlled rotation (CRx,
CRy, CRz, CRot = controlled Rz Ry Rz, CU3 = controlled U3) with its own angles per pair and layer
(`Entangler.n_angles`; the circuit's `phi` tensor). A rotation layer is one or more rotations per
wire (Rx, Ry, Rz, e.g. Ry then Rz, or Rot = Rz Ry Rz with three angles; U3 is Rot up to a global
phase and the order of its angles, so it is read as Rot), each with its own angle. `paper12` is
SPEC.md section 2's space in its numbering: product(H, none) x (Ent, Cyc) x (Rx, Ry, Rz), where
Ent is the CNOT chain in brick order and Cyc the CNOT ring.

CNOT and CZ are signed permutations of the computational basis (CNOT permutes, CZ flips signs), so
such an entangling layer is one signed permutation: `layer_op` composes it once per (entangler, n).
The parametrised gates are not; they are simulated gate by gate (quantum/native.py, "controlled").
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

GATES = ("cnot", "cz", "crx", "cry", "crz", "crot", "cu3")
# angles per (control, target) pair of each parametrised controlled gate; CNOT and CZ have none
GATE_ANGLES = {"cnot": 0, "cz": 0, "crx": 1, "cry": 1, "crz": 1, "crot": 3, "cu3": 3}
PATTERNS = ("chain", "ring", "all_to_all", "stride2", "none")
INITS = ("none", "H")
AXES = ("X", "Y", "Z")
ROTATIONS_ALLOWED = (
    "Rx, Ry, Rz, a sequence such as RyRz (Ry then Rz), Rot (Rz Ry Rz) or U3 (= Rot), or a list of axes such as [Y, Z]"
)
MAX_CANDIDATES = 256  # each live candidate is a state vector per step: 256 is far past any published space
# Labels in candidate names; the paper's two keep its names (Ent, Cyc).
_PATTERN_LABEL = {"chain": "Ent", "ring": "Cyc", "all_to_all": "All", "stride2": "Str2", "none": "NoEnt"}
_GATE_LABEL = {"cnot": "", "cz": "CZ", "crx": "CRx", "cry": "CRy", "crz": "CRz", "crot": "CRot", "cu3": "CU3"}


@dataclass(frozen=True)
class Entangler:
    """One entangling layer: `gate` on the pairs of a named `pattern`, or on explicit `pairs`."""

    gate: str = "cnot"
    pattern: str | None = "chain"
    pairs: tuple[tuple[int, int], ...] = ()

    @property
    def label(self) -> str:
        base = _PATTERN_LABEL[self.pattern] if self.pattern else "Pairs" + "_".join(f"{c}-{t}" for c, t in self.pairs)
        return _GATE_LABEL[self.gate] + base

    @property
    def n_angles(self) -> int:
        """Angles per (control, target) pair: 0 for CNOT and CZ, 1 for CRx/CRy/CRz, 3 for CRot/CU3."""
        return GATE_ANGLES[self.gate]

    @property
    def parametrised(self) -> bool:
        return self.n_angles > 0

    def pairs_on(self, n: int) -> list[tuple[int, int]]:
        """(control, target) pairs on n wires, in application order."""
        if self.pattern is None:
            return list(self.pairs)
        if self.pattern == "chain":  # open brick: (0,1),(2,3),... then (1,2),(3,4),...
            return [(q, q + 1) for q in range(0, n - 1, 2)] + [(q, q + 1) for q in range(1, n - 1, 2)]
        if self.pattern == "ring":  # (q, q+1 mod n) for q = 0..n-1
            return [(q, (q + 1) % n) for q in range(n)]
        if self.pattern == "all_to_all":
            return [(a, b) for a in range(n) for b in range(a + 1, n)]
        if self.pattern == "stride2":
            return [(q, q + 2) for q in range(n - 2)]
        return []


CHAIN, RING = Entangler("cnot", "chain"), Entangler("cnot", "ring")


@dataclass(frozen=True)
class Rotation:
    """Rotations applied to every wire in this order, each with its own angle."""

    axes: tuple[str, ...]

    @property
    def label(self) -> str:
        return "Rot" if self.axes == ("Z", "Y", "Z") else "".join(f"R{a.lower()}" for a in self.axes)

    @property
    def n_angles(self) -> int:
        return len(self.axes)


RX, RY, RZ = Rotation(("X",)), Rotation(("Y",)), Rotation(("Z",))


@dataclass(frozen=True)
class Candidate:
    number: int
    init: str  # "none" | "H"
    entangler: Entangler
    rotation: Rotation
    label: str | None = None  # a user's name for it; default: built from the parts

    @property
    def hadamard(self) -> bool:
        return self.init == "H"

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return "-".join((["H"] if self.hadamard else []) + [self.entangler.label, self.rotation.label])

    def theta_independent(self, n: int, depth: int | None = None) -> bool:
        """Whether the measured distribution on n wires (at `depth` layers; None: any depth >= 2)
        cannot depend on the angles (from structure).

        CNOT and CZ are signed permutations of the Z basis. If every rotation is Rz (diagonal in Z),
        the Z-basis magnitudes are only permuted: the output is the start state's, carried through
        the CNOTs. CNOT also permutes the X basis (CZ does not), so if every rotation is Rx
        (diagonal in X), the entangling layer has no sign (CNOTs only, or CZs that cancel) and the
        start is an X basis state (H on |0..0> = |+..+>), the state stays that X basis state up to
        a phase: the output is uniform. Every other combination depends on theta in general
        (checked numerically in the tests). At depth 1 a final Rz changes no probability, so it is
        left out first.
        """
        axes = list(self.rotation.axes)
        while depth == 1 and axes and axes[-1] == "Z":
            axes.pop()
        axes = set(axes)
        if self.entangler.parametrised:
            # From |0..0> with Z rotations no control is ever 1, so no controlled gate acts; a CRz
            # layer is diagonal, so with Z rotations only phases change. Anything else moves weight.
            return axes <= {"Z"} and (not self.hadamard or self.entangler.gate == "crz")
        if axes <= {"Z"}:
            return True
        return axes == {"X"} and self.hadamard and layer_op(self.entangler, n)[1] is None

    def ent_angles(self, n: int) -> int:
        """Angles of one entangling layer on n wires: pairs x angles per pair (0 for CNOT, CZ)."""
        return len(self.entangler.pairs_on(n)) * self.entangler.n_angles


@lru_cache(maxsize=256)
def layer_op(entangler: Entangler, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The entangling layer as a signed permutation: (layer psi)[i] = sign[i] * psi[perm[i]].

    Qubit 0 is the most significant bit; sign is None when every sign is +1 (CNOT only).
    Composition: applying gate G (out[i] = s_G[i] in[p_G[i]]) after (perm, sign) gives
    perm[p_G] and s_G * sign[p_G]. Parametrised entanglers (CRx, ...) are not permutations.
    """
    if entangler.parametrised:
        raise ValueError(f"{entangler.gate} gates are not a signed permutation; simulate them gate by gate")
    idx = torch.arange(2**n, dtype=torch.int64)
    perm, sign = idx.clone(), torch.ones(2**n, dtype=torch.int8)
    for a, b in entangler.pairs_on(n):
        abit, bbit = (idx >> (n - 1 - a)) & 1, (idx >> (n - 1 - b)) & 1
        if entangler.gate == "cnot":
            p_gate = idx ^ (abit << (n - 1 - b))
            perm, sign = perm[p_gate], sign[p_gate]
        else:
            sign = sign * (1 - 2 * (abit & bbit)).to(torch.int8)
    return perm, (None if bool((sign == 1).all()) else sign)


def entangler_permutation(entangler: Entangler, n: int) -> torch.Tensor:
    """Index map `perm` of the layer's basis permutation (its signs aside): see `layer_op`."""
    return layer_op(entangler, n)[0]


# --- building candidates and spaces from configuration -----------------------------------------
class SpaceError(ValueError):
    """A search-space entry that cannot be built; the message names its key."""


def parse_rotation(value, key: str) -> Rotation:
    """'Ry', 'RyRz', 'Rot' (= Rz Ry Rz, 3 angles), 'U3' (read as Rot: U3(a, b, c) equals
    Rz(b) Ry(a) Rz(c) up to a global phase, the same family of layers) or a list of axes ['Y', 'Z']."""
    if isinstance(value, str):
        if value.strip().lower() in ("rot", "u3"):
            return Rotation(("Z", "Y", "Z"))
        tokens = re.fullmatch(r"(?:[Rr][xyzXYZ])+", value.strip())
        axes = tuple(t[1].upper() for t in re.findall(r"[Rr][xyzXYZ]", value)) if tokens else ()
    elif isinstance(value, Sequence) and value and all(isinstance(a, str) for a in value):
        axes = tuple(a.strip().upper().removeprefix("R") for a in value)
    else:
        axes = ()
    if not axes or any(a not in AXES for a in axes) or len(axes) > 3:
        raise SpaceError(f"{key}={value!r} is not allowed; allowed: one to three rotations per wire: {ROTATIONS_ALLOWED}")
    return Rotation(axes)


def parse_entangler(value, gate, key: str) -> Entangler:
    """A pattern name ('ring', 'cz_ring', 'cu3_ring', ...) or explicit [[control, target], ...] pairs."""
    gate = gate.strip().lower() if isinstance(gate, str) else gate
    if gate is not None and gate not in GATES:
        raise SpaceError(f"{key.rsplit('.', 1)[0]}.gate={gate!r} is not allowed; allowed: {', '.join(GATES)} (or null)")
    if isinstance(value, str):
        name = value.strip().lower()
        prefix, _, rest = name.partition("_")
        named_gate = prefix if rest and prefix in GATES and prefix != "cnot" else None
        pattern = rest if named_gate else name
        if pattern not in PATTERNS:
            gates = ", ".join(g for g in GATES if g != "cnot")
            allowed = ", ".join(PATTERNS) + f" (each also as <gate>_<name> with gate one of {gates}), or [[control, target], ...]"
            raise SpaceError(f"{key}={value!r} is not allowed; allowed: {allowed}")
        if named_gate and gate is not None and gate != named_gate:
            raise SpaceError(f"{key}={value!r} names {named_gate} gates but gate={gate}; allowed: drop one of them")
        chosen = gate or named_gate or "cnot"
        if pattern == "none" and GATE_ANGLES[chosen]:
            raise SpaceError(
                f"{key}={value!r} with gate {chosen} has no pairs: the same circuit as `none`, with angles that do nothing; "
                "allowed: none, or a pattern with pairs"
            )
        return Entangler(chosen, pattern)
    pairs = []
    if isinstance(value, Sequence) and not isinstance(value, str):
        for pair in value:
            if not (isinstance(pair, Sequence) and len(pair) == 2 and all(_is_int(w) for w in pair)):
                pairs = None
                break
            pairs.append((int(pair[0]), int(pair[1])))
    if not pairs or any(c == t or c < 0 or t < 0 for c, t in pairs):
        raise SpaceError(
            f"{key}={value!r} is not allowed; allowed: a pattern name ({', '.join(PATTERNS)}) or a non-empty "
            "list of [control, target] pairs of distinct wires >= 0"
        )
    return Entangler(gate or "cnot", None, tuple(pairs))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_init(value, key: str) -> str:
    for allowed in INITS:
        if isinstance(value, str) and value.strip().lower() == allowed.lower():
            return allowed
    if value is None:
        return "none"
    raise SpaceError(f"{key}={value!r} is not allowed; allowed: {', '.join(INITS)}")


def build_space(product: Mapping | None, candidates: Iterable[Mapping] = (), key: str = "search_space") -> tuple[Candidate, ...]:
    """The candidates of a space: every combination of `product`'s lists (init x entangler x
    rotation, in that order, the last varying fastest), then the `candidates` listed one by one.
    Numbered from 1 in that order."""
    specs: list[tuple[str, dict]] = []
    if product is not None and not isinstance(product, Mapping):
        allowed = "null or a mapping of init, entangler, rotation lists"
        raise SpaceError(f"{key}.product={product!r} is not allowed; allowed: {allowed}")
    if candidates is not None and (isinstance(candidates, str | Mapping) or not isinstance(candidates, Sequence)):
        raise SpaceError(f"{key}.candidates={candidates!r} is not allowed; allowed: a list of candidates")
    if product:
        unknown = set(product) - {"init", "entangler", "rotation"}
        if unknown:
            raise SpaceError(f"{key}.product.{sorted(unknown)[0]} is not a key; allowed: init, entangler, rotation")
        lists = []
        for part in ("init", "entangler", "rotation"):
            values = product.get(part)
            if not isinstance(values, Sequence) or isinstance(values, str) or not values:
                raise SpaceError(f"{key}.product.{part}={values!r} is not allowed; allowed: a non-empty list")
            lists.append(list(values))
        for init, ent, rot in itertools.product(*lists):
            specs.append((f"{key}.product", {"init": init, "entangler": ent, "rotation": rot}))
    for i, spec in enumerate(candidates or ()):
        if not isinstance(spec, Mapping):
            example = "{init: H, entangler: ring, rotation: Ry}"
            raise SpaceError(f"{key}.candidates[{i}]={spec!r} is not allowed; allowed: a mapping such as {example}")
        specs.append((f"{key}.candidates[{i}]", dict(spec)))
    if not specs:
        raise SpaceError(f"{key} has no candidates; allowed: a `product` of parts and/or a `candidates` list")
    if len(specs) > MAX_CANDIDATES:
        raise SpaceError(f"{key} has {len(specs)} candidates; allowed: at most {MAX_CANDIDATES}")
    out = []
    for number, (where, spec) in enumerate(specs, start=1):
        unknown = set(spec) - {"init", "entangler", "gate", "rotation", "name"}
        if unknown:
            raise SpaceError(f"{where}.{sorted(unknown)[0]} is not a key; allowed: init, entangler, gate, rotation, name")
        label = spec.get("name")
        if label is not None and (not isinstance(label, str) or not label.strip() or len(label) > 64 or not label.isprintable()):
            raise SpaceError(f"{where}.name={label!r} is not allowed; allowed: null or a printable name of 1..64 characters")
        out.append(
            Candidate(
                number,
                parse_init(spec.get("init", "none"), f"{where}.init"),
                parse_entangler(spec.get("entangler", "chain"), spec.get("gate"), f"{where}.entangler"),
                parse_rotation(spec.get("rotation"), f"{where}.rotation"),
                label.strip() if label else None,
            )
        )
    names: dict[str, int] = {}
    for cand in out:
        if cand.name in names:
            raise SpaceError(
                f"{key}: candidates {names[cand.name]} and {cand.number} are both named {cand.name!r}; "
                "allowed: a different name for each candidate (set `name:`, or change a part)"
            )
        names[cand.name] = cand.number
    return tuple(out)


def check_wires(cands: Sequence[Candidate], n: int, key: str = "search_space") -> None:
    """Explicit pairs must name wires of the circuit the target needs (n qubits)."""
    for cand in cands:
        for c, t in cand.entangler.pairs:
            if max(c, t) >= n:
                raise SpaceError(
                    f"{key}: candidate {cand.number} ({cand.name}) uses wire {max(c, t)}, but this target needs "
                    f"{n} qubits; allowed: wires 0..{n - 1}"
                )


def space_digest(cands: Sequence[Candidate]) -> str:
    """A short hash of the candidates' structures in order (names aside): two spaces with the same
    digest simulate the same circuits under the same numbers, whatever they are called."""
    parts = [(c.init, c.entangler.gate, c.entangler.pattern, c.entangler.pairs, c.rotation.axes) for c in cands]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _packaged_space(name: str) -> tuple[Candidate, ...]:
    """A space shipped in configs/search_space/ (the one source of its definition)."""
    from importlib.resources import files

    import yaml

    node = yaml.safe_load(files("diffqas_runner.configs").joinpath("search_space", f"{name}.yaml").read_text())
    return build_space(node.get("product"), node.get("candidates") or (), key=f"search_space {name}")


CANDIDATES: tuple[Candidate, ...] = _packaged_space("paper12")  # SPEC.md section 2
N_CANDIDATES = len(CANDIDATES)
PAPER12_DIGEST = space_digest(CANDIDATES)


def candidate(arch: int, space: Sequence[Candidate] = CANDIDATES) -> Candidate:
    if not _is_int(arch) or not 1 <= arch <= len(space):
        raise ValueError(f"arch={arch!r} is not a candidate; allowed: integers 1..{len(space)}")
    return space[arch - 1]
