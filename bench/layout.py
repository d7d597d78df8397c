"""Which CPU each process of a run is pinned to."""

from __future__ import annotations

import os
from dataclasses import dataclass

NONE: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Layout:
    """CPU sets for the load generator, the server under test and the upstream behind a proxy."""

    name: str
    load: frozenset[int]
    server: frozenset[int]
    upstream: frozenset[int]

    def describe(self) -> str:
        """One line for the report."""
        if not self.server:
            return f"{self.name}: not pinned (fewer than 2 CPUs)"
        return (
            f"{self.name}: load generator on CPU {listed(self.load)}, server under test on CPU "
            f"{listed(self.server)}, upstream behind a proxy on CPU {listed(self.upstream)}"
        )


def listed(cpus: frozenset[int]) -> str:
    """CPU numbers as `0,1`."""
    return ",".join(map(str, sorted(cpus)))


LAYOUTS = ("shared", "split")


def make_layout(name: str, available: set[int] | None = None) -> Layout:
    """`shared`: the upstream shares the server's CPU (a pod's budget); `split`: the loader's."""
    if name not in LAYOUTS:
        raise SystemExit(f"--layout: unknown layout {name!r} ({' | '.join(LAYOUTS)})")
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Layout(name, NONE, NONE, NONE)
    load, server = frozenset({cpus[0]}), frozenset({cpus[1]})
    return Layout(name, load, server, server if name == "shared" else load)
