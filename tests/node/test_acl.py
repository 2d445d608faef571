"""Certificate ACLs with real clients over TLS, side by side with python
gear's own ``gear.Server`` given the same ACL: the same requests get the same
answers, except where gear 0.16 is broken on Python 3 (noted per case and in
docs/security.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gear
import pytest

from tests.support.certs import Pki
from tests.support.rawclient import RawClient, T
from tests.support.servers import ServerProcess
from tests.support.tlsclients import (
    context,
    gear_client,
    gear_worker,
    reversing,
    run_job,
    tls_server,
)
from tests.support.waiting import wait_until

ACL_FILE = """\
# gear's format (geard --acl), plus gearmesh's admin permission
[client]
invoke = ^reverse$

[worker]
register = ^reverse$

[manager]
grant = true

[admin]
invoke = .*
admin = true
"""

# The same table for gear.Server, built as geard builds it from that file.
ENTRIES = [("client", None, "^reverse$", False), ("worker", "^reverse$", None, False),
           ("manager", None, None, True), ("admin", None, ".*", False)]


def _gear_acl(as_bytes: bool) -> gear.ACL:
    """gear 0.16 compiles str patterns and matches them against bytes function
    names, which raises TypeError on Python 3 (its server then drops the
    connection); bytes patterns work for packets but print as b'...' in
    `acl list`. So packets are compared with a bytes table and the admin
    verbs with a str one."""
    acl = gear.ACL()
    for subject, register, invoke, grant in ENTRIES:
        enc = (lambda p: p.encode() if p is not None else None) if as_bytes \
            else (lambda p: p)
        acl.add(gear.ACLEntry(subject, enc(register), enc(invoke), grant))
    return acl


class GearServer:
    def __init__(self, pki: Pki, acl: gear.ACL | None) -> None:
        self.server = gear.Server(0, str(pki.server.key), str(pki.server.cert), str(pki.ca),
                                  acl=acl, host="127.0.0.1")
        self.host_port = ("127.0.0.1", self.server.port)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def gearmesh(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("acl-node")
    (d / "acl.conf").write_text(ACL_FILE)
    with tls_server(pki, "--acl-file", str(d / "acl.conf"), workdir=d / "node") as proc:
        yield proc


@pytest.fixture(scope="module")
def gear_jobs(pki: Pki) -> Iterator[GearServer]:
    s = GearServer(pki, _gear_acl(as_bytes=True))
    yield s
    s.close()


@pytest.fixture(scope="module")
def gear_admin(pki: Pki) -> Iterator[GearServer]:
    s = GearServer(pki, _gear_acl(as_bytes=False))
    yield s
    s.close()


def _conn(pki: Pki, host_port: tuple[str, int], who: str) -> RawClient:
    return RawClient(host_port, timeout=20,
                     tls=context(pki.ca, pki.client(who), check_hostname=False))


def _admin(pki: Pki, host_port: tuple[str, int], who: str, line: str) -> bytes:
    """The reply's bytes; gearmesh ends its other admin replies with \r\n as
    gearmand does, gear with \n, so line ends are compared as \n."""
    with _conn(pki, host_port, who) as c:
        c.send_line(line, eol=b"\n")
        first = c.read_line()
        if line == "acl list" and not first.startswith(b"ERR") and first != b".\n":
            first += c.read_list()
        return first.replace(b"\r\n", b"\n")


def _submit(pki: Pki, host_port: tuple[str, int], who: str, fn: str,
            ptype: int = T.SUBMIT_JOB_BG) -> tuple[int, bytes]:
    with _conn(pki, host_port, who) as c:
        c.send(ptype, fn, "", "data")
        p = c.recv()
        return p.ptype, p.payload


def test_submits_are_allowed_and_denied_alike(pki: Pki, gearmesh: ServerProcess,
                                              gear_jobs: GearServer) -> None:
    for who, fn in (("client", "reverse"), ("client", "reversed"), ("client", "secret"),
                    ("worker", "reverse"), ("nobody", "reverse"), ("admin", "secret")):
        ours = _submit(pki, gearmesh.host_port, who, fn)
        theirs = _submit(pki, gear_jobs.host_port, who, fn)
        assert ours[0] == theirs[0], (who, fn, ours, theirs)
        if theirs[0] == T.ERROR:
            # gear ends its ERROR with a stray NUL; gearmesh sends gearmand's
            # two arguments (code, text) and nothing after them.
            assert theirs[1] == b"0\0Permission denied by ACL\0", (who, fn)
            assert ours[1] == b"0\0Permission denied by ACL", (who, fn)
        else:
            assert theirs[0] == T.JOB_CREATED, (who, fn, theirs)


def _registered(pki: Pki, host_port: tuple[str, int], who: str, functions: list[str],
                probe: str) -> list[str]:
    """Register ``functions``, then list what `status` shows for them."""
    with _conn(pki, host_port, who) as w:
        for fn in functions:
            w.send(T.CAN_DO, fn)
        # gear.Server does not answer ECHO_REQ; a text command on the same
        # connection is answered after the CAN_DOs, so it proves they were read
        # (and that a refused CAN_DO got no reply: the protocol has none).
        w.send_line("status", eol=b"\n")
        assert w.read_list().endswith(b".\n")
        with _conn(pki, host_port, probe) as admin:
            rows = admin.admin_list("status", eol=b"\n")
    return sorted(r.split("\t")[0] for r in rows if r.split("\t")[-1] != "0")


def test_can_do_is_filtered_alike(pki: Pki, gearmesh: ServerProcess,
                                  gear_jobs: GearServer) -> None:
    fns = ["reverse", "secret"]
    ours = _registered(pki, gearmesh.host_port, "worker", fns, "nobody")
    theirs = _registered(pki, gear_jobs.host_port, "worker", fns, "nobody")
    assert ours == theirs == ["reverse"]
    assert _registered(pki, gearmesh.host_port, "client", fns, "nobody") == []
    assert _registered(pki, gear_jobs.host_port, "client", fns, "nobody") == []


def test_acl_list_and_refusals_answer_as_gear(pki: Pki, gearmesh: ServerProcess,
                                              gear_admin: GearServer) -> None:
    for who, line in (("manager", "acl list"), ("nobody", "acl list"),
                      ("client", "acl grant invoke newcomer x.*"),
                      ("worker", "acl revoke invoke client"),
                      ("nobody", "acl revoke all admin")):
        ours = _admin(pki, gearmesh.host_port, who, line)
        theirs = _admin(pki, gear_admin.host_port, who, line)
        # gear lists what it has; gearmesh adds `admin=True` only to entries
        # that have gearmesh's own permission.
        assert ours.replace(b"\tadmin=True", b"") == theirs, (who, line)
    assert _admin(pki, gearmesh.host_port, "nobody", "acl list") == (
        b"admin\tregister=None\tinvoke=.*\tgrant=False\tadmin=True\n"
        b"client\tregister=None\tinvoke=^reverse$\tgrant=False\n"
        b"manager\tregister=None\tinvoke=None\tgrant=True\n"
        b"worker\tregister=^reverse$\tinvoke=None\tgrant=False\n.\n")


def test_acl_disabled_alike(pki: Pki, tmp_path: Path) -> None:
    theirs = GearServer(pki, None)
    try:
        with tls_server(pki, workdir=tmp_path) as ours:
            for line in ("acl list", "acl grant invoke x .*", "acl self-revoke all"):
                a = _admin(pki, ours.host_port, "nobody", line)
                b = _admin(pki, theirs.host_port, "nobody", line)
                assert a == b == b"ERR ACL_DISABLED\n", line
            # No --acl-file: today's behaviour, anyone may submit and register.
            assert _submit(pki, ours.host_port, "nobody", "anything")[0] == T.JOB_CREATED
    finally:
        theirs.close()


def test_grant_revoke_and_self_revoke_work(pki: Pki, gearmesh: ServerProcess,
                                           gear_admin: GearServer) -> None:
    """gear 0.16 compares the verb (bytes) with str literals, so on Python 3
    every permitted grant/revoke/self-revoke answers ERR UNKNOWN_ACL_VERB and
    changes nothing; gearmesh does what gear's code means."""
    for who, line in (("manager", "acl grant invoke newcomer ^new"),
                      ("client", "acl self-revoke invoke")):
        assert _admin(pki, gear_admin.host_port, who, line) == b"ERR UNKNOWN_ACL_VERB\n"
    hp = gearmesh.host_port
    assert _submit(pki, hp, "nobody", "newfn")[0] == T.ERROR
    assert _admin(pki, hp, "manager", "acl grant invoke nobody ^new") == b"OK\n"
    assert _submit(pki, hp, "nobody", "newfn")[0] == T.JOB_CREATED
    assert _admin(pki, hp, "nobody", "acl self-revoke invoke") == b"OK\n"
    assert _submit(pki, hp, "nobody", "newfn")[0] == T.ERROR
    assert _admin(pki, hp, "manager", "acl grant register nobody ^x") == b"OK\n"
    assert _admin(pki, hp, "manager", "acl revoke all nobody") == b"OK\n"
    assert b"nobody" not in _admin(pki, hp, "manager", "acl list")
    assert _admin(pki, hp, "manager", "acl grant execute nobody x") == b"ERR UNKNOWN_ACL_VERB\n"


