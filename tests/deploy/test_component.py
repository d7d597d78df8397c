"""The Component adds guardproxy to the Deployments an overlay names, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .manifests import (
    COMPONENT,
    K8S,
    SIDECAR_LABEL,
    Doc,
    all_containers,
    docs,
    env,
    env_value,
    guarded,
    kustomization,
    mount,
    named,
    needs_kustomize,
    of_kind,
    one,
    pod_spec,
    port_number,
    render,
    sidecar,
    volume,
)

EXAMPLES = K8S / "examples"
# Each example: its directory, the team's own manifest, the guarded Deployment's name.
TEAM_MANIFESTS = {"demo": "model.yaml", "mlserver": "mlserver.yaml"}
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}

pytestmark = needs_kustomize


def rendered_sidecars(example: str) -> list[tuple[Doc, Doc]]:
    """(Deployment, its rendered pod spec) for every guarded Deployment of an example."""
    return [(d, pod_spec(d)) for d in guarded(render(EXAMPLES / example))]


@pytest.fixture(scope="module", params=sorted(TEAM_MANIFESTS))
def example(request: pytest.FixtureRequest) -> str:
    """The name of one example overlay."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def spec(example: str) -> Doc:
    """The pod spec of the example's one guarded Deployment."""
    ((_, found),) = rendered_sidecars(example)
    return found


def test_the_component_is_a_component_patching_by_label() -> None:
    component = kustomization(COMPONENT)
    assert component["kind"] == "Component"
    selectors = {p["target"]["kind"]: p["target"]["labelSelector"] for p in component["patches"]}
    assert selectors == dict.fromkeys(("Deployment", "Service"), "=".join(SIDECAR_LABEL))


def test_guardproxy_is_a_native_sidecar(spec: Doc) -> None:
    assert sidecar(spec)["restartPolicy"] == "Always"
    assert "guardproxy" not in {c["name"] for c in spec["containers"]}


@pytest.mark.parametrize(
    ("probe", "path"),
    [("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")],
)
def test_probes_hit_the_admin_port(spec: Doc, probe: str, path: str) -> None:
    container = sidecar(spec)
    http = container[probe]["httpGet"]
    assert http["path"] == path
    admin = port_number(container, http["port"])
    assert env_value(container, "GUARDPROXY_ADMIN") == f"0.0.0.0:{admin}"
    assert env_value(container, "GUARDPROXY_LISTEN") != f"0.0.0.0:{admin}"


def test_the_sidecar_is_restricted_on_its_own(spec: Doc) -> None:
    context = sidecar(spec)["securityContext"]
    for key, value in RESTRICTED.items():
        assert context[key] is value, key
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 65532
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"


def test_writable_paths_are_empty_dirs(spec: Doc) -> None:
    container = sidecar(spec)
    for path in ("/tmp", "/var/lib/guardproxy"):
        assert "emptyDir" in volume(spec, mount(container, path)["name"])
    assert env_value(container, "GUARDPROXY_SAMPLES").startswith("/var/lib/guardproxy/")


def test_policies_are_a_configmap_directory_without_subpath(spec: Doc) -> None:
    container = sidecar(spec)
    policies = mount(container, "/etc/guardproxy/policies")
    assert volume(spec, policies["name"])["configMap"]["name"] == "guardproxy-policies"
    assert env_value(container, "GUARDPROXY_POLICIES") == policies["mountPath"]
    for c in all_containers(spec):
        for m in c.get("volumeMounts", []):
            assert "subPath" not in m and "subPathExpr" not in m, (c["name"], m)


def test_tokens_are_files_from_a_secret(spec: Doc) -> None:
    container = sidecar(spec)
    variables = env(container)
    for token in ("GUARDPROXY_ADMIN_TOKEN", "GUARDPROXY_FEEDBACK_TOKEN"):
        assert token not in variables, f"{token} must come from a file, not the pod spec"
        path = Path(variables[f"{token}_FILE"]["value"])
        tokens = mount(container, str(path.parent))
        secret = volume(spec, tokens["name"])["secret"]
        assert secret["secretName"] == "guardproxy-tokens"
        assert path.name in {item["path"] for item in secret["items"]}
        assert tokens["readOnly"] is True
    users = [c["name"] for c in all_containers(spec) if any(
        m["name"] == tokens["name"] for m in c.get("volumeMounts", [])
    )]  # fmt: skip
    assert users == ["guardproxy"], "only guardproxy may read the tokens"


