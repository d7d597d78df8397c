"""The Kubernetes manifests, the Grafana dashboard and the Dockerfile say what guardproxy needs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from guardproxy.breaker.state import Transition
from guardproxy.telemetry import Telemetry, TelemetryConfig
from guardproxy.telemetry.instruments import GROUP_RATES, REGION_VALUES, TOTALS

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
POLICY_FILES = sorted(p.name for p in (ROOT / "policies").glob("*.yaml"))
KUBECTL = shutil.which("kubectl")
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}

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


# Older kubectl (Debian's 1.20 kubernetes-client ships kustomize v2) lacks fields used here.
needs_kustomize = pytest.mark.skipif(
    kustomize_major() < 5, reason="kubectl with kustomize v5+ is not installed"
)


def docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document in a file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def one(items: list[Doc], **match: object) -> Doc:
    """The single item whose fields equal `match`."""
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one item with {match}, found {len(found)}"
    return found[0]


def kind(all_docs: list[Doc], name: str) -> list[Doc]:
    """The documents of one kind."""
    return [d for d in all_docs if d.get("kind") == name]


def pod_spec(all_docs: list[Doc], deployment: str = "adult-model") -> Doc:
    """The pod template spec of the Deployment called `deployment`."""
    matches = [d for d in kind(all_docs, "Deployment") if d["metadata"]["name"] == deployment]
    assert len(matches) == 1
    spec: Doc = matches[0]["spec"]["template"]["spec"]
    return spec


def sidecar(spec: Doc) -> Doc:
    """The guardproxy container."""
    return one(spec.get("initContainers", []), name="guardproxy")


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
    """Init containers (sidecars) and regular containers."""
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    """The base's resources, unrendered."""
    return [d for f in sorted(BASE.glob("*.yaml")) for d in docs(f)]


@pytest.fixture(scope="module")
def spec(base: list[Doc]) -> Doc:
    """The base pod spec."""
    return pod_spec(base)


def test_every_manifest_parses_and_names_its_kind() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in docs(path):
            assert doc.get("kind"), f"{path}: a document without kind"
            assert doc.get("apiVersion"), f"{path}: a document without apiVersion"


def test_guardproxy_is_a_native_sidecar(spec: Doc) -> None:
    assert sidecar(spec)["restartPolicy"] == "Always"
    assert "guardproxy" not in {c["name"] for c in spec["containers"]}
    assert env_value(sidecar(spec), "GUARDPROXY_UPSTREAM") == "http://127.0.0.1:8081"
    assert one(spec["containers"], name="model")["ports"][0]["containerPort"] == 8081


def named_port(container: Doc, port: str | int) -> int:
    """A probe's port, resolved through the container's named ports."""
    if isinstance(port, int):
        return port
    found: int = one(container["ports"], name=port)["containerPort"]
    return found


@pytest.mark.parametrize(
    ("probe", "path"),
    [("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")],
)
def test_probes_hit_the_admin_port(spec: Doc, probe: str, path: str) -> None:
    container = sidecar(spec)
    http = container[probe]["httpGet"]
    assert http["path"] == path
    assert named_port(container, http["port"]) == 9901
    assert env_value(container, "GUARDPROXY_ADMIN") == "0.0.0.0:9901"


def test_every_container_is_restricted(spec: Doc) -> None:
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 65532
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    for container in all_containers(spec):
        assert_restricted(container)


