"""One line for every error the command line can meet before a run starts (Hydra's composition,
OmegaConf's typed merge, YAML and encoding in a user's config folder, a missing --config-dir):
the key or path, the value, and what is allowed. `describe` turns an exception into that line
and its exit status (2 bad input, 1 anything else)."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from enum import Enum
from pathlib import Path

from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException

from . import hydra_words


class ConfigError(ValueError):
    """A user-facing key has a value outside what is allowed (config.py re-exports it)."""


def flat(text: str) -> str:
    """A possibly multi-line message on one line."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def config_dirs(argv: list[str]) -> list[str]:
    """The folders given with --config-dir / -cd on the command line."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            out.append(arg.split("=", 1)[1])
    return out


def check_config_dirs(argv: list[str]) -> str | None:
    """The one-line error for a --config-dir that is missing or not a directory, else None."""
    for value in config_dirs(argv):
        path = Path(value)
        if not path.exists():
            why = "does not exist"
        elif not path.is_dir():
            why = "is not a directory"
        else:
            continue
        return f"--config-dir={value!r} {why}; allowed: a directory of config files (e.g. my_configs with search_space/mine.yaml)"
    return None


def _allowed_type(object_type, key) -> str | None:
    """What a typed config key accepts, from its dataclass field (for OmegaConf's validation errors)."""
    if object_type is None or not dataclasses.is_dataclass(object_type) or key is None:
        return None
    hints = typing.get_type_hints(object_type)
    hint = hints.get(str(key))
    if hint is None:
        return None
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    names = []
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, Enum):
            names.append(", ".join(m.name for m in arg))
        else:
            origin = typing.get_origin(arg)
            if origin is list and (inner := typing.get_args(arg)):
                plural = {int: "integers", float: "numbers", str: "strings", bool: "true or false values"}
                names.append("a list of " + plural.get(inner[0], getattr(inner[0], "__name__", str(inner[0]))))
                continue
            names.append(
                {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}.get(
                    origin or arg, getattr(origin or arg, "__name__", str(arg))
                )
            )
    optional = union and type(None) in typing.get_args(hint)
    return " or ".join(names) + (" or null" if optional else "")


def _omegaconf_line(err: OmegaConfBaseException, override: str | None) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = (str(getattr(err, "msg", None) or err).strip().splitlines() or [type(err).__name__])[0].strip()
    object_type = getattr(err, "object_type", None)
    unknown_key = isinstance(err, ConfigKeyError | ConfigAttributeError)
    if unknown_key and object_type is not None and dataclasses.is_dataclass(object_type):
        known = ", ".join(f.name for f in dataclasses.fields(object_type))
        return f"{key} is not a key ({msg}); allowed: {known}"
    if isinstance(err, InterpolationResolutionError):
        return f"{key}: cannot be resolved ({msg}); allowed: a value or an interpolation that resolves"
    allowed = _allowed_type(object_type, getattr(err, "key", None))
    where = override or (f"{key}" if key else "the config")
    allowed = allowed or "a value of the type the key has (`diffqas-run --cfg job` shows each key's current value)"
    return f"{where}: {msg}; allowed: {allowed}"


def _yaml_problem(err) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(err, "problem", None) or flat(err))


def file_problem(path: Path) -> str | None:
    """Why `path` is not a readable UTF-8 YAML file (None if it is one, or is not there)."""
    import yaml

    if not os.path.lexists(path):
        return None
    if path.is_dir():
        return f"{path} is a directory; allowed: a YAML file"
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        return f"{path} cannot be read ({err.strerror}); allowed: a readable YAML file"
    except UnicodeDecodeError as err:
        return f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); allowed: a UTF-8 YAML file"
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as err:
        return f"{path} is not valid YAML ({_yaml_problem(err)}); allowed: a YAML mapping"
    return None


def _bad_file(dirs: list[str], argv: list[str], relative: str | None = None) -> str | None:
    """The first file under the user's config folders that is not readable UTF-8 YAML (a
    directory, a symlink loop, other bytes, broken syntax), with why: `relative` (group/option)
    if given, else the options the command line chooses first, then every file there."""
    chosen = [a.split("=", 1) for a in argv if "=" in a and not a.startswith("-")]
    relatives = [relative] if relative else [f"{k.lstrip('+~')}/{v}" for k, v in chosen if "," not in v]
    for root in dirs:
        paths = [Path(root) / f"{r}.yaml" for r in relatives]
        if relative is None:
            paths += sorted(Path(root).rglob("*.yaml"))
        for path in paths:
            if problem := file_problem(path):
                return problem
    return None


def describe(err: BaseException, argv: list[str]) -> tuple[str, int]:
    """(one line, exit status) for an exception met while composing or launching."""
    import yaml
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException

    dirs = config_dirs(argv)
    if isinstance(err, ConfigError):
        return str(err), 2
    if isinstance(err, MissingConfigException):
        relative = hydra_words.missing_config(err)
        if relative and (bad := _bad_file(dirs, argv, relative)):
            return bad, 2
        if relative and "/" in relative:
            group, option = relative.rsplit("/", 1)
            options = ", ".join(err.options or ()) or "see --help"
            return f"{group}={option} is not an option; allowed: {options} (or a {relative}.yaml in --config-dir)", 2
        return flat(hydra_words.without_search_path(str(err))), 2
    cause = err if isinstance(err, OmegaConfBaseException) else (err.__cause__ or err.__context__)
    if isinstance(cause, OmegaConfBaseException):
        line = _omegaconf_line(cause, hydra_words.merged_override(err))
        where = hydra_words.config_file(err)
        return (f"in '{where}': {line}" if where else line), 2
    if isinstance(err, UnicodeDecodeError | yaml.YAMLError) or isinstance(cause, UnicodeDecodeError | yaml.YAMLError):
        mark = getattr(err, "problem_mark", None)
        if mark is not None and Path(mark.name).is_file():
            return f"{mark.name} is not valid YAML ({_yaml_problem(err)}); allowed: a YAML mapping", 2
        return _bad_file(dirs, argv) or f"a config file cannot be read: {flat(err)}; allowed: UTF-8 YAML files", 2
    if isinstance(err, OverrideParseException):
        return f"{flat(err)}; allowed: key=value overrides (Hydra's override grammar)", 2
    if isinstance(err, HydraException):
        return flat(err), 2
    return f"unexpected {type(err).__name__}: {flat(err)} (HYDRA_FULL_ERROR=1 shows the traceback)", 1
