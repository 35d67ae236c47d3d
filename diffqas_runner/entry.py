"""The console entry point (`diffqas-run`, `python -m diffqas_runner`): `cli.main` with Python's
cyclic garbage collector paused while the process starts up.

Importing torch, Hydra and this package and composing the config leave about 210,000 tracked
objects and trigger some 460 collections, three of them full, which free little (some 11,000
objects); paused, a smoke run's process takes about 0.8x the time (docs/benchmarks.md, issue 36
ninth part). The collector resumes, with everything made so far frozen out of its reach
(`gc.freeze`, the start-up's garbage with it: about 1.5 MB, once), as soon as Hydra has composed
the run's or the sweep's config (`cli.resume_collector`, from the launch callbacks and the job),
so a run, or a sweep's parent composing its jobs, collects as before.
"""

from __future__ import annotations

import gc
import sys


def main() -> None:
    paused = gc.isenabled()
    gc.disable()
    try:
        from . import cli

        cli.COLLECTOR["paused"] = paused
        cli.main()
    finally:
        cli = sys.modules.get(f"{__package__}.cli")
        if cli is not None:
            cli.COLLECTOR["paused"] = False  # a later cli.main() in this process is not paused
        if paused and not gc.isenabled():  # the run never started (bad input, --help, --cfg job, ...)
            gc.enable()
