"""Membership against a real etcd: registration, leaving, crashing, etcd
restarts and outages. Tests synchronise on the maps the members deliver (a
poll of ``current`` with a deadline), never on sleeps."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aetcd
import pytest

from cluster.etcdkeys import node_key, nodes_prefix
from cluster.memberinfo import MemberInfo
from cluster.membership import Membership, parse_endpoints
from cluster.partition import PARTITIONS, PartitionMap
from tests.support.etcd import EtcdServer
from tests.support.waiting import eventually

PREFIX = "/gearmesh-test"


def member(
    etcd: EtcdServer | str, node_id: str, ttl: int = 2, state: str = "active",
    maps: list[PartitionMap] | None = None,
) -> Membership:
    endpoint = etcd if isinstance(etcd, str) else etcd.endpoint
    info = MemberInfo(
        peer_address=f"127.0.0.1:{4731}", gearman_address="127.0.0.1:4730",
        http_address="127.0.0.1:4732", state=state,  # type: ignore[arg-type]
        version="test", started_at=time.time(),
    )
    return Membership(endpoint, PREFIX, node_id, info, ttl,
                      maps.append if maps is not None else None)


def view(m: Membership) -> set[str]:
    return set(m.current.members) if m.current is not None else set()


def converged(members: list[Membership], expected: set[str]) -> bool:
    maps = [m.current for m in members]
    if any(pm is None or set(pm.members) != expected for pm in maps):
        return False
    first = maps[0]
    assert first is not None
    return all(pm is not None and pm.epoch == first.epoch and pm.same_assignment(first)
               for pm in maps)


async def raw_client(etcd: EtcdServer) -> aetcd.Client:
    client = aetcd.Client(etcd.host, etcd.client_port, timeout=5)
    await client.connect()
    return client


@pytest.mark.timeout(60)
def test_parse_endpoints() -> None:
    assert parse_endpoints("a:1, http://b:2/") == [("a", 1), ("b", 2)]
    assert parse_endpoints(["[::1]:2379"]) == [("::1", 2379)]
    for bad in ("", "nohost", "h:port", "https://x:1"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


@pytest.mark.timeout(60)
def test_three_members_see_each_other_and_agree(etcd: EtcdServer, run: Any) -> None:
    async def main() -> None:
        maps: list[PartitionMap] = []
        ms = [member(etcd, f"n{i}", maps=maps if i == 0 else None) for i in range(3)]
        for m in ms:
            await m.start()
        try:
            await eventually(lambda: converged(ms, {"n0", "n1", "n2"}), 15, "three members")
            final = ms[0].current
            assert final is not None
            assert final.active == ("n0", "n1", "n2")
            assert sum(len(final.partitions_of(n)) for n in final.active) == PARTITIONS
            # Maps arrive in etcd order: epochs never go back.
            epochs = [pm.epoch for pm in maps]
            assert epochs == sorted(epochs)
            # The epoch is the etcd revision of the last change.
            client = await raw_client(etcd)
            try:
                newest = max(kv.mod_revision for kv in await client.get_prefix(
                    nodes_prefix(PREFIX)))
            finally:
                await client.close()
            assert final.epoch == newest
        finally:
            for m in ms:
                await m.close()

    run(main())


@pytest.mark.timeout(60)
def test_closed_member_disappears_at_once(etcd: EtcdServer, run: Any) -> None:
    ttl = 30  # far beyond the deadline below: only the revoke can explain it

    async def main() -> None:
        a, b = member(etcd, "a", ttl), member(etcd, "b", ttl)
        await a.start()
        await b.start()
        try:
            await eventually(lambda: converged([a, b], {"a", "b"}), 15, "both members")
            await b.close()
            await eventually(lambda: view(a) == {"a"}, 3, "b to leave a's map")
            current = a.current
            assert current is not None
            assert current.partitions_of("a") == frozenset(range(PARTITIONS))
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_killed_member_disappears_within_ttl(
    etcd: EtcdServer, run: Any, spawn_child: Any
) -> None:
    ttl = 2
    child = spawn_child(["member", etcd.endpoint, PREFIX, "victim", str(ttl)], name="victim")

    async def main() -> None:
        a = member(etcd, "a", ttl)
        await a.start()
        try:
            await eventually(lambda: view(a) == {"a", "victim"}, 20, "the child member")
            killed_at = time.monotonic()
            child.kill()
            # The lease expires TTL after the last keepalive (at most TTL ago);
            # etcd checks expiry every 500 ms; the rest is slack for a loaded box.
            await eventually(lambda: view(a) == {"a"}, ttl + 3, "the killed member to expire")
            assert time.monotonic() - killed_at <= ttl + 3
        finally:
            await a.close()

    child.wait_for_line("REGISTERED", timeout=20)
    run(main())


@pytest.mark.timeout(90)
def test_etcd_restart_members_reregister_and_converge(
    etcd: EtcdServer, run: Any, cluster_log: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        a, b = member(etcd, "a"), member(etcd, "b")
        await a.start()
        await b.start()
        try:
            await eventually(lambda: converged([a, b], {"a", "b"}), 15, "both members")
            before = a.current
            await asyncio.to_thread(etcd.kill)
            await eventually(lambda: not a.registered and not b.registered, 10,
                             "members to notice etcd is gone")
            # Unreachable etcd: the last map stays in force.
            assert a.current is before
            await asyncio.to_thread(etcd.start)
            await eventually(lambda: a.registered and b.registered, 20, "re-registration")
            c = member(etcd, "c")
            await c.start()
            try:
                await eventually(lambda: converged([a, b, c], {"a", "b", "c"}), 20,
                                 "maps to converge after the restart")
            finally:
                await c.close()
        finally:
            await a.close()
            await b.close()

    run(main())
    unavailable = [r for r in cluster_log.records
                   if r.levelno == logging.WARNING and "unavailable" in r.getMessage()]
    assert unavailable, "an etcd outage must be logged"


@pytest.mark.timeout(60)
def test_lost_lease_reregisters(etcd: EtcdServer, run: Any) -> None:
    async def main() -> None:
        a, b = member(etcd, "a"), member(etcd, "b")
        await a.start()
        await b.start()
        client = await raw_client(etcd)
        try:
            await eventually(lambda: converged([a, b], {"a", "b"}), 15, "both members")
            key = node_key(PREFIX, "b")
            old = await client.get(key)
            assert old is not None
            await client.revoke_lease(old.lease)
            # b sees its key deleted, takes a new lease and comes back.
            async def new_lease() -> bool:
                kv = await client.get(key)
                return kv is not None and kv.lease != old.lease
            deadline = time.monotonic() + 10
            while not await new_lease():
                assert time.monotonic() < deadline, "b did not re-register"
                await asyncio.sleep(0.02)
            await eventually(lambda: converged([a, b], {"a", "b"}), 10, "b back in both maps")
        finally:
            await client.close()
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_unreachable_etcd_at_start_never_raises(
    run: Any, cluster_log: pytest.LogCaptureFixture
) -> None:
    etcd = EtcdServer()  # ports reserved, process not started yet
    try:
        async def main() -> None:
            a = member(etcd, "a")
            await a.start()  # must not raise although nothing listens
            try:
                await eventually(
                    lambda: any("unavailable" in r.getMessage() for r in cluster_log.records),
                    10, "the outage to be logged")
                assert not a.registered and a.current is None
                ok = await a.set_state("draining", timeout=0.2)
                assert ok is False  # kept, written once etcd is there
                await asyncio.to_thread(etcd.start)
                assert await a.wait_registered(20)
                await eventually(lambda: a.current is not None and
                                 a.current.members["a"].state == "draining", 10,
                                 "the pending state to be written")
            finally:
                await a.close()

        run(main())
    finally:
        etcd.close()


@pytest.mark.timeout(60)
def test_draining_member_owns_nothing(etcd: EtcdServer, run: Any) -> None:
    async def main() -> None:
        a, b = member(etcd, "a"), member(etcd, "b")
        await a.start()
        await b.start()
        try:
            await eventually(lambda: converged([a, b], {"a", "b"}), 15, "both members")
            assert await b.set_state("draining")
            pm = await eventually(
                lambda: a.current if a.current and
                a.current.members["b"].state == "draining" else None,
                5, "a to see b draining")
            assert pm.partitions_of("b") == frozenset()
            assert pm.active == ("a",)
        finally:
            await a.close()
            await b.close()

    run(main())


@pytest.mark.timeout(60)
def test_failing_callback_does_not_break_membership(etcd: EtcdServer, run: Any) -> None:
    calls: list[int] = []

    def explode(pm: PartitionMap) -> None:
        calls.append(pm.epoch)
        raise RuntimeError("node bug")

    async def main() -> None:
        info = MemberInfo(peer_address="127.0.0.1:1", state="active")
        a = Membership(etcd.endpoint, PREFIX, "a", info, 2, explode)
        b = member(etcd, "b")
        await a.start()
        try:
            await eventually(lambda: view(a) == {"a"}, 15, "a alone")
            await b.start()
            await eventually(lambda: view(a) == {"a", "b"}, 15, "a to see b despite its bug")
            assert len(calls) >= 2
        finally:
            await a.close()
            await b.close()

    run(main())
