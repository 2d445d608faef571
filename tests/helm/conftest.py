"""Fixtures of the chart tests.

Every test here needs the Helm binary; without it they skip with the reason
(scripts/install-helm puts it in .tools/helm). Set GEARMESH_REQUIRE_HELM=1 to
make a missing Helm an error instead, as CI does, so the chart is never
silently untested.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helm import render


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    binary = render.helm_binary()
    if binary is None:
        reason = "helm binary not found (run scripts/install-helm, or set HELM=/path/to/helm)"
        if os.environ.get("GEARMESH_REQUIRE_HELM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture(autouse=True)
def _needs_helm(request: pytest.FixtureRequest) -> None:
    # Tests marked no_helm (static checks of the Dockerfile, the test script)
    # run without the binary.
    if request.node.get_closest_marker("no_helm") is None:
        request.getfixturevalue("helm_bin")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_helm: the test does not need the Helm binary")
