"""What the command line reads of Hydra's wording and switches, in one place.

Hydra's API carries these only as text or as an environment variable, so each is read here and
nowhere else: tests/test_hydra_words.py makes Hydra produce every one of them and checks that they
are still read as written here. It was checked on hydra-core `CHECKED`; on any other version that
test fails first, pointing here.

- A failed job's line: `JobReturn.return_value` re-raises a job's exception with the line "Error
  executing job with overrides: [...]" printed to stderr first (hydra/core/utils.py). The job has
  said why on its own line, so the CLI drops that one (`WithoutJobFailedLine`).
- HYDRA_FULL_ERROR: the CLI sets it to 1 so that Hydra re-raises composition errors instead of
  printing a stack, and reports them on one line itself; the user's own setting is kept in
  `USER_FULL_ERROR` (`reraise_in_process`, `user_wants_tracebacks`).
- Composition errors (hydra/_internal/defaults_list.py, config_loader_impl.py): the missing
  option, the override being merged, the config file being read, and the search path appended.
- `hydra.mode`: before a run, Hydra 1.3 composes the whole config once only to read hydra.mode
  (`Hydra.get_mode`), then composes it again to run (a fifth of a smoke run's start-up here).
  The packaged configs never set hydra.mode, so where only they are searched it is the last
  `hydra.mode=` override's, or unset: `mode_from_overrides` reads it there, and anything else (a
  user's config folder, hydra.searchpath, a value it cannot read) is left to Hydra's composition
  (`compose_once`).
"""

from __future__ import annotations

import os
import re

_UNREAD = object()  # mode_from_overrides: leave hydra.mode to Hydra's own composition

CHECKED = "1.3.8"
JOB_FAILED = "Error executing job with overrides: "
USER_FULL_ERROR = "DIFFQAS_USER_FULL_ERROR"


class WithoutJobFailedLine:
    """A stream (sys.stderr) without Hydra's "Error executing job with overrides: [...]" line."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith(JOB_FAILED):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def reraise_in_process() -> None:
    """Make Hydra re-raise what it would print as a stack (HYDRA_FULL_ERROR=1), keeping the user's
    own setting for `user_wants_tracebacks`. Call once, first thing in the process."""
    os.environ.setdefault(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"


def user_wants_tracebacks() -> bool:
    """HYDRA_FULL_ERROR=1 as the user set it (not as `reraise_in_process` set it)."""
    return os.environ.get(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "0")) == "1"


def missing_config(err: BaseException) -> str | None:
    """The group/option path of a MissingConfigException ("Could not find 'task/nope'")."""
    found = re.search(r"Could not find '([^']+)'", str(err))
    return found.group(1) if found else None


def merged_override(err: BaseException) -> str | None:
    """The override Hydra was merging when OmegaConf refused it ("Error merging override k=v")."""
    found = re.search(r"Error merging override (\S+)", str(err))
    return found.group(1) if found else None


def config_file(err: BaseException) -> str | None:
    """The config file Hydra was composing when OmegaConf refused a value ("In 'task/x': ...")."""
    found = re.match(r"In '([^']+)'", str(err))
    return found.group(1) if found else None


def without_search_path(text: str) -> str:
    """An error's text before the search path Hydra appends to it."""
    return text.split("Config search path")[0]


def mode_from_overrides(overrides: list[str]):
    """hydra.mode as the command line sets it: RunMode.RUN or MULTIRUN from the last `hydra.mode=`
    override, None when none sets it; `_UNREAD` for what only a composition can tell (a search path,
    the whole hydra node as a dict, a deletion, a value other than RUN or MULTIRUN)."""
    from hydra.types import RunMode

    mode = None
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.strip() == "hydra" or key.strip().startswith("hydra.searchpath"):  # hydra={mode: ...} too
            return _UNREAD
        if key.strip() == "hydra.mode":
            if override.startswith("~") or value.strip() not in RunMode.__members__:
                return _UNREAD
            mode = RunMode[value.strip()]
    return mode


def compose_once(packaged: str, config_name: str = "config") -> None:
    """Let Hydra compose a run's config once, not twice (see the module's notes on hydra.mode):
    when the primary config is `config_name` from the `packaged` package (e.g. "x.configs") and
    no user folder is searched, hydra.mode is read from the overrides."""
    from hydra._internal.hydra import Hydra

    composing = getattr(Hydra, "get_mode", None)
    if composing is None or getattr(composing, "reads_overrides", False):
        return

    def only_packaged(self, config_name_used) -> bool:
        sources = self.config_loader.get_sources()
        main = [(s.scheme(), s.path) for s in sources if s.provider == "main"]
        user = any(s.provider == "command-line" for s in sources)
        return config_name_used == config_name and main == [("pkg", packaged)] and not user

    def get_mode(self, config_name, overrides):
        mode = mode_from_overrides(overrides) if only_packaged(self, config_name) else _UNREAD
        return composing(self, config_name, overrides) if mode is _UNREAD else mode

    get_mode.reads_overrides = True
    Hydra.get_mode = get_mode
