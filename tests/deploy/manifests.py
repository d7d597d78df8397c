"""Reading the repository's kustomizations: render with plain kubectl, pick out objects."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
POLICIES = ROOT / "policies"
COMPONENT = K8S / "components" / "guardproxy"
KUBECTL = shutil.which("kubectl")
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SIDECAR_LABEL = ("guardproxy.io/sidecar", "enabled")

Doc = dict[str, Any]


def kustomize_major() -> int:
    """The major version of the kustomize built into kubectl; 0 when there is none."""
    if KUBECTL is None:
        return 0
    out = subprocess.run(
        [KUBECTL, "version", "--client"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    found = re.search(r"Kustomize Version: v(\d+)", out)
    return int(found.group(1)) if found else 0


# Older kubectl (Debian's 1.20 kubernetes-client ships kustomize v2) lacks Components.
needs_kustomize = pytest.mark.skipif(
    kustomize_major() < 5, reason="kubectl with kustomize v5+ is not installed"
)


def docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document in a file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization_file(directory: Path) -> Path | None:
    """The kustomization file of a directory, under any name kustomize recognises."""
    found = [directory / n for n in KUSTOMIZATION_NAMES if (directory / n).is_file()]
    return found[0] if found else None


def kustomization(directory: Path) -> Doc:
    """A directory's kustomization, parsed."""
    path = kustomization_file(directory)
    assert path is not None, f"{directory} holds no kustomization"
    (doc,) = docs(path)
    return doc


def roots(kind: str = "Kustomization") -> list[Path]:
    """Every directory of the repository (k8s/ and policies/) whose kustomization is `kind`."""
    candidates = [POLICIES, *sorted(p for p in K8S.rglob("*") if p.is_dir())]
    return [
        d
        for d in candidates
        if kustomization_file(d) is not None and kustomization(d).get("kind", kind) == kind
    ]


@cache
def rendered_text(directory: Path) -> str:
    """`kubectl kustomize DIR` with no flags at all, as Argo CD and Flux render it."""
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{directory.relative_to(ROOT)}: {done.stderr}"
    return done.stdout


def render(directory: Path) -> list[Doc]:
    """A kustomization rendered and parsed (fresh objects, safe to change)."""
    return [d for d in yaml.safe_load_all(rendered_text(directory)) if d]


def of_kind(all_docs: list[Doc], name: str) -> list[Doc]:
    """The documents of one kind."""
    return [d for d in all_docs if d.get("kind") == name]


def named(all_docs: list[Doc], kind: str, name: str) -> Doc:
    """The one object of `kind` called `name`."""
    found = [d for d in of_kind(all_docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def one(items: list[Doc], **match: object) -> Doc:
    """The single item whose fields equal `match`."""
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one item with {match}, found {len(found)}"
    return found[0]


def pod_spec(deployment: Doc) -> Doc:
    """A Deployment's pod template spec."""
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


def sidecar(spec: Doc) -> Doc:
    """The guardproxy container of a pod spec."""
    return one(spec.get("initContainers", []), name="guardproxy")


def guarded(all_docs: list[Doc]) -> list[Doc]:
    """The Deployments that carry the guardproxy sidecar."""
    return [
        d
        for d in of_kind(all_docs, "Deployment")
        if any(c["name"] == "guardproxy" for c in pod_spec(d).get("initContainers", []))
    ]


def env(container: Doc) -> dict[str, Doc]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: Doc, name: str) -> str:
    """The literal value of one env variable."""
    value: str = env(container)[name]["value"]
    return value


def mount(container: Doc, path: str) -> Doc:
    """The volume mount at `path`."""
    return one(container["volumeMounts"], mountPath=path)


def volume(spec: Doc, name: str) -> Doc:
    """The pod volume called `name`."""
    return one(spec["volumes"], name=name)


def all_containers(spec: Doc) -> Iterator[Doc]:
    """Init containers (sidecars included) and regular containers."""
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def port_number(container: Doc, port: str | int) -> int:
    """A port, resolved through the container's named ports."""
    if isinstance(port, int):
        return port
    found: int = one(container["ports"], name=port)["containerPort"]
    return found
