"""`diffqas-run` / `python -m diffqas_runner`: compose the config with Hydra and run it.

Exit status of a single run: 0 done, 2 bad input (or a failure the run could name, such as a
diverging loss), 128 + signal when stopped by SIGTERM/SIGINT after a checkpoint, 1 for anything
unexpected (reported on one line, the traceback in the run's cli.log). In a multirun a failed job
raises an ordinary exception, which Hydra's launchers and sweepers record as that job's failure
while the other jobs run on; the sweep command then exits 1 and names the failed jobs.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shlex
import sys
import tempfile
import traceback
from importlib.resources import files
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import hydra_words
from . import threads as threads_policy
from .config import ConfigError, choice, register
from .errors import check_config_dirs, describe, flat
from .record.failures import FAILURE, write_failure
from .record.hydra_record import RECORD, RecordError, record_texts, write_record
from .record.lock import DirectoryInUse, lock_directory, unlock_directory

# The configs ship inside the package (diffqas_runner.configs, the checkout's top-level configs/).
CONFIG_PACKAGE = "diffqas_runner.configs"
CONFIG_DIR = str(files(CONFIG_PACKAGE))  # a real directory, for hydra.initialize_config_dir in scripts
log = logging.getLogger("diffqas_runner")

register()


COLLECTOR = {"paused": False}  # entry.main paused Python's cyclic collector for the start-up


def resume_collector() -> None:
    """Resume the collector entry.main paused, with the start-up's objects frozen (never traversed
    again; its cyclic garbage, some 15,000 objects or 1.5 MB, is kept with them: collecting it
    first cost about 0.1 s a process). Called once Hydra has composed the config: from the launch
    callbacks, and first thing in a job (a run without them, e.g. Hydra's --experimental-rerun)."""
    if COLLECTOR["paused"]:
        COLLECTOR["paused"] = False
        gc.freeze()
        gc.enable()


class JobFailed(RuntimeError):
    """A multirun job failed; its directory holds failure.json. Raised so the launcher records it."""


def _report(message: str, detail: str | None = None, to_log: bool = True) -> None:
    """One line on stderr, and the same line (plus `detail`, e.g. a traceback) in the run's log file."""
    print(message, file=sys.stderr, flush=True)
    if not to_log:
        return
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


def check_user_configs(hc) -> None:
    """Refuse a file in the user's config folder (--config-dir, hydra.searchpath) that has the name
    of a packaged option in use: Hydra searches the packaged folder first and would silently
    compose the packaged file instead of the user's."""
    packaged = Path(CONFIG_DIR).resolve()
    choices = {g: o for g, o in hc.runtime.choices.items() if o and g.split("/")[0] != "hydra"}
    for source in hc.runtime.config_sources:
        if source.schema != "file" or Path(source.path).resolve() == packaged:
            continue
        for group, option in choices.items():
            mine, ours = Path(source.path) / group / f"{option}.yaml", packaged / group / f"{option}.yaml"
            if mine.is_file() and ours.is_file() and mine.read_bytes() != ours.read_bytes():
                raise ConfigError(
                    f"{group}={option}: {mine} has the name of a packaged {group} option, which Hydra would use "
                    f"instead of yours; allowed: another name for your file (e.g. {group}={option}_mine)"
                )


def _holds_results(run_dir: Path) -> bool:
    from .train.checkpoint import CHECKPOINT

    return any((run_dir / name).exists() for name in ("summary.json", CHECKPOINT))


def guard_directory(config, run_dir: Path) -> bool:
    """Before anything is written into run_dir: True when it holds this very run, finished (its
    record stays as it is: nothing to do); False when the run may write there. Raises
    DirectoryConflict (or ConfigError) when it holds another run's results or checkpoint, also
    when the config cannot even be resolved to compare with them."""
    from .run import DirectoryConflict, preflight

    if not _holds_results(run_dir) or config.fresh is True:
        return False
    try:
        return preflight(config, run_dir) is not None
    except (DirectoryConflict, ConfigError):
        raise
    except Exception as err:
        line, _ = describe(err, [])
        raise DirectoryConflict(
            f"{run_dir} holds another run's results and this config cannot be compared with them ({line}); "
            "allowed: a config that resolves, another hydra.run.dir / hydra.sweep.dir, or fresh=true"
        ) from None


def _refuse(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def optimising_sweeper(hydra_cfg) -> str | None:
    """The sweeper's class when it chooses settings from the jobs' results (Optuna, Nevergrad, Ax:
    anything but Hydra's basic grid), else None."""
    target = OmegaConf.select(hydra_cfg, "sweeper._target_", default=None)
    return None if target in (None, BASIC_SWEEPER) else str(target)


def check_objective(cfg, hydra_cfg) -> None:
    """An optimising sweeper reads each job's objective: refuse one without a validation split to
    read (the test split is never an objective; the training metric would tune towards over-fitting)."""
    sweeper = optimising_sweeper(hydra_cfg)
    kind = OmegaConf.select(cfg, "task.kind")
    if sweeper is None or kind is None or choice(kind) == "rl":  # RL: training returns, no test split
        return
    if not OmegaConf.select(cfg, "task.validation", default=0):
        name = sweeper.rsplit(".", 1)[-1]
        raise ConfigError(
            f"task.validation={OmegaConf.select(cfg, 'task.validation')!r} with hydra/sweeper {name}: an optimising sweeper "
            "needs a validation split to optimise (never the test split); allowed: task.validation in (0, 1), e.g. 0.2"
        )


def _check_launch(config) -> None:
    """What every run and sweep checks in the launching process, before Hydra writes anything."""
    if config.hydra.output_subdir is not None:
        _refuse(
            f"hydra.output_subdir={config.hydra.output_subdir!r} is not allowed; allowed: null "
            f"(the runner writes {RECORD}/ itself, never over a finished run's record)"
        )
    try:
        check_user_configs(config.hydra)
    except ConfigError as err:
        _refuse(str(err))


class OutputDirCheck(Callback):
    """Hydra callback, in the launching process: refuse an unwritable or busy run or sweep
    directory with one line, before Hydra writes anything into it."""

    def _claim(self, key: str, path: str) -> None:
        _check_writable(key, path)
        try:
            lock_directory(Path(path))
        except DirectoryInUse as err:
            _refuse(f"{key}={path!r}: {err}")
        except OSError as err:  # e.g. a directory that cannot be created there (/proc, a read-only mount)
            _refuse(f"{key}={path!r} cannot be created ({err.strerror}); allowed: a writable directory")

    def on_run_start(self, config, **kwargs) -> None:
        resume_collector()
        _check_launch(config)
        self._claim("hydra.run.dir", config.hydra.run.dir)
        from .run import DirectoryConflict, preflight

        run_dir = Path(config.hydra.run.dir)
        try:
            preflight(config, run_dir)
        except (DirectoryConflict, ConfigError) as err:  # before Hydra opens cli.log in the directory
            _refuse(str(err))
        except Exception:  # a value that does not resolve: the run's own checks name it
            try:
                guard_directory(config, run_dir)  # ... but never beside another run's results
            except (DirectoryConflict, ConfigError) as err:
                _refuse(str(err))

    def on_multirun_start(self, config, **kwargs) -> None:
        resume_collector()
        _check_launch(config)
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        if "task.validation" not in params:  # a swept split is checked in each job
            try:
                check_objective(config, config.hydra)
            except ConfigError as err:
                _refuse(str(err))
        self._claim("hydra.sweep.dir", config.hydra.sweep.dir)
        _SWEEP["dir"] = config.hydra.sweep.dir
        _keep_earlier_sweep_record(config, Path(config.hydra.sweep.dir))
        fd, notes = tempfile.mkstemp(prefix="diffqas-sweep-", suffix=".refused")
        os.close(fd)
        os.environ[REFUSED_NOTES] = _SWEEP["notes"] = notes  # the jobs (joblib's workers too) note refusals here


REFUSED_NOTES = "DIFFQAS_SWEEP_REFUSED_NOTES"


def _keep_earlier_sweep_record(config, sweep_dir: Path) -> None:
    """The sweeper writes multirun.yaml over the sweep's earlier one: when that one came from
    another command, keep it as multirun.N.yaml (the jobs it ran keep their results)."""
    old = sweep_dir / "multirun.yaml"
    if not old.is_file() or old.read_bytes() == OmegaConf.to_yaml(config).encode():
        return
    n = 1
    while (sweep_dir / f"multirun.{n}.yaml").exists():
        n += 1
    os.replace(old, sweep_dir / f"multirun.{n}.yaml")
    log.warning("%s held another sweep command's multirun.yaml: kept as multirun.%d.yaml", sweep_dir, n)


def _note_refused(run_dir: Path, message: str) -> None:
    notes = os.environ.get(REFUSED_NOTES)
    if notes:
        try:
            with open(notes, "a") as fh:
                fh.write(json.dumps({"dir": str(run_dir), "message": message}) + "\n")
        except OSError:  # e.g. a job on another node (submitit): its own log has the line
            pass


_SWEEP: dict[str, str] = {}


_LOG_FAILURE: dict[int, bool] = {}  # id(handler) -> already said


def _one_line_log_failures() -> None:
    """A log handler that cannot write (a full disk, a closed pipe) says so once, on one line, and
    the run goes on; Python's default prints a traceback for every record it fails to write."""

    def handle_error(handler, record) -> None:
        if _LOG_FAILURE.get(id(handler)):
            return
        _LOG_FAILURE[id(handler)] = True
        where = getattr(handler, "baseFilename", None) or type(handler).__name__
        err = sys.exc_info()[1]
        with contextlib.suppress(OSError):  # stderr itself may be what fails
            line = f"Warning: the log {where} cannot be written ({err}); the run goes on without it"
            print(line, file=sys.__stderr__, flush=True)

    for handler in [*logging.getLogger().handlers, *log.handlers]:
        handler.handleError = handle_error.__get__(handler)


def _job_failed(err: Exception, run_dir: Path, job: int | None) -> None:
    """A run's failure as one line (the traceback of an unexpected one in cli.log), then exit 2
    (bad input, data, a diverged run) or 1; in a sweep's job (`job` its number) failure.json and
    JobFailed instead, so the launcher records the job and runs the others."""
    from .run import DirectoryConflict
    from .tasks.classification import DataError
    from .train.supervised import NonFiniteLoss

    multirun = job is not None
    refused = isinstance(err, DirectoryConflict)  # another run's results: nothing written, not even a log line
    named = isinstance(err, ConfigError | DataError | NonFiniteLoss | DirectoryInUse | OmegaConfBaseException | RecordError)
    if refused and multirun:  # the line names the job: its directory is the sweep's subdir
        message, detail, code = str(err), None, 2
        _note_refused(run_dir, message)
    elif named:  # bad input, missing data, a diverged run: the message says it all
        message = describe(err, [])[0] if isinstance(err, OmegaConfBaseException) else flat(str(err))
        detail, code = None, 2
    else:  # a bug or an environment problem: one line here, the traceback in cli.log
        message = f"unexpected {type(err).__name__}: {err} (full traceback in {run_dir / 'cli.log'})"
        detail, code = traceback.format_exc(), 1
    _report(f"Error: {message}", detail, to_log=not refused)
    mine = not refused and not isinstance(err, DirectoryInUse)  # another process's directory: never written into
    if multirun and mine and not (run_dir / FAILURE).exists() and not (run_dir / "summary.json").exists():
        write_failure(run_dir, err, getattr(err, "step", None))  # refused before run() (e.g. check_objective)
    if multirun:  # an ordinary exception: the launcher records a failed job, the others run on
        raise JobFailed(f"job {job} ({run_dir}): {message}") from None
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_PACKAGE}", config_name="config")
def _main(cfg) -> float | None:
    resume_collector()
    from .run import run
    from .train.checkpoint import Interrupted

    _one_line_log_failures()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    acquired = False
    try:
        acquired = lock_directory(run_dir)  # held from the check to the end: no other writer between
        check_user_configs(hc)
        check_objective(cfg, hc)
        if not guard_directory(cfg, run_dir):  # a finished run of this very config keeps its record
            write_record(run_dir, record_texts(cfg, HydraConfig.instance().cfg))
        try:  # Hydra builds it from the overrides unresolved: `data_dir=${oc.env:X}` would resolve here
            name = hc.job.override_dirname or None
        except OmegaConfBaseException:
            name = None
        threads = threads_policy.launcher_threads(hc, cfg)
        if threads != cfg.train.threads:
            cfg.train.threads = threads  # a bookkeeping key: checkpoints and aggregation ignore it
        summary = run(
            cfg,
            run_dir,
            group=Path(hc.sweep.dir).name if multirun else None,
            name=name,
            interactive=not multirun,
        )
    except Interrupted as err:  # SIGTERM / SIGINT: checkpoint saved (if a step had run), exit as the signal would
        _report(f"Stopped: {err}")
        sys.exit(128 + err.signum)
    except Exception as err:
        if hydra_words.user_wants_tracebacks():
            raise
        _job_failed(err, run_dir, hc.job.num if multirun else None)
    finally:
        if acquired:
            unlock_directory(run_dir)
    # the value a sweeper optimises: the task's objective (its validation metric when a split is held out)
    return summary["metrics"].get(summary["objective"])


def _sweep_lines() -> list[str]:
    """The closing lines of a sweep: its failed jobs (failure.json), and jobs refused because their
    directory holds another run's results (left untouched)."""
    from .record.failures import failed_jobs

    lines = []
    failed = failed_jobs(Path(_SWEEP["dir"])) if _SWEEP.get("dir") else []
    if failed:
        lines.append(f"Error: {len(failed)} job(s) of the sweep failed (failure.json in each): " + ", ".join(map(str, failed)))
    notes = Path(_SWEEP["notes"]) if _SWEEP.get("notes") else None
    if notes is not None and notes.exists():
        refused = [json.loads(line)["dir"] for line in notes.read_text().splitlines() if line.strip()]
        notes.unlink(missing_ok=True)
        if refused:
            lines.append(
                f"Error: {len(refused)} job(s) of the sweep refused, their directories left as they were (they hold "
                "other settings' results; allowed: another hydra.sweep.dir, or fresh=true): " + ", ".join(refused)
            )
    return lines


def main() -> None:
    """The console entry point: Hydra's, every error on one line (Hydra's own composition errors
    too, exit 2 for bad input), then for a sweep closing lines naming its failed or refused jobs
    (and exit status 1 when any, even where the sweeper itself carried on, as Optuna does)."""
    argv = sys.argv[1:]
    hydra_words.reraise_in_process()  # Hydra re-raises instead of printing a stack; reported below
    hydra_words.compose_once(CONFIG_PACKAGE)  # not once more to read hydra.mode, which only an override sets
    code = 0
    stderr = sys.stderr
    if not hydra_words.user_wants_tracebacks():
        sys.stderr = hydra_words.WithoutJobFailedLine(stderr)
    try:
        if (line := check_config_dirs(argv)) and not hydra_words.user_wants_tracebacks():
            _refuse(line)
        _main()
    except SystemExit as exit_:
        code = exit_.code
        if code in (0, None):
            raise
    except Exception as err:
        if hydra_words.user_wants_tracebacks():
            raise
        if isinstance(err, JobFailed):  # the failed job said why on its own line; the list follows
            code = 1
        else:
            line, code = describe(err, argv)
            print(f"Error: {line}", file=sys.stderr, flush=True)
    finally:
        sys.stderr = stderr
    lines = _sweep_lines()
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    if _SWEEP.get("dir") and Path(_SWEEP["dir"]).is_dir():  # a sweep ran: where it is, and what to run next
        where = shlex.quote(str(Path(_SWEEP["dir"]).absolute()))
        print(f"sweep directory: {where}\ntables and plots: diffqas-aggregate {where}", file=sys.stderr, flush=True)
    if code or lines:
        sys.exit(code or 1)


if __name__ == "__main__":
    main()
