"""A worker ledger: which job payloads were handed to a worker, and how often.

Chaos tests give every job a unique payload and let :class:`LedgerWorker`
threads run them. The ledger then proves delivery properties without any
timing assumption: a payload seen twice ran twice; a payload assigned but not
*confirmed* complete was running when the server died.

A completion is confirmed when the server answers a request sent after the
WORK_COMPLETE on the same connection (replies keep their order, so the server
had processed the WORK_COMPLETE by then).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Iterable

from node.protocol import (
    CAN_DO,
    GRAB_JOB_UNIQ,
    HEADER,
    HEADER_SIZE,
    JOB_ASSIGN_UNIQ,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    WORK_COMPLETE,
)
from node.protocol import request as packet


class Ledger:
    """Thread-safe record of assignments and confirmed completions."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.assigned: list[bytes] = []  # payloads in the order workers got them
        self.handles: dict[bytes, bytes] = {}  # payload -> handle it came with
        self.confirmed: set[bytes] = set()
        self._counts: Counter[bytes] = Counter()

    def record_assign(self, payload: bytes, handle: bytes) -> None:
        with self._lock:
            self.assigned.append(payload)
            self.handles[payload] = handle
            self._counts[payload] += 1
            self._lock.notify_all()

    def record_confirmed(self, payload: bytes) -> None:
        with self._lock:
            self.confirmed.add(payload)
            self._lock.notify_all()

    # -- queries -----------------------------------------------------------
    def runs(self) -> Counter[bytes]:
        with self._lock:
            return Counter(self._counts)

    def ran(self) -> set[bytes]:
        with self._lock:
            return set(self._counts)

    def duplicates(self) -> dict[bytes, int]:
        with self._lock:
            return {p: n for p, n in self._counts.items() if n > 1}

    def in_doubt(self) -> set[bytes]:
        """Assigned but never confirmed complete: running when the server died."""
        with self._lock:
            return set(self._counts) - self.confirmed

    def __len__(self) -> int:
        with self._lock:
            return len(self.assigned)

    def wait_assigned(self, count: int, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: len(self.assigned) >= count, timeout)

    def wait_confirmed(self, count: int, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: len(self.confirmed) >= count, timeout)


class LedgerWorker(threading.Thread):
    """A raw-socket worker that records each job it gets and completes it at once.

    It keeps one request in flight: WORK_COMPLETE for the previous job goes out
    in the same write as the next GRAB_JOB_UNIQ. When the queue is empty it
    sleeps (PRE_SLEEP) until the server NOOPs it. It stops on ``stop()`` or
    when the server goes away (a killed server is the point of these tests).
    """

    def __init__(
        self, address: tuple[str, int], functions: Iterable[bytes], ledger: Ledger
    ) -> None:
        super().__init__(name="ledger-worker", daemon=True)
        self.address = address
        self.functions = list(functions)
        self.ledger = ledger
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self.sock = socket.create_connection(address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.sock.sendall(b"".join(packet(CAN_DO, f) for f in self.functions))

    def stop(self) -> None:
        self._halt.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _recv(self) -> tuple[int, bytes] | None:
        while True:
            if len(self._buf) >= HEADER_SIZE:
                _, ptype, size = HEADER.unpack_from(self._buf)
                end = HEADER_SIZE + size
                if len(self._buf) >= end:
                    payload = bytes(self._buf[HEADER_SIZE:end])
                    del self._buf[:end]
                    return ptype, payload
            # The timeout only bounds a hung server; stop() wakes us by shutdown.
            self.sock.settimeout(1.0)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                if self._halt.is_set():
                    return None
                continue
            if not chunk:
                return None
            self._buf += chunk

    def run(self) -> None:
        unconfirmed: bytes | None = None  # payload whose WORK_COMPLETE awaits a later reply
        try:
            self.sock.sendall(packet(GRAB_JOB_UNIQ))
            while not self._halt.is_set():
                reply = self._recv()
                if reply is None:
                    return
                ptype, payload = reply
                if unconfirmed is not None:
                    self.ledger.record_confirmed(unconfirmed)
                    unconfirmed = None
                if ptype == JOB_ASSIGN_UNIQ:
                    handle, _func, _unique, data = payload.split(b"\0", 3)
                    self.ledger.record_assign(data, handle)
                    unconfirmed = data
                    self.sock.sendall(packet(WORK_COMPLETE, handle, b"") + packet(GRAB_JOB_UNIQ))
                elif ptype == NO_JOB:
                    self.sock.sendall(packet(PRE_SLEEP))
                elif ptype == NOOP:
                    self.sock.sendall(packet(GRAB_JOB_UNIQ))
                else:
                    raise AssertionError(f"worker got unexpected packet {ptype}: {payload!r}")
        except OSError:
            return  # the server died or stop() shut the socket
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc
        finally:
            self.sock.close()
