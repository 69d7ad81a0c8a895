"""User-facing errors: what went wrong and how to fix it, also for what Hydra and YAML refuse while composing."""

from __future__ import annotations

import errno
import re
from pathlib import Path


class EngineError(Exception):
    """A problem the person running the job can fix; printed without a traceback, exit code 2."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  Fix: {fix}")


# Writing a file failed because its file system is full (or the file hit the size limit).
NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_CANNOT_CREATE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EEXIST}
TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def error_chain(exc: BaseException):
    """`exc`, the DBAPI error a SQLAlchemy error wraps, and their causes and contexts."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        todo += [getattr(err, "orig", None), err.__cause__, err.__context__]


def from_startup(exc: BaseException) -> EngineError | None:
    """What Hydra, OmegaConf, YAML or the file system refused before a job ran, as an EngineError; None when
    it is not a problem in what was asked (an internal failure)."""
    import yaml
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigKeyError, ValidationError

    for err in error_chain(exc):
        if isinstance(err, OverrideParseException):
            return EngineError(f"cannot parse the override {err.override!r}: {err.message.splitlines()[0]}",
                               "write overrides as key=value, lists as key=[a,b], and quote values with spaces "
                               "or brackets: key='a b' (https://hydra.cc/docs/advanced/override_grammar/basic)")
        if isinstance(err, MissingConfigException):
            return _missing_option(err)
        if isinstance(err, yaml.MarkedYAMLError):
            return _yaml_error(err)
        if isinstance(err, OSError) and err.errno in NO_SPACE | _CANNOT_CREATE:
            if err.filename is None and err.errno in NO_SPACE:
                err.filename = _file_written(err)
            if err.filename is not None:
                return _os_error(err)
    top = next((e for e in error_chain(exc) if isinstance(e, ConfigCompositionException)), None)
    if top is None:
        return None
    text = str(top)
    if "Ambiguous value for argument" in text:
        arg = re.search(r"argument '([^']*)'", text)
        given = arg.group(1) if arg else "a value with a comma"
        key = given.split("=", 1)[0]
        return EngineError(f"{given!r}: a comma-separated value is a sweep",
                           f"add -m to run one job per value (python -m engine {given} -m), or write a list as "
                           f"{key}=[…] or quote it as {key}='…'")
    unselectable = re.match(r"Could not override '([^']+)'. No match in the defaults list", text)
    if unselectable:
        group = unselectable.group(1)
        if group == "stage":
            return EngineError("stage=… does not select stages: conf/stage/ holds one YAML per stage",
                               "name the stages to run with stages=[...], e.g. 'stages=[registry,ingest]'")
        return EngineError(f"{group}=… selects nothing: {group} is not a group of the config's defaults list",
                           f"set a key under it instead ({group}.<key>=…), or add the group with +{group}=<option>")
    where = re.match(r"In '([^']+)'", text)
    for err in error_chain(exc):
        if isinstance(err, ConfigKeyError):
            return _bad_key(err, where.group(1) if where else None)
        if isinstance(err, ValidationError):
            return _bad_value(err, text, where.group(1) if where else None)
    return None


def _file_written(err: OSError) -> str | None:
    """The file being written where `err` was raised (Python names none when a flush or close fails)."""
    import traceback

    frames = [frame for frame, _line in traceback.walk_tb(err.__traceback__)]
    for frame in reversed(frames):
        handle = frame.f_locals.get("file") or frame.f_locals.get("handle") or frame.f_locals.get("f")
        if isinstance(getattr(handle, "name", None), str):
            return handle.name
    return None


def _missing_option(err) -> EngineError:
    options = [o for o in (err.options or []) if not o.endswith("_schema")]
    group = re.search(r"Could not find '([^']+)'", str(err))
    asked = group.group(1) if group else (err.missing_cfg_file or "a config")
    name, _, option = asked.rpartition("/")
    if not options:
        return EngineError(f"cannot find the config {asked!r}",
                           "check the name and that its YAML file is on the search path (engine/conf, ./conf)")
    from engine.config import suggest

    return EngineError(f"{name}={option}: no such option for {name}{suggest(option, options)}",
                       f"pick one of: {', '.join(f'{name}={o}' for o in options)}")


def _yaml_error(err) -> EngineError:
    mark = err.problem_mark or err.context_mark
    name = getattr(mark, "name", None) or "a config file"
    if not Path(name).is_file():
        name = _failing_yaml() or name
    line = f", line {mark.line + 1}" if mark is not None else ""
    problem = " ".join(str(p) for p in (err.context, err.problem) if p)
    return EngineError(f"YAML syntax error in {name}{line}: {problem}",
                       f"fix the YAML at that line of {name} (indentation, a missing ':' or closing bracket)")


def _failing_yaml() -> str | None:
    """The config file that does not parse, among the packaged configs and ./conf."""
    import yaml

    roots = [Path(__file__).parent / "conf", Path("conf")]
    for path in sorted(p for root in roots if root.is_dir() for p in root.rglob("*.yaml")):
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            return str(path)
    return None


def _bad_key(err, where: str | None) -> EngineError:
    from engine.config import known_keys, suggest

    key = f"{err.full_key}" if getattr(err, "full_key", None) else str(err.key)
    if err.key is not None and not key.endswith(str(err.key)):
        key = f"{key}.{err.key}"
    in_file = f" in conf/{where}.yaml" if where else ""
    return EngineError(f"unknown config key {key!r}{in_file}{suggest(key, sorted(known_keys()))}",
                       f"check the spelling{in_file}; `python -m engine --cfg job` prints every key")


def _bad_value(err, text: str, where: str | None) -> EngineError:
    from engine.config import _field_type

    override = re.search(r"Error merging override (\S+)", text)
    given = override.group(1) if override else None
    key = given.split("=", 1)[0].lstrip("+~") if given else (getattr(err, "full_key", None) or "config")
    kind = _field_type(key)
    args = getattr(kind, "__args__", None) or ()
    if getattr(kind, "__origin__", None) is list or kind is list:
        return EngineError(f"{given or key}: {key} is a list", f"write it in brackets: {key}=[{_value(given)}]")
    base = next((a for a in args if a is not type(None)), kind)
    expected = TYPE_WORDS.get(base) or (f"one of {', '.join(m.value for m in base)}" if isinstance(base, type)
                                         and hasattr(base, "__members__") else str(err.msg))
    value = _value(given) if given else next(iter(re.findall(r"Value '([^']*)'", str(err.msg))), "")
    origin = given or (f"{key} in conf/{where}.yaml" if where else key)
    return EngineError(f"{origin}: {key} takes {expected}, not {value!r}",
                       f"set {key} to {expected}, e.g. {key}={_example(base)}")


def _value(given: str | None) -> str:
    return given.split("=", 1)[1] if given and "=" in given else ""


def _example(kind) -> str:
    return {int: "5", float: "1.5", bool: "true", str: "text"}.get(kind) or next(iter(getattr(kind, "__members__", ())),
                                                                                 "…")


def _os_error(err: OSError) -> EngineError:
    where = err.filename or "a file Hydra writes (hydra.run.dir)"
    if err.errno in NO_SPACE:
        return EngineError(f"cannot write {where}: {err.strerror}",
                           "free space there or point hydra.run.dir elsewhere")
    return EngineError(f"cannot create {where}: {err.strerror}",
                       f"check that {where} can be created there (permissions, a file in the way), or point "
                       "hydra.run.dir=<a writable directory>")
