"""Read, override, validate and write nested ``@dataclass`` configs as YAML.

A config is a plain dataclass whose fields may be other dataclasses. Values are checked against the field
annotations: ``int``, ``float`` (an int is accepted and converted), ``bool``, ``str``, ``pathlib.Path``,
``None``, unions such as ``int | None``, ``Literal[...]`` choices, ``list[T]``, ``tuple[T, ...]``,
``dict[str, T]``, nested dataclasses and ``Any``. A float may also be written as a string such as ``1e-3``
(YAML 1.1 reads ``1e-3`` as a string; it is converted for float fields only).

Overrides are ``"a.b.c=value"`` strings whose value is parsed with ``yaml.safe_load`` (so ``4``, ``1e-3``,
``true``, ``[1, 2]`` and ``null`` work). Every problem raises :class:`ConfigError` with a message that names
the full dotted key. After a dataclass is built, its ``validate()`` method, if it has one, is called.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

_MISSING = object()


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message names the dotted key at fault."""


# ----------------------------------------------------------------------------------------------- naming


def _join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe_key(key: str) -> str:
    return f"'{key}'" if key else "the top level"


def type_name(annotation: Any) -> str:
    """A readable name for a type annotation, e.g. ``int | None``, ``list[int]``, ``one of 'a', 'b'``."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is type(None) or annotation is None:
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _type_error(key: str, annotation: Any, value: Any) -> ConfigError:
    return ConfigError(
        f"config key {_describe_key(key)} expects {type_name(annotation)}, got {value!r} ({type(value).__name__})"
    )


# ----------------------------------------------------------------------------------------------- coercion


def _coerce_scalar(value: Any, annotation: type, key: str) -> Any:
    """Check (and where lossless, convert) a value for a scalar type: bool, int, float, str, Path."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Path:
        if isinstance(value, str | Path):
            return Path(value)
    elif isinstance(value, annotation):
        return value
    raise _type_error(key, annotation, value)


def _coerce_union(value: Any, annotation: Any, key: str) -> Any:
    members = get_args(annotation)
    if value is None and type(None) in members:
        return None
    for member in members:
        if member is type(None):
            continue
        try:
            return coerce_value(value, member, key)
        except ConfigError as error:
            if dataclasses.is_dataclass(member) and isinstance(value, Mapping):
                raise error
    raise _type_error(key, annotation, value)


def _coerce_literal(value: Any, annotation: Any, key: str) -> Any:
    choices = get_args(annotation)
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
    raise ConfigError(
        f"config key {_describe_key(key)} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
    )


