"""circuit.png: one candidate drawn as its Hadamard column and one layer (entangler, rotations) x L.
CNOT is a dot and a target, CZ two dots, a parametrised controlled gate a dot and a box on its target."""

from __future__ import annotations

from ..quantum.candidates import Candidate


def gate_columns(pairs) -> list[list[tuple[int, int]]]:
    """Two-qubit gates in drawing columns: pairs that share no wire go in one column (the brick's
    two halves; the ring is sequential)."""
    columns: list[list[tuple[int, int]]] = []
    for c, t in pairs:
        span = set(range(min(c, t), max(c, t) + 1))
        if columns and not any(span & set(range(min(a, b), max(a, b) + 1)) for a, b in columns[-1]):
            columns[-1].append((c, t))
        else:
            columns.append([(c, t)])
    return columns


def controlled_gate(ax, x: float, c: int, t: int, kind: str | None, box) -> None:
    """One two-qubit gate at column x: the control's dot, then on the target a dot (kind 'cz'), a
    box naming the rotation (a parametrised gate: kind is its label) or CNOT's circled plus (None)."""
    from matplotlib.patches import Circle

    ax.plot([x, x], [c, t], color="k", lw=0.8, zorder=1)
    ax.add_patch(Circle((x, c), 0.08, color="k", zorder=2))
    if kind == "cz":
        ax.add_patch(Circle((x, t), 0.08, color="k", zorder=2))
    elif kind:
        box(x, t, kind)
    else:
        ax.add_patch(Circle((x, t), 0.18, facecolor="white", edgecolor="k", lw=0.8, zorder=2))
        ax.plot([x - 0.18, x + 0.18], [t, t], color="k", lw=0.8, zorder=3)
        ax.plot([x, x], [t - 0.18, t + 0.18], color="k", lw=0.8, zorder=3)


def draw_candidate(cand: Candidate, n_qubits: int, depth: int, title: str | None = None):
    """A matplotlib Figure of candidate `cand` on n_qubits wires; the repeated layer is bracketed 'x depth'."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .figures import wrap

    pairs = cand.entangler.pairs_on(n_qubits)
    cz = cand.entangler.gate == "cz"
    # a parametrised controlled gate: the control's dot and a box on the target naming what it applies
    boxed = {"crx": "Rx", "cry": "Ry", "crz": "Rz", "crot": "Rot", "cu3": "U3"}.get(cand.entangler.gate)
    columns = gate_columns(pairs)
    x = 0.5
    rotation_width = max(0.0, 0.18 * len(cand.rotation.label) - 0.6)
    width = 1.2 + (1 if cand.hadamard else 0) + len(columns) + 1.5 + rotation_width
    title = title or f"candidate {cand.number}: {cand.name}"
    fig_width = max(4.0, 0.55 * width + 1)
    title = wrap(title, fig_width, 9)  # a wide space's note (groups ranked above) wraps instead of running off the page
    lines = title.count("\n") + 1
    fig = Figure(figsize=(fig_width, 0.38 * n_qubits + 0.75 + 0.2 * lines), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(0, width)
    ax.set_ylim(n_qubits, -1.2)
    ax.axis("off")
    for q in range(n_qubits):
        ax.plot([0.2, width - 0.2], [q, q], color="k", lw=0.8, zorder=0)
        ax.text(0.05, q, f"{q}", ha="right", va="center", fontsize=7)

    def box(xc: float, q: int, label: str) -> None:
        half = max(0.3, 0.09 * len(label))  # a sequence of rotations (RyRz, Rot) still fits its box
        ax.add_patch(Rectangle((xc - half, q - 0.3), 2 * half, 0.6, facecolor="white", edgecolor="k", lw=0.8, zorder=2))
        ax.text(xc, q, label, ha="center", va="center", fontsize=6, zorder=3)

    if cand.hadamard:
        x += 0.5
        for q in range(n_qubits):
            box(x, q, "H")
        x += 0.5
    start = x + 0.2
    for column in columns:
        x += 1
        for c, t in column:
            controlled_gate(ax, x, c, t, "cz" if cz else boxed, box)
    x += 1 + rotation_width / 2
    for q in range(n_qubits):
        box(x, q, cand.rotation.label)
    end = x + 0.5 + rotation_width / 2
    ax.plot([start, start, end, end], [-0.6, -0.8, -0.8, -0.6], color="tab:blue", lw=1)
    ax.text((start + end) / 2, -0.95, f"x {depth} layers", ha="center", va="bottom", fontsize=8, color="tab:blue")
    ax.set_title(title, fontsize=9)
    return fig
