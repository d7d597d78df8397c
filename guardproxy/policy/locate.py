"""Pydantic validation errors as problems at the key where the value was written."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel

from guardproxy.policy.models import ModelPolicy, Policy
from guardproxy.policy.problems import KeyPath, Problem, short


def locate(error: Any, data: dict[str, Any], marks: dict[KeyPath, Problem]) -> Problem:
    """Turn one pydantic error into a Problem at the key where the value was written."""
    loc = _clean_loc(error["loc"], data, error["type"] == "missing")
    target = loc
    if error["type"] in ("value_error", "assertion_error"):
        target = _refine(loc, error["msg"], data, marks)
    mark = next(marks[target[:k]] for k in range(len(target), -1, -1) if target[:k] in marks)
    owner, inner = _owner(loc, data)
    root = ModelPolicy if owner else Policy
    return Problem(mark.file, mark.line, mark.column, owner + _describe(error, inner, root))


def _owner(loc: KeyPath, data: dict[str, Any]) -> tuple[str, KeyPath]:
    """ "model 'x': " and the path inside that model, for an error under `models`."""
    if len(loc) < 2 or loc[0] != "models" or not isinstance(loc[1], int):
        return "", loc
    entry = data["models"][loc[1]]
    name = entry.get("name") if isinstance(entry, dict) else None
    return (f"model {name!r}: " if isinstance(name, str) else f"models[{loc[1]}]: "), loc[2:]


def _clean_loc(loc: tuple[Any, ...], data: Any, keep_last: bool) -> KeyPath:
    """The error's path through the data, without pydantic's union member tags."""
    out: list[str | int] = []
    for index, part in enumerate(loc):
        found = isinstance(data, dict) and part in data
        if found or (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            out.append(part)
            data = data[part]
        elif keep_last and index == len(loc) - 1:
            out.append(part)
    return tuple(out)


def _refine(loc: KeyPath, message: str, data: Any, marks: Mapping[KeyPath, Problem]) -> KeyPath:
    """Point a whole-section error at the key or value its message names."""
    under = [p for p in marks if len(p) > len(loc) and p[: len(loc)] == loc]
    quoted = re.findall(r"'([^']*)'", message)
    keys = [p for name in quoted for p in under if p[-1] == name]
    values = [p for name in quoted for p in under if _get(data, p) == name]
    if keys or values:
        return (keys or values)[0]
    for dotted in re.findall(r"[a-z_]+(?:\.[a-z_]+)+", message):
        parts = tuple(dotted.split("."))
        for k in range(len(loc), -1, -1):
            if (*loc[:k], *parts) in marks:
                return (*loc[:k], *parts)
    return loc


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _describe(error: Any, loc: KeyPath, root: type[BaseModel] = Policy) -> str:
    kind, message = error["type"], str(error["msg"])
    where = _dotted(loc)
    if kind == "missing":
        return f"{_dotted(loc[:-1]) or 'top level'}: missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        return f"{where}: unknown key (expected one of: {_allowed_keys(loc[:-1], root)})"
    if kind in ("value_error", "assertion_error"):
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{where}: {message}" if where else message
    shown = short(error.get("input"))
    return f"{where or 'policy'}: invalid value {shown} ({message[:1].lower()}{message[1:]})"


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _allowed_keys(path: KeyPath, root: type[BaseModel] = Policy) -> str:
    model: type[BaseModel] | None = root
    for part in path:
        if model is not None and isinstance(part, str):
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field else None
    return ", ".join(model.model_fields) if model else "see the policy reference"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation if issubclass(annotation, BaseModel) else None
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
