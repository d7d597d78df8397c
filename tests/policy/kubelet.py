"""Writes a directory the way the kubelet's AtomicWriter updates a mounted ConfigMap."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

_COUNTER = itertools.count(1_000_000_000)
DATA = "..data"


def atomic_write(target: Path, payload: Mapping[str, str | bytes]) -> Path:
    """Publish `payload` (file name -> content) into `target`; return the new timestamped dir.

    The same steps in the same order as kubelet's pkg/volume/util/atomic_writer.go:
    write a fresh `..<timestamp>.<random>` dir, point a `..data_tmp` symlink at it, rename
    that over `..data`, create `name -> ..data/name` links for new names, remove links for
    names no longer in the payload, then remove the old timestamped dir.
    """
    target.mkdir(parents=True, exist_ok=True)
    old_dir = _current(target)
    old_names = set(os.listdir(target / DATA)) if old_dir else set()
    new_dir = target / f"..2026_11_26_10_15_30.{next(_COUNTER)}"
    new_dir.mkdir()
    for name, content in payload.items():
        data = content.encode() if isinstance(content, str) else content
        (new_dir / name).write_bytes(data)
    tmp_link = target / "..data_tmp"
    os.symlink(new_dir.name, tmp_link)
    os.rename(tmp_link, target / DATA)
    for name in payload:
        if not (target / name).is_symlink():
            os.symlink(f"{DATA}/{name}", target / name)
    for name in old_names - set(payload):
        (target / name).unlink()
    if old_dir is not None:
        shutil.rmtree(target / old_dir)
    return new_dir


def _current(target: Path) -> str | None:
    link = target / DATA
    return os.readlink(link) if link.is_symlink() else None
