"""The regional overlays: the demo per region, in its own restricted namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .manifests import (
    K8S,
    POLICIES,
    Doc,
    all_containers,
    env_value,
    guarded,
    kustomization,
    named,
    needs_kustomize,
    of_kind,
    pod_spec,
    render,
    sidecar,
    volume,
)

REGIONS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())

pytestmark = needs_kustomize


@pytest.mark.parametrize("overlay", REGIONS, ids=lambda p: p.name)
def test_overlay_serves_its_region_in_its_namespace(overlay: Path) -> None:
    region = overlay.name
    assert (POLICIES / f"{region}.yaml").is_file(), "an overlay for a region with no policy"
    rendered = render(overlay)
    (deployment,) = guarded(rendered)
    spec = pod_spec(deployment)
    assert deployment["metadata"]["name"] == f"adult-model-{region}"
    assert env_value(sidecar(spec), "GUARDPROXY_REGION") == region
    configmap = named(rendered, "ConfigMap", f"guardproxy-policies-{region}")
    assert volume(spec, "guardproxy-policies")["configMap"]["name"] == configmap["metadata"]["name"]
    namespace = f"guardproxy-{region}"
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {
        namespace
    }
    (ns,) = of_kind(rendered, "Namespace")
    assert ns["metadata"]["name"] == namespace
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", REGIONS, ids=lambda p: p.name)
def test_the_token_secret_keeps_its_documented_name(overlay: Path) -> None:
    # The Secret is made by hand (k8s/README.md), so nameSuffix must not rename the reference.
    (deployment,) = guarded(render(overlay))
    tokens = volume(pod_spec(deployment), "guardproxy-tokens")["secret"]
    assert tokens["secretName"] == "guardproxy-tokens"


def test_singapore_runs_three_replicas_on_shared_redis_state() -> None:
    rendered = render(K8S / "overlays" / "sg")
    (deployment,) = guarded(rendered)
    assert deployment["spec"]["replicas"] == 3
    state = env_value(sidecar(pod_spec(deployment)), "GUARDPROXY_STATE")
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/(\d+)", state)
    assert match, state
    service = named(rendered, "Service", match.group(1))
    assert int(match.group(2)) == service["spec"]["ports"][0]["port"]
    redis = pod_spec(named(rendered, "Deployment", "redis-sg"))
    for container in all_containers(redis):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]


def test_singapore_keeps_two_of_three_through_disruptions() -> None:
    rendered = render(K8S / "overlays" / "sg")
    (pdb,) = of_kind(rendered, "PodDisruptionBudget")
    (deployment,) = guarded(rendered)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 2


def test_redis_admits_only_the_region_guarded_pods() -> None:
    rendered = render(K8S / "overlays" / "sg")
    policy = named(rendered, "NetworkPolicy", "redis-sg")
    (deployment,) = guarded(rendered)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", REGIONS, ids=lambda p: p.name)
def test_overlays_build_on_the_demo_example(overlay: Path) -> None:
    doc: Doc = kustomization(overlay)
    assert "../../examples/demo" in doc["resources"]
    assert doc["nameSuffix"] == f"-{overlay.name}"
