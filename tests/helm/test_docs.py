"""The chart README's values table lists every value, and only real ones."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.helm import render

pytestmark = pytest.mark.no_helm

# Values that are Kubernetes objects passed through whole: documented as one row.
FREEFORM = {
    "updateStrategy", "resources", "podSecurityContext", "securityContext", "affinity",
    "nodeSelector", "podAnnotations", "podLabels", "etcd.resources",
    "etcd.podSecurityContext", "etcd.securityContext", "etcd.nodeSelector",
    "etcd.podAnnotations", "autoscaling.behavior", "persistence.retentionPolicy",
    "service.annotations", "service.labels", "peerService.annotations",
    "persistence.annotations", "serviceAccount.annotations",
    "metrics.serviceMonitor.labels", "metrics.podMonitor.labels",
    "metrics.grafanaDashboard.annotations",
}


def leaf_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and path not in FREEFORM:
            yield from leaf_paths(value, path)
        else:
            yield path


@pytest.mark.timeout(30)
def test_values_table_matches_values_yaml() -> None:
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    readme = (render.CHART / "README.md").read_text()
    table = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))
    paths = set(leaf_paths(values))
    assert not paths - table, f"undocumented values: {sorted(paths - table)}"
    assert not table - paths, f"documented values that do not exist: {sorted(table - paths)}"


@pytest.mark.timeout(30)
def test_schema_knows_every_value() -> None:
    schema = json.loads((render.CHART / "values.schema.json").read_text())
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    for path in leaf_paths(values):
        node = schema
        for part in path.split("."):
            assert part in node.get("properties", {}), f"{path} missing from values.schema.json"
            node = node["properties"][part]
