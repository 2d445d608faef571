"""The per-connection permission check: the one hook between a connection's
decoded requests and whoever handles them.

A connection holds a :class:`Guard` only when something must be checked (an
ACL is configured, or it is the plaintext loopback admin listener); otherwise
it holds None and pays nothing. Replies copy python gear's server: a denied
submit gets ERROR ``0`` / ``Permission denied by ACL``, a denied CAN_DO is
ignored without a reply, admin denials are ``ERR PERMISSION_DENIED``, and the
``acl`` verbs answer as gear's do (``\\n`` line endings, as gear's).
"""

from __future__ import annotations

from collections.abc import Callable

from node import protocol as P
from node.acl import ACL, ACLError

SUBMITS = frozenset((P.SUBMIT_JOB, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_HIGH, P.SUBMIT_JOB_HIGH_BG,
                     P.SUBMIT_JOB_LOW, P.SUBMIT_JOB_LOW_BG, P.SUBMIT_JOB_SCHED,
                     P.SUBMIT_JOB_EPOCH, P.SUBMIT_REDUCE_JOB, P.SUBMIT_REDUCE_JOB_BACKGROUND))
REGISTERS = frozenset((P.CAN_DO, P.CAN_DO_TIMEOUT))
# Admin commands that change the server: they need the `admin` permission.
CHANGING = frozenset((b"shutdown", b"drop", b"create", b"maxqueue", b"verbose"))

DENIED = P.error_packet(b"0", b"Permission denied by ACL")
ADMIN_ONLY = P.error_packet(b"ERR_ADMIN_ONLY", b"this port takes admin text commands only")
PERMISSION_DENIED = b"ERR PERMISSION_DENIED\n"
ACL_DISABLED = b"ERR ACL_DISABLED\n"
UNKNOWN_VERB = b"ERR UNKNOWN_ACL_VERB\n"
OK = b"OK\n"


class Guard:
    """What one connection (identified by its certificate's CN) may do."""

    __slots__ = ("acl", "admin_only", "function_of", "subject")

    def __init__(self, acl: ACL | None, subject: str | None, *,
                 function_of: Callable[[bytes], bytes | None],
                 admin_only: bool = False) -> None:
        self.acl = acl
        self.subject = subject
        self.admin_only = admin_only
        # handle → function name of a job this node holds (for `cancel job`).
        self.function_of = function_of

    def packet(self, ptype: int, args: tuple[bytes, ...]) -> bytes | None:
        """None: go ahead. Bytes: refuse, sending them (b"": refuse silently).

        ``args`` are the decoder's arguments of the packet; the function name
        is the first of every submit and CAN_DO."""
        if self.admin_only:
            return ADMIN_ONLY
        acl = self.acl
        if acl is None:
            return None
        if ptype in SUBMITS:
            return None if acl.can_invoke(self.subject, args[0]) else DENIED
        if ptype in REGISTERS:
            # gear ignores a refused CAN_DO: the protocol has no reply to it.
            return None if acl.can_register(self.subject, args[0]) else b""
        return None

    def admin(self, line: bytes) -> bytes | None:
        """None: let the admin protocol answer. Bytes: this is the reply."""
        words = line.split(None, 4)
        if not words:
            return None
        word = words[0].lower()
        if word == b"acl":
            return self._acl_verb(words)
        acl = self.acl
        if acl is None:
            return None
        if word in CHANGING:
            return None if acl.can_admin(self.subject) else PERMISSION_DENIED
        if word == b"cancel" and len(words) == 3 and words[1].lower() == b"job":
            name = self.function_of(words[2])
            if name is None or acl.can_admin(self.subject) \
                    or acl.can_invoke(self.subject, name):
                return None  # unknown jobs get the admin protocol's own reply
            return PERMISSION_DENIED
        return None

    def _acl_verb(self, words: list[bytes]) -> bytes:
        acl = self.acl
        what = words[1].lower() if len(words) > 1 else b""
        if acl is None:
            return ACL_DISABLED
        if what == b"list":
            return b"".join(e.line() for e in acl.entries()) + b".\n"
        args = [w.decode(errors="replace") for w in words[2:]]
        try:
            if what == b"grant":
                if len(args) < 2:
                    return b"ERR INVALID_ARGUMENTS acl grant <verb> <subject> [pattern]\n"
                if not acl.can_grant(self.subject):
                    return PERMISSION_DENIED
                acl.grant(args[0], args[1], args[2] if len(args) > 2 else None)
            elif what == b"revoke":
                if len(args) < 2:
                    return b"ERR INVALID_ARGUMENTS acl revoke <verb> <subject>\n"
                if args[1] != self.subject and not acl.can_grant(self.subject):
                    return PERMISSION_DENIED
                acl.revoke(args[0], args[1])
            elif what == b"self-revoke":
                if not args:
                    return b"ERR INVALID_ARGUMENTS acl self-revoke <verb>\n"
                if self.subject is not None:
                    acl.revoke(args[0], self.subject)
                elif args[0] not in ("register", "invoke", "grant", "admin", "all"):
                    raise ValueError(args[0])
            else:
                return b"ERR UNKNOWN_COMMAND acl+" + what + b"\n"
        except ValueError:
            return UNKNOWN_VERB
        except ACLError as e:
            return b"ERR UNABLE " + str(e).encode() + b"\n"
        return OK
