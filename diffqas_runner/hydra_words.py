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
"""

from __future__ import annotations

import os
import re

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
