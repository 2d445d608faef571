"""`gearmesh serve` as an operator meets it: flags, errors, daemon, signals."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.rawclient import RawClient, T
from tests.support.servers import GEARMESH as KIND
from tests.support.servers import ServerProcess, free_port
from tests.support.waiting import wait_until

GEARMESH = [sys.executable, "-m", "gearmesh"]


def run(args: list[str], env: dict[str, str] | None = None,
        timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GEARMESH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.timeout(30)
def test_bad_flag_is_one_line_and_exit_2() -> None:
    line = one_line_error(run(["serve", "--no-such-flag"]))
    assert "--no-such-flag" in line


@pytest.mark.timeout(30)
def test_bad_value_in_environment_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(run(["serve"], env={"GEARMESH_PORT": "notaport"}))
    assert "GEARMESH_PORT" in line


@pytest.mark.timeout(30)
def test_unknown_user_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(run(["serve", "-p", str(free_port()), "-u", "no-such-user-xyz",
                               "--data-dir", str(tmp_path)]))
    assert "no-such-user-xyz" in line


@pytest.mark.timeout(30)
def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(run(["serve", "-L", "127.0.0.1", "-p", str(port),
                                   "--http-port", "0", "--data-dir", str(tmp_path)]))
    assert "cannot listen" in line and str(port) in line


@pytest.mark.timeout(30)
def test_every_flag_has_an_environment_variable(tmp_path: Path) -> None:
    port = free_port()
    env = {"GEARMESH_PORT": str(port), "GEARMESH_LISTEN": "127.0.0.1",
           "GEARMESH_HTTP_PORT": "0", "GEARMESH_QUEUE": "memory",
           "GEARMESH_DATA_DIR": str(tmp_path), "GEARMESH_VERBOSE": "INFO"}
    proc = subprocess.Popen([*GEARMESH, "serve"], env={**os.environ, **env},
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _accepts(port), timeout=15, what="server up")
        with RawClient(("127.0.0.1", port)) as c:
            assert c.admin_line("verbose") == b"OK INFO\n"
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def _user() -> str:
    for name in ("gearmand", "gearman", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("no unprivileged user to drop to")


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_gearmand_start_line_works() -> None:
    """`gearmand -d -p 4730 -u gearmand -P ... -l ...` with gearmesh in its place."""
    user = _user()
    # pytest's own temp dirs are root-only; the dropped user must reach its files.
    tmp_path = Path(tempfile.mkdtemp(prefix="gearmesh-daemon-"))
    tmp_path.chmod(0o755)
    port = free_port()
    pid_file = tmp_path / "run" / "gearmand.pid"
    log_file = tmp_path / "log" / "gearmand.log"
    pid_file.parent.mkdir()
    log_file.parent.mkdir()
    # As Debian sets up /var/run/gearmand: owned by the service user, so the
    # node can remove its pid file on exit after dropping root.
    pw = pwd.getpwnam(user)
    os.chown(pid_file.parent, pw.pw_uid, pw.pw_gid)
    data = tmp_path / "data"
    proc = run(["serve", "-d", "-p", str(port), "-u", user, "-P", str(pid_file),
                "-l", str(log_file), "-L", "127.0.0.1", "--http-port", "0",
                "--data-dir", str(data)])
    assert proc.returncode == 0, proc.stderr
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
                         what="pid file"))
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(x for x in status.splitlines() if x.startswith("Uid:"))
        assert int(uid_line.split()[1]) == pwd.getpwnam(user).pw_uid
        wait_until(lambda: _accepts(port), timeout=15, what="daemon up")
        with RawClient(("127.0.0.1", port)) as c:
            assert c.request(T.ECHO_REQ, b"ping").payload == b"ping"
            handle = c.submit(b"mail", b"u1", b"payload", ptype=T.SUBMIT_JOB_BG)
            assert handle.startswith(b"H:")
        assert "listening" in log_file.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="daemon exit")
    assert not pid_file.exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.timeout(60)
def test_sigterm_lets_a_running_job_finish() -> None:
    with ServerProcess(kind=KIND, extra_args=["--grace", "20"]) as server, \
            RawClient(server.address) as worker, RawClient(server.address) as client:
        worker.can_do(b"slow")
        handle = client.submit(b"slow", b"", b"x")
        assert worker.grab().args()[0] == handle
        server.send_signal(signal.SIGTERM)
        # The port closes at once, but the job's connections stay.
        wait_until(lambda: not _accepts(server.port), what="port closed")
        worker.send(T.WORK_COMPLETE, handle, b"done")
        assert client.expect(T.WORK_COMPLETE).payload == handle + b"\0done"
        assert server.stop(timeout=20) == 0


@pytest.mark.timeout(60)
def test_sigusr1_exits_when_the_last_job_is_done() -> None:
    with ServerProcess(kind=KIND) as server, RawClient(server.address) as worker, \
            RawClient(server.address) as client:
        worker.can_do(b"f")
        handle = client.submit(b"f", b"", b"x")
        worker.grab()
        server.send_signal(signal.SIGUSR1)
        wait_until(lambda: not _accepts(server.port), what="port closed")
        assert server.running
        worker.send(T.WORK_COMPLETE, handle, b"")
        wait_until(lambda: not server.running, timeout=20, what="exit after the last job")
        assert server.stop() == 0


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