def _coerce_sequence(value: Any, annotation: Any, key: str) -> Any:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise _type_error(key, annotation, value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(
                f"config key {_describe_key(key)} expects {len(args)} items ({type_name(annotation)}), "
                f"got {len(value)}: {value!r}"
            )
        return tuple(coerce_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item_type = args[0] if args else Any
    items = [coerce_value(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_mapping(value: Any, annotation: Any, key: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _type_error(key, annotation, value)
    args = get_args(annotation)
    key_type, value_type = args if len(args) == 2 else (Any, Any)
    return {
        coerce_value(k, key_type, f"{key}.<key>"): coerce_value(v, value_type, _join_key(key, str(k)))
        for k, v in value.items()
    }


def coerce_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked against and converted to ``annotation``, else :class:`ConfigError` naming ``key``."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise _type_error(key, annotation, value)
        return from_dict(annotation, value, key)
    if origin is Literal:
        return _coerce_literal(value, annotation, key)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, annotation, key)
    if origin in (list, tuple, Sequence):
        return _coerce_sequence(value, annotation, key)
    if origin in (dict, Mapping):
        return _coerce_mapping(value, annotation, key)
    if annotation is None or annotation is type(None):
        if value is None:
            return None
        raise _type_error(key, annotation, value)
    if isinstance(annotation, type):
        return _coerce_scalar(value, annotation, key)
    raise ConfigError(f"config key {_describe_key(key)} has an unsupported type annotation {annotation!r}")


# ----------------------------------------------------------------------------------------------- dataclasses


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _unknown_key_error(cls: type, prefix: str, name: str) -> ConfigError:
    valid = list(_init_fields(cls))
    full_key = _join_key(prefix, name)
    suggestion = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean '{_join_key(prefix, suggestion[0])}'?" if suggestion else ""
    return ConfigError(
        f"unknown config key '{full_key}'.{hint} Valid keys in {_describe_key(prefix)}: {', '.join(valid)}"
    )


def _run_validate(instance: Any, key: str) -> None:
    validate = getattr(instance, "validate", None)
    if not callable(validate):
        return
    try:
        validate()
    except ConfigError:
        raise
    except (ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"invalid config {_describe_key(key)}: {e}") from e


def from_dict(cls: type[T], data: Mapping[str, Any], key: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and value, then call its ``validate()``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {_describe_key(key)} must be a mapping, got {data!r}")
    fields = _init_fields(cls)
    hints = get_type_hints(cls)
    for name in data:
        if name not in fields:
            raise _unknown_key_error(cls, key, str(name))
    values: dict[str, Any] = {}
    for name, field in fields.items():
        field_key = _join_key(key, name)
        if name in data:
            values[name] = coerce_value(data[name], hints[name], field_key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{field_key}'")
    try:
        instance = cls(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid config {_describe_key(key)}: {e}") from e
    _run_validate(instance, key)
    return instance


def to_dict(config: Any) -> Any:
    """Plain YAML-ready data (dicts, lists, scalars) of a dataclass config; ``Path`` becomes ``str``."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


# ----------------------------------------------------------------------------------------------- overrides


def parse_override(override: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a", "b", "c"], parsed value)``; the value goes through YAML."""
    text = override.removeprefix("--set").strip()
    if "=" not in text:
        raise ConfigError(f"override {override!r} must look like 'section.key=value'")
    dotted_key, raw_value = text.split("=", 1)
    path = [part.strip() for part in dotted_key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {override!r} has an empty key part in {dotted_key!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: cannot parse the value {raw_value!r} ({e})") from e
    return path, value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]...`` to ``value``, creating intermediate sections as needed."""
    section = data
    for depth, part in enumerate(path[:-1]):
        child = section.get(part)
        if child is None:
            child = section[part] = {}
        elif not isinstance(child, dict):
            parent = ".".join(path[: depth + 1])
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{parent}' is a value ({child!r}), not a section")
        section = child
    section[path[-1]] = value


# ----------------------------------------------------------------------------------------------- files


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file → ``{}``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_copy_plain(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy_plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy_plain(v) for v in data]
    return data


def load_config(
    cls: type[T],
    path_or_dict: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build config ``cls`` from a YAML file (or a mapping, or nothing: defaults), then apply overrides.

    ``overrides`` are ``"a.b.c=value"`` strings applied in order. Raises :class:`ConfigError` for an unknown
    key (with suggestions), a wrongly typed value, a missing required key, or a failing ``validate()``.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    if path_or_dict is None:
        data: dict[str, Any] = {}
    elif isinstance(path_or_dict, Mapping):
        data = _deep_copy_plain(path_or_dict)
    else:
        data = read_yaml(path_or_dict)
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    for override in overrides:
        apply_override(data, *parse_override(override))
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> Path:
    """Write a dataclass config as YAML (keys in field order); :func:`load_config` reads it back equal."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def config_keys(cls: type) -> list[str]:
    """Every dotted key of config ``cls`` (nested dataclasses expanded), for help texts."""
    keys: list[str] = []
    hints = get_type_hints(cls)
    for name in _init_fields(cls):
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
            keys.extend(f"{name}.{sub}" for sub in config_keys(annotation))
        else:
            keys.append(name)
    return keys
