"""Strict loading of nested frozen dataclasses from TOML-like dicts.

Keys are kebab-case in TOML and snake_case in Python, converted here and nowhere else.
Every field may carry validation metadata made by :func:`option`; any unknown key, wrong
type or out-of-range value raises :class:`~fednas.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from typing import Any

from fednas.errors import ConfigError


def option(default: Any, *, doc: str = "", choices: tuple | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, subset_of: tuple | None = None, inf: str = "") -> Any:
    """A dataclass field with a default, a one-line doc and value constraints.

    Float values must be finite unless ``inf`` says what ``inf`` means for the key (e.g.
    ``"no clipping"``); NaN is never accepted.
    """
    meta = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt,
            "subset_of": subset_of, "inf": inf}
    if isinstance(default, list | dict):
        raise TypeError("use tuples for sequence defaults (configs are frozen)")
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A nested-dataclass field defaulting to ``cls()``."""
    return dataclasses.field(default_factory=cls)


def to_kebab(name: str) -> str:
    return name.replace("_", "-")


def to_snake(name: str) -> str:
    return name.replace("-", "_")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
    elif origin is tuple:
        (elem,) = typing.get_args(tp)[:1]
        if isinstance(value, list | tuple):
            return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("inf", "nan"):
            return float(value)  # --set KEY=inf: the range check below says if inf is allowed
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    choices, subset = meta.get("choices"), meta.get("subset_of")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {list(choices)}")
    if subset is not None:
        bad = [v for v in values if v not in subset]
        if bad:
            raise ConfigError(f"{key}: {bad} not allowed; allowed values: {list(subset)}")
    for v in values:
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if not math.isfinite(v):
            if v == math.inf and meta.get("inf"):
                continue
            allowed = f" (or inf: {meta['inf']})" if meta.get("inf") else ""
            raise ConfigError(f"{key}: must be a finite number{allowed}, got {v!r}")
        for bound, ok, word in (("ge", v >= (meta.get("ge") or 0), ">="),
                                ("gt", v > (meta.get("gt") or 0), ">"),
                                ("le", v <= (meta.get("le") or 0), "<="),
                                ("lt", v < (meta.get("lt") or 0), "<")):
            if meta.get(bound) is not None and not ok:
                raise ConfigError(f"{key}: must be {word} {meta[bound]} (got {v!r})")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a kebab-case dict, strictly.

    Keys missing from ``data`` keep their value in ``base`` (a default instance of ``cls``,
    e.g. a nested section whose default factory sets other values than the class defaults).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = to_snake(raw_key)
        key = prefix + raw_key
        if name not in fields or raw_key != to_kebab(name):
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            allowed = ", ".join(to_kebab(n) for n in fields)
            raise ConfigError(f"unknown config key {key!r}; allowed keys at {where}: {allowed}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            sub_base = getattr(base, name) if base is not None else _default(fields[name])
            kwargs[name] = from_dict(tp, value, key + ".", sub_base)
        else:
            coerced = _coerce(value, tp, key)
            _check_range(coerced, fields[name].metadata, key)
            kwargs[name] = coerced
    if base is not None:
        kwargs = {f: getattr(base, f) for f in fields if f not in kwargs} | kwargs
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check()
    return obj


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def to_dict(obj: Any) -> dict[str, Any]:
    """Kebab-case dict of a config dataclass (tuples become lists, for TOML/JSON)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[to_kebab(f.name)] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b-c=value`` (value in TOML syntax, bare words taken as strings)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. search.epochs=2")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    if raw.lstrip("+-") in ("nan", "inf"):  # bare words, not TOML's special floats
        return key.split("."), raw
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating tables on the way."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a table")
        node = child
    node[path[-1]] = value


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of scalars/lists as TOML (tables after scalars)."""
    lines: list[str] = []

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    def emit(table: dict[str, Any], name: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if name and scalars:
            lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {fmt(v)}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                emit(v, f"{name}.{k}" if name else k)

    emit(data, "")
    return "\n".join(lines).lstrip("\n") + "\n"
