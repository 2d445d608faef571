"""TLS on the Gearman port with the real clients over real sockets: python
gear, Perl's Gearman::Client (IO::Socket::SSL), `openssl s_client`, and
libgearman's tools and PHP through a client-mode stunnel4."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.admin import wait_for_status
from tests.support.certs import Pki
from tests.support.procs import Spawned
from tests.support.rawclient import ConnectionClosed, RawClient, T
from tests.support.servers import ServerProcess, free_port
from tests.support.tlsclients import (
    Stunnel,
    context,
    gear_client,
    gear_worker,
    reversing,
    run_cli,
    run_job,
    server_args,
    tls_server,
)
from tests.support.waiting import wait_until

PERL = Path(__file__).resolve().parent / "perl" / "tls.pl"
PHP_DO = Path(__file__).resolve().parents[1] / "interop" / "php" / "do.php"


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One TLS node for the tests that leave it as they found it."""
    admin_port = free_port()
    with tls_server(pki, "--admin-port", str(admin_port),
                    workdir=tmp_path_factory.mktemp("tls-node")) as proc:
        proc.admin_port = admin_port  # type: ignore[attr-defined]
        yield proc


def _spawn(argv: list[str], procs: list[Spawned], **kw: object) -> Spawned:
    p = Spawned(argv, **kw)  # type: ignore[arg-type]
    procs.append(p)
    return p


@pytest.fixture
def procs() -> Iterator[list[Spawned]]:
    started: list[Spawned] = []
    yield started
    for p in started:
        p.kill()


def test_gear_client_and_worker_over_tls(server: ServerProcess, pki: Pki) -> None:
    worker = gear_worker(server.port, pki, pki.client("worker"))
    client = gear_client(server.port, pki, pki.client("client"))
    try:
        worker.registerFunction("tls-reverse")
        wait_for_status(server.address, "tls-reverse", workers=1, tls=context(pki.ca),
                        timeout=20)
        with reversing(worker, 3):
            results = [run_job(client, "tls-reverse", f"job-{i}".encode()) for i in range(3)]
        assert [b"".join(j.data) for j in results] == [b"0-boj", b"1-boj", b"2-boj"]
        assert not any(j.failure for j in results)
    finally:
        client.shutdown()
        worker.shutdown()


