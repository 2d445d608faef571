"""Every rendered object validates offline, strictly (no unknown fields),
against the Kubernetes OpenAPI schemas of several Kubernetes versions."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.helm import render
from tests.helm.scenarios import SCENARIOS

# The chart's floor (Chart.yaml kubeVersion), a middle release, and the newest
# version the installed kubernetes-validate knows.
VERSIONS = ["1.25.0", "1.30.0", f"{kubernetes_validate.utils.latest_version()}"]

# Custom resources: not in the Kubernetes schemas, checked field by field in
# test_render.py instead.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "Certificate"}


def _validate(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(
            f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version} "
            f"at {path}: {exc.message}"
        )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_manifests_match_kubernetes_schema(name: str, version: str) -> None:
    docs = render.render(SCENARIOS[name], kube_version=version)
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        _validate(doc, version)
        checked += 1
    assert checked >= 6, f"suspiciously few objects rendered: {checked}"


@pytest.mark.timeout(60)
def test_only_the_crd_kinds_are_skipped() -> None:
    # Anything else without a schema would be a typo in apiVersion or kind.
    docs = render.render(SCENARIOS["everything"]) + render.render(SCENARIOS["tls"])
    missing = set()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            missing.add(doc["kind"])
    assert missing == CRD_KINDS


@pytest.mark.timeout(30)
def test_validator_is_strict() -> None:
    # Guards the test above: an unknown field must be reported, or a clean
    # run proves nothing.
    bogus = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 4730}], "publishNotReadyAdresses": True},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bogus, VERSIONS[0], strict=True)