def assert_restricted(container: Doc) -> None:
    """The restricted Pod Security Standard plus a read-only root filesystem."""
    context = container["securityContext"]
    for key, value in RESTRICTED.items():
        assert context[key] is value, f"{container['name']}: {key}"
    assert context["capabilities"]["drop"] == ["ALL"], container["name"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault", container["name"]
    assert context.get("runAsUser", 1) != 0, container["name"]


def test_writable_paths_are_empty_dirs(spec: Doc) -> None:
    container = sidecar(spec)
    for path in ("/tmp", "/var/lib/guardproxy"):
        assert "emptyDir" in volume(spec, mount(container, path)["name"])
    assert env_value(container, "GUARDPROXY_SAMPLES").startswith("/var/lib/guardproxy/")


def test_policies_are_a_configmap_directory_without_subpath(spec: Doc) -> None:
    container = sidecar(spec)
    policies = mount(container, "/etc/guardproxy/policies")
    assert "subPath" not in policies and "subPathExpr" not in policies
    assert volume(spec, policies["name"])["configMap"]["name"] == "guardproxy-policies"
    assert env_value(container, "GUARDPROXY_POLICIES") == policies["mountPath"]
    for c in all_containers(spec):
        assert all("subPath" not in m for m in c.get("volumeMounts", [])), c["name"]


def test_policies_configmap_is_generated_from_every_policy_file() -> None:
    (kustomization,) = docs(BASE / "kustomization.yaml")
    generator = one(kustomization["configMapGenerator"], name="guardproxy-policies")
    assert generator["options"]["disableNameSuffixHash"] is True
    listed = generator["files"]
    assert sorted(Path(f).name for f in listed) == POLICY_FILES
    assert all((BASE / f).parent.resolve() == ROOT / "policies" for f in listed)


def test_tokens_are_files_from_a_secret(spec: Doc) -> None:
    container = sidecar(spec)
    variables = env(container)
    for token in ("GUARDPROXY_ADMIN_TOKEN", "GUARDPROXY_FEEDBACK_TOKEN"):
        assert token not in variables, f"{token} must come from a file, not the pod spec"
        path = Path(variables[f"{token}_FILE"]["value"])
        tokens = mount(container, str(path.parent))
        secret = volume(spec, tokens["name"])["secret"]
        assert path.name in {item["path"] for item in secret["items"]}
        assert tokens["readOnly"] is True


def test_grace_period_outlasts_the_prestop_sleep_and_the_drain(spec: Doc) -> None:
    drain = float(env_value(sidecar(spec), "GUARDPROXY_DRAIN_TIMEOUT"))
    sleeps = [
        c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        for c in all_containers(spec)
    ]
    assert max(sleeps) > 0
    assert spec["terminationGracePeriodSeconds"] > drain + sum(sleeps)


def test_service_exposes_the_data_port_only(base: list[Doc], spec: Doc) -> None:
    (service,) = kind(base, "Service")
    ports = service["spec"]["ports"]
    assert [named_port(sidecar(spec), p["targetPort"]) for p in ports] == [8080]
    assert all(p["port"] != 8081 for p in ports)


def test_otel_resource_attributes_come_from_the_downward_api(spec: Doc) -> None:
    variables = list(env(sidecar(spec)))
    resource = env_value(sidecar(spec), "OTEL_RESOURCE_ATTRIBUTES")
    assert "k8s.pod.name=$(POD_NAME)" in resource
    for name in re.findall(r"\$\((\w+)\)", resource):
        # The kubelet only expands variables defined earlier in the list.
        assert variables.index(name) < variables.index("OTEL_RESOURCE_ATTRIBUTES")
        assert "fieldRef" in env(sidecar(spec))[name]["valueFrom"]
    assert env_value(sidecar(spec), "OTEL_SERVICE_NAME") == "guardproxy"
    assert env_value(sidecar(spec), "OTEL_EXPORTER_OTLP_PROTOCOL") == "http/protobuf"
    assert env_value(sidecar(spec), "OTEL_EXPORTER_OTLP_ENDPOINT").startswith("http://")


def test_sidecar_resources(spec: Doc) -> None:
    resources = sidecar(spec)["resources"]
    assert resources["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert resources["limits"] == {"cpu": "1", "memory": "256Mi"}


def test_prometheus_scrapes_the_admin_port(base: list[Doc]) -> None:
    (deployment,) = kind(base, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == 9901


def test_network_policy_keeps_the_admin_port_for_monitoring(base: list[Doc]) -> None:
    (policy,) = kind(base, "NetworkPolicy")
    rules = policy["spec"]["ingress"]
    open_rule = one(rules, ports=[{"port": "http", "protocol": "TCP"}])
    admin_rule = one(rules, ports=[{"port": "admin", "protocol": "TCP"}])
    assert "from" not in open_rule
    assert admin_rule["from"]
    assert all(p["port"] != "model" for r in rules for p in r["ports"])


def overlay_patch(overlay: Path) -> Doc:
    """The sidecar as an overlay's region patch sets it."""
    (patch,) = docs(overlay / "region.yaml")
    return sidecar(patch["spec"]["template"]["spec"])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_sets_its_region_namespace_and_suffix(overlay: Path) -> None:
    (kustomization,) = docs(overlay / "kustomization.yaml")
    assert f"{overlay.name}.yaml" in POLICY_FILES
    assert env_value(overlay_patch(overlay), "GUARDPROXY_REGION") == overlay.name
    assert kustomization["namespace"] == f"guardproxy-{overlay.name}"
    assert kustomization["nameSuffix"] == f"-{overlay.name}"
    assert "../../base" in kustomization["resources"]


def test_one_overlay_runs_three_replicas_on_shared_redis_state() -> None:
    overlay = K8S / "overlays" / "sg"
    (kustomization,) = docs(overlay / "kustomization.yaml")
    assert one(kustomization["replicas"], name="adult-model")["count"] == 3
    state = env_value(overlay_patch(overlay), "GUARDPROXY_STATE")
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/(\d+)", state)
    assert match, state
    redis = docs(overlay / "redis.yaml")
    (service,) = kind(redis, "Service")
    assert match.group(1) == service["metadata"]["name"] + kustomization["nameSuffix"]
    assert int(match.group(2)) == service["spec"]["ports"][0]["port"]
    for container in all_containers(pod_spec(redis, "redis")):
        assert_restricted(container)


def render(overlay: Path) -> list[Doc]:
    """`kubectl kustomize` of an overlay, parsed."""
    done = subprocess.run(
        [str(KUBECTL), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_with_kubectl(overlay: Path) -> None:
    rendered = render(overlay)
    suffix = f"-{overlay.name}"
    spec = pod_spec(rendered, f"adult-model{suffix}")
    assert sidecar(spec)["restartPolicy"] == "Always"
    assert env_value(sidecar(spec), "GUARDPROXY_REGION") == overlay.name
    (configmap,) = kind(rendered, "ConfigMap")
    assert configmap["metadata"]["name"] == f"guardproxy-policies{suffix}"
    assert volume(spec, "policies")["configMap"]["name"] == configmap["metadata"]["name"]
    for name in POLICY_FILES:
        assert configmap["data"][name] == (ROOT / "policies" / name).read_text(encoding="utf-8")
    namespaces = {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"}
    assert namespaces == {f"guardproxy-{overlay.name}"}


@needs_kustomize
def test_redis_url_names_a_rendered_service() -> None:
    rendered = render(K8S / "overlays" / "sg")
    spec = pod_spec(rendered, "adult-model-sg")
    host = env_value(sidecar(spec), "GUARDPROXY_STATE").split("//")[1].split(":")[0]
    assert host in {s["metadata"]["name"] for s in kind(rendered, "Service")}
    assert kind(rendered, "Deployment")[0]["spec"]["replicas"] == 3


@needs_kustomize
def test_apply_k_alone_refuses_the_policies_outside_the_root() -> None:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / "overlays" / "th")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "not in or below" in done.stderr


@pytest.fixture(scope="module")
def dashboard() -> Doc:
    """The Grafana dashboard."""
    loaded: Doc = json.loads((K8S / "dashboards" / "guardproxy.json").read_text("utf-8"))
    return loaded


def exported_text() -> str:
    """The /metrics text of a Telemetry whose every instrument was fed once."""
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:8081")
    rates = dict.fromkeys(GROUP_RATES, 0.5)
    region = {"groups": {"Female": rates}, "disparities": dict.fromkeys(REGION_VALUES, 0.9)}
    telemetry.watch_fairness(lambda: {"sg": region})
    telemetry.record_drift("sg", "score", "psi", 0.12)
    telemetry.breaker_state("sg", "closed")
    telemetry.breaker_transition(Transition("sg", "closed", "open", "tripped", {}, 0.0))
    telemetry.policy_reload("applied")
    telemetry.count_feedback("sg", "Female", "tp")
    for total in TOTALS:
        telemetry.watch_total(total, lambda: 1)
    instruments = telemetry.instruments  # no route: the request matched no guarded pattern
    instruments.server.record_key(("POST", 200, ""), 0.01)
    instruments.client.record_key(("POST", 200), 0.01)
    instruments.overhead.record_key(("POST", 200, ""), 0.0001)
    instruments.decisions.add_key(("sg", "Female", "positive"))
    text = telemetry.metrics_text().decode()
    asyncio.run(telemetry.shutdown())
    return text


@pytest.fixture(scope="module")
def exported() -> tuple[set[str], set[str]]:
    """Series names and label names guardproxy's Prometheus exporter writes."""
    series = [line for line in exported_text().splitlines() if line[:1].isalpha()]
    names = {line.split("{")[0].split(" ")[0] for line in series}
    labels = {label for line in series for label in re.findall(r"[{,](\w+)=", line)}
    return names, labels


def queries(dashboard: Doc) -> list[str]:
    """Every PromQL expression in the dashboard, variables included."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (labels and grouping removed first)."""
    bare = re.sub(r"\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)", "", expr)
    return set(re.findall(r"\b((?:guardproxy|http)_[a-z_]+)\b", bare))


def label_names(expr: str) -> set[str]:
    """The label names a PromQL expression filters or groups on."""
    groups = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
    grouped = {n.strip() for g in groups for n in g.split(",") if n.strip()}
    selected = set(re.findall(r"[{,]\s*(\w+)\s*=~?", expr))
    return grouped | selected


def test_dashboard_reads_only_metrics_guardproxy_exports(
    dashboard: Doc, exported: tuple[set[str], set[str]]
) -> None:
    used = set().union(*(metric_names(e) for e in queries(dashboard)))
    assert used - exported[0] == set(), f"not exported: {sorted(used - exported[0])}"
    for needed in (
        "http_server_request_duration_seconds_bucket",
        "guardproxy_overhead_seconds_bucket",
        "guardproxy_decisions_total",
        "guardproxy_fairness_selection_rate",
        "guardproxy_fairness_true_positive_rate",
        "guardproxy_fairness_demographic_parity_ratio",
        "guardproxy_drift",
        "guardproxy_breaker_state",
        "guardproxy_samples_dropped_total",
    ):
        assert needed in used, f"no panel shows {needed}"


def test_dashboard_groups_by_labels_guardproxy_exports(
    dashboard: Doc, exported: tuple[set[str], set[str]]
) -> None:
    used = set().union(*(label_names(e) for e in queries(dashboard)))
    # `namespace` is added by the scrape config (k8s/README.md), `le` by histograms.
    assert used - exported[1] - {"namespace"} == set()
    assert {"region", "group", "outcome", "signal", "le"} <= used


def test_dashboard_panels_are_well_formed(dashboard: Doc) -> None:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["type"] == "prometheus", panel["title"]
        assert all(t["expr"].count("(") == t["expr"].count(")") for t in panel["targets"])


def test_dashboard_marks_the_four_fifths_line(dashboard: Doc) -> None:
    (panel,) = [
        p
        for p in dashboard["panels"]
        if any("demographic_parity_ratio" in t["expr"] for t in p.get("targets", []))
    ]
    defaults = panel["fieldConfig"]["defaults"]
    assert 0.8 in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert defaults["custom"]["thresholdsStyle"]["mode"].startswith("line")


def test_dockerfile_runs_serve_as_the_pod_user() -> None:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    assert next(x for x in lines if x.startswith("FROM ")) == "FROM python:3.11-slim"
    assert "USER 65532:65532" in lines
    assert 'ENTRYPOINT ["guardproxy", "serve"]' in lines
