"""`helm lint --strict` over the defaults and every toggle."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.helm import render
from tests.helm.scenarios import SCENARIOS


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_strict(name: str) -> None:
    out = render.lint(SCENARIOS[name])
    assert "0 chart(s) failed" in out


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    # values.schema.json
    "typo-at-top": ({"replicaCuont": 3}, "replicaCuont"),
    "replicas-not-a-number": ({"replicaCount": "three"}, "replicaCount"),
    "unknown-queue": ({"node": {"queue": "redis"}}, "node.queue"),
    "unknown-log-level": ({"node": {"logLevel": "LOUD"}}, "node.logLevel"),
    "even-etcd": ({"etcd": {"replicaCount": 2}}, "etcd.replicaCount"),
    "relative-data-dir": ({"dataDir": "data"}, "dataDir"),
    # the template's own checks
    "bundled-and-external-etcd": (
        {"etcd": {"endpoints": ["e:2379"]}},
        "not both",
    ),
    "cluster-without-etcd": ({"etcd": {"enabled": False}}, "needs etcd"),
    "hpa-min-above-max": (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "minReplicas",
    ),
    "hpa-without-metrics": (
        {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}},
        "at least one metric",
    ),
    "hpa-cpu-without-request": (
        {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
        "resources.requests.cpu",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_values_are_refused(name: str) -> None:
    values, expect = BAD_VALUES[name]
    with pytest.raises(render.HelmError, match=expect.replace(".", r"\.")):
        render.render(values)


@pytest.mark.timeout(60)
def test_kube_version_floor() -> None:
    # Chart.yaml's kubeVersion: older clusters lack what the chart relies on.
    with pytest.raises(render.HelmError, match=r"kubeVersion|Kubernetes version"):
        render.render(kube_version="1.24.0")
    assert render.render(kube_version="1.25.0")


@pytest.mark.timeout(60)
def test_packaged_chart_renders(tmp_path: Path) -> None:
    # What users install is the packaged chart: .helmignore must not drop
    # anything the templates read (files/roundtrip.py for `helm test`).
    render.helm("package", str(render.CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("gearmesh-*.tgz")
    with tarfile.open(tgz) as tar:
        names = tar.getnames()
    assert "gearmesh/files/roundtrip.py" in names
    assert "gearmesh/values.schema.json" in names
    docs = render.render(chart=tgz)
    cm = render.find(docs, "ConfigMap", "gm-gearmesh-test")
    assert cm["data"]["roundtrip.py"] == (render.CHART / "files" / "roundtrip.py").read_text()
