"""Checked reads of JSON values: each raises PayloadError naming where the shape is wrong."""

from __future__ import annotations

import math
from typing import Any

from guardproxy.payloads.errors import PayloadError
from guardproxy.payloads.jsonpath import Doc

_NUMBER = (int, float)  # a tuple: `int | float` builds a union on every call


def floats(values: list[Any], where: str) -> list[float]:
    """The scores as floats (PayloadError on a non-number or non-finite value)."""
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            raise PayloadError(f"score in {where} is not a number: {value!r}")
        if not math.isfinite(value):
            raise PayloadError(f"score in {where} is not finite: {value!r}")
        out.append(float(value))
    return out


def field(doc: Doc, key: str, where: str) -> Any:
    """doc[key] of a JSON object (PayloadError when not an object or the key is missing)."""
    if not isinstance(doc, dict):
        raise PayloadError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if key not in doc:
        raise PayloadError(f"{where}: missing {key!r}")
    return doc[key]


def as_list(value: Any, where: str) -> list[Any]:
    """The value, which must be a JSON list."""
    if not isinstance(value, list):
        raise PayloadError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def label_row(value: Any, where: str) -> list[str]:
    """One row of labels: a string or a list of strings, as a list."""
    row = value if isinstance(value, list) else [value]
    if not all(isinstance(label, str) for label in row):
        raise PayloadError(f"{where}: labels must be strings")
    return row


def label_value(original: Any, row: list[str]) -> Any:
    """A suppressed row written back in the original's form (one string or a list)."""
    if isinstance(original, list):
        return row
    if original is None and not row:
        return None
    return row[0] if row else ""


def pick(row: Any, output: str | None, index: int, where: str) -> Any:
    """A row's score: the named (or only) output of a dict, then column `index` of a list."""
    if isinstance(row, dict):
        if output is None:
            if len(row) != 1:
                raise PayloadError(f"{where}: several outputs, set model.score.output")
            row = next(iter(row.values()))
        else:
            row = field(row, output, where)
    if isinstance(row, list):
        if index >= len(row):
            raise PayloadError(f"{where}: no column {index} in a row of {len(row)}")
        row = row[index]
    return row


def feature_rows(rows: list[Any], names: list[Any] | None, name: str, where: str) -> list[Any]:
    """A named feature from row dicts, or from row lists whose columns are named."""
    if rows and isinstance(rows[0], dict):
        return [field(row, name, where) for row in rows]
    if names is None or name not in names:
        raise PayloadError(f"{where}: no feature named {name!r}")
    column = names.index(name)
    try:
        return [as_list(row, where)[column] for row in rows]
    except IndexError:
        raise PayloadError(f"{where}: a row has no value for {name!r}") from None


def singleton(values: list[Any]) -> list[Any]:
    """Values with one-element lists ([x]) unwrapped to x."""
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
