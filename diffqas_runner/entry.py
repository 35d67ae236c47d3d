"""The console entry point (`diffqas-run`, `python -m diffqas_runner`): `cli.main` with Python's
cyclic garbage collector paused while the process starts up.

Importing torch, Hydra and this package and composing the config make about a million objects
and almost no cyclic garbage, yet trigger a dozen collections, three of them full; paused, a smoke
run starts about 0.2 s sooner (docs/benchmarks.md, issue 36 ninth part). The collector resumes,
with everything made so far frozen out of its reach (`gc.freeze`), as soon as Hydra has composed
the run's or the sweep's config (`cli.resume_collector`, from the launch callbacks), so a run, or a
sweep's parent composing its jobs, collects as before.
"""

from __future__ import annotations

import gc


def main() -> None:
    paused = gc.isenabled()
    gc.disable()
    try:
        from . import cli

        cli.COLLECTOR["paused"] = paused
        cli.main()
    finally:
        if paused and not gc.isenabled():  # the run never started (bad input, --help, ...)
            gc.enable()
