"""The console entry point (diffqas_runner/entry.py): Python's cyclic collector paused for the start-up
only. Each case runs in a fresh process, as `diffqas-run` does."""

import json
import subprocess
import sys

import pytest
from helpers import env

SCRIPT = """
import gc, json, sys
collections = []  # each collection's generation, in order; "resumed" where the collector came back
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
import hydra.plugins.sweeper as sweeper
import diffqas_runner.run as run_module
import diffqas_runner.cli as cli

seen = {}
resume = cli.resume_collector

def resuming():
    if cli.COLLECTOR["paused"]:
        seen["collected_while_paused"] = len(collections)
    return resume()

cli.resume_collector = resuming
validate, run = sweeper.Sweeper.validate_batch_is_legal, run_module.run

def validating(self, batch):  # a sweep's parent composes every job here: it must collect
    seen["validating"] = gc.isenabled()
    return validate(self, batch)

def running(*args, **kwargs):
    seen.setdefault("running", gc.isenabled())
    return run(*args, **kwargs)

sweeper.Sweeper.validate_batch_is_legal, run_module.run = validating, running
sys.argv = ["diffqas-run", *ARGS]
from diffqas_runner.entry import main
collections.clear()  # the imports above ran unpaused; from here on, entry.main's start-up
try:
    main()
except SystemExit as exit_:
    seen["exit"] = exit_.code
seen["after"] = gc.isenabled()
seen["frozen"] = gc.get_freeze_count()
seen["stale"] = cli.COLLECTOR["paused"]
print(json.dumps(seen))
"""


def _entry(args: list[str], cwd) -> dict:
    script = SCRIPT.replace("ARGS", repr(args))
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


SMOKE = ["task=bessel", "debug=smoke", "logger=none", "figures=false"]


@pytest.mark.parametrize(
    "args,want",
    [
        # a run: the collector is back (start-up objects frozen) before the run starts
        (SMOKE + ["hydra.run.dir=run"], {"running": True, "after": True}),
        # a sweep: back before the parent composes the jobs, and in the jobs
        (["-m", *SMOKE, "seed=0,1", "hydra.sweep.dir=sweep"], {"validating": True, "running": True, "after": True}),
    ],
)
def test_the_collector_is_paused_for_the_start_up_only(args, want, tmp_path):
    seen = _entry(args, tmp_path)
    assert seen.pop("exit", 0) in (0, None)
    assert seen.pop("collected_while_paused") == 0  # Hydra's composition ran without a collection (unpaused: dozens)
    assert seen.pop("frozen") > 100_000  # the start-up's objects (torch, Hydra, the package), frozen on resuming
    assert seen == {**want, "stale": False}


def test_bad_input_leaves_the_collector_running(tmp_path):
    """Refused before any run starts (exit 2): entry.main turns the collector back on itself."""
    seen = _entry(["task=imagenet", "logger=none"], tmp_path)
    assert seen == {"exit": 2, "after": True, "frozen": 0, "stale": False}  # a later cli.main() is not paused