def test_tls_12_and_13_are_offered(server: ServerProcess, pki: Pki) -> None:
    # python gear turns TLS 1.3 off, so 1.2 must be there; 1.3 for everyone else.
    with RawClient(server.host_port, tls=context(pki.ca)) as c:
        assert c.sock.version() == "TLSv1.3"  # type: ignore[attr-defined]
        assert c.sync() == []
    twelve = context(pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
    with RawClient(server.host_port, tls=twelve) as c:
        assert c.sock.version() == "TLSv1.2"  # type: ignore[attr-defined]
        assert c.sync() == []
    eleven = context(pki.ca, max_version=ssl.TLSVersion.TLSv1_1)
    eleven.minimum_version = ssl.TLSVersion.TLSv1
    eleven.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        RawClient(server.host_port, tls=eleven)


def test_openssl_s_client_runs_admin_status_over_tls_12(server: ServerProcess, pki: Pki,
                                                        procs: list[Spawned]) -> None:
    worker = gear_worker(server.port, pki, pki.client("worker"))
    try:
        worker.registerFunction("seen-by-s_client")
        wait_for_status(server.address, "seen-by-s_client", workers=1, tls=context(pki.ca),
                        timeout=20)
        sc = _spawn(["openssl", "s_client", "-tls1_2", "-quiet", "-verify_return_error",
                     "-CAfile", str(pki.ca), "-verify_ip", "127.0.0.1",
                     "-connect", server.address], procs, name="s_client",
                    stdin_data=b"status\n")
        sc.wait_for_line(r"^\.$", timeout=30)
        assert "seen-by-s_client\t0\t0\t1" in sc.output().splitlines(), sc.output()
    finally:
        worker.shutdown()


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_perl_client_and_worker_with_use_ssl(server: ServerProcess, pki: Pki,
                                             procs: list[Spawned]) -> None:
    base = ["perl", str(PERL), "127.0.0.1", str(server.port), str(pki.ca)]
    _spawn([*base, "worker", "perl-tls", "2"], procs, name="perl worker")
    wait_for_status(server.address, "perl-tls", workers=1, tls=context(pki.ca), timeout=30)
    for word in ("hello", "world"):
        out = _spawn([*base, "do", "perl-tls", word], procs, name="perl client").finish(60)
        assert f"RESULT {word[::-1]}" in out.splitlines(), out


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_perl_refuses_a_certificate_without_the_dialled_san(pki: Pki, tmp_path: Path,
                                                            procs: list[Spawned]) -> None:
    """IO::Socket::SSL checks the host name; python gear does not, so the same
    server works for gear and is refused by Perl."""
    with tls_server(pki, cert=pki.no_san, workdir=tmp_path) as srv:
        out = _spawn(["perl", str(PERL), "127.0.0.1", str(srv.port), str(pki.ca), "do",
                      "anything", "x"], procs, name="perl client").finish(60)
        assert "NORESULT" in out.splitlines(), out
        assert "hostname verification failed" in out, out
        client = gear_client(srv.port, pki, pki.client("client"))
        client.shutdown()


def test_clients_refuse_a_wrong_ca_and_an_expired_certificate(pki: Pki,
                                                              tmp_path: Path) -> None:
    with tls_server(pki, cert=pki.other_server, workdir=tmp_path / "other") as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            RawClient(srv.host_port, tls=context(pki.ca))
        r = run_cli(["openssl", "s_client", "-verify_return_error", "-CAfile", str(pki.ca),
                     "-connect", srv.address], timeout=30, input_text="")  # EOF: it ends
        assert r.returncode != 0 and "unable to get local issuer" in r.stdout + r.stderr
    with (tls_server(pki, cert=pki.expired, workdir=tmp_path / "expired") as srv,
          pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired")):
        RawClient(srv.host_port, tls=context(pki.ca))


def test_plaintext_client_on_the_tls_port_is_dropped_and_others_carry_on(
        server: ServerProcess, pki: Pki) -> None:
    with RawClient(server.host_port, tls=context(pki.ca)) as tls_conn:
        assert tls_conn.sync() == []
        plain = RawClient(server.host_port)
        plain.send(T.ECHO_REQ, b"plaintext")
        got = b""
        try:
            plain.wait_closed(20)
        except AssertionError as e:
            got = str(e).encode()  # a TLS alert record is fine; Gearman bytes are not
        finally:
            plain.close()
        assert b"\0RES" not in got
        plain = RawClient(server.host_port)
        plain.send_line("status")
        with pytest.raises(ConnectionClosed):
            plain.read_line(20)
        plain.close()
        assert tls_conn.sync() == []
    assert server.running
    assert "Traceback" not in server.log_text()


def test_a_handshake_that_never_finishes_is_released(pki: Pki, tmp_path: Path) -> None:
    """The stalled socket neither holds a Gearman slot (--max-connections 1)
    nor stays open past --ssl-handshake-timeout."""
    with tls_server(pki, "--ssl-handshake-timeout", "1", "--max-connections", "1",
                    workdir=tmp_path) as srv:
        stalled = socket.create_connection(srv.host_port, timeout=30)
        stalled.sendall(b"\x16\x03\x01")  # the start of a record, never the rest
        with RawClient(srv.host_port, tls=context(pki.ca)) as c:
            assert c.sync() == []
        t0 = time.monotonic()
        assert stalled.recv(100) == b""  # the server closed it
        stalled.close()
        assert time.monotonic() - t0 < 25
        assert srv.running


def test_verify_client_requires_a_certificate_from_the_ca(pki: Pki, tmp_path: Path) -> None:
    with tls_server(pki, "--ssl-verify-client", probe=pki.client("client"),
                    workdir=tmp_path) as srv:
        with RawClient(srv.host_port, tls=context(pki.ca, pki.client("client"))) as c:
            assert c.sync() == []
        for cert in (None, pki.other_client):
            # With TLS 1.3 the client learns of the refusal at its first read.
            with (pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed)),
                  RawClient(srv.host_port, tls=context(pki.ca, cert)) as c):
                c.sync()
        assert srv.running


def test_admin_port_is_plaintext_loopback_and_text_only(server: ServerProcess) -> None:
    port: int = server.admin_port  # type: ignore[attr-defined]
    r = run_cli(["gearadmin", "-h", "127.0.0.1", "-p", str(port), "--status"], timeout=30)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == ".", r
    with RawClient(("127.0.0.1", port)) as c:
        c.send(T.SUBMIT_JOB, "f", "", "x")
        err = c.expect(T.ERROR)
        assert err.args() == [b"ERR_ADMIN_ONLY", b"this port takes admin text commands only"]
    with socket.socket() as s:
        s.settimeout(5)
        assert s.connect_ex((_non_loopback_ip(), port)) != 0


