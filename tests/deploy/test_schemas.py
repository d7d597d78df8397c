"""Every kustomization renders with plain kubectl and passes the Kubernetes schemas, strictly.

kubernetes-validate bundles the JSON schemas of each Kubernetes release, so this runs
offline. The Prometheus Operator's kinds are not in them: the rules go through promtool
and the PodMonitor through a structural check (test_monitoring.py).
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from .manifests import ROOT, Doc, needs_kustomize, render, roots

# The oldest release the manifests support (native sidecars: 1.29; preStop sleep: 1.30) and
# the newest whose schemas the package bundles.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
ROOTS = roots()

pytestmark = needs_kustomize


def test_every_overlay_and_example_is_a_root() -> None:
    names = {str(r.relative_to(ROOT)) for r in ROOTS}
    for expected in ("policies", "k8s/examples/demo", "k8s/examples/mlserver", "k8s/monitoring"):
        assert expected in names
    assert {"k8s/overlays/sg", "k8s/overlays/id", "k8s/overlays/th"} <= names


def validate(doc: Doc, version: str) -> None:
    """Strict validation: unknown fields fail, as `kubectl apply --validate=strict` would."""
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.parametrize("version", VERSIONS)
def test_rendering_validates_strictly(root: Path, version: str) -> None:
    rendered = render(root)
    assert rendered, f"{root} renders nothing"
    for doc in rendered:
        where = f"{root.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            validate(doc, version)
        except kubernetes_validate.SchemaNotFoundError:
            # No bundled schema: only the Operator's kinds, which have checks of their own.
            assert (doc["apiVersion"], doc["kind"]) in OPERATOR_KINDS, where
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {error.message} at {list(error.path)}")


def test_strict_validation_catches_a_misplaced_field() -> None:
    (deployment,) = [d for d in render(ROOT / "k8s/examples/demo") if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["initContainers"][0]["subPath"] = "default.yaml"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, VERSIONS[0])
