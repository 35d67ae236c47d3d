"""`diffqas-run` / `python -m diffqas_runner`: compose the config with Hydra and run it.

Exit status of a single run: 0 done, 2 bad input (or a failure the run could name, such as a
diverging loss), 128 + signal when stopped by SIGTERM/SIGINT after a checkpoint, 1 for anything
unexpected (reported on one line, the traceback in the run's cli.log). In a multirun a failed job
raises an ordinary exception, which Hydra's launchers and sweepers record as that job's failure
while the other jobs run on; the sweep command then exits 1 and names the failed jobs.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from importlib.resources import files
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ConfigError, register
from .record.lock import DirectoryInUse, lock_directory

# The configs ship inside the package (diffqas_runner.configs, the checkout's top-level configs/).
CONFIG_PACKAGE = "diffqas_runner.configs"
CONFIG_DIR = str(files(CONFIG_PACKAGE))  # a real directory, for hydra.initialize_config_dir in scripts
log = logging.getLogger("diffqas_runner")

register()


class JobFailed(RuntimeError):
    """A multirun job failed; its directory holds failure.json. Raised so the launcher records it."""


def _report(message: str, detail: str | None = None) -> None:
    """One line on stderr, and the same line (plus `detail`, e.g. a traceback) in the run's log file."""
    print(message, file=sys.stderr, flush=True)
    text = message if detail is None else f"{message}\n{detail}"
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, text, None, None))


def _check_writable(key: str, path: str) -> None:
    """Exit with a clear message if `path` cannot be created or written (before Hydra tries)."""
    if not str(path).strip():
        print(f"Error: {key}={path!r} is empty; allowed: a directory path", file=sys.stderr)
        sys.exit(2)
    target = Path(path).absolute()
    if any(len(part.encode()) > 255 for part in target.parts) or len(str(target).encode()) > 4000:
        print(f"Error: {key}={path!r} is too long for the filesystem; allowed: names up to 255 bytes", file=sys.stderr)
        sys.exit(2)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        print(f"Error: {key}={path!r} cannot be created: {existing} {why}; allowed: a writable directory", file=sys.stderr)
        sys.exit(2)


class OutputDirCheck(Callback):
    """Hydra callback, in the launching process: refuse an unwritable or busy run or sweep
    directory with one line, before Hydra writes anything into it."""

    def _claim(self, key: str, path: str) -> None:
        _check_writable(key, path)
        try:
            lock_directory(Path(path))
        except DirectoryInUse as err:
            print(f"Error: {key}={path!r}: {err}", file=sys.stderr)
            sys.exit(2)
        except OSError as err:  # e.g. a directory that cannot be created there (/proc, a read-only mount)
            print(f"Error: {key}={path!r} cannot be created ({err.strerror}); allowed: a writable directory", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config, **kwargs) -> None:
        self._claim("hydra.run.dir", config.hydra.run.dir)
        from .run import DirectoryConflict, preflight

        try:
            preflight(config, Path(config.hydra.run.dir))
        except (DirectoryConflict, ConfigError) as err:  # before Hydra writes .hydra/ into the directory
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(2)
        except Exception:  # a value that does not even resolve: the run's own checks will name it
            pass

    def on_multirun_start(self, config, **kwargs) -> None:
        self._claim("hydra.sweep.dir", config.hydra.sweep.dir)
        _SWEEP["dir"] = config.hydra.sweep.dir


_SWEEP: dict[str, str] = {}


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def concurrent_jobs(hc) -> tuple[int, int | None]:
    """(jobs running at once on this machine, cpus given to each job or None) under the launcher in use."""
    launcher = hc.launcher or {}
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n = launcher.get("n_jobs", -1) or 1
        return (_cores() + 1 + n if n < 0 else n), None  # joblib's n_jobs=-1 is every core
    if "submitit" in target.lower():
        return 1, launcher.get("cpus_per_task")
    return 1, None


def default_threads(hc, cfg) -> int | None:
    """train.threads when it was not given: max(1, cores // jobs) under a parallel launcher, the
    cpus a submitit job was given, else None (torch's default). Warns once when threads x jobs
    exceed the cores this process can see (each job would then slow the others down)."""
    jobs, cpus = concurrent_jobs(hc) if hc.mode == RunMode.MULTIRUN else (1, None)
    cores = _cores()
    threads = cfg.train.threads
    if threads is None:
        if cpus:
            threads = int(cpus)
        elif jobs > 1:
            threads = max(1, cores // jobs)
    job_num = OmegaConf.select(hc, "job.num", default=None, throw_on_missing=False)
    if threads is not None and threads * jobs > cores and job_num in (0, None):
        log.warning(
            "train.threads=%d x %d concurrent jobs > %d cores: the jobs will slow each other down; "
            "set train.threads=%d", threads, jobs, cores, max(1, cores // jobs),
        )  # fmt: skip
    return threads


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")
def _main(cfg) -> float | None:
    from .run import run
    from .tasks.classification import DataError
    from .train.checkpoint import Interrupted
    from .train.supervised import NonFiniteLoss

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        threads = default_threads(hc, cfg)
        if threads != cfg.train.threads:
            cfg.train.threads = threads  # a bookkeeping key: checkpoints and aggregation ignore it
        summary = run(
            cfg,
            run_dir,
            group=Path(hc.sweep.dir).name if multirun else None,
            name=hc.job.override_dirname or None,
            interactive=not multirun,
        )
    except Interrupted as err:  # SIGTERM / SIGINT: checkpoint saved (if a step had run), exit as the signal would
        _report(f"Stopped: {err}")
        sys.exit(128 + err.signum)
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        named = isinstance(err, ConfigError | DataError | NonFiniteLoss | DirectoryInUse | OmegaConfBaseException)
        if named:  # bad input, missing data, a diverged run: the message says it all
            message, detail, code = str(err), None, 2
        else:  # a bug or an environment problem: one line here, the traceback in cli.log
            message = f"unexpected {type(err).__name__}: {err} (full traceback in {run_dir / 'cli.log'})"
            detail, code = traceback.format_exc(), 1
        _report(f"Error: {message}", detail)
        if multirun:  # an ordinary exception: the launcher records a failed job, the others run on
            raise JobFailed(f"job {hc.job.num} ({run_dir}): {message}") from None
        sys.exit(code)
    # the value a sweeper optimises: the task's objective (its validation metric when a split is held out)
    return summary["metrics"].get(summary["objective"])


def _failed_jobs_line() -> str | None:
    from .record.failures import failed_jobs

    failed = failed_jobs(Path(_SWEEP["dir"])) if _SWEEP.get("dir") else []
    if not failed:
        return None
    return f"Error: {len(failed)} job(s) of the sweep failed (failure.json in each): " + ", ".join(str(p) for p in failed)


def main() -> None:
    """The console entry point: Hydra's, then for a sweep a closing line naming its failed jobs
    (and exit status 1 when any failed, even where the sweeper itself carried on, as Optuna does)."""
    try:
        _main()
    except SystemExit as exit_:
        if exit_.code not in (0, None) and (line := _failed_jobs_line()):
            print(line, file=sys.stderr)
        raise
    if line := _failed_jobs_line():
        print(line, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
