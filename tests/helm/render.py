"""Render the gearmesh chart with the real Helm binary and pick it apart.

Shared by the chart tests and by tests that start nodes from what the chart
would run:

    from tests.helm.render import node_command, render

    manifests = render({"replicaCount": 3})
    argv, env = node_command(manifests, pod_name="gm-gearmesh-1")

`node_command` resolves the downward-API variables (POD_NAME, POD_NAMESPACE)
and Kubernetes' $(VAR) references the way the kubelet does, so the result
is exactly what the container would see; override whatever a local run
needs (ports, GEARMESH_ADVERTISE, GEARMESH_ETCD, GEARMESH_DATA_DIR) on top.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "gearmesh"
RELEASE = "gm"
NAMESPACE = "gearmesh"

Manifest = dict[str, Any]


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its stderr."""


def helm_binary() -> Path | None:
    """The Helm binary: $HELM, then scripts/install-helm's place, then PATH."""
    candidates: list[Path] = []
    if os.environ.get("HELM"):
        candidates.append(Path(os.environ["HELM"]))
    candidates += [ROOT / ".tools" / "helm", ROOT / ".venv" / "bin" / "helm"]
    found = shutil.which("helm")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def helm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    binary = helm_binary()
    if binary is None:
        raise FileNotFoundError("helm not found: run scripts/install-helm")
    # Keep Helm away from any kubeconfig or user cache: rendering and linting
    # are offline operations and must not depend on the machine.
    with tempfile.TemporaryDirectory(prefix="helm-home-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
            "KUBECONFIG": f"{home}/no-kubeconfig",
        }
        proc = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=timeout, env=env
        )
    if proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc


def _values_file(values: Mapping[str, Any] | None, tmp: str) -> list[str]:
    if not values:
        return []
    path = Path(tmp) / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return ["--values", str(path)]


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str | None = None,
    chart: Path = CHART,
) -> list[Manifest]:
    """`helm template` the chart (test hooks included) into parsed objects."""
    with tempfile.TemporaryDirectory(prefix="gearmesh-values-") as tmp:
        args = ["template", release, str(chart), "--namespace", namespace]
        args += _values_file(values, tmp)
        if kube_version:
            args += ["--kube-version", kube_version]
        out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def lint(values: Mapping[str, Any] | None = None, *, chart: Path = CHART) -> str:
    """`helm lint --strict`; raises HelmError on any warning or error."""
    with tempfile.TemporaryDirectory(prefix="gearmesh-values-") as tmp:
        args = ["lint", "--strict", str(chart), "--namespace", NAMESPACE]
        args += _values_file(values, tmp)
        return helm(*args).stdout


def render_notes(
    values: Mapping[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
) -> str:
    """NOTES.txt as `helm install` would print it.

    `helm template` never renders NOTES.txt and `helm install --dry-run`
    wants a cluster, so a copy of the chart gets one extra template that
    runs NOTES.txt through `tpl` into a ConfigMap.
    """
    with tempfile.TemporaryDirectory(prefix="gearmesh-notes-") as tmp:
        copy = Path(tmp) / "gearmesh"
        shutil.copytree(CHART, copy)
        (copy / "notes.tpl").write_text((CHART / "templates" / "NOTES.txt").read_text())
        (copy / "templates" / "zz-render-notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rendered-notes\n"
            'data:\n  notes: {{ tpl (.Files.Get "notes.tpl") . | toJson }}\n'
        )
        docs = render(values, release=release, namespace=namespace, chart=copy)
    notes = find(docs, "ConfigMap", "rendered-notes")
    return str(notes["data"]["notes"])


def find_all(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of this kind (and name); fails loudly otherwise."""
    hits = [m for m in find_all(manifests, kind) if name is None or m["metadata"]["name"] == name]
    if len(hits) != 1:
        names = [m["metadata"]["name"] for m in find_all(manifests, kind)]
        raise LookupError(f"expected one {kind} {name or ''}, found {names}")
    return hits[0]


def component(manifests: Iterable[Manifest], kind: str, comp: str) -> Manifest:
    """The object of this kind labelled app.kubernetes.io/component=comp."""
    hits = [
        m
        for m in find_all(manifests, kind)
        if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == comp
    ]
    if len(hits) != 1:
        raise LookupError(f"expected one {kind} with component {comp}, found {len(hits)}")
    return hits[0]


def node_statefulset(manifests: Iterable[Manifest]) -> Manifest:
    return component(manifests, "StatefulSet", "node")


def node_container(manifests: Iterable[Manifest]) -> Manifest:
    sts = node_statefulset(manifests)
    containers = sts["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gearmesh")


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are substituted, unknown
    references stay as written, and $$ escapes a dollar."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def container_env(
    container: Mapping[str, Any], fields: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: in order, each
    value may refer to variables defined before it."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
        elif "valueFrom" in item and "fieldRef" in item["valueFrom"]:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise KeyError(f"no value for downward-API field {path} (env {name})")
            env[name] = fields[path]
        else:
            raise ValueError(f"env {name}: only value and fieldRef are supported here")
    return env


def node_command(
    manifests: Iterable[Manifest],
    pod_name: str | None = None,
    namespace: str | None = None,
    *,
    fields: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of the gearmesh container in pod `pod_name` (default: the
    StatefulSet's ordinal 0), with every $(VAR) resolved. `env` holds only
    what the container spec sets, not the image's own ENV lines."""
    manifests = list(manifests)
    sts = node_statefulset(manifests)
    container = node_container(manifests)
    resolved: dict[str, str] = {
        "metadata.name": pod_name or f"{sts['metadata']['name']}-0",
        "metadata.namespace": namespace or sts["metadata"].get("namespace", "default"),
        "status.podIP": "127.0.0.1",
    }
    resolved.update(fields or {})
    env = container_env(container, resolved)
    words = [*container.get("command", []), *container.get("args", [])]
    argv = [expand(str(a), env) for a in words]
    return argv, env
