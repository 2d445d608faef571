"""The committed peer-protocol modules match proto/peer.proto and import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("peer_pb2.py", "peer_pb2_grpc.py")


@pytest.mark.timeout(120)
def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [str(REPO / "scripts" / "gen-proto"), str(tmp_path)],
        check=True, capture_output=True, timeout=100,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    stale = [
        name for name in GENERATED
        if (tmp_path / "cluster" / name).read_bytes() != (REPO / "cluster" / name).read_bytes()
    ]
    assert not stale, f"run scripts/gen-proto and commit the result; stale: {stale}"


@pytest.mark.timeout(60)
def test_generated_modules_import_with_the_installed_runtime() -> None:
    from cluster import peer_pb2, peer_pb2_grpc

    batch = peer_pb2.Batch(from_node="n1", epoch=7, frames=b"\x91\x01", count=1)  # type: ignore[attr-defined]
    again = peer_pb2.Batch.FromString(batch.SerializeToString())  # type: ignore[attr-defined]
    assert (again.from_node, again.epoch, again.frames, again.count) == ("n1", 7, b"\x91\x01", 1)
    assert hasattr(peer_pb2_grpc, "PeerLinkStub")
    assert hasattr(peer_pb2_grpc, "add_PeerLinkServicer_to_server")
