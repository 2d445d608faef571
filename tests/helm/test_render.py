"""What the chart renders, object by object: the wiring that makes the
nodes a cluster (names, DNS, env), and every toggle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm import render
from tests.helm.render import NAMESPACE, Manifest, find, find_all, node_command, node_container
from tests.helm.scenarios import EXTERNAL_ETCD, SCENARIOS

FULL = "gm-gearmesh"  # release "gm" + chart name
PEERS = f"{FULL}-peers"
ETCD = f"{FULL}-etcd"
DOMAIN = "cluster.local"
VALUES = yaml.safe_load((render.CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def defaults(helm_bin: Path) -> list[Manifest]:
    return render.render()


def pod_spec(obj: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]
    if "template" in spec:
        spec = spec["template"]["spec"]
    return spec


def env_list(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(sts: Manifest) -> dict[str, str]:
    labels: dict[str, str] = sts["spec"]["template"]["metadata"]["labels"]
    return labels


# ---------------------------------------------------------------- defaults


@pytest.mark.timeout(60)
def test_default_objects(defaults: list[Manifest]) -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in defaults)
    assert kinds == sorted(
        [
            ("ConfigMap", f"{FULL}-test"),
            ("Pod", f"{FULL}-test"),
            ("PodDisruptionBudget", FULL),
            ("PodDisruptionBudget", ETCD),
            ("Service", FULL),
            ("Service", PEERS),
            ("Service", ETCD),
            ("ServiceAccount", FULL),
            ("StatefulSet", FULL),
            ("StatefulSet", ETCD),
        ]
    )
    for m in defaults:
        assert m["metadata"]["namespace"] == NAMESPACE, m["metadata"]["name"]


@pytest.mark.timeout(60)
def test_node_statefulset(defaults: list[Manifest]) -> None:
    sts = find(defaults, "StatefulSet", FULL)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == PEERS
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert selects(sts["spec"]["selector"]["matchLabels"], pod_labels(sts))
    spec = pod_spec(sts)
    assert spec["serviceAccountName"] == FULL
    assert spec["automountServiceAccountToken"] is False
    # Service links would inject GEARMESH_PORT=tcp://... into the node.
    assert spec["enableServiceLinks"] is False


@pytest.mark.timeout(60)
def test_node_ports_and_probes(defaults: list[Manifest]) -> None:
    c = node_container(defaults)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"gearman": 4730, "peer": 4731, "http": 4732}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["resources"]["requests"]["cpu"]
    assert c["resources"]["limits"]["memory"]


@pytest.mark.timeout(60)
def test_node_env_identity_and_addresses(defaults: list[Manifest]) -> None:
    for ordinal in range(3):
        pod = f"{FULL}-{ordinal}"
        argv, env = node_command(defaults, pod_name=pod)
        assert argv == ["gearmesh", "serve"]
        assert env["GEARMESH_NODE_ID"] == pod
        # The advertised name is the pod's record under the headless Service.
        assert env["GEARMESH_ADVERTISE"] == f"{pod}.{PEERS}.{NAMESPACE}.svc.{DOMAIN}"
        assert env["GEARMESH_PORT"] == "4730"
        assert env["GEARMESH_PEER_PORT"] == "4731"
        assert env["GEARMESH_HTTP_PORT"] == "4732"
        assert env["GEARMESH_GRACE"] == "30"
        assert env["GEARMESH_LOG_FILE"] == "stderr"
    # Identity comes from the downward API, never a literal.
    raw = env_list(node_container(defaults))
    assert raw["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert raw["GEARMESH_NODE_ID"]["value"] == "$(POD_NAME)"


@pytest.mark.timeout(60)
def test_env_references_only_earlier_variables(defaults: list[Manifest]) -> None:
    # The kubelet only expands $(VAR) for variables defined earlier in the
    # list; a later one would reach the node as the literal text.
    _, env = node_command(defaults)
    assert not [k for k, v in env.items() if "$(" in v]


@pytest.mark.timeout(60)
def test_data_dir_is_the_persistent_volume(defaults: list[Manifest]) -> None:
    sts = find(defaults, "StatefulSet", FULL)
    c = node_container(defaults)
    _, env = node_command(defaults)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == env["GEARMESH_DATA_DIR"] == VALUES["dataDir"]
    claims = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
    assert claims["data"]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claims["data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    assert "data" not in volumes  # it comes from the claim template
    # /tmp is the only other writable place on a read-only root.
    assert mounts["tmp"] == "/tmp"
    assert "emptyDir" in volumes["tmp"]


@pytest.mark.timeout(60)
def test_security_context(defaults: list[Manifest]) -> None:
    for sts in find_all(defaults, "StatefulSet"):
        spec = pod_spec(sts)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        # fsGroup makes the freshly provisioned volume writable for the user.
        assert spec["securityContext"]["fsGroup"] != 0
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]


@pytest.mark.timeout(60)
def test_drain_fits_in_the_grace_period(defaults: list[Manifest]) -> None:
    for values in ({}, {"node": {"grace": 300}, "preStopDelaySeconds": 10}):
        docs = render.render(values)
        sts = find(docs, "StatefulSet", FULL)
        c = node_container(docs)
        _, env = node_command(docs)
        sleep = c["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        # The kubelet's clock starts with preStop; the node then needs
        # GEARMESH_GRACE for running jobs plus time to hand over.
        budget = pod_spec(sts)["terminationGracePeriodSeconds"]
        assert budget >= int(sleep[1]) + int(env["GEARMESH_GRACE"]) + 10
    no_prestop = render.render({"preStopDelaySeconds": 0})
    assert "lifecycle" not in node_container(no_prestop)


@pytest.mark.timeout(60)
def test_services(defaults: list[Manifest]) -> None:
    sts = find(defaults, "StatefulSet", FULL)
    client = find(defaults, "Service", FULL)
    assert client["spec"]["type"] == "ClusterIP"
    assert client["spec"]["ports"] == [
        {"name": "gearman", "port": 4730, "targetPort": "gearman", "protocol": "TCP"}
    ]
    assert selects(client["spec"]["selector"], pod_labels(sts))

    peers = find(defaults, "Service", PEERS)
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert selects(peers["spec"]["selector"], pod_labels(sts))
    assert {p["name"]: p["port"] for p in peers["spec"]["ports"]} == {
        "gearman": 4730,
        "peer": 4731,
        "http": 4732,
    }
    # Every targetPort names a container port.
    names = {p["name"] for p in node_container(defaults)["ports"]}
    for svc in (client, peers):
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names


@pytest.mark.timeout(60)
def test_pod_disruption_budget(defaults: list[Manifest]) -> None:
    pdb = find(defaults, "PodDisruptionBudget", FULL)
    assert pdb["spec"]["maxUnavailable"] == 1
    node_labels = pod_labels(find(defaults, "StatefulSet", FULL))
    assert selects(pdb["spec"]["selector"]["matchLabels"], node_labels)
    docs = render.render({"podDisruptionBudget": {"minAvailable": 2}})
    pdb = find(docs, "PodDisruptionBudget", FULL)
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]
    docs = render.render({"podDisruptionBudget": {"enabled": False}})
    assert [p["metadata"]["name"] for p in find_all(docs, "PodDisruptionBudget")] == [ETCD]


@pytest.mark.timeout(60)
def test_anti_affinity(defaults: list[Manifest]) -> None:
    # Hard by default: a job's two copies (node.replicas) never share a machine.
    aff = pod_spec(find(defaults, "StatefulSet", FULL))["affinity"]["podAntiAffinity"]
    term = aff["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "node"

    soft = render.render({"podAntiAffinity": "soft"})
    aff = pod_spec(find(soft, "StatefulSet", FULL))["affinity"]["podAntiAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in aff

    none = render.render({"podAntiAffinity": "none"})
    assert "affinity" not in pod_spec(find(none, "StatefulSet", FULL))

    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["jobs"]}]}]}}}
    own = render.render({"affinity": custom})
    assert pod_spec(find(own, "StatefulSet", FULL))["affinity"] == custom


# ------------------------------------------------------------ bundled etcd


@pytest.mark.timeout(60)
@pytest.mark.parametrize("members", [3, 5])
def test_bundled_etcd_wiring(helm_bin: Path, members: int) -> None:
    docs = render.render({"etcd": {"replicaCount": members}})
    sts = find(docs, "StatefulSet", ETCD)
    assert sts["spec"]["replicas"] == members
    assert sts["spec"]["serviceName"] == ETCD
    # All members must start together to form the first quorum.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    svc = find(docs, "Service", ETCD)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert selects(svc["spec"]["selector"], pod_labels(sts))
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"client": 2379, "peer": 2380}

    container = pod_spec(sts)["containers"][0]
    assert container["image"].split(":")[0] in {
        "gcr.io/etcd-development/etcd",
        "quay.io/coreos/etcd",
    }
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}

    # What each member sees, as the kubelet would expand it.
    def member_env(i: int) -> dict[str, str]:
        fields = {"metadata.name": f"{ETCD}-{i}", "metadata.namespace": NAMESPACE}
        return render.container_env(container, fields)

    initial = dict(
        entry.split("=", 1) for entry in member_env(0)["ETCD_INITIAL_CLUSTER"].split(",")
    )
    assert sorted(initial) == sorted(f"{ETCD}-{i}" for i in range(members))
    _, node_env = node_command(docs)
    node_endpoints = node_env["GEARMESH_ETCD"].split(",")
    assert len(node_endpoints) == members
    for i in range(members):
        env = member_env(i)
        host = f"{ETCD}-{i}.{ETCD}.{NAMESPACE}.svc.{DOMAIN}"
        assert env["ETCD_NAME"] == f"{ETCD}-{i}"
        # A member's own peer URL must be its entry in --initial-cluster, or
        # etcd refuses to bootstrap.
        assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == initial[env["ETCD_NAME"]]
        assert initial[env["ETCD_NAME"]] == f"http://{host}:2380"
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://{host}:2379"
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] in node_endpoints
        assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
        assert env["ETCD_DATA_DIR"].startswith(mounts["data"] + "/")
        assert env["ETCD_INITIAL_CLUSTER"] == member_env(0)["ETCD_INITIAL_CLUSTER"]
    assert node_env["GEARMESH_ETCD_PREFIX"] == f"/gearmesh/{NAMESPACE}/{FULL}"
    # Probes on the metrics listener: the official image has no shell for
    # exec probes.
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
        assert container[probe]["httpGet"]["path"].startswith("/health")
    assert "ETCD_LISTEN_METRICS_URLS" in member_env(0)
    pdb = find(docs, "PodDisruptionBudget", ETCD)
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.timeout(60)
def test_etcd_prefix_override(helm_bin: Path) -> None:
    _, env = node_command(render.render({"etcd": {"prefix": "/jobs/prod"}}))
    assert env["GEARMESH_ETCD_PREFIX"] == "/jobs/prod"


@pytest.mark.timeout(60)
def test_external_etcd(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["external-etcd"])
    assert not [m for m in docs if m["metadata"]["name"].startswith(ETCD)]
    _, env = node_command(docs)
    assert env["GEARMESH_ETCD"] == ",".join(EXTERNAL_ETCD)
    assert env["GEARMESH_ETCD_PREFIX"] == f"/gearmesh/{NAMESPACE}/{FULL}"


@pytest.mark.timeout(60)
def test_standalone_node(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["standalone"])
    assert find(docs, "StatefulSet", FULL)["spec"]["replicas"] == 1
    _, env = node_command(docs)
    assert "GEARMESH_ETCD" not in env
    assert "GEARMESH_ETCD_PREFIX" not in env
    assert "standalone" in render.render_notes(SCENARIOS["standalone"])


@pytest.mark.timeout(60)
def test_without_persistence(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["no-persistence"])
    for name in (FULL, ETCD):
        sts = find(docs, "StatefulSet", name)
        assert "volumeClaimTemplates" not in sts["spec"]
        volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
        assert "emptyDir" in volumes["data"]


# --------------------------------------------------------------- toggles


@pytest.mark.timeout(60)
def test_hpa_on_cpu(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["hpa-cpu"])
    hpa = find(docs, "HorizontalPodAutoscaler", FULL)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": FULL,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    # Removing nodes is a handover: at most one at a time.
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    # The autoscaler owns the count; an upgrade must not reset it.
    assert "replicas" not in find(docs, "StatefulSet", FULL)["spec"]


@pytest.mark.timeout(60)
def test_hpa_on_queued_jobs(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["hpa-queued-jobs"])
    hpa = find(docs, "HorizontalPodAutoscaler", FULL)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "gearmesh_jobs_queued"},
                "target": {"type": "AverageValue", "averageValue": "50"},
            },
        }
    ]
    both = render.render(SCENARIOS["everything"])
    metrics = find(both, "HorizontalPodAutoscaler", FULL)["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]


@pytest.mark.timeout(60)
def test_service_monitor(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["monitors"])
    sm = find(docs, "ServiceMonitor", FULL)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    # It must pick exactly the headless Service, whose endpoints list every
    # node, ready or not.
    services = [
        s["metadata"]["name"]
        for s in find_all(docs, "Service")
        if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert services == [PEERS]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    peer_ports = {p["name"] for p in find(docs, "Service", PEERS)["spec"]["ports"]}
    assert endpoint["port"] in peer_ports
    assert endpoint["port"] == "http"
    assert endpoint["interval"] == "30s"


@pytest.mark.timeout(60)
def test_pod_monitor(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["monitors"])
    pm = find(docs, "PodMonitor", FULL)
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels(find(docs, "StatefulSet", FULL)))
    assert not selects(selector, pod_labels(find(docs, "StatefulSet", ETCD)))
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint == {
        "port": "http",
        "path": "/metrics",
        "interval": "15s",
        "scrapeTimeout": "10s",
    }
    assert endpoint["port"] in {p["name"] for p in node_container(docs)["ports"]}


@pytest.mark.timeout(60)
def test_grafana_dashboard_configmap(helm_bin: Path) -> None:
    import json
    import re

    assert not [d for d in render.render() if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].endswith("-grafana-dashboard")]
    docs = render.render(SCENARIOS["grafana-dashboard"])
    cm = find(docs, "ConfigMap", f"{FULL}-grafana-dashboard")
    meta = cm["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1"  # the sidecar's default label
    assert meta["namespace"] == "monitoring"
    assert meta["annotations"] == {"grafana_folder": "gearmesh"}
    dashboard = json.loads(cm["data"]["gearmesh.json"])
    assert dashboard["uid"] == "gearmesh-overview"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(gearmesh_[a-z_]+)", e)}
    # Every metric the dashboard charts is one a node exports.
    exported = set(re.findall(r"^(gearmesh_[a-z_]+)", _exported_metrics(), re.M))
    assert used and used <= exported, used - exported


def _exported_metrics() -> str:
    """A node's /metrics names, from its collector (no process needed)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from node.flowcontrol import FlowControl
    from node.http import NodeCollector
    from node.looplag import LagHistogram
    from node.stats import Counters, FunctionStat

    class Node:
        counters = Counters()
        flow = FlowControl()

        def loop_lag(self) -> LagHistogram:
            return LagHistogram()

        def peer_outboxes(self) -> dict[str, tuple[int, int]]:
            return {"n2": (0, 0)}

        def function_stats(self) -> list[FunctionStat]:
            return [FunctionStat(b"f", 1, 1, 1)]

        def connection_count(self) -> int:
            return 0

        def readiness(self) -> tuple[bool, str]:
            return True, "ready"

        def cluster_epoch(self) -> int:
            return 0

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(Node()))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def _rule_ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


