"""The ACL's pure parts: the file format, pattern matching, the grant/revoke
table, and the per-connection Guard's decisions (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import protocol as P
from node.acl import ACL, ACLEntry, ACLError, load_acl, parse_acl
from node.guard import DENIED, Guard

FILE = """\
[client]
invoke = ^reverse$|^report-.*

[worker]
register = reverse|report-.*

[manager]
grant = true

[ops]
admin = yes
invoke = .*
"""


def _acl() -> ACL:
    return parse_acl(FILE, "acl.conf")


def test_file_sections_become_entries_sorted_by_subject() -> None:
    acl = _acl()
    assert [e.subject for e in acl.entries()] == ["client", "manager", "ops", "worker"]
    ops = acl.subjects["ops"]
    assert (ops.register, ops.invoke, ops.grant, ops.admin) == (None, ".*", False, True)


def test_patterns_match_from_the_start_of_the_name_as_gear_does() -> None:
    acl = _acl()
    assert acl.can_invoke("client", b"reverse")
    assert acl.can_invoke("client", b"report-daily")
    assert not acl.can_invoke("client", b"reverse2")  # anchored with $
    assert not acl.can_invoke("client", b"xreport-daily")  # re.match, not search
    assert acl.can_register("worker", b"reverse2")  # unanchored: a prefix is enough
    assert not acl.can_register("worker", b"other")
    assert not acl.can_register("client", b"reverse")  # invoke does not imply register


def test_deny_by_default() -> None:
    acl = _acl()
    for subject in ("nobody", None):
        assert not acl.can_invoke(subject, b"reverse")
        assert not acl.can_register(subject, b"reverse")
        assert not acl.can_grant(subject)
        assert not acl.can_admin(subject)


def test_list_lines_print_like_gears() -> None:
    acl = _acl()
    assert [e.line() for e in acl.entries()] == [
        b"client\tregister=None\tinvoke=^reverse$|^report-.*\tgrant=False\n",
        b"manager\tregister=None\tinvoke=None\tgrant=True\n",
        b"ops\tregister=None\tinvoke=.*\tgrant=False\tadmin=True\n",
        b"worker\tregister=reverse|report-.*\tinvoke=None\tgrant=False\n",
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("[a]\ninvoke = (\n", "acl.conf: [a]: Regular expression error: missing ), "
                          "unterminated subpattern at position 0"),
    ("[a]\nexecute = .*\n", "acl.conf: [a]: unknown option 'execute' "
                            "(one of register, invoke, grant, admin)"),
    ("[a]\ngrant = maybe\n", "acl.conf: [a]: Not a boolean: maybe"),
    ("invoke = .*\n", "acl.conf: File contains no section headers. file: 'acl.conf', "
                      "line: 1 'invoke = .*\\n'"),
    ("[a]\n[a]\n", "acl.conf: While reading from 'acl.conf' [line 2]: section 'a' "
                   "already exists"),
])
def test_bad_files_give_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ACLError) as e:
        parse_acl(text, "acl.conf")
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_load_acl_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ACLError, match=r"cannot read ACL file .*missing\.conf: No such file"):
        load_acl(tmp_path / "missing.conf")
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"\xff\xfe[a]\n")
    with pytest.raises(ACLError, match="is not UTF-8 text"):
        load_acl(binary)


def test_grant_and_revoke_change_the_table() -> None:
    acl = _acl()
    acl.grant("invoke", "nobody", "x.*")
    assert acl.can_invoke("nobody", b"xyz")
    acl.grant("register", "nobody", "y.*")
    acl.revoke("invoke", "nobody")
    assert not acl.can_invoke("nobody", b"xyz")
    assert acl.can_register("nobody", b"y")
    acl.revoke("register", "nobody")
    assert "nobody" not in acl.subjects  # an entry left empty goes, as in gear
    acl.grant("admin", "client")
    assert acl.can_admin("client")
    acl.revoke("all", "client")
    assert "client" not in acl.subjects
    acl.revoke("all", "never-there")  # gear ignores it: no error


def test_grant_refuses_bad_input_without_changing_anything() -> None:
    acl = _acl()
    with pytest.raises(ACLError, match="Regular expression error"):
        acl.grant("invoke", "newcomer", "(")
    assert "newcomer" not in acl.subjects
    with pytest.raises(ACLError, match="needs a pattern"):
        acl.grant("register", "newcomer")
    with pytest.raises(ValueError):
        acl.grant("execute", "newcomer", ".*")
    with pytest.raises(ValueError):
        acl.revoke("execute", "client")
    with pytest.raises(ACLError, match="already exists"):
        acl.add(ACLEntry("client"))


# -- the Guard -------------------------------------------------------------

def _args(ptype: int, *args: bytes) -> tuple[bytes, ...]:
    """The arguments the real decoder hands the connection for this packet."""
    events = P.Decoder(1 << 20).feed(P.request(ptype, *args))
    assert len(events) == 1 and events[0][0] == ptype, events
    parsed: tuple[bytes, ...] = events[0][1]
    return parsed


def _guard(subject: str | None, acl: ACL | None = None, jobs: dict[bytes, bytes] | None = None,
           admin_only: bool = False) -> Guard:
    table = jobs or {}
    return Guard(_acl() if acl is None else acl, subject, function_of=table.get,
                 admin_only=admin_only)


def test_guard_denies_submits_with_gears_error_and_ignores_refused_can_do() -> None:
    g = _guard("client")
    for ptype, extra in ((P.SUBMIT_JOB, ()), (P.SUBMIT_JOB_BG, ()), (P.SUBMIT_JOB_HIGH, ()),
                         (P.SUBMIT_JOB_LOW_BG, ()), (P.SUBMIT_JOB_EPOCH, (b"0",)),
                         (P.SUBMIT_REDUCE_JOB, (b"red", b"")),
                         (P.SUBMIT_REDUCE_JOB_BACKGROUND, (b"red", b""))):
        assert g.packet(ptype, _args(ptype, b"reverse", b"u", *extra, b"data")) is None
        assert g.packet(ptype, _args(ptype, b"secret", b"u", *extra, b"data")) == DENIED
    assert P.error_packet(b"0", b"Permission denied by ACL") == DENIED
    assert g.packet(P.CAN_DO, _args(P.CAN_DO, b"reverse")) == b""  # client may not register
    w = _guard("worker")
    assert w.packet(P.CAN_DO, _args(P.CAN_DO, b"reverse")) is None
    assert w.packet(P.CAN_DO_TIMEOUT, _args(P.CAN_DO_TIMEOUT, b"reverse", b"10")) is None
    assert w.packet(P.CAN_DO_TIMEOUT, _args(P.CAN_DO_TIMEOUT, b"secret", b"10")) == b""
    # Everything else is not the ACL's business (gear checks only these).
    assert w.packet(P.GRAB_JOB_UNIQ, _args(P.GRAB_JOB_UNIQ)) is None
    assert w.packet(P.ECHO_REQ, _args(P.ECHO_REQ, b"x")) is None


def test_guard_admin_commands_that_change_the_server_need_admin() -> None:
    for line in (b"shutdown", b"shutdown graceful", b"drop function f", b"create function f",
                 b"maxqueue f 10", b"verbose", b"SHUTDOWN"):
        assert _guard("manager").admin(line) == b"ERR PERMISSION_DENIED\n", line
        assert _guard("ops").admin(line) is None, line
    for line in (b"status", b"workers", b"version", b"getpid", b"show jobs", b""):
        assert _guard("nobody").admin(line) is None, line


def test_guard_cancel_job_needs_invoke_on_the_jobs_function() -> None:
    jobs = {b"H:n:1": b"reverse", b"H:n:2": b"secret"}
    assert _guard("client", jobs=jobs).admin(b"cancel job H:n:1") is None
    assert _guard("client", jobs=jobs).admin(b"cancel job H:n:2") == b"ERR PERMISSION_DENIED\n"
    assert _guard("ops", jobs=jobs).admin(b"cancel job H:n:2") is None
    # An unknown handle gets the admin protocol's own answer (ERR UNKNOWN_JOB).
    assert _guard("nobody", jobs=jobs).admin(b"cancel job H:n:9") is None


def test_guard_acl_verbs() -> None:
    acl = _acl()
    manager, client = _guard("manager", acl), _guard("client", acl)
    listing = manager.admin(b"acl list")
    assert listing is not None and listing.endswith(b"worker\tregister=reverse|report-.*"
                                                    b"\tinvoke=None\tgrant=False\n.\n")
    assert client.admin(b"acl grant invoke nobody x.*") == b"ERR PERMISSION_DENIED\n"
    assert manager.admin(b"acl grant invoke nobody x.*") == b"OK\n"
    assert acl.can_invoke("nobody", b"x1")
    assert manager.admin(b"acl grant execute nobody x") == b"ERR UNKNOWN_ACL_VERB\n"
    assert manager.admin(b"acl grant invoke nobody (") \
        == b"ERR UNABLE Regular expression error: missing ), unterminated subpattern " \
           b"at position 0\n"
    assert client.admin(b"acl revoke invoke worker") == b"ERR PERMISSION_DENIED\n"
    assert client.admin(b"acl revoke invoke client") == b"OK\n"  # its own entry: allowed
    assert not acl.can_invoke("client", b"reverse")
    assert _guard("worker", acl).admin(b"acl self-revoke register") == b"OK\n"
    assert "worker" not in acl.subjects
    assert manager.admin(b"acl self-revoke bogus") == b"ERR UNKNOWN_ACL_VERB\n"
    assert manager.admin(b"acl grant") \
        == b"ERR INVALID_ARGUMENTS acl grant <verb> <subject> [pattern]\n"
    assert manager.admin(b"acl frobnicate") == b"ERR UNKNOWN_COMMAND acl+frobnicate\n"


def test_guard_without_an_acl() -> None:
    g = Guard(None, None, function_of=lambda h: None)
    assert g.admin(b"acl list") == b"ERR ACL_DISABLED\n"
    assert g.admin(b"shutdown") is None
    assert g.packet(P.SUBMIT_JOB, _args(P.SUBMIT_JOB, b"f", b"", b"")) is None


def test_admin_only_guard_takes_text_commands_only() -> None:
    g = Guard(None, None, function_of=lambda h: None, admin_only=True)
    refusal = g.packet(P.SUBMIT_JOB, _args(P.SUBMIT_JOB, b"f", b"", b"x"))
    assert refusal == P.error_packet(b"ERR_ADMIN_ONLY", b"this port takes admin text "
                                                       b"commands only")
    assert g.packet(P.ECHO_REQ, _args(P.ECHO_REQ, b"x")) == refusal
    assert g.admin(b"status") is None
