"""Checking a report read from a file, in one place: `report_from_data(data) -> Report`.

A saved report may come from anywhere, so every field is checked against the dataclasses of
`model.py` (their type hints are the schema) before a renderer sees it: a wrong type, a missing
field, a number that is not finite or does not fit in 64 bits, a negative byte count, free-form
data nested too deeply. The first problem raises `SchemaError` naming the field
(`steps[3].peak_bytes must be an integer, got a string`). Unknown fields are ignored: a report
of the same schema with more fields (a later minor version) still loads.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from .text import clean

INT_RANGE = 2**63  # what torch and the JSON of other tools hold; larger is not a real measurement
MAX_DEPTH = 32  # of free-form data (aggregates, evidence, batch extras)
_NEWER = re.compile(r"oomdoctor\.report/(\d+)$")


class SchemaError(ValueError):
    """The first field of a report that does not match the schema, in one line."""


def report_from_data(report_cls: type, schema: str, data: Any) -> Any:
    """Check the schema tag, then every field; return a `report_cls` instance."""
    if not isinstance(data, dict):
        raise SchemaError(f"not an oomdoctor report: it holds {_kind(data)}, not an object")
    tag = data.get("schema")
    if tag != schema:
        raise SchemaError(_wrong_schema(tag, schema))
    return _build(report_cls, data, "", depth=0)


def _wrong_schema(tag: Any, schema: str) -> str:
    if not isinstance(tag, str):
        return f"not an oomdoctor report (no \"schema\": \"{schema}\" in it)"
    newer = _NEWER.match(tag)
    if newer and int(newer.group(1)) > int(_NEWER.match(schema).group(1)):
        return (f"written by a newer oomdoctor (schema {clean(tag, 40)}; this version reads {schema}): "
                "upgrade oomdoctor to read it")
    if tag.startswith("oomdoctor.batch/"):
        return "a batch-size result (oomdoctor batch --json), not a run report"
    return f"not an oomdoctor report (schema {clean(tag, 40)!r}, expected {schema!r})"


def _build(cls: type, data: Any, path: str, depth: int) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"{path or 'the report'} must be an object, got {_kind(data)}")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{where} is missing")
            continue
        values[f.name] = _value(hints[f.name], data[f.name], where, depth)
        if f.name in _CHECKED_AS and values[f.name] is not None:
            _build(_CHECKED_AS[f.name], values[f.name], where, depth + 1)
        if f.name == "ranks" and depth > 0 and values[f.name] is not None:
            raise SchemaError(f"{where}: a rank's report has no ranks of its own")
    return cls(**values)


def _value(tp: Any, value: Any, path: str, depth: int) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(get_args(tp)):
            return None
        return _value(options[0], value, path, depth)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{path} must be a list, got {_kind(value)}")
        (item,) = get_args(tp)
        return [_value(item, v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path} must be an object, got {_kind(value)}")
        _, item = get_args(tp)
        return {k: _value(item, v, f"{path}.{clean(k, 40)}", depth + 1) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, depth + 1)
    if tp is Any:
        _plain(value, path)
        return value
    return _scalar(tp, value, path)


def _scalar(tp: type, value: Any, path: str) -> Any:
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{path} must be a string, got {_kind(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{path} must be true or false, got {_kind(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"{path} must be an integer, got {_kind(value)}")
        if not -INT_RANGE < value < INT_RANGE:
            raise SchemaError(f"{path} is out of range ({_kind(value)})")
        if value < 0 and _is_size(path):
            raise SchemaError(f"{path} is a byte count and cannot be negative, got {value}")
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SchemaError(f"{path} must be a number, got {_kind(value)}")
        if not math.isfinite(value) or abs(value) >= INT_RANGE:
            raise SchemaError(f"{path} must be a finite number, got {value}")
        if value < 0:
            raise SchemaError(f"{path} cannot be negative, got {value}")
        return float(value)
    raise AssertionError(f"no schema rule for {tp!r}")  # a model field of a type this module misses


def _is_size(path: str) -> bool:
    """Byte counts: `*_bytes`, `bytes`, and the per-category breakdowns."""
    last = path.rsplit(".", 1)[-1].split("[")[0]
    return last.endswith("bytes") or last == "steps_total" or "by_category." in path


def _plain(value: Any, path: str) -> None:
    """Free-form data: JSON values only (what json.loads gives), nested at most MAX_DEPTH deep."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SchemaError(f"{path} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif not (item is None or isinstance(item, (str, int, float, bool))):
            raise SchemaError(f"{path} holds {_kind(item)}, which JSON cannot")


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages: `a string`, `a list`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer" if abs(value) < INT_RANGE else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else ("NaN" if math.isnan(value) else f"{'-' if value < 0 else ''}Infinity")
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


@dataclasses.dataclass
class _Trial:
    batch_size: int | None = None
    fits: bool = False
    peak_bytes: int | None = None
    seconds: float | None = None
    source: str | None = None


@dataclasses.dataclass
class _Batch:
    """The part of `Report.batch` (free-form in the model) that renderers read."""

    max_batch_size: int | None = None
    recommended_batch_size: int | None = None
    trials: list[_Trial] = dataclasses.field(default_factory=list)


_CHECKED_AS = {"batch": _Batch}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]