@pytest.mark.timeout(60)
def test_network_policy(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["network-policy"])
    sts = find(docs, "StatefulSet", FULL)
    node_labels = pod_labels(sts)
    pol = find(docs, "NetworkPolicy", FULL)
    assert selects(pol["spec"]["podSelector"]["matchLabels"], node_labels)
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress = {next(iter(_rule_ports(r))): r for r in pol["spec"]["ingress"]}
    assert set(ingress) == {4730, 4731, 4732}
    # Peer gRPC only from other nodes.
    (peer_from,) = ingress[4731]["from"]
    assert selects(peer_from["podSelector"]["matchLabels"], node_labels)
    # Gearman only from labelled clients (the helm test pod is one).
    test_labels = find(docs, "Pod", f"{FULL}-test")["metadata"]["labels"]
    assert any(
        "podSelector" in f and selects(f["podSelector"]["matchLabels"], test_labels)
        for f in ingress[4730]["from"]
    )
    egress_ports = set().union(*(_rule_ports(r) for r in pol["spec"]["egress"]))
    assert {53, 4731, 2379} <= egress_ports
    etcd_rule = next(r for r in pol["spec"]["egress"] if _rule_ports(r) == {2379})
    etcd_labels = pod_labels(find(docs, "StatefulSet", ETCD))
    assert selects(etcd_rule["to"][0]["podSelector"]["matchLabels"], etcd_labels)

    etcd_pol = find(docs, "NetworkPolicy", ETCD)
    client_rule = next(r for r in etcd_pol["spec"]["ingress"] if _rule_ports(r) == {2379})
    assert any(selects(f["podSelector"]["matchLabels"], node_labels) for f in client_rule["from"])


