"""Job handles: ``H:<node id>:<number>`` — the one place they are spelled.

A node's handles share its prefix (``H:<node id>`` by default, or
``--job-handle-prefix`` on a standalone node), so in a cluster any node can
tell from a handle which node holds the job. Handles are exact strings:
``H:x:01`` is not ``H:x:1``, and names no job.
"""

from __future__ import annotations

from typing import Final

HEAD: Final = b"H:"
MAX_DIGITS: Final = 19  # job ids are 64-bit


def node_prefix(node_id: str) -> str:
    """The prefix of the handles of node ``node_id``."""
    return f"{HEAD.decode()}{node_id}"


def _number(digits: bytes) -> int | None:
    if not digits.isdigit() or len(digits) > MAX_DIGITS or digits[0] == 48:
        return None
    return int(digits)


class Handles:
    """One node's handles, from its prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix + b":"

    def of(self, jid: int) -> bytes:
        return self.prefix + str(jid).encode()

    def number(self, handle: bytes) -> int | None:
        """The job id ``handle`` names on this node, or None."""
        prefix = self.prefix
        if not handle.startswith(prefix):
            return None
        digits = handle[len(prefix):]
        # _number, inlined: this is on every work result's path.
        if not digits.isdigit() or len(digits) > MAX_DIGITS or digits[0] == 48:
            return None
        return int(digits)

    def is_local(self, handle: bytes) -> bool:
        """Whether ``handle`` has this node's prefix (it may name no job)."""
        return handle.startswith(self.prefix)


def node_of(handle: bytes) -> str | None:
    """The node id in a handle of the default form ``H:<node id>:<number>``,
    or None if it is not one."""
    if not handle.startswith(HEAD):
        return None
    node, sep, num = handle[len(HEAD):].rpartition(b":")
    if not sep or not node or _number(num) is None:
        return None
    return node.decode("utf-8", "replace")
