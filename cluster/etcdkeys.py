"""The etcd key layout — the one place it is spelled.

    <prefix>/nodes/<node-id>   a node's MemberInfo (cluster/memberinfo.py),
                               under the node's lease

``prefix`` is ``--etcd-prefix`` (``/gearmesh`` by default), so several
clusters can share one etcd.
"""

from __future__ import annotations


def nodes_prefix(prefix: str) -> bytes:
    """The key prefix all member records share."""
    return (prefix.rstrip("/") + "/nodes/").encode()


def node_key(prefix: str, node_id: str) -> bytes:
    return nodes_prefix(prefix) + node_id.encode()


def node_id_of(key: bytes, nodes: bytes) -> str:
    """The node id in a member record's key (``nodes`` from nodes_prefix)."""
    return key[len(nodes):].decode(errors="replace")


def range_end(prefix_key: bytes) -> bytes:
    """The end of etcd's range for every key starting with ``prefix_key``."""
    return prefix_key[:-1] + bytes([prefix_key[-1] + 1])