TRUST_OFF = {"GUARDPROXY_TRUST_REGION_HEADER": "", "GUARDPROXY_TRUST_FORWARDED": "false"}


def test_client_headers_are_not_trusted_in_the_examples(spec: Doc) -> None:
    # The pod's region decides, and forwarding headers are this hop's, until an overlay
    # turns a trust setting on (with a comment saying why, checked below).
    variables = env(sidecar(spec))
    trust = {n: v.get("value") for n, v in variables.items() if n.startswith("GUARDPROXY_TRUST")}
    assert trust == TRUST_OFF
    assert "GUARDPROXY_REGION_HEADER" not in variables  # the flag that trusted X-Region is gone


def test_every_trust_setting_in_the_manifests_says_when_to_set_it() -> None:
    # Trusting a header is right only behind a gateway that sets it: whoever sets one must
    # write down why, in a comment right above it.
    found = 0
    for path in sorted(K8S.rglob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if re.search(r"\bGUARDPROXY_TRUST_\w+", line) and not line.lstrip().startswith("#"):
                found += 1
                above = lines[number - 1].strip() if number else ""
                assert above.startswith("#"), f"{path}:{number + 1}: no comment says why"
    assert found >= len(TRUST_OFF)


def test_the_sidecar_drains_within_the_grace_period(spec: Doc) -> None:
    drain = float(env_value(sidecar(spec), "GUARDPROXY_DRAIN_TIMEOUT"))
    sleeps = [
        c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        for c in all_containers(spec)
    ]
    assert spec.get("terminationGracePeriodSeconds", 30) >= drain + sum(sleeps) + 10


def test_otel_resource_attributes_come_from_the_downward_api(spec: Doc) -> None:
    container = sidecar(spec)
    variables = list(env(container))
    resource = env_value(container, "OTEL_RESOURCE_ATTRIBUTES")
    assert "k8s.pod.name=$(POD_NAME)" in resource
    for name in re.findall(r"\$\((\w+)\)", resource):
        # The kubelet only expands variables defined earlier in the list.
        assert variables.index(name) < variables.index("OTEL_RESOURCE_ATTRIBUTES")
        assert "fieldRef" in env(container)[name]["valueFrom"]
    assert env_value(container, "OTEL_EXPORTER_OTLP_PROTOCOL") == "http/protobuf"


def team_deployment(example: str) -> Doc:
    """The example's Deployment as its team wrote it, before kustomize."""
    (deployment,) = of_kind(docs(EXAMPLES / example / TEAM_MANIFESTS[example]), "Deployment")
    return deployment


def test_the_model_containers_stay_exactly_as_written(example: str, spec: Doc) -> None:
    written = pod_spec(team_deployment(example))
    for key in set(written) | set(spec):
        if key not in ("initContainers", "volumes"):
            assert spec.get(key) == written.get(key), key  # containers, securityContext, ...
    assert written.get("initContainers", []) == spec["initContainers"][:-1]
    theirs = {v["name"] for v in written.get("volumes", [])}
    assert theirs <= {v["name"] for v in spec["volumes"]}


def test_the_deployment_keeps_its_selector(example: str) -> None:
    written = team_deployment(example)
    (deployment,) = guarded(render(EXAMPLES / example))
    assert deployment["spec"]["selector"] == written["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert written["spec"]["template"]["metadata"]["labels"].items() <= labels.items()


def test_the_sidecar_names_collide_with_nothing_of_the_team(example: str, spec: Doc) -> None:
    written = pod_spec(team_deployment(example))
    ports = [p for c in all_containers(spec) for p in c.get("ports", [])]
    assert len({p["name"] for p in ports}) == len(ports)
    assert len({p["containerPort"] for p in ports}) == len(ports)
    assert len({v["name"] for v in spec["volumes"]}) == len(spec["volumes"])
    upstream = env_value(sidecar(spec), "GUARDPROXY_UPSTREAM")
    model_ports = {p["containerPort"] for c in written["containers"] for p in c.get("ports", [])}
    assert upstream.startswith("http://127.0.0.1:")
    assert int(upstream.rsplit(":", 1)[1]) in model_ports


def test_the_service_reaches_the_model_only_through_guardproxy(example: str) -> None:
    rendered = render(EXAMPLES / example)
    (deployment,) = guarded(rendered)
    spec = pod_spec(deployment)
    (service,) = of_kind(rendered, "Service")
    written = one(of_kind(docs(EXAMPLES / example / TEAM_MANIFESTS[example]), "Service"))
    assert [p["port"] for p in service["spec"]["ports"]] == [
        p["port"] for p in written["spec"]["ports"]
    ], "clients keep the port they used"
    first, *others = service["spec"]["ports"]
    assert first["targetPort"] == "guard-http"
    listen = env_value(sidecar(spec), "GUARDPROXY_LISTEN")
    assert listen == f"0.0.0.0:{port_number(sidecar(spec), 'guard-http')}"
    grpc = "GUARDPROXY_GRPC_LISTEN" in env(sidecar(spec))
    assert [p["targetPort"] for p in others] == (["guard-grpc"] if grpc else [])


def test_the_network_policy_admits_only_guardproxy_ports(example: str) -> None:
    rendered = render(EXAMPLES / example)
    (deployment,) = guarded(rendered)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in of_kind(rendered, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    (policy,) = policies
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    grpc = (
        {"guard-grpc"} if "GUARDPROXY_GRPC_LISTEN" in env(sidecar(pod_spec(deployment))) else set()
    )
    assert ports == {"guard-http", "guard-admin"} | grpc
    data = one(policy["spec"]["ingress"], ports=[{"port": "guard-http", "protocol": "TCP"}, *[
        {"port": name, "protocol": "TCP"} for name in grpc
    ]])  # fmt: skip
    assert "from" not in data, "clients reach the data ports from anywhere"
    admin = one(policy["spec"]["ingress"], ports=[{"port": "guard-admin", "protocol": "TCP"}])
    assert admin["from"], "the admin port is open to monitoring only"


def test_mlserver_example_serves_two_models_behind_one_sidecar() -> None:
    rendered = render(EXAMPLES / "mlserver")
    (deployment,) = guarded(rendered)
    settings = volume(pod_spec(deployment), "model-settings")["configMap"]
    configmap = named(rendered, "ConfigMap", settings["name"])
    models = {item["path"].split("/")[0] for item in settings["items"]}
    assert len(models) == 2 and len(configmap["data"]) == 2
    assert env_value(sidecar(pod_spec(deployment)), "GUARDPROXY_UPSTREAM").endswith(":8080")


def test_the_grpc_port_is_opt_in_and_reaches_the_model_grpc_port() -> None:
    demo = sidecar(pod_spec(one(guarded(render(EXAMPLES / "demo")))))
    assert not {n for n in env(demo) if n.startswith("GUARDPROXY_GRPC")}
    assert "guard-grpc" not in {p["name"] for p in demo["ports"]}
    (deployment,) = guarded(render(EXAMPLES / "mlserver"))
    spec = pod_spec(deployment)
    container = sidecar(spec)
    listen = env_value(container, "GUARDPROXY_GRPC_LISTEN")
    assert listen == f"0.0.0.0:{port_number(container, 'guard-grpc')}"
    upstream = env_value(container, "GUARDPROXY_GRPC_UPSTREAM")
    assert upstream.startswith("127.0.0.1:") and "/" not in upstream  # HOST:PORT, no scheme
    grpc_ports = {
        p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])
        if p["name"] == "grpc"
    }  # fmt: skip
    assert grpc_ports == {int(upstream.rsplit(":", 1)[1])}


def test_only_the_named_deployments_get_the_sidecar() -> None:
    rendered = render(K8S / "overlays" / "sg")
    deployments = {d["metadata"]["name"]: d for d in of_kind(rendered, "Deployment")}
    assert [d["metadata"]["name"] for d in guarded(rendered)] == ["adult-model-sg"]
    redis = pod_spec(deployments["redis-sg"])
    assert "initContainers" not in redis
    key, value = SIDECAR_LABEL
    assert deployments["redis-sg"]["spec"]["template"]["metadata"]["labels"].get(key) != value
