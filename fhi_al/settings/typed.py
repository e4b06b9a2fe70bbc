"""Typed settings sections: dataclasses whose fields carry their default, one-line doc, unit and allowed range.

`option(...)` declares a field; `build_section(cls, raw, path)` validates a YAML mapping against it and
returns an instance. The same metadata feeds the annotated example files and the README glossary, so
defaults and documentation have one source. Architectures declare their hyperparameters the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from typing import Any, Sequence

from ..errors import SettingsError

log = logging.getLogger(__name__)

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, doc: str = "", *, choices: Sequence[Any] | None = None,
           minimum: float | None = None, maximum: float | None = None, exclusive_minimum: bool = False,
           exclusive_maximum: bool = False, unit: str = "", aliases: Sequence[str] = ()) -> Any:
    """A documented settings field. Mutable defaults (lists, dicts) are copied per instance."""
    metadata = {"doc": doc, "choices": list(choices) if choices is not None else None, "minimum": minimum,
                "maximum": maximum, "exclusive_minimum": exclusive_minimum,
                "exclusive_maximum": exclusive_maximum, "unit": unit, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"list of {describe_type(item)}"
    if origin is dict:
        key, value = typing.get_args(annotation) or (Any, Any)
        return f"mapping {describe_type(key)} -> {describe_type(value)}"
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return f"mapping ({', '.join(f.name for f in dataclasses.fields(annotation))})"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(annotation, str(annotation))


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Return `value` converted to `annotation`, or raise SettingsError naming `path`."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return build_section(annotation, value, path)  # a nested section, e.g. MD.metadynamics
    if origin in (typing.Union, types.UnionType):
        nested = [arg for arg in typing.get_args(annotation) if isinstance(arg, type) and dataclasses.is_dataclass(arg)]
        if nested and value is not None:
            return build_section(nested[0], value, path)  # its own errors name the nested key
        errors = []
        for arg in typing.get_args(annotation):
            try:
                return _coerce(value, arg, path)
            except SettingsError as error:
                errors.append(error)
        raise _type_error(value, annotation, path)
    if annotation is type(None):
        if value is None:
            return None
        raise _type_error(value, annotation, path)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, annotation, path)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(value, annotation, path)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        raise _type_error(value, annotation, path)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _type_error(value, annotation, path)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, annotation, path)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_type, value_type = typing.get_args(annotation) or (Any, Any)
        if not isinstance(value, dict):
            raise _type_error(value, annotation, path)
        return {_coerce(k, key_type, f"{path}.{k}"): _coerce(v, value_type, f"{path}.{k}") for k, v in value.items()}
    return value


def _type_error(value: Any, annotation: Any, path: str) -> SettingsError:
    return SettingsError(f"got {value!r} ({type(value).__name__}); expected {describe_type(annotation)}", where=path)


def _check_choices(value: Any, choices: list | None, path: str) -> Any:
    if choices is None or value is None:
        return value
    for choice in choices:
        if value == choice or (isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower()):
            return choice  # canonical spelling: users write NVT, Langevin, ...
    raise SettingsError(f"got {value!r}; allowed: {', '.join(map(str, choices))}", where=path)


def _check_range(value: Any, meta: dict, path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and (value < low or (meta.get("exclusive_minimum") and value == low)):
        relation = ">" if meta.get("exclusive_minimum") else ">="
        raise SettingsError(f"got {value!r}; must be {relation} {low}", where=path)
    if high is not None and (value > high or (meta.get("exclusive_maximum") and value == high)):
        relation = "<" if meta.get("exclusive_maximum") else "<="
        raise SettingsError(f"got {value!r}; must be {relation} {high}", where=path)


def suggest(name: str, candidates: Sequence[str]) -> str:
    """' Did you mean X?' for the closest candidate, or ''."""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean '{lowered[close[0]]}'?" if close else ""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_section(cls: type, raw: dict | None, path: str, *, accepted_unused: Sequence[str] = ()) -> Any:
    """Validate the mapping `raw` against the dataclass `cls` and return an instance.

    Keys in `accepted_unused` are keys of the original tool (or of MACE) that this tool does not use:
    they are accepted with a logged note. Any other unknown key is an error with a suggestion.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SettingsError(f"expected a mapping of keys to values, got {type(raw).__name__}", where=path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    by_alias = {alias: f.name for f in fields.values() for alias in f.metadata.get("aliases", ())}
    lower = {name.lower(): name for name in fields}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        key_str = str(key)
        name = key_str if key_str in fields else by_alias.get(key_str) or lower.get(key_str.lower())
        if name is None:
            if key_str in accepted_unused:
                log.info("%s.%s is a setting of the original tool that fhi_al does not use; ignored.", path, key_str)
                continue
            raise SettingsError(f"unknown key.{suggest(key_str, list(fields) + list(accepted_unused))} "
                                f"Allowed keys: {', '.join(sorted(fields))}", where=f"{path}.{key_str}")
        meta = fields[name].metadata
        value = _coerce(value, _resolved_type(cls, name), f"{path}.{name}")
        value = _check_choices(value, meta.get("choices"), f"{path}.{name}")
        _check_range(value, meta, f"{path}.{name}")
        values[name] = value
    missing = [n for n, f in fields.items() if n not in values and f.default is _MISSING
               and f.default_factory is _MISSING]
    if missing:
        raise SettingsError(f"required key(s) missing: {', '.join(missing)}", where=path)
    return cls(**values)


def _resolved_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def section_docs(cls: type) -> list[dict[str, Any]]:
    """One record per field (name, type, default, doc, unit, choices, range) for examples and glossaries."""
    hints = typing.get_type_hints(cls)
    records = []
    for f in dataclasses.fields(cls):
        if f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        records.append({"name": f.name, "type": describe_type(hints[f.name]), "default": default,
                        "doc": f.metadata.get("doc", ""), "unit": f.metadata.get("unit", ""),
                        "choices": f.metadata.get("choices"), "minimum": f.metadata.get("minimum"),
                        "maximum": f.metadata.get("maximum")})
    return records