@pytest.mark.timeout(60)
def test_network_policy_open_clients_and_external_etcd(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["network-policy-external-etcd"])
    pol = find(docs, "NetworkPolicy", FULL)
    gearman = next(r for r in pol["spec"]["ingress"] if _rule_ports(r) == {4730})
    assert "from" not in gearman  # allowExternal: anyone may connect
    assert any(_rule_ports(r) == {2379, 2381} and "to" not in r for r in pol["spec"]["egress"])
    assert len(find_all(docs, "NetworkPolicy")) == 1


@pytest.mark.timeout(60)
def test_everything_toggle(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["everything"])
    sts = find(docs, "StatefulSet", FULL)
    c = node_container(docs)
    assert c["image"] == "registry.example/gearmesh@sha256:" + "a" * 64
    assert pod_spec(sts)["imagePullSecrets"] == [{"name": "regcred"}]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Delete",
    }
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast"
    assert claim["resources"]["requests"]["storage"] == "20Gi"
    svc = find(docs, "Service", FULL)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    argv, env = node_command(docs)
    assert argv == ["gearmesh", "serve", "--verbose"]
    assert env["GEARMESH_THREADS"] == "8"
    assert env["GEARMESH_FSYNC"] == "always"
    assert env["GEARMESH_JOB_RETRIES"] == "3"
    assert env["GEARMESH_EXCEPTIONS"] == "true"
    assert len(env["GEARMESH_ETCD"].split(",")) == 5
    hpa = find(docs, "HorizontalPodAutoscaler", FULL)
    assert hpa["spec"]["minReplicas"] == 4
    # The test pod only relies on nodes that always exist (minReplicas).
    test_args = find(docs, "Pod", f"{FULL}-test")["spec"]["containers"][0]["args"]
    assert test_args[test_args.index("--worker") + 1].startswith(f"{FULL}-3.{PEERS}.")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_env_names_unique(name: str) -> None:
    # A repeated name silently takes the last value, and server-side apply
    # rejects it.
    docs = render.render(SCENARIOS[name])
    for sts in find_all(docs, "StatefulSet"):
        for c in pod_spec(sts)["containers"]:
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), names


