""".hydra/ (config.yaml, hydra.yaml, overrides.yaml), written by the runner instead of Hydra.

Hydra would write them before any of the run's code (or a callback in the job's process) could
look at the directory, so a rerun with other settings would rewrite a finished job's record
(`hydra.output_subdir: null` in configs/config.yaml turns that off). The runner writes the same
three files with the content Hydra would have written, each atomically, once the directory is
known not to hold another run's results, and never over a finished run's record.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import OmegaConf, read_write

from .files import atomic_write

RECORD = ".hydra"


class RecordError(OSError):
    """The record could not be written (a full disk, an unwritable path); names the file."""


def record_texts(task_cfg, hydra_root) -> dict[str, str]:
    """The three files' text, as Hydra's run_job would write them (`hydra_root`: the config holding
    the `hydra` node, i.e. HydraConfig.instance().cfg; its output_subdir shown as Hydra's default)."""
    hydra_cfg = copy.deepcopy(hydra_root)
    with read_write(hydra_cfg.hydra):
        hydra_cfg.hydra.output_subdir = RECORD
    return {
        "config.yaml": OmegaConf.to_yaml(task_cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_root.hydra.overrides.task),
    }


def write_record(run_dir: Path, texts: dict[str, str]) -> None:
    """Each file written whole or not at all (a failure leaves the previous file, if any)."""
    target = Path(run_dir) / RECORD
    path = target
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            path = target / name
            atomic_write(path, lambda p, text=text: p.write_text(text, encoding="utf-8"))
    except OSError as err:
        raise RecordError(
            f"{path}: the run's record cannot be written ({err.strerror or err}); "
            "allowed: an output directory on a writable filesystem with free space"
        ) from None
