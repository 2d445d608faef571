"""The handle format (node/handles.py)."""

from __future__ import annotations

import pytest

from node.handles import Handles, node_of, node_prefix

pytestmark = pytest.mark.timeout(30)


def test_a_node_reads_back_only_its_own_exact_handles() -> None:
    h = Handles(node_prefix("n1").encode())
    assert h.of(42) == b"H:n1:42"
    assert h.number(b"H:n1:42") == 42
    for other in (b"H:n1:042", b"H:n1:", b"H:n1:4x", b"H:n2:42", b"H:n1:" + b"9" * 20, b"x"):
        assert h.number(other) is None, other
    assert h.is_local(b"H:n1:0") and not h.is_local(b"H:n10:1")


def test_node_of_names_the_node_in_a_cluster_handle() -> None:
    assert node_of(b"H:n1:42") == "n1"
    assert node_of(b"H:gm-0.gm:7") == "gm-0.gm"
    assert node_of(b"H:a:b:3") == "a:b"  # the number is after the last colon
    for bad in (b"H:n1:", b"H::3", b"H:n1:01", b"J:n1:3", b"H:n1"):
        assert node_of(bad) is None, bad
