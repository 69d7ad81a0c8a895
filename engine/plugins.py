"""Plugins: a config node that names a class with `_target_` and holds its parameters.

Sources, detectors and stages are all made this way, the packaged ones and a user's own (a module on
PYTHONPATH plus a YAML file in their config directory). The class is its own schema: its dataclass fields,
or the annotated parameters of its `__init__`, give each parameter's name, type and default. A node's
unknown, missing or mistyped parameter is refused before anything runs, naming the key; then the object is
created with `hydra.utils.instantiate`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from engine.errors import TYPE_WORDS, EngineError


@dataclass(frozen=True)
class Plugin:
    """One created plugin: the option that selected it, its class path, its checked parameters and the object."""

    name: str
    target: str
    params: dict[str, Any]
    obj: Any


def build(key: str, name: str, node: Mapping[str, Any], required: tuple[str, ...] = ()) -> Plugin:
    """Create the plugin of config node `key` (e.g. `detector`), selected as option `name`.

    `required`: attributes the object must have (what the engine calls on this kind of plugin).
    """
    target, params = checked(key, name, node)
    try:
        obj = instantiate({"_target_": target, **params}, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, EngineError):
            raise cause from None
        raise EngineError(f"{key}={name}: {target} refused its parameters: {cause}",
                          f"check the {key}.* values (`engine --cfg job` prints them)") from None
    missing = [attr for attr in required if not hasattr(obj, attr)]
    if missing:
        raise EngineError(f"{key}={name}: {target} has no {', '.join(missing)}",
                          f"a {key} plugin needs {', '.join(required)} (README, Extending)")
    return Plugin(name=name, target=str(target), params=params, obj=obj)


def checked(key: str, name: str, node: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The class path of config node `key` and its parameters checked against the class, before creating it: what
    Hydra would refuse while composing, were the class a schema (an unknown key, a wrong type, a missing value)."""
    node = dict(node)
    target = node.pop("_target_", None)
    if not target:
        raise EngineError(f"{key}={name} names no class",
                          "start its YAML with `_target_: my_package.my_module.MyClass` (the class to create)")
    return str(target), _checked_params(key, _import(key, str(target)), node)


def _import(key: str, target: str) -> type:
    """The class `target` names (`package.module.Class`); Hydra's own get_class would log its failure first."""
    module, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise EngineError(f"{key}._target_={target!r} cannot be imported ({exc})",
                          "check the dotted path and put its package on PYTHONPATH (or pip install it)") from None
    if not isinstance(found, type):
        raise EngineError(f"{key}._target_={target!r} is not a class", "name a class: package.module.Class")
    return found


def _checked_params(key: str, cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """`params` merged into the class's schema: types converted (`"5"` -> 5, `"BEAR"` -> an enum), defaults filled."""
    schema = cls if dataclasses.is_dataclass(cls) else _signature_schema(cls)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), params)
        return OmegaConf.to_container(merged, resolve=True, throw_on_missing=True, enum_to_str=False)
    except ConfigKeyError as exc:
        unknown = str(exc.key)
        known = [f.name for f in dataclasses.fields(schema)]
        close = difflib.get_close_matches(unknown, known, n=1)
        hint = f" (did you mean '{key}.{close[0]}'?)" if close else ""
        raise EngineError(f"unknown config key '{key}.{unknown}'{hint}",
                          f"{cls.__module__}.{cls.__qualname__} takes: {', '.join(known) or 'no parameters'}") from None
    except MissingMandatoryValue as exc:
        raise EngineError(f"{key}.{exc.full_key} is required by {cls.__qualname__} and not set",
                          f"set {key}.{exc.full_key}=<value> on the command line or in its YAML") from None
    except OmegaConfBaseException as exc:
        name = str(getattr(exc, "full_key", "") or "").split(".")[0]
        if name not in params:
            raise EngineError(f"{key}: {str(getattr(exc, 'msg', exc)).splitlines()[0]}", f"check {key}.*") from None
        raise BadParameter(f"{key}.{name}", params[name], _annotation(schema, name) or "another value") from None


class BadParameter(EngineError):
    """A parameter of the wrong type; `where` names the file that set it when it was not the command line."""

    def __init__(self, key: str, value: Any, expected: str, where: str | None = None):
        self.key, self.value, self.expected = key, value, expected
        origin = f"{key} in {where}" if where else f"{key}={value}"
        super().__init__(f"{origin}: {key} takes {expected}, not {value!r}", f"set {key} to {expected}")


def _signature_schema(cls: type) -> type:
    """A dataclass with the parameters of `cls.__init__` (unannotated ones as Any), for a class that is not one."""
    hints = typing.get_type_hints(cls.__init__)
    fields = []
    for param in list(inspect.signature(cls).parameters.values()):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = hints.get(param.name, Any)
        default = dataclasses.MISSING if param.default is param.empty else param.default
        fields.append((param.name, kind, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Parameters", fields)


def _annotation(schema: type, name: str) -> str | None:
    """The type of parameter `name` in words: `a whole number`, `BULL or BEAR`."""
    kind = typing.get_type_hints(schema).get(name)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    kind = args[0] if len(args) == 1 else kind  # Optional[int] -> int
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(member.value for member in kind)
    return TYPE_WORDS.get(kind) or (str(kind) if kind is not None else None)
