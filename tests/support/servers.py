"""Start a Gearman job server (gearmesh, or gearmand as the reference) for a test.

The flavour comes from the environment variable GEARMESH_TEST_SERVER:
``gearmesh`` (default) runs this project's server, ``gearmand`` runs the
reference implementation so that the same tests can be validated against it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from node import protocol as P

SERVER_ENV = "GEARMESH_TEST_SERVER"
GEARMESH = "gearmesh"
GEARMAND = "gearmand"
GEARMAND_BINARY = "/usr/sbin/gearmand"

# gearmand only knows the short spelling of these; gearmesh accepts both.
_GEARMAND_SPELLING = {"--job-retries": "-j", "--worker-wakeup": "-w", "--threads": "-t"}


def server_kind() -> str:
    """Which server the suite runs against (validated)."""
    kind = os.environ.get(SERVER_ENV, GEARMESH).strip().lower() or GEARMESH
    if kind not in (GEARMESH, GEARMAND):
        raise ValueError(f"{SERVER_ENV} must be {GEARMESH!r} or {GEARMAND!r}, not {kind!r}")
    return kind


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller must cope with a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerStartError(RuntimeError):
    """The server process died or never accepted connections."""


def _echo_roundtrip(port: int, timeout: float, tls: ssl.SSLContext | None = None) -> bool:
    """True once the port accepts a connection and answers ECHO_REQ.

    Listening alone is not proof that the server speaks the protocol yet.
    """
    token = b"ready?"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            sock = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw
            sock.sendall(P.request(P.ECHO_REQ, token))
            want = P.packet(P.ECHO_RES, token)
            got = b""
            while len(got) < len(want):
                chunk = sock.recv(len(want) - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == want
    except OSError:
        return False


class ServerProcess:
    """One server subprocess on a free loopback port.

    Use as a context manager, or call start() and stop() yourself. stderr and
    stdout go to ``log_path`` so a failing test can show what the server said.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        kind: str | None = None,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 20.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        # A TLS port is probed for readiness through this client context.
        self.tls = tls
        self.kind = kind or server_kind()
        self.extra_args = list(extra_args)
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="gearmesh-test-"))
        self.env = dict(env) if env is not None else None
        self.start_timeout = start_timeout
        self.log_path = self.workdir / "server.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_text: str | None = None

    # -- description -----------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def host_port(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, port: int) -> list[str]:
        if self.kind == GEARMAND:
            return self._gearmand_command(port)
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        return [
            sys.executable, "-m", "gearmesh", "serve",
            "-L", "127.0.0.1", "-p", str(port),
            "--http-port", "0", "--queue", "memory", "--data-dir", str(data_dir),
            *self.extra_args,
        ]  # fmt: skip

    def _gearmand_command(self, port: int) -> list[str]:
        verbose = "ERROR"
        extra: list[str] = []
        args = iter(self.extra_args)
        for arg in args:
            if arg == "--verbose":
                verbose = next(args)
            elif arg.startswith("--verbose="):
                verbose = arg.split("=", 1)[1]
            else:
                extra.append(_GEARMAND_SPELLING.get(arg, arg))
        # An explicit pid file keeps parallel servers from fighting over the
        # default /var/gearmand.pid.
        return [
            GEARMAND_BINARY, "-L", "127.0.0.1", "-p", str(port),
            "-l", "stderr", "--verbose", verbose,
            "-P", str(self.workdir / "gearmand.pid"), *extra,
        ]  # fmt: skip

    # -- lifecycle -------------------------------------------------------
    def start(self) -> ServerProcess:
        """Launch (unless launch() was already called) and wait until ready."""
        # free_port() can race with other processes; a server that lost the
        # race exits at once, so a few fresh attempts make that harmless.
        last_error: ServerStartError | None = None
        for attempt in range(3):
            if attempt or self._proc is None:
                self.launch()
            try:
                self.wait_ready()
                return self
            except ServerStartError as exc:
                last_error = exc
                if self.running:
                    break  # alive but not answering: retrying will not help
        self.stop()
        assert last_error is not None
        raise last_error

    def launch(self) -> None:
        """Start the process on a fresh port without waiting for it."""
        self.port = port = free_port()
        env = dict(os.environ)
        env.pop("GEARMAND_PORT", None)  # gearmand would let it override -p
        if self.env:
            env.update(self.env)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.command(port))}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # a Ctrl-C of pytest must not hit it first
            )

    def wait_ready(self) -> None:
        """Poll until the server answers ECHO, or raise ServerStartError."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("server not launched")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"{self.kind} exited with {proc.returncode} before accepting "
                    f"connections:\n{self.log_text()}"
                )
            if _echo_roundtrip(self.port, timeout=1.0, tls=self.tls):
                return
            time.sleep(0.02)  # polling interval, not a synchronisation delay
        raise ServerStartError(
            f"{self.kind} did not answer on port {self.port} within {self.start_timeout}s:\n"
            f"{self.log_text()}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit status (None if never started)."""
        proc = self._proc
        rc: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
            rc = proc.returncode
        self._keep_log_and_clean_up()
        return rc

    def kill9(self) -> None:
        """Simulate a crash: SIGKILL and reap."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def send_signal(self, signum: int) -> None:
        if self._proc is None:
            raise RuntimeError("server not started")
        self._proc.send_signal(signum)

    def _keep_log_and_clean_up(self) -> None:
        if self._owns_workdir and self.workdir.exists():
            self._log_text = self.log_text()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        if self._log_text is not None:
            return self._log_text
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.kind} {self.address}>"