@pytest.mark.timeout(60)
def test_custom_ports_follow_through(helm_bin: Path) -> None:
    ports = {"gearman": 5730, "peer": 5731, "http": 5732}
    docs = render.render({"ports": ports, "service": {"port": 7003}})
    _, env = node_command(docs)
    assert (env["GEARMESH_PORT"], env["GEARMESH_PEER_PORT"], env["GEARMESH_HTTP_PORT"]) == (
        "5730",
        "5731",
        "5732",
    )
    ports = {p["name"]: p["containerPort"] for p in node_container(docs)["ports"]}
    assert ports == {"gearman": 5730, "peer": 5731, "http": 5732}
    svc = find(docs, "Service", FULL)
    assert svc["spec"]["ports"][0]["port"] == 7003
    assert svc["spec"]["ports"][0]["targetPort"] == "gearman"


# ------------------------------------------------------------ helm test


@pytest.mark.timeout(60)
def test_helm_test_pod(defaults: list[Manifest]) -> None:
    pod = find(defaults, "Pod", f"{FULL}-test")
    cm = find(defaults, "ConfigMap", f"{FULL}-test")
    for obj in (pod, cm):
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # The script is created before the pod that mounts it.
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        pod["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    script = (render.CHART / "files" / "roundtrip.py").read_text()
    assert cm["data"]["roundtrip.py"] == script
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    # No extra image: the gearmesh image runs the test.
    assert c["image"] == node_container(defaults)["image"]
    mount = c["volumeMounts"][0]
    assert c["command"] == ["python", f"{mount['mountPath']}/roundtrip.py"]
    assert spec["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    args = c["args"]
    worker = args[args.index("--worker") + 1]
    clients = [args[i + 1] for i, a in enumerate(args) if a == "--client"]
    # Worker on the last node, clients on the first node and on the client
    # Service: jobs have to cross nodes.
    assert worker == f"{FULL}-2.{PEERS}.{NAMESPACE}.svc.{DOMAIN}:4730"
    assert clients == [
        f"{FULL}-0.{PEERS}.{NAMESPACE}.svc.{DOMAIN}:4730",
        f"{FULL}.{NAMESPACE}.svc.{DOMAIN}:4730",
    ]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True


# ----------------------------------------------------------------- notes


@pytest.mark.timeout(60)
def test_notes_tell_php_users_where_to_connect(helm_bin: Path) -> None:
    notes = render.render_notes()
    host = f"{FULL}.{NAMESPACE}.svc.{DOMAIN}"
    assert "new GearmanClient()" in notes
    assert f"$client->addServer('{host}', 4730);" in notes
    assert f"$worker->addServer('{host}', 4730);" in notes
    assert "helm test gm" in notes
    assert "{{" not in notes and "<no value>" not in notes
    locked = render.render_notes(SCENARIOS["network-policy"])
    assert f"{FULL}-client=true" in locked


# ------------------------------------------------------------------- TLS


@pytest.mark.timeout(60)
def test_tls_secrets_become_flags_and_mounts(helm_bin: Path) -> None:
    docs = render.render(SCENARIOS["tls"])
    _, env = node_command(docs)
    assert env["GEARMESH_SSL"] == "true"
    assert env["GEARMESH_SSL_VERIFY_CLIENT"] == "true"
    files = {k: env[k] for k in ("GEARMESH_SSL_CERTIFICATE", "GEARMESH_SSL_KEY",
                                 "GEARMESH_SSL_CA_FILE", "GEARMESH_ACL_FILE",
                                 "GEARMESH_PEER_SSL_CA_FILE", "GEARMESH_PEER_SSL_CERTIFICATE",
                                 "GEARMESH_PEER_SSL_KEY", "GEARMESH_ETCD_CACERT",
                                 "GEARMESH_ETCD_CERT", "GEARMESH_ETCD_KEY")}
    sts = find(docs, "StatefulSet", FULL)
    spec = pod_spec(sts)
    mounts = {m["mountPath"]: m["name"] for m in node_container(docs)["volumeMounts"]}
    sources = {v["name"]: v.get("secret", {}).get("secretName")
               or v.get("configMap", {}).get("name") for v in spec["volumes"]}
    want = {"/etc/gearmesh/tls/gearman": "gm-tls", "/etc/gearmesh/acl": "gm-acl",
            "/etc/gearmesh/tls/peer": "gm-peer-tls", "/etc/gearmesh/tls/etcd": "gm-etcd-tls"}
    for path in files.values():
        directory = path.rsplit("/", 1)[0]
        assert sources[mounts[directory]] == want[directory], path
    # The probes stay on HTTP, which TLS does not touch.
    c = node_container(docs)
    assert c["readinessProbe"]["httpGet"]["port"] == "http"
    # helm test speaks TLS with the CA (only: no server key in the test pod)
    # and the test client's certificate.
    pod = find(docs, "Pod", f"{FULL}-test")
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--tls-ca") + 1] == "/etc/gearmesh-tls/ca.crt"
    assert args[args.index("--tls-cert") + 1] == "/etc/gearmesh-tls-client/tls.crt"
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["tls"]["secret"] == {"secretName": "gm-tls",
                                     "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert vols["tls-client"]["secret"]["secretName"] == "gm-test-client"


@pytest.mark.timeout(60)
def test_tls_refuses_inconsistent_values(helm_bin: Path) -> None:
    with pytest.raises(render.HelmError, match=r"tls\.etcd\.secret is for an existing etcd"):
        render.render({"tls": {"etcd": {"secret": "x"}}})
    with pytest.raises(render.HelmError, match=r"need tls\.gearman\.secret"):
        render.render({"tls": {"gearman": {"verifyClient": True}}})
    with pytest.raises(render.HelmError, match=r"needs tls\.certManager\.issuerRef\.name"):
        render.render({"tls": {"gearman": {"secret": "s"}, "certManager": {"enabled": True}}})
    with pytest.raises(render.HelmError, match=r"set at least one"):
        render.render({"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}})


@pytest.mark.timeout(60)
def test_cert_manager_issues_the_secrets_the_nodes_mount(helm_bin: Path) -> None:
    assert not [d for d in render.render(SCENARIOS["tls"] | {"tls": {}})
                if d["kind"] == "Certificate"]
    docs = render.render(SCENARIOS["tls"])
    gearman = find(docs, "Certificate", f"{FULL}-gearman")["spec"]
    peer = find(docs, "Certificate", f"{FULL}-peer")["spec"]
    # The Secrets the StatefulSet mounts are the ones cert-manager fills.
    sources = {v.get("secret", {}).get("secretName") for v in pod_spec(
        find(docs, "StatefulSet", FULL))["volumes"]}
    assert {gearman["secretName"], peer["secretName"]} <= sources
    assert gearman["secretName"] == "gm-tls" and peer["secretName"] == "gm-peer-tls"
    assert gearman["issuerRef"] == peer["issuerRef"] == {
        "name": "cluster-ca", "kind": "Issuer", "group": "cert-manager.io"}
    # Every name a client dials on the Gearman port (Perl checks it).
    assert FULL in gearman["dnsNames"] and "gearman.example.com" in gearman["dnsNames"]
    assert any(n.startswith(f"{FULL}.") and n.endswith(".svc") for n in gearman["dnsNames"])
    assert gearman["usages"] == ["server auth"]
    # A node's certificate serves its peer port and dials the others.
    assert peer["usages"] == ["server auth", "client auth"]


@pytest.mark.timeout(60)
def test_notes_warn_that_hard_anti_affinity_needs_a_machine_per_pod(helm_bin: Path) -> None:
    clustered = {"etcd": {"enabled": True}, "replicaCount": 3}
    assert "each of the 3 pods needs a Kubernetes node" in render.render_notes(clustered)
    assert "needs a Kubernetes node" not in render.render_notes(
        clustered | {"podAntiAffinity": "soft"})
