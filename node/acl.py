"""Who may do what: python gear's ACL model, keyed by client-certificate CN.

Deny by default. Each entry names a subject (the common name of a client
certificate) and what it may do:

- ``register``: a regular expression of the functions it may register
  (CAN_DO / CAN_DO_TIMEOUT);
- ``invoke``: a regular expression of the functions it may submit to (every
  SUBMIT_JOB* packet) and whose jobs it may ``cancel job``;
- ``grant``: whether it may grant and revoke other subjects' permissions;
- ``admin`` (gearmesh's addition): whether it may run the admin commands that
  change the server (shutdown, drop/create function, maxqueue, verbose).

Patterns are matched from the start of the name (``re.match``), as in gear.
The file is gear's INI format (``geard --acl``): one section per subject.
Pure: no I/O beyond :func:`load_acl` reading the file it is given.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

OPTIONS = ("register", "invoke", "grant", "admin")


class ACLError(Exception):
    pass


def _compile(pattern: str | None) -> re.Pattern[bytes] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern.encode())
    except re.error as e:
        raise ACLError(f"Regular expression error: {e}") from None


@dataclass
class ACLEntry:
    subject: str
    register: str | None = None
    invoke: str | None = None
    grant: bool = False
    admin: bool = False
    _register: re.Pattern[bytes] | None = field(default=None, init=False, repr=False)
    _invoke: re.Pattern[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.set_register(self.register)
        self.set_invoke(self.invoke)

    def set_register(self, pattern: str | None) -> None:
        self._register = _compile(pattern)
        self.register = pattern or None

    def set_invoke(self, pattern: str | None) -> None:
        self._invoke = _compile(pattern)
        self.invoke = pattern or None

    def is_empty(self) -> bool:
        return self.register is None and self.invoke is None and not self.grant \
            and not self.admin

    def can_register(self, name: bytes) -> bool:
        return self._register is not None and self._register.match(name) is not None

    def can_invoke(self, name: bytes) -> bool:
        return self._invoke is not None and self._invoke.match(name) is not None

    def line(self) -> bytes:
        """The entry as gear's `acl list` prints it (Python's None/True/False)."""
        text = f"{self.subject}\tregister={self.register}\tinvoke={self.invoke}" \
               f"\tgrant={self.grant}"
        if self.admin:  # only then, so gear's own entries print exactly as gear does
            text += "\tadmin=True"
        return text.encode() + b"\n"


class ACL:
    """The mutable table the admin verbs change at run time (per node, not saved)."""

    def __init__(self, entries: list[ACLEntry] | None = None) -> None:
        self.subjects: dict[str, ACLEntry] = {}
        for e in entries or ():
            self.add(e)

    def add(self, entry: ACLEntry) -> None:
        if entry.subject in self.subjects:
            raise ACLError(f"An ACL entry for {entry.subject} already exists")
        self.subjects[entry.subject] = entry

    def remove(self, subject: str) -> None:
        if self.subjects.pop(subject, None) is None:
            raise ACLError(f"There is no ACL entry for {subject}")

    def entries(self) -> list[ACLEntry]:
        return [self.subjects[k] for k in sorted(self.subjects)]

    def _get(self, subject: str | None) -> ACLEntry | None:
        return None if subject is None else self.subjects.get(subject)

    def can_register(self, subject: str | None, name: bytes) -> bool:
        e = self._get(subject)
        return e is not None and e.can_register(name)

    def can_invoke(self, subject: str | None, name: bytes) -> bool:
        e = self._get(subject)
        return e is not None and e.can_invoke(name)

    def can_grant(self, subject: str | None) -> bool:
        e = self._get(subject)
        return e is not None and e.grant

    def can_admin(self, subject: str | None) -> bool:
        e = self._get(subject)
        return e is not None and e.admin

    def _entry(self, subject: str) -> ACLEntry:
        e = self.subjects.get(subject)
        if e is None:
            e = self.subjects[subject] = ACLEntry(subject)
        return e

    def grant(self, verb: str, subject: str, pattern: str | None = None) -> None:
        """`acl grant <verb> <subject> [pattern]`; ValueError for an unknown verb."""
        if verb in ("register", "invoke"):
            if not pattern:
                raise ACLError(f"grant {verb} needs a pattern")
            _compile(pattern)  # fail before creating an entry
            e = self._entry(subject)
            if verb == "register":
                e.set_register(pattern)
            else:
                e.set_invoke(pattern)
        elif verb == "grant":
            self._entry(subject).grant = True
        elif verb == "admin":
            self._entry(subject).admin = True
        else:
            raise ValueError(verb)

    def revoke(self, verb: str, subject: str) -> None:
        """`acl revoke <verb> <subject>`; ValueError for an unknown verb."""
        if verb == "all":
            self.subjects.pop(subject, None)
            return
        if verb not in OPTIONS:
            raise ValueError(verb)
        e = self.subjects.get(subject)
        if e is None:
            return
        if verb == "register":
            e.set_register(None)
        elif verb == "invoke":
            e.set_invoke(None)
        elif verb == "grant":
            e.grant = False
        else:
            e.admin = False
        if e.is_empty():
            del self.subjects[subject]


def parse_acl(text: str, source: str = "<acl>") -> ACL:
    """gear's ACL file: ``[subject]`` sections with register/invoke/grant (and admin)."""
    cp = configparser.RawConfigParser(default_section="\0none")
    try:
        cp.read_string(text, source)
    except configparser.Error as e:
        raise ACLError(f"{source}: {' '.join(str(e).split())}") from None
    acl = ACL()
    for section in cp.sections():
        unknown = sorted(set(cp.options(section)) - set(OPTIONS))
        if unknown:
            raise ACLError(f"{source}: [{section}]: unknown option {unknown[0]!r} "
                           f"(one of {', '.join(OPTIONS)})")
        try:
            entry = ACLEntry(section,
                             register=cp.get(section, "register", fallback=None),
                             invoke=cp.get(section, "invoke", fallback=None),
                             grant=cp.getboolean(section, "grant", fallback=False),
                             admin=cp.getboolean(section, "admin", fallback=False))
        except (ValueError, ACLError) as e:
            raise ACLError(f"{source}: [{section}]: {e}") from None
        acl.add(entry)
    return acl


def load_acl(path: Path) -> ACL:
    try:
        text = path.read_text()
    except OSError as e:
        raise ACLError(f"cannot read ACL file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ACLError(f"ACL file {path} is not UTF-8 text") from None
    return parse_acl(text, str(path))
