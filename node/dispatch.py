"""In front of the job manager: parse each request and decide where it goes.

A request from a local connection (:meth:`Dispatcher.handle`) whose key,
handle or unique another node owns goes to the cluster's forwarder
(node/seam.py); everything else, and every request another node has already
routed here (:meth:`Dispatcher.handle_local`), goes to the job manager, which
only ever does local work. A standalone node has no forwarder and its table
is the local one: it pays nothing for the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from node import protocol as P
from node import replies as R
from node.job import HIGH, LOW, NORMAL
from node.jobs import JobManager
from node.seam import Forwarder
from node.session import Session

Handler = Callable[[Session, tuple[bytes, ...]], None]

_SUBMITS: Final = {
    P.SUBMIT_JOB: (NORMAL, False),
    P.SUBMIT_JOB_HIGH: (HIGH, False),
    P.SUBMIT_JOB_LOW: (LOW, False),
    P.SUBMIT_JOB_BG: (NORMAL, True),
    P.SUBMIT_JOB_HIGH_BG: (HIGH, True),
    P.SUBMIT_JOB_LOW_BG: (LOW, True),
}
_ROUTED_SUBMITS: Final = (*_SUBMITS, P.SUBMIT_JOB_EPOCH, P.SUBMIT_REDUCE_JOB,
                          P.SUBMIT_REDUCE_JOB_BACKGROUND)
_WORK_RESULTS: Final = (P.WORK_STATUS, P.WORK_DATA, P.WORK_WARNING, P.WORK_COMPLETE,
                        P.WORK_EXCEPTION)
_GRABS: Final = {P.GRAB_JOB: P.JOB_ASSIGN, P.GRAB_JOB_UNIQ: P.JOB_ASSIGN_UNIQ,
                 P.GRAB_JOB_ALL: P.JOB_ASSIGN_ALL}


class Dispatcher:
    def __init__(self, manager: JobManager) -> None:
        self.m = manager
        self.forwarder: Forwarder | None = None
        m = manager
        local: list[Handler] = [self._invalid] * (P.MAX_TYPE + 1)
        for ptype, (prio, bg) in _SUBMITS.items():
            local[ptype] = self._submit_handler(prio, bg)
        local[P.SUBMIT_JOB_EPOCH] = self._submit_epoch
        local[P.SUBMIT_REDUCE_JOB] = self._submit_reduce
        local[P.SUBMIT_REDUCE_JOB_BACKGROUND] = self._submit_reduce_bg
        local[P.CAN_DO] = self._can_do
        local[P.CAN_DO_TIMEOUT] = self._can_do_timeout
        local[P.CANT_DO] = self._cant_do
        local[P.RESET_ABILITIES] = self._reset_abilities
        local[P.PRE_SLEEP] = self._pre_sleep
        for ptype, kind in _GRABS.items():
            local[ptype] = self._grab_handler(kind)
        local[P.WORK_STATUS] = m.work_status
        local[P.WORK_DATA] = m.work_data
        local[P.WORK_WARNING] = m.work_warning
        local[P.WORK_COMPLETE] = m.work_complete
        local[P.WORK_FAIL] = m.work_fail
        local[P.WORK_EXCEPTION] = m.work_exception
        local[P.GET_STATUS] = self._get_status
        local[P.GET_STATUS_UNIQUE] = self._get_status_unique
        local[P.ECHO_REQ] = self._echo
        local[P.OPTION_REQ] = self._option
        local[P.SET_CLIENT_ID] = self._set_client_id
        self.local_handlers = local
        # What a local connection's requests go through (node/connection.py
        # indexes it directly): the local table until a forwarder is set.
        self.handlers = local

    def set_forwarder(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        local = self.local_handlers
        routed = list(local)
        for ptype in _ROUTED_SUBMITS:
            routed[ptype] = self._routed(ptype, local[ptype])
        for ptype in _WORK_RESULTS:
            routed[ptype] = self._by_handle(ptype, local[ptype])
        routed[P.WORK_FAIL] = self._work_fail_routed
        routed[P.GET_STATUS] = self._by_handle(P.GET_STATUS, local[P.GET_STATUS])
        routed[P.GET_STATUS_UNIQUE] = self._get_status_unique_routed
        for ptype, kind in _GRABS.items():
            routed[ptype] = self._grab_routed(kind)
        routed[P.PRE_SLEEP] = self._pre_sleep_routed
        self.handlers = routed

    # ------------------------------------------------------------------ entry points

    def attach(self, s: Session) -> None:
        self.m.attach(s)

    def detach(self, s: Session) -> None:
        """A local connection closed."""
        self.m.detach(s)
        if self.forwarder is not None:
            self.forwarder.detached(s)

    def handle(self, s: Session, ptype: int, args: tuple[bytes, ...]) -> None:
        """A request from a local connection."""
        self.handlers[ptype](s, args)

    def handle_local(self, s: Session, ptype: int, args: tuple[bytes, ...]) -> None:
        """A request another node routed here: this node is its owner."""
        self.local_handlers[ptype](s, args)

    # ------------------------------------------------------------------ routing

    def _routed(self, ptype: int, local: Handler) -> Handler:
        """A submit goes to the node owning its key; jobs with an empty unique
        cannot coalesce, so they stay where they were submitted."""
        def handler(s: Session, args: tuple[bytes, ...]) -> None:
            fwd = self.forwarder
            if fwd is None or not args[1] or not fwd.forward_submit(s, ptype, args):
                local(s, args)
        return handler

    def _remote(self, s: Session, ptype: int, args: tuple[bytes, ...], handle: bytes) -> bool:
        fwd = self.forwarder
        return (fwd is not None and not self.m.is_local_handle(handle)
                and fwd.forward_handle(s, ptype, args, handle))

    def _by_handle(self, ptype: int, local: Handler) -> Handler:
        """A work result or status request for another node's handle goes there."""
        def handler(s: Session, args: tuple[bytes, ...]) -> None:
            handle = args[0] if ptype != P.GET_STATUS else args[0].split(b"\0", 1)[0]
            if not self._remote(s, ptype, args, handle):
                local(s, args)
        return handler

    def _work_fail_routed(self, s: Session, args: tuple[bytes, ...]) -> None:
        handle = args[0].split(b"\0", 1)[0]
        if len(handle) >= 64 or not self._remote(s, P.WORK_FAIL, args, handle):
            self.m.work_fail(s, args)

    def _get_status_unique_routed(self, s: Session, args: tuple[bytes, ...]) -> None:
        unique = args[0].split(b"\0", 1)[0]
        fwd = self.forwarder
        if fwd is None or not fwd.forward_unique(s, args, unique):
            s.send(self.m.status_unique_packet(unique))

    def _grab_routed(self, kind: int) -> Handler:
        def handler(s: Session, args: tuple[bytes, ...]) -> None:
            fwd = self.forwarder
            self.m.grab(s, kind, fwd.grab if fwd is not None else None)
        return handler

    def _pre_sleep_routed(self, s: Session, args: tuple[bytes, ...]) -> None:
        fwd = self.forwarder
        self.m.pre_sleep(s, fwd.remote_work if fwd is not None else None)

    # ------------------------------------------------------------------ parsing

    def _invalid(self, s: Session, args: tuple[bytes, ...]) -> None:
        s.send(P.ERR_INVALID_COMMAND)

    def _submit_handler(self, prio: int, bg: bool) -> Handler:
        def handler(s: Session, args: tuple[bytes, ...]) -> None:
            self.m.submit(s, args[0], args[1], args[2], prio, bg)
        return handler

    def _submit_epoch(self, s: Session, args: tuple[bytes, ...]) -> None:
        when = P.c_atoi(args[2])
        if not -(2**63) <= when < 2**63:
            s.send(R.EPOCH_OUT_OF_RANGE)
            return
        self.m.submit(s, args[0], args[1], args[3], NORMAL, True, max(when, 0))

    def _submit_reduce(self, s: Session, args: tuple[bytes, ...]) -> None:
        self.m.submit(s, args[0], args[1], args[4], NORMAL, False, 0, args[2])

    def _submit_reduce_bg(self, s: Session, args: tuple[bytes, ...]) -> None:
        self.m.submit(s, args[0], args[1], args[4], NORMAL, True, 0, args[2])

    def _can_do(self, s: Session, args: tuple[bytes, ...]) -> None:
        self.m.register(s, args[0], 0)

    def _can_do_timeout(self, s: Session, args: tuple[bytes, ...]) -> None:
        ms = P.c_atoi(args[1][:20])
        if ms <= 0:
            ms = 0
        elif ms < 1000:
            ms = 1000  # gearmand's floor
        self.m.register(s, args[0], min(ms, 2**31))

    def _cant_do(self, s: Session, args: tuple[bytes, ...]) -> None:
        name = args[0]
        self.m.unregister(s, lambda fn: fn.name == name)

    def _reset_abilities(self, s: Session, args: tuple[bytes, ...]) -> None:
        self.m.unregister(s, lambda fn: True)

    def _pre_sleep(self, s: Session, args: tuple[bytes, ...]) -> None:
        self.m.pre_sleep(s)

    def _grab_handler(self, kind: int) -> Handler:
        def handler(s: Session, args: tuple[bytes, ...]) -> None:
            self.m.grab(s, kind)
        return handler

    def _get_status(self, s: Session, args: tuple[bytes, ...]) -> None:
        s.send(self.m.status_packet(args[0].split(b"\0", 1)[0]))

    def _get_status_unique(self, s: Session, args: tuple[bytes, ...]) -> None:
        s.send(self.m.status_unique_packet(args[0].split(b"\0", 1)[0]))

    def _echo(self, s: Session, args: tuple[bytes, ...]) -> None:
        s.send(P.packet(P.ECHO_RES, args[0]))

    def _option(self, s: Session, args: tuple[bytes, ...]) -> None:
        raw = args[0]
        name = raw.split(b"\0", 1)[0]
        if len(name) < 64 and name.lower() == b"exceptions":
            s.exceptions = True
            s.send(P.packet(P.OPTION_RES, raw))
        else:
            s.send(R.UNKNOWN_OPTION)

    def _set_client_id(self, s: Session, args: tuple[bytes, ...]) -> None:
        s.client_id = args[0][:127]
