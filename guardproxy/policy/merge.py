"""How policy documents combine: `extends` chains, and region defaults under each model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from guardproxy.policy.marks import MarkedDoc
from guardproxy.policy.problems import KeyPath, Problem

SECTIONS = ("groups", "decision", "labels", "sampling", "drift", "fairness", "breaker")
# Each names one source (a group's, a subject's), so it is replaced whole: merged key by key,
# an inherited {input: sex} and a region's {header: X-Group} would name two and never load.
CHOICES = (("groups", "attribute"), ("decision", "subject"))


def deep_merge(
    base: Mapping[str, Any], over: Mapping[str, Any], path: KeyPath = ()
) -> dict[str, Any]:
    """Mappings merge recursively; lists, scalars and CHOICES in `over` replace `base`'s."""
    out = dict(base)
    for key, value in over.items():
        old, here = base.get(key), (*path, key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping) and here[-2:] not in CHOICES
        out[key] = deep_merge(old, value, here) if both else value  # type: ignore[arg-type]
    return out


def merge_marked(base: MarkedDoc, over: MarkedDoc) -> MarkedDoc:
    """Merged data; each key keeps the position of the file its value came from."""
    data = deep_merge(base.data, over.data)
    marks = {p: over.marks.get(p) or base.marks[p] for p in _paths(data, ())}
    return MarkedDoc(data, marks)


def models_by_name(doc: MarkedDoc) -> MarkedDoc:
    """`models` as a mapping by name, so that `extends` merges a model with its namesake."""
    models = doc.data.get("models")
    if not isinstance(models, list):
        return doc
    names = [_model_key(entry, i) for i, entry in enumerate(models)]
    data = {**doc.data, "models": dict(zip(names, models, strict=True))}
    marks = {_rekey(path, names): mark for path, mark in doc.marks.items()}
    return MarkedDoc(data, marks)


def _model_key(entry: object, index: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) else f"#{index}"


def _rekey(path: KeyPath, names: list[str]) -> KeyPath:
    if len(path) > 1 and path[0] == "models" and isinstance(path[1], int):
        return ("models", names[path[1]], *path[2:])
    return path


def with_defaults(doc: MarkedDoc) -> MarkedDoc:
    """Each model's sections merged over the region's: a model overrides only what it names."""
    models = doc.data.get("models")
    if not isinstance(models, dict):
        return doc
    defaults = {k: v for k, v in doc.data.items() if k in SECTIONS}
    marks = dict(doc.marks)
    merged: dict[str, Any] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            merged[name] = entry
            continue
        merged[name] = deep_merge(defaults, entry)
        for path in _paths(merged[name], ()):
            own = ("models", name, *path)
            if own not in marks and path and path in doc.marks:
                marks[own] = doc.marks[path]
    return MarkedDoc({**doc.data, "models": merged}, marks)


def models_as_list(doc: MarkedDoc) -> MarkedDoc:
    """Back from the mapping by name to the list the schema expects, positions kept."""
    models = doc.data.get("models")
    if not isinstance(models, dict):
        return doc
    index = {name: i for i, name in enumerate(models)}
    marks: dict[KeyPath, Problem] = {}
    for path, mark in doc.marks.items():
        if len(path) > 1 and path[0] == "models" and path[1] in index:
            path = ("models", index[str(path[1])], *path[2:])
        marks[path] = mark
    return MarkedDoc({**doc.data, "models": list(models.values())}, marks)


def _paths(value: Any, path: KeyPath) -> Iterator[KeyPath]:
    yield path
    if isinstance(value, dict | list):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _paths(child, (*path, key))
