"""The lease keepalive runs on its own thread: a node whose event loop is
starved for longer than its lease TTL keeps its registration (real etcd)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cluster.etcdkeys import node_key
from cluster.keepalive import LeaseKeeper
from tests.cluster.test_membership import eventually, member, raw_client
from tests.support.etcd import EtcdServer


@pytest.mark.timeout(60)
def test_registration_survives_a_loop_blocked_past_the_ttl(etcd: EtcdServer, run: Any) -> None:
    ttl = 2

    async def main() -> None:
        watcher = member(etcd, "watcher", ttl)
        busy = member(etcd, "busy", ttl)
        await watcher.start()
        await busy.start()
        try:
            await eventually(lambda: busy.current is not None and watcher.current is not None
                             and set(watcher.current.members) == {"watcher", "busy"}, 15,
                             "both members")
            epoch = watcher.current.epoch if watcher.current else 0
            # The busy node's loop does nothing else for twice its TTL: the
            # way a burst past capacity used to cost nodes their lease.
            time.sleep(2 * ttl + 0.5)
            client = await raw_client(etcd)
            try:
                kvs = list(await client.get_prefix(node_key("/gearmesh-test", "busy")))
            finally:
                await client.close()
            assert len(kvs) == 1, "the busy node's registration expired"
            assert busy.leases_lost == 0
            # Nobody saw it leave: the map never changed.
            await asyncio.sleep(0)  # let the watcher's loop see any pending event
            assert watcher.current is not None and watcher.current.epoch == epoch
            assert busy.keepalive_gap < ttl
        finally:
            await busy.close()
            await watcher.close()

    run(main())


@pytest.mark.timeout(30)
def test_keeper_reports_a_lease_etcd_no_longer_has(etcd: EtcdServer, run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[int] = loop.create_future()
        client = await raw_client(etcd)
        try:
            lease = await client.lease(5)
            def on_lost(lease_id: int) -> None:
                if not lost.done():
                    lost.set_result(lease_id)

            keeper = LeaseKeeper([(etcd.host, etcd.client_port)], 5, on_lost,
                                 loop.call_soon_threadsafe, interval=0.05)
            keeper.keep(int(lease.id))
            keeper.start()
            try:
                await eventually(lambda: keeper.refreshes >= 2, 10, "two refreshes")
                await client.revoke_lease(int(lease.id))
                async with asyncio.timeout(10):
                    assert await lost == int(lease.id)
            finally:
                await loop.run_in_executor(None, keeper.stop)
        finally:
            await client.close()

    run(main())
