"""deploy/k8s: every manifest validates against the Kubernetes schemas (offline), the KEDA
ScaledObject has the shape KEDA expects, pods are locked down, and the NetworkPolicies allow
exactly the traffic the design names."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from clinvault_shared.queue import ARQ_QUEUE_NAME

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest release the manifests target (native preStop sleep is on by default from 1.30)
# and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def load_documents() -> list[dict[str, Any]]:
    docs = []
    for name in kustomization()["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


DOCS = load_documents()


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def doc_id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection (the schemas must ship with the package)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_kustomization_lists_every_manifest_file() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "doc", [d for d in DOCS if (d["apiVersion"], d["kind"]) not in CRD_KINDS], ids=doc_id
)
def test_manifest_validates_against_kubernetes_schema(
    doc: dict[str, Any], version: str, no_network: None
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelt_field(no_network: None) -> None:
    doc = yaml.safe_load(yaml.safe_dump(named("Deployment", "worker")))
    doc["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


def test_every_kind_the_issue_asks_for_is_there() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    for expected in [
        ("Deployment", "ingest"),
        ("Deployment", "consent"),
        ("Deployment", "worker"),
        ("Service", "ingest"),
        ("Service", "consent"),
        ("Job", "migrate"),
        ("ConfigMap", "clinvault-config"),
        ("Secret", "clinvault-secrets"),
        ("HorizontalPodAutoscaler", "ingest"),
        ("HorizontalPodAutoscaler", "consent"),
        ("ScaledObject", "worker"),
        ("PodDisruptionBudget", "ingest"),
        ("PodDisruptionBudget", "consent"),
        ("PodDisruptionBudget", "worker"),
    ]:
        assert expected in kinds
    assert {d["metadata"].get("namespace") for d in DOCS if d["kind"] != "Namespace"} == {
        "clinvault"
    }


# ------------------------------------------------------------------ KEDA (a CRD: checked here)

SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            # KEDA trigger metadata is a map of strings (numbers quoted).
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}

# Parameters KEDA's `redis` scaler knows (docs: scalers/redis-lists).
REDIS_TRIGGER_KEYS = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "username",
    "usernameFromEnv",
    "password",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}


def test_scaled_object_has_the_shape_keda_expects() -> None:
    scaled = named("ScaledObject", "worker")
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_the_structural_schema_can_fail() -> None:
    scaled = yaml.safe_load(yaml.safe_dump(named("ScaledObject", "worker")))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 4  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


def test_workers_scale_on_the_arq_queue() -> None:
    spec = named("ScaledObject", "worker")["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert (
        named("Deployment", target["name"])["metadata"]["labels"]["app.kubernetes.io/component"]
        == "worker"
    )
    # KEDA owns the replica count: the Deployment must not fight it.
    assert "replicas" not in named("Deployment", "worker")["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert set(metadata) <= REDIS_TRIGGER_KEYS
    assert metadata["listName"] == ARQ_QUEUE_NAME
    assert int(metadata["listLength"]) > 0
    # addressFromEnv names a variable the worker container really has.
    config = named("ConfigMap", "clinvault-config")["data"]
    assert ":" in config[metadata["addressFromEnv"]]


# ------------------------------------------------------------------ pods

WORKLOADS = [d for d in DOCS if d["kind"] in ("Deployment", "Job")]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def quantity(value: str | int) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("doc", WORKLOADS, ids=doc_id)
def test_pods_are_locked_down(doc: dict[str, Any]) -> None:
    spec = pod_spec(doc)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    assert writable == {v["name"] for v in spec.get("volumes", [])}, "only scratch volumes"
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["runAsNonRoot"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["image"] == "clinvault"  # one image, retagged by kustomize
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert quantity(resources["requests"][kind]) <= quantity(resources["limits"][kind])


def test_roles_run_the_right_command() -> None:
    def args(kind: str, name: str) -> list[str]:
        result: list[str] = pod_spec(named(kind, name))["containers"][0]["args"]
        return result

    assert args("Deployment", "ingest")[:2] == ["serve", "ingest"]
    assert args("Deployment", "consent")[:2] == ["serve", "consent"]
    assert args("Deployment", "worker") == ["worker"]
    assert args("Job", "migrate") == ["db", "upgrade"]


def test_migration_job_sees_only_the_database_secret() -> None:
    container = pod_spec(named("Job", "migrate"))["containers"][0]
    refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert refs == ["clinvault-migrate"]
    assert set(named("Secret", "clinvault-migrate")["stringData"]) == {"CLINVAULT_DATABASE_URL"}


def test_master_key_comes_from_the_secret_not_the_configmap() -> None:
    assert "CLINVAULT_MASTER_KEY" in named("Secret", "clinvault-secrets")["stringData"]
    config = named("ConfigMap", "clinvault-config")["data"]
    assert not any("KEY" in k and "MAX" not in k for k in config), config


def test_services_hpas_and_pdbs_point_at_real_pods() -> None:
    def labels(name: str) -> dict[str, str]:
        result: dict[str, str] = named("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        return result

    for name in ("ingest", "consent"):
        selector = named("Service", name)["spec"]["selector"]
        assert selector.items() <= labels(name).items()
        hpa = named("HorizontalPodAutoscaler", name)["spec"]
        assert hpa["scaleTargetRef"]["name"] == name
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    for pdb in of_kind("PodDisruptionBudget"):
        name = pdb["metadata"]["name"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels(name).items()


# ------------------------------------------------------------------ NetworkPolicies

COMPONENTS = ("ingest", "consent", "worker", "migrate")
STORES = {"postgres": 5432, "redis": 6379, "s3": 8333}
POLICIES = of_kind("NetworkPolicy")


def pod_labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "clinvault", "app.kubernetes.io/component": component}


def store_labels(store: str) -> dict[str, str]:
    return {"clinvault.io/store": store}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


Peer = dict[str, Any]  # {"labels": {...}, "namespace": "clinvault"} or {"external": True}


def peer_matches(rule_peers: list[dict[str, Any]] | None, peer: Peer) -> bool:
    if rule_peers is None:  # no from/to: every peer
        return True
    for entry in rule_peers:
        if peer.get("external"):
            if "ipBlock" in entry:
                return True
            continue
        if "ipBlock" in entry:
            continue
        ns_ok = (
            "namespaceSelector" in entry
            and selects(entry["namespaceSelector"], peer.get("namespace_labels", {}))
        ) or ("namespaceSelector" not in entry and peer.get("namespace") == "clinvault")
        pod_ok = "podSelector" not in entry or selects(entry["podSelector"], peer["labels"])
        if ns_ok and pod_ok:
            return True
    return False


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports
    )


def allowed(
    direction: str, pod: dict[str, str], peer: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """Kubernetes semantics: isolated in a direction if any policy of that type selects the pod;
    then allowed only if some rule of such a policy admits the peer and port."""
    key, peers_key, ptype = {
        "ingress": ("ingress", "from", "Ingress"),
        "egress": ("egress", "to", "Egress"),
    }[direction]
    relevant = [
        p
        for p in POLICIES
        if ptype in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod)
    ]
    if not relevant:
        return True
    for policy in relevant:
        for rule in policy["spec"].get(key, []):
            if peer_matches(rule.get(peers_key), peer) and port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def internal(labels: dict[str, str]) -> Peer:
    return {
        "labels": labels,
        "namespace": "clinvault",
        "namespace_labels": {"kubernetes.io/metadata.name": "clinvault"},
    }


EXTERNAL: Peer = {"external": True}
DNS: Peer = {
    "labels": {"k8s-app": "kube-dns"},
    "namespace": "kube-system",
    "namespace_labels": {"kubernetes.io/metadata.name": "kube-system"},
}


def test_default_deny_covers_every_pod() -> None:
    deny = named("NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny


@pytest.mark.parametrize("component", COMPONENTS)
def test_only_the_apis_are_reachable_from_outside(component: str) -> None:
    expected = component in ("ingest", "consent")
    assert allowed("ingress", pod_labels(component), EXTERNAL, 8000) is expected
    assert not allowed("ingress", pod_labels(component), EXTERNAL, 5432)


def test_workers_reach_only_redis_postgres_and_s3() -> None:
    worker = pod_labels("worker")
    for store, port in STORES.items():
        assert allowed("egress", worker, internal(store_labels(store)), port), store
        assert not allowed("egress", worker, internal(store_labels(store)), port + 1), store
    assert allowed("egress", worker, DNS, 53, "UDP")
    for component in ("ingest", "consent"):
        assert not allowed("egress", worker, internal(pod_labels(component)), 8000)
    assert not allowed("egress", worker, EXTERNAL, 443)
    assert not allowed("egress", worker, EXTERNAL, 80)


def test_workers_accept_only_metrics_scrapes_from_monitoring() -> None:
    worker = pod_labels("worker")
    monitoring: Peer = {
        "labels": {"app": "prometheus"},
        "namespace": "monitoring",
        "namespace_labels": {"kubernetes.io/metadata.name": "monitoring"},
    }
    assert allowed("ingress", worker, monitoring, 9100)
    assert not allowed("ingress", worker, internal(pod_labels("ingest")), 9100)
    assert not allowed("ingress", worker, EXTERNAL, 9100)


def test_apis_reach_stores_and_ingest_reaches_consent() -> None:
    for component in ("ingest", "consent"):
        for store, port in STORES.items():
            assert allowed("egress", pod_labels(component), internal(store_labels(store)), port)
        assert not allowed("egress", pod_labels(component), EXTERNAL, 443)
    assert allowed("egress", pod_labels("ingest"), internal(pod_labels("consent")), 8000)
    assert not allowed("egress", pod_labels("ingest"), internal(pod_labels("worker")), 9100)


def test_migration_reaches_only_postgres() -> None:
    migrate = pod_labels("migrate")
    assert allowed("egress", migrate, internal(store_labels("postgres")), 5432)
    assert not allowed("egress", migrate, internal(store_labels("redis")), 6379)
    assert not allowed("egress", migrate, internal(store_labels("s3")), 8333)
    assert not allowed("ingress", migrate, EXTERNAL, 8000)
