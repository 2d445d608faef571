"""The admin text protocol (what `gearadmin` and `telnet host 4730` speak).

Replies copy gearmand 1.1.20 byte for byte where a client can see it, line
endings included: lists end in ``\\n`` and ``.\\n``, OK/ERR in ``\\r\\n``, and
``version``/``getpid``/``verbose`` in ``\\n``. List order is ours (gearmand's
follows its hash table), which no client depends on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from node.job import HIGH, LOW, NORMAL
from node.jobs import JobManager
from node.jobstate import QUEUED
from node.protocol import c_atoi, split_admin
from node.session import Session

VERSION = b"1.1.20"
MAX_TOKENS = 5


def _unknown(word: bytes) -> bytes:
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + word + b"\r\n"


def _invalid(word: bytes) -> bytes:
    return (b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
            + word + b"\r\n")


@dataclass
class AdminContext:
    """What admin commands need beyond the job table."""

    verbose: str = "ERROR"
    shutdown: Callable[[bool], None] | None = None  # graceful?
    extra_status: Callable[[], bytes] | None = None
    pid: int = field(default_factory=os.getpid)


class Admin:
    def __init__(self, manager: JobManager, ctx: AdminContext) -> None:
        self.m = manager
        self.ctx = ctx

    def handle(self, s: Session, line: bytes) -> bytes | None:
        """The reply to one line, or None: close the connection (too many tokens)."""
        tokens = split_admin(line)
        if len(tokens) > MAX_TOKENS:
            return None
        word = tokens[0].lower()
        argc = len(tokens)
        m = self.m
        if word == b"status":
            return b"".join(b"%s\t%d\t%d\t%d\n" % (st.name.split(b"\0", 1)[0],
                                                   st.queued + st.running, st.running, st.workers)
                            for st in m.function_stats()) + b".\n"
        if word == b"prioritystatus":
            out = []
            for fn in m.functions.values():
                counts = [sum(1 for j in q if j.state == QUEUED) for q in fn.queues]
                out.append(b"%s\t%d\t%d\t%d\t%d\n" % (fn.name.split(b"\0", 1)[0], counts[HIGH],
                                                      counts[NORMAL] + fn.delayed + fn.pending,
                                                      counts[LOW], fn.workers))
            return b"".join(out) + b".\n"
        if word == b"workers":
            out = []
            for sess in reversed(list(m.sessions.values())):  # newest connection first
                funcs = b"".join(b" " + fn.name.split(b"\0", 1)[0] for fn, _ in sess.regs)
                out.append(b"%d %s %s :%s\n" % (sess.fd, sess.peer.encode(), sess.client_id,
                                                funcs))
            return b"".join(out) + b".\n"
        if word == b"show" and argc >= 2:
            what = tokens[1].lower()
            if argc == 2 and what == b"jobs":
                return b"".join(b"%s\t%d\t0\t%d\n" % (m.handle_of(j), j.retries, int(j.bg))
                                for j in m.jobs.values()) + b".\n"
            if argc == 3 and what == b"unique" and tokens[2].lower() == b"jobs":
                return b"".join(j.unique + b"\n" for j in m.jobs.values()) + b".\n"
            return b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
        if word == b"cancel" and argc >= 3:
            if argc == 3 and tokens[1].lower() == b"job":
                return b"OK\r\n" if m.cancel(tokens[2]) else b"ERR UNKNOWN_JOB\r\n"
            return b"ERR UNKNOWN_ERROR\r\n"
        if word == b"create":
            if argc == 3 and tokens[1].lower() == b"function":
                m.function(tokens[2])
                return b"OK\r\n"
            return _invalid(b"create")
        if word == b"drop":
            if argc == 3 and tokens[1].lower() == b"function":
                result = m.drop_function(tokens[2])
                if result == "ok":
                    return b"OK\r\n"
                if result == "busy":
                    return b"ERR there are still connected workers or executing clients\r\n"
                return b"ERR function not found\r\n"
            return _invalid(b"drop")
        if word == b"maxqueue":
            if argc == 1:
                return _invalid(b"maxqueue")
            vals = [c_atoi(t) for t in tokens[2:]]
            if not vals:
                limits = [0, 0, 0]
            elif len(vals) == 1:
                limits = [vals[0]] * 3
            elif len(vals) == 2:
                limits = [vals[0], vals[1], 0]
            else:
                limits = vals[:3]
            m.set_maxqueue(tokens[1], limits)
            return b"OK\r\n"
        if word == b"version":
            return b"OK " + VERSION + b"\n"
        if word == b"getpid":
            return b"OK %d\n" % self.ctx.pid
        if word == b"verbose":
            return b"OK " + self.ctx.verbose.encode() + b"\n"
        if word == b"acl":
            # gear's reply when no ACL is configured (node/guard.py answers otherwise).
            return b"ERR ACL_DISABLED\n"
        if word == b"shutdown" and self.ctx.shutdown is not None:
            # gearmand 1.1.20 has no shutdown command; later gearmands and
            # gear.Server accept `shutdown [graceful]`.
            graceful = argc >= 2 and tokens[1].lower() == b"graceful"
            self.ctx.shutdown(graceful)
            return b"OK\r\n"
        return _unknown(tokens[0])
