"""Problems found in policy files, each at a file position, and the error carrying them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

KeyPath = tuple[str | int, ...]
# How a problem inside one model's merged policy starts (see locate: "model 'x': ").
_MODEL = re.compile(r"model (?:'[^']*'|\"[^\"]*\"): |models\[\d+\]: ")


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong in a policy file, at a 1-based line and column (0: the whole file)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(Exception):
    """Every problem found in a policy directory, sorted by file and position."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = without_copies(set(problems))
        super().__init__(format_problems(self.problems))


def without_copies(problems: set[Problem]) -> list[Problem]:
    """Sorted, without a model's copy of a problem its region shows at the same place.

    A region's sections are every model's defaults, so a wrong key there is wrong in each
    model too: once is enough.
    """
    return sorted(p for p in problems if not _copy_of_region(p, problems))


def _copy_of_region(problem: Problem, problems: set[Problem]) -> bool:
    prefix = _MODEL.match(problem.message)
    if prefix is None:
        return False
    rest = problem.message[prefix.end() :]
    return Problem(problem.file, problem.line, problem.column, rest) in problems


def format_problems(problems: Iterable[Problem]) -> str:
    """One `file:line:column: message` line per problem."""
    return "\n".join(str(p) for p in problems)


def short(value: object) -> str:
    """A value as shown in a message: its repr (an exception's text), cut to 60 characters."""
    shown = repr(value) if not isinstance(value, Exception) else str(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