def _non_loopback_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent; it picks the route's address
            ip: str = s.getsockname()[0]
        except OSError:
            pytest.skip("no non-loopback address")
    if ip.startswith("127."):
        pytest.skip("no non-loopback address")
    return ip


@pytest.mark.skipif(shutil.which("stunnel4") is None, reason="stunnel4 is not installed")
def test_libgearman_tools_and_php_through_stunnel(server: ServerProcess, pki: Pki,
                                                  tmp_path: Path, procs: list[Spawned]) -> None:
    """Debian's libgearman has no TLS: `gearman`, `gearadmin` and PHP reach the
    TLS port through a local stunnel in client mode (docs/security.md)."""
    worker = gear_worker(server.port, pki, pki.client("worker"))
    try:
        worker.registerFunction("via-stunnel")
        wait_for_status(server.address, "via-stunnel", workers=1, tls=context(pki.ca),
                        timeout=20)
        with Stunnel(tmp_path, server.port, pki.ca) as tunnel, reversing(worker, 2):
            r = run_cli(["gearman", "-h", "127.0.0.1", "-p", str(tunnel.port),
                         "-f", "via-stunnel", "--", "cli"], timeout=60)
            assert (r.returncode, r.stdout) == (0, "ilc"), r
            r = run_cli(["gearadmin", "-h", "127.0.0.1", "-p", str(tunnel.port), "--status"],
                        timeout=60)
            assert r.returncode == 0 and "via-stunnel\t0\t0\t1" in r.stdout.splitlines(), r
            if shutil.which("php") is not None:
                out = _spawn(["php", str(PHP_DO), f"127.0.0.1:{tunnel.port}", "normal",
                              "via-stunnel", "from-php"], procs, name="php").finish(60)
                assert "RESULT php-morf" in out.splitlines(), out
    finally:
        worker.shutdown()


# -- start-up refusals ------------------------------------------------------

def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gearmesh", "serve", "-L", "127.0.0.1",
                           "-p", "0", "--http-port", "0", "--queue", "memory", *args],
                          capture_output=True, text=True, timeout=60, env=full)


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_missing_or_unreadable_files_refuse_to_start(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.key")
    line = _one_line(_serve(["--ssl", "--ssl-certificate", str(pki.server.cert),
                             "--ssl-key", missing]))
    assert line.endswith(f"cannot read server key {missing} (--ssl-key): No such file or "
                         "directory"), line
    line = _one_line(_serve(["--ssl", "--ssl-key", str(pki.server.key)]))
    assert line.endswith("server certificate missing: give --ssl-certificate"), line
    # A directory cannot be read as a file (root reads files whatever their mode).
    line = _one_line(_serve(["--ssl", "--ssl-certificate", str(tmp_path),
                             "--ssl-key", str(pki.server.key)]))
    assert "cannot read server certificate" in line and "Is a directory" in line, line
    # gearmand's environment overrides win over the flags, here for the worse.
    line = _one_line(_serve(server_args(pki), env={"GEARMAND_SERVER_KEY": missing}))
    assert f"cannot read server key {missing}" in line, line
    line = _one_line(_serve(["--ssl", "--ssl-certificate", str(pki.server.cert),
                             "--ssl-key", str(pki.client("client").key)]))
    assert "do not load" in line, line
    line = _one_line(_serve(["--ssl-certificate", str(pki.server.cert)]))
    assert line.endswith("--ssl-certificate needs --ssl (the port would be plaintext)"), line
    line = _one_line(_serve(["--ssl", "--ssl-verify-client", "--ssl-certificate",
                             str(pki.server.cert), "--ssl-key", str(pki.server.key)]))
    assert line.endswith("--ssl-verify-client needs --ssl-ca-file (the CA that signs client "
                         "certificates)"), line


def test_gearmesh_env_vars_configure_tls(pki: Pki, tmp_path: Path) -> None:
    env = {"GEARMESH_SSL": "1", "GEARMESH_SSL_CERTIFICATE": str(pki.server.cert),
           "GEARMESH_SSL_KEY": str(pki.server.key), "GEARMESH_SSL_CA_FILE": str(pki.ca)}
    with ServerProcess(kind="gearmesh", env={**os.environ, **env}, workdir=tmp_path,
                       tls=context(pki.ca)) as srv:
        wait_until(lambda: RawClient(srv.host_port, tls=context(pki.ca)).sync() == [], 20,
                   what="a TLS echo")