def test_cancel_job_needs_invoke_on_its_function(pki: Pki, gearmesh: ServerProcess,
                                                 gear_jobs: GearServer) -> None:
    for hp in (gearmesh.host_port, gear_jobs.host_port):
        ptype, handle = _submit(pki, hp, "admin", "cancel-me")
        assert ptype == T.JOB_CREATED
        h = handle.decode()
        assert _admin(pki, hp, "client", f"cancel job {h}") == b"ERR PERMISSION_DENIED\n"
        assert _admin(pki, hp, "admin", f"cancel job {h}") == b"OK\n"
        assert _admin(pki, hp, "admin", f"cancel job {h}") == b"ERR UNKNOWN_JOB\n"


def test_commands_that_change_the_server_need_admin(pki: Pki,
                                                    gearmesh: ServerProcess) -> None:
    """gear.Server has no such commands; gearmesh guards them."""
    hp = gearmesh.host_port
    for line in ("shutdown", "drop function reverse", "create function x",
                 "maxqueue reverse 10", "verbose"):
        assert _admin(pki, hp, "manager", line) == b"ERR PERMISSION_DENIED\n", line
    assert gearmesh.running
    assert _admin(pki, hp, "admin", "maxqueue reverse 10") == b"OK\n"
    assert _admin(pki, hp, "nobody", "status").endswith(b"\n")  # reading is for everyone


def test_gear_library_end_to_end_under_the_acl(pki: Pki, gearmesh: ServerProcess) -> None:
    worker = gear_worker(gearmesh.port, pki, pki.client("worker"))
    client = gear_client(gearmesh.port, pki, pki.client("client"))
    try:
        worker.registerFunction("reverse")
        with _conn(pki, gearmesh.host_port, "nobody") as probe:
            wait_until(lambda: any(r.startswith("reverse\t") and r.endswith("\t1")
                                   for r in probe.admin_list("status", eol=b"\n")),
                       20, what="the worker's CAN_DO")
        # Earlier tests left allowed background `reverse` jobs queued.
        with reversing(worker, 10):
            job = run_job(client, "reverse", b"acl")
        assert b"".join(job.data) == b"lca"
        # gear's client raises when every server refuses the submit.
        with pytest.raises(gear.GearmanError, match="Unable to submit job"):
            client.submitJob(gear.Job("secret", b"x"), timeout=20)
    finally:
        client.shutdown()
        worker.shutdown()
