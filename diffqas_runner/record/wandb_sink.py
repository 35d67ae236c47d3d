"""Weights & Biases sink: created inside the job (never pickled across processes), closed in finally.

wandb's own terminal output is off (`silent`, no console capture): the run logs one line with the
wandb run's id, mode and directory instead of wandb's banner and its history/summary tables.
Metrics go to the history as the run logs them; at the end the run's figures (as images), DiffQAS's
structural weights as one chart (a line per group of identical candidates) and the summary's keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .files import read_rows

log = logging.getLogger(__name__)

# summary.json keys copied into wandb's run summary as they are (lists of numbers or names too)
SUMMARY_KEYS = (
    "task", "search", "arch", "arch_name", "search_space", "n_candidates", "depth", "backend", "seed", "n_qubits",
    "classical_params", "qt_params", "qt_params_paper", "objective", "wall_seconds", "steps", "resumed_from_step",
    "torch_threads", "shots", "eval_shots", "ranking", "angle_independent", "selected_arch", "selected_name",
)  # fmt: skip


def group_key(group) -> str:
    return "c" + "+".join(str(m) for m in group)


def circuit(summary: dict[str, Any]) -> str:
    """The run's answer, as circuit.png shows it: the selected circuit after a selection stage, the
    fixed candidate, else DiffQAS's top angle-dependent group (its lowest number)."""
    names = summary.get("candidates") or []
    if summary.get("selected_arch"):
        return f"{summary['selected_arch']} {summary.get('selected_name', '')}".strip()
    if summary.get("arch"):
        return f"{summary['arch']} {summary.get('arch_name') or ''}".strip()
    independent = set(summary.get("angle_independent") or ())
    groups = summary.get("ranking_groups") or [[]]
    top = next((g for g in groups if g and g[0] not in independent), groups[0])
    return f"{top[0]} {names[top[0] - 1]}" if top and top[0] <= len(names) else ""


class WandbSink:
    def __init__(self, cfg, run_dir: Path, config: dict, group: str | None, name: str | None, run_id: str | None = None):
        import wandb

        self._wandb = wandb
        self.run_dir = Path(run_dir)
        self.images: dict[str, Path] = {}
        kwargs = dict(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or group,
            name=name,
            tags=list(cfg.tags),
            dir=str(run_dir),
            config=config,
            reinit="finish_previous",
            id=run_id,  # a resumed run continues its wandb run
            resume="allow" if run_id else None,
            # no banner, no history/summary tables after the run, no copy of the terminal (cli.log has it)
            settings=wandb.Settings(silent=True, quiet=True, console="off"),
        )
        mode = cfg.mode.value
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as err:  # no network, no login, server down: the experiment must still run
            if mode != "online":
                raise
            log.warning(
                "wandb online is unavailable (%s: %s); falling back to offline mode: upload later with `wandb sync %s`",
                type(err).__name__, str(err).splitlines()[0] if str(err) else "", run_dir / "wandb",
            )  # fmt: skip
            mode = "offline"
            self.run = wandb.init(mode=mode, **kwargs)
        self.mode = mode
        self.run_id = self.run.id
        where = f"; upload with `wandb sync {self.run.dir.rsplit('/files', 1)[0]}`" if mode == "offline" else ""
        log.info("wandb run %s (%s mode)%s", self.run.id, mode, where)

    def log(self, row: dict[str, Any], step: int | None = None) -> None:
        flat = {k: v for k, v in row.items() if isinstance(v, int | float)}
        weights = row.get("structural_weights")
        if weights:
            flat.update({f"structural/w{i + 1:02d}": w for i, w in enumerate(weights)})
        self.run.log(flat, step=step)

    def figure(self, name: str, path: Path) -> None:
        """A figure the run saved: logged as an image with the summary, at the end."""
        self.images[Path(name).stem] = Path(path)

    def summary(self, summary: dict[str, Any]) -> None:
        wandb = self._wandb
        end: dict[str, Any] = {f"figures/{stem}": wandb.Image(str(path), caption=path.name) for stem, path in self.images.items()}
        groups = summary.get("ranking_groups")
        rows = [r for r in read_rows(self.run_dir / "metrics.jsonl") if r.get("structural_weights")]
        if groups and rows:  # one chart, a line per group (identical candidates' weights are equal)
            from ..quantum.groups import group_weight
            from .figures import group_label

            independent = set(summary.get("angle_independent") or ())
            ordered = sorted(groups)
            end["structural_weights"] = wandb.plot.line_series(
                xs=[r["step"] for r in rows],
                ys=[[group_weight(r["structural_weights"], g) for r in rows] for g in ordered],
                keys=[group_label(g, summary.get("candidates"), g[0] in independent) for g in ordered],
                title="structural weights (a line per group of identical candidates)",
                xname="step",
            )
            for g, weight in zip(groups, summary.get("group_weights") or ()):
                self.run.summary[f"structural_groups/{group_key(g)}"] = weight
        if end:
            self.run.log(end)
        for key in SUMMARY_KEYS:
            if summary.get(key) is not None:
                self.run.summary[key] = summary[key]
        self.run.summary["circuit"] = circuit(summary)
        if groups:
            self.run.summary["ranking_groups"] = [",".join(map(str, g)) for g in groups]
        for key, value in (summary.get("metrics") or {}).items():
            self.run.summary[f"final/{key}"] = value
        if summary.get("selection"):
            self.run.summary["selection"] = summary["selection"]

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
