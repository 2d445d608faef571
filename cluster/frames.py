"""The peer link's frames: msgpack lists whose first element names the kind.

    ["req", rid, conn, exceptions, ptype, args]   entry → owner (rid 0: no reply)
    ["rep", rid, conn, packet_bytes]              owner → entry
    ["out", conn, packet_bytes]                   owner → entry
    ["gone", conn]                                entry → owner: connection closed
    ["sup", {function: sleepers}]                 worker node → all
    ["push", handle, function, unique, reducer, payload]   owner → worker node
    ["taken", handle, conn, timeout_ms]           worker node → owner, at once when
                                                  the worker has a timeout, else
                                                  just before its first result
    ["return", handle]                            worker node → owner

``conn`` is the sending node's connection id; the owner sees each as a
cluster.router.RemoteSession. A handoff (cluster/handoff.py) is a "req" from
connection -1.
"""

from __future__ import annotations

from typing import Final

REQ: Final = "req"
REP: Final = "rep"
OUT: Final = "out"
GONE: Final = "gone"
SUP: Final = "sup"
PUSH: Final = "push"
TAKEN: Final = "taken"
RETURN: Final = "return"

