"""Per-connection state the job manager works with, and its ordered output.

A Session is what the job manager sees of a peer: a client, a worker, an
admin user (gearmand does not track roles, nor do we) — or, in a cluster, a
proxy for a client or worker connected to another node. Everything the
manager sends to it goes through :meth:`Session.send`; replies that are not
known yet (a background submit waiting for its commit, a request forwarded to
another node) take a :class:`Slot` so that later output cannot overtake them:
libgearman pairs JOB_CREATED with its tasks by counting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.job import Function, Job


class Slot:
    """A reply whose bytes are not known yet, holding its place in the output."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: bytes | None = None


class Session:
    # Whether the manager may hold this peer's next replies until a finished
    # job's deletion is durable (see JobManager._finish). Proxies for peers on
    # other nodes say no: their node orders their replies.
    holds_replies = True

    __slots__ = (
        "_out",
        "_pending",
        "asleep",
        "client_id",
        "closed",
        "exceptions",
        "fd",
        "flush",
        "held",
        "id",
        "listening",
        "noop_sent",
        "peer",
        "regs",
        "rr",
        "woken",
        "write",
    )

    def __init__(self, sid: int, write: Callable[[bytes], object], peer: str = "-",
                 fd: int = -1) -> None:
        self.id = sid
        self.write = write
        self.peer = peer
        self.fd = fd
        # (function, timeout in ms or 0); newest registration first, duplicates kept.
        self.regs: list[tuple[Function, int]] = []
        self.rr = 0  # where the next grab starts looking, for fairness across functions
        self.asleep = False
        self.noop_sent = False
        self.woken: list[Function] | None = None  # functions whose wake count includes us
        self.exceptions = False
        self.client_id = b"-"
        self.held: set[Job] = set()  # jobs this worker runs
        self.listening: set[Job] = set()  # foreground jobs this client waits on
        self.closed = False
        self._out: deque[bytes | Slot] = deque()
        self._pending = 0
        # Sends what was written so far at once (the connection sets it);
        # see fill.
        self.flush: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.peer}>"

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self._pending:
            self._out.append(data)
        else:
            self.write(data)

    def reserve(self) -> Slot:
        slot = Slot()
        self._pending += 1
        self._out.append(slot)
        return slot

    def fill(self, slot: Slot, data: bytes) -> None:
        slot.data = data
        self._pending -= 1
        out = self._out
        if not out or out[0] is not slot:
            return  # an earlier reply is not known yet: this one waits behind it
        while out:
            head = out[0]
            if type(head) is Slot:
                if head.data is None:
                    return
                data = head.data
            else:
                data = head  # type: ignore[assignment]
            out.popleft()
            if data and not self.closed:
                self.write(data)
        if not self._pending and self.flush is not None:
            # Every reply the peer waits for is known (typically the last of its
            # submits in a group commit): send them now, not after the callbacks
            # of the rest of the commit, so the peer gets on with its next
            # requests while the other sessions are served.
            self.flush()
