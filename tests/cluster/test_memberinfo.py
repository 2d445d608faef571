"""The member record as stored in etcd."""

from __future__ import annotations

import json

import pytest

from cluster.memberinfo import MemberInfo


@pytest.mark.timeout(30)
def test_round_trip_and_stable_encoding() -> None:
    info = MemberInfo(peer_address="10.0.0.1:4731", gearman_address="10.0.0.1:4730",
                      http_address="10.0.0.1:4732", state="active", version="0.1.0",
                      started_at=1700000000.5)
    assert MemberInfo.decode(info.encode()) == info
    assert info.encode() == MemberInfo.decode(info.encode()).encode()
    assert info.with_state("draining").state == "draining"
    assert info.is_active and not info.with_state("joining").is_active


@pytest.mark.timeout(30)
def test_unknown_fields_are_ignored() -> None:
    raw = json.dumps({"peer_address": "h:1", "state": "draining", "zone": "eu-1"}).encode()
    assert MemberInfo.decode(raw) == MemberInfo(peer_address="h:1", state="draining")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b"{}", b'{"peer_address": 5}',
    b'{"peer_address": "h:1", "state": "sleeping"}',
    b'{"peer_address": "h:1", "started_at": "yesterday"}',
    b'{"peer_address": "h:1", "version": 3}',
    b"\xff\xfe",
])
def test_malformed_records_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError):
        MemberInfo.decode(raw)


@pytest.mark.timeout(30)
def test_state_is_validated() -> None:
    with pytest.raises(ValueError):
        MemberInfo(peer_address="h:1", state="gone")  # type: ignore[arg-type]
