"""Child processes for the cluster tests, so that a test can kill -9 a real
process. Each prints lines the parent synchronises on (see Spawned).

  child.py peer NODE_ID PORT REPLY_NODE REPLY_ADDRESS
      A peer-link endpoint on 127.0.0.1:PORT (0 = any) that sends every frame
      it receives from REPLY_NODE back to it. Prints "LISTENING <port>", then
      "UP <node>" / "DOWN <node>" for its link to REPLY_NODE.

  child.py member ENDPOINT PREFIX NODE_ID TTL
      A Membership that registers as active. Prints "REGISTERED" and, on
      every map change, "MAP <epoch> <active ids, comma-separated>".
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from cluster.memberinfo import MemberInfo
from cluster.membership import Membership
from cluster.partition import PartitionMap
from cluster.peerlink import PeerLinks, PeerLinkServer


def say(line: str) -> None:
    print(line, flush=True)


async def peer(node_id: str, port: int, reply_node: str, reply_address: str) -> None:
    links = PeerLinks(node_id)
    server = PeerLinkServer(links, "127.0.0.1", port)

    def echo(from_node: str, epoch: int, frames: list[Any]) -> None:
        if from_node == reply_node:
            for frame in frames:
                links.send(reply_node, frame)

    links.on_frames(echo)
    links.on_peer_up(lambda n: say(f"UP {n}"))
    links.on_peer_down(lambda n: say(f"DOWN {n}"))
    bound = await server.start()
    say(f"LISTENING {bound}")
    links.connect(reply_node, reply_address)
    await asyncio.Event().wait()


async def member(endpoint: str, prefix: str, node_id: str, ttl: int) -> None:
    def changed(pmap: PartitionMap) -> None:
        say(f"MAP {pmap.epoch} {','.join(pmap.active)}")

    info = MemberInfo(peer_address="127.0.0.1:1", state="active", started_at=time.time())
    membership = Membership(endpoint, prefix, node_id, info, ttl, changed)
    await membership.start()
    if await membership.wait_registered(30):
        say("REGISTERED")
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    kind, *args = argv
    if kind == "peer":
        asyncio.run(peer(args[0], int(args[1]), args[2], args[3]))
    elif kind == "member":
        asyncio.run(member(args[0], args[1], args[2], int(args[3])))
    else:
        raise SystemExit(f"unknown child kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
