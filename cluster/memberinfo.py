"""What a node publishes about itself in etcd, and its wire form.

The record is JSON rather than msgpack so that an operator can read it with
``etcdctl get --prefix /gearmesh/nodes/``. Unknown fields are ignored on
decode, so a newer node can add fields without breaking older readers during
a rolling upgrade.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final, Literal, cast

NodeState = Literal["joining", "active", "draining"]
NODE_STATES: Final[tuple[NodeState, ...]] = ("joining", "active", "draining")


@dataclasses.dataclass(frozen=True, slots=True)
class MemberInfo:
    """One node as the rest of the cluster sees it.

    Addresses are ``host:port`` strings that other nodes can dial (the
    ``--advertise`` host), not bind addresses.
    """

    peer_address: str
    gearman_address: str = ""
    http_address: str = ""
    state: NodeState = "joining"
    version: str = ""
    started_at: float = 0.0

    def __post_init__(self) -> None:
        if self.state not in NODE_STATES:
            raise ValueError(f"unknown node state {self.state!r}")

    @property
    def is_active(self) -> bool:
        return self.state == "active"

    def with_state(self, state: NodeState) -> MemberInfo:
        return dataclasses.replace(self, state=state)

    def encode(self) -> bytes:
        # sort_keys: the same info always encodes to the same bytes, so a
        # re-registration with unchanged info is recognisably a no-op.
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> MemberInfo:
        """Parse a record; raises ValueError when it is not a member record."""
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"member record is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError("member record is not a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        known: dict[str, Any] = {k: v for k, v in obj.items() if k in fields}
        if not isinstance(known.get("peer_address"), str):
            raise ValueError("member record has no peer_address")
        for name in ("gearman_address", "http_address", "version"):
            if name in known and not isinstance(known[name], str):
                raise ValueError(f"member record field {name} is not a string")
        started = known.get("started_at", 0.0)
        if isinstance(started, bool) or not isinstance(started, int | float):
            raise ValueError("member record field started_at is not a number")
        known["started_at"] = float(started)
        state = known.get("state", "joining")
        if state not in NODE_STATES:
            raise ValueError(f"member record has unknown state {state!r}")
        known["state"] = cast(NodeState, state)
        return cls(**known)
