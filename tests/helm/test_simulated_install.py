"""`helm install` + `helm test`, without Kubernetes.

The chart is rendered, and its pods are started as local processes exactly
as the kubelet would start them (same command, same env after downward-API
and $(VAR) expansion), with one substitution: every pod's DNS name becomes a
loopback address of its own (127.0.1.x for etcd members, 127.0.2.x for
nodes), so all members can use the chart's ports at once. Then the chart's
test pod command runs against them. This exercises the etcd --initial-cluster
wiring, the node env, the probe paths and the `helm test` script together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.helm import render
from tests.helm.render import NAMESPACE, find, node_command, node_container
from tests.support.servers import free_port

ETCD_BINARY = Path(os.environ.get("GEARMESH_TEST_ETCD", "/usr/bin/etcd"))
GEARMESH = render.ROOT / ".venv" / "bin" / "gearmesh"
FULL = "gm-gearmesh"
ETCD = f"{FULL}-etcd"
DOMAIN = "cluster.local"
NODES = 3


def wait_http(url: str, deadline: float, procs: list[subprocess.Popen[bytes]]) -> None:
    """Poll `url` until it answers 200; fail early if a process died."""
    last = ""
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{p.args!r} exited with {p.returncode} while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    pytest.fail(f"{url} never answered 200 ({last})")


class Localizer:
    """Rewrites the cluster DNS names in rendered strings to loopback IPs."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def add(self, name: str, ip: str) -> None:
        self.names[name] = ip

    def __call__(self, text: str) -> str:
        # Longest first: a pod name is a prefix of its record's full name.
        for name in sorted(self.names, key=len, reverse=True):
            text = text.replace(name, self.names[name])
        return text


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gearmesh-sim-") as d:
        yield Path(d)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


@pytest.mark.timeout(180)
def test_install_then_helm_test(helm_bin: Path, workdir: Path) -> None:
    if not ETCD_BINARY.exists():
        pytest.skip(f"no etcd binary at {ETCD_BINARY}")
    if not GEARMESH.exists():
        pytest.skip(f"{GEARMESH} not installed")

    values: dict[str, Any] = {
        "replicaCount": NODES,
        "ports": {"gearman": free_port(), "peer": free_port(), "http": free_port()},
        "etcd": {"ports": {"client": free_port(), "peer": free_port(), "metrics": free_port()}},
        "node": {"grace": 5},
        "tests": {"jobs": 10, "timeoutSeconds": 60},
    }
    values["service"] = {"port": values["ports"]["gearman"]}
    docs = render.render(values)

    loc = Localizer()
    for i in range(3):
        loc.add(f"{ETCD}-{i}.{ETCD}.{NAMESPACE}.svc.{DOMAIN}", f"127.0.1.{i + 1}")
    for i in range(NODES):
        loc.add(f"{FULL}-{i}.{FULL}-peers.{NAMESPACE}.svc.{DOMAIN}", f"127.0.2.{i + 1}")
    # A Service spreads connections over nodes; pointing it at node 1 keeps
    # the run deterministic and still away from the worker's node.
    loc.add(f"{FULL}.{NAMESPACE}.svc.{DOMAIN}", "127.0.2.2")

    etcd_procs: list[subprocess.Popen[bytes]] = []
    node_procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    handles: list[IO[bytes]] = []
    deadline = time.monotonic() + 120
    try:
        # --- the bundled etcd, one process per member
        etcd_sts = find(docs, "StatefulSet", ETCD)
        etcd_c = etcd_sts["spec"]["template"]["spec"]["containers"][0]
        data_mount = next(m["mountPath"] for m in etcd_c["volumeMounts"] if m["name"] == "data")
        for i in range(etcd_sts["spec"]["replicas"]):
            ip = f"127.0.1.{i + 1}"
            fields = {"metadata.name": f"{ETCD}-{i}", "metadata.namespace": NAMESPACE}
            env = {k: loc(v).replace("0.0.0.0", ip)
                   for k, v in render.container_env(etcd_c, fields).items()}
            env["ETCD_DATA_DIR"] = env["ETCD_DATA_DIR"].replace(
                data_mount, str(workdir / f"etcd{i}"))
            log = workdir / f"etcd{i}.log"
            logs.append(log)
            handles.append(log.open("wb"))
            etcd_procs.append(subprocess.Popen(
                [str(ETCD_BINARY)], env={"PATH": os.environ["PATH"], **env},
                stdout=subprocess.DEVNULL, stderr=handles[-1],
            ))
        ready = etcd_c["readinessProbe"]["httpGet"]["path"]
        for i in range(etcd_sts["spec"]["replicas"]):
            wait_http(f"http://127.0.1.{i + 1}:{values['etcd']['ports']['metrics']}{ready}",
                      deadline, etcd_procs)

        # --- the gearmesh nodes
        container = node_container(docs)
        data_dir = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
        for i in range(NODES):
            ip = f"127.0.2.{i + 1}"
            argv, env = node_command(docs, pod_name=f"{FULL}-{i}")
            env = {k: loc(v) for k, v in env.items()}
            assert env["GEARMESH_ADVERTISE"] == ip
            # The pod has its own network namespace; here the node binds its IP.
            env["GEARMESH_LISTEN"] = ip
            env["GEARMESH_DATA_DIR"] = env["GEARMESH_DATA_DIR"].replace(
                data_dir, str(workdir / f"node{i}"))
            argv[0] = str(GEARMESH)
            log = workdir / f"node{i}.log"
            logs.append(log)
            handles.append(log.open("wb"))
            node_procs.append(subprocess.Popen(
                argv, env={**os.environ, **env},
                stdout=subprocess.DEVNULL, stderr=handles[-1],
            ))
        http = values["ports"]["http"]
        started = container["startupProbe"]["httpGet"]["path"]
        ready = container["readinessProbe"]["httpGet"]["path"]
        for i in range(NODES):
            wait_http(f"http://127.0.2.{i + 1}:{http}{started}", deadline, node_procs)
            wait_http(f"http://127.0.2.{i + 1}:{http}{ready}", deadline, node_procs)

        # --- helm test: the test pod's own command, with the chart's script
        pod = find(docs, "Pod", f"{FULL}-test")
        test_c = pod["spec"]["containers"][0]
        assert test_c["command"][0] == "python"
        script = render.CHART / "files" / "roundtrip.py"
        cmd = [sys.executable, str(script), *(loc(a) for a in test_c["args"])]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, f"helm test failed:\n{run.stdout}{run.stderr}"

        # --- scale-in / eviction: SIGTERM drains and exits 0 in the budget
        budget = find(docs, "StatefulSet", FULL)["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"]
        last = node_procs[-1]
        last.send_signal(signal.SIGTERM)
        assert last.wait(timeout=budget) == 0
    except BaseException:
        for log in logs:
            if log.exists():
                sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
        raise
    finally:
        # Nodes first: a node losing etcd while draining would wait for it.
        _stop(node_procs)
        _stop(etcd_procs)
        for h in handles:
            h.close()


