"""How many torch threads a run uses: the one place that decides it.

Two moments: the launching side (`launcher_threads`, called by the CLI for each job) turns the
launcher in use into a default for `train.threads`; the run (`set_run_threads`) applies it, or its
own default when none was given, before any work.
"""

from __future__ import annotations

import logging
import os

import torch
from hydra.types import RunMode
from omegaconf import OmegaConf

log = logging.getLogger("diffqas_runner")

# Without train.threads, generators up to this many qubits run on one thread: measured on the idle
# 2-core machine, Bessel (11 qubits) 9.4 s with 1 thread against 9.8 s with 2, MNIST (17) 56 s
# against 37 s. The boundary between 11 and 17 is not measured; MiniGrid (13) takes one thread.
ONE_THREAD_QUBITS = 13
DEFAULT_THREADS = torch.get_num_threads()  # torch's own default, restored for every run


def set_run_threads(threads: int | None, n_qubits: int) -> int:
    """Set this run's thread count: `train.threads`, else one thread for small generators, else
    torch's default. Every run sets its own (never a previous in-process job's)."""
    count = threads or (1 if n_qubits <= ONE_THREAD_QUBITS else DEFAULT_THREADS)
    torch.set_num_threads(count)
    return count


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


def launcher_threads(hc, cfg) -> int | None:
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
