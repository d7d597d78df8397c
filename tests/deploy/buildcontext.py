"""What `docker build` copies, reproduced on files: the context after .dockerignore, and
COPY, which keeps symbolic links inside a copied directory as links.

No engine runs here; this is enough to see what the image's files are.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path, PurePosixPath

Rule = tuple[bool, re.Pattern[str]]  # (exception "!", pattern)


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on slash paths."""
    out, i = "", 0
    text = str(PurePosixPath("/" + text.strip())).lstrip("/")
    while i < len(text):
        if text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


def ignore_rules(context: Path) -> list[Rule]:
    """The context's .dockerignore rules, in order."""
    path = context / ".dockerignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    rules = []
    for line in (x.strip() for x in lines):
        if line and not line.startswith("#"):
            exception = line.startswith("!")
            rules.append((exception, _pattern(line.removeprefix("!"))))
    return rules


def ignored(relative: str, rules: list[Rule]) -> bool:
    """Whether a path is left out: the last rule matching it or a parent decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exception, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = not exception
    return verdict


def copy_entry(source: Path, target: Path, context: Path, rules: list[Rule]) -> None:
    """COPY of one context entry: directories by content, links kept as links."""
    relative = source.relative_to(context).as_posix()
    if relative != "." and ignored(relative, rules):
        return
    if source.is_symlink() and relative != "." and source.parent != context:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in sorted(source.iterdir()):
            copy_entry(child, target / child.name, context, rules)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def arguments(rest: str) -> list[str]:
    """An instruction's arguments, JSON or shell form."""
    if rest.startswith("["):
        parsed: list[str] = json.loads(rest)
        return parsed
    return shlex.split(rest)


def build(context: Path, image: Path) -> None:
    """Every COPY of the context's Dockerfile (WORKDIR honoured) into the directory `image`."""
    rules, workdir = ignore_rules(context), PurePosixPath("/")
    for word, rest in instructions(context / "Dockerfile"):
        if word == "WORKDIR":
            workdir = workdir / rest
        if word != "COPY":
            continue
        args = arguments(rest)
        assert not any(a.startswith("--from") for a in args), "multi-stage COPY not modelled"
        *sources, destination = [a for a in args if not a.startswith("--")]
        into = workdir / destination
        for source in sources:
            path = context / source
            as_dir = destination.endswith("/") or len(sources) > 1
            target = into / path.name if as_dir and not path.is_dir() else into
            copy_entry(path, image / str(target).lstrip("/"), context, rules)
