"""`diffqas-run` / `python -m diffqas_runner`: compose the config with Hydra and run it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from .config import ConfigError, register

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
log = logging.getLogger("diffqas_runner")

register()


def _check_writable(key: str, path: str) -> None:
    """Exit with a clear message if `path` cannot be created or written (before Hydra tries)."""
    target = Path(path).absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        print(f"Error: {key}={path!r} cannot be created: {existing} {why}; allowed: a writable directory", file=sys.stderr)
        sys.exit(2)


class OutputDirCheck(Callback):
    """Hydra callback: refuse an unwritable run or sweep directory with a message, not a traceback."""

    def on_run_start(self, config, **kwargs) -> None:
        _check_writable("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        _check_writable("hydra.sweep.dir", config.hydra.sweep.dir)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg) -> float | None:
    from .run import run
    from .tasks.classification import DataError
    from .train.checkpoint import Interrupted
    from .train.supervised import NonFiniteLoss

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        summary = run(
            cfg,
            hc.runtime.output_dir,
            group=Path(hc.sweep.dir).name if multirun else None,
            name=hc.job.override_dirname or None,
            interactive=not multirun,
        )
    except (ConfigError, DataError, NonFiniteLoss) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", err)
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:  # SIGTERM / SIGINT: checkpoint saved, exit as the signal would
        log.warning("stopped: %s", err)
        print(f"Stopped: {err}", file=sys.stderr)
        sys.exit(128 + err.signum)
    # the value a sweeper optimises: the task's objective (val_mse when a series holds out a
    # validation split, else its main metric: test_mse, test_accuracy, mean_return)
    return summary["metrics"].get(summary["objective"])


if __name__ == "__main__":
    main()
