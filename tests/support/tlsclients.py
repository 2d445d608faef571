"""Clients for the TLS tests: python gear with certificates, a client-mode
stunnel in front of a TLS port (how PHP and libgearman's tools reach it),
and SSL contexts for the raw client.

A TLS gearmesh server is started with :func:`tls_server`, which probes its
readiness through TLS.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import gear

from tests.support.certs import Cert, Pki
from tests.support.etcd import EtcdServer
from tests.support.servers import GEARMESH, ServerProcess, free_port
from tests.support.waiting import wait_until


def context(ca: Path | None, cert: Cert | None = None, *, check_hostname: bool = True,
            max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx

def server_args(pki: Pki, cert: Cert | None = None, *extra: str) -> list[str]:
    c = cert or pki.server
    return ["--ssl", "--ssl-ca-file", str(pki.ca), "--ssl-certificate", str(c.cert),
            "--ssl-key", str(c.key), *extra]

def tls_server(pki: Pki, *extra: str, cert: Cert | None = None,
               probe: Cert | None = None, workdir: Path | None = None) -> ServerProcess:
    """A gearmesh on a TLS port; ``probe`` is the client certificate the
    readiness probe presents (needed with --ssl-verify-client)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(server_args(pki, cert, *extra), kind=GEARMESH, workdir=workdir,
                         tls=_probe_context(probe))


def _probe_context(cert: Cert | None) -> ssl.SSLContext:
    # Readiness only: the tests that use a wrong or expired server certificate
    # start such servers too, so the probe does not judge the certificate.
    ctx = context(None, cert, check_hostname=False)
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

def gear_client(port: int, pki: Pki, who: Cert, name: str = "tls-client",
                ca: Path | None = None) -> gear.Client:
    """python gear 0.16 uses TLS only when key, cert and CA are all given."""
    c = gear.Client(name)
    c.addServer("127.0.0.1", port, str(who.key), str(who.cert), str(ca or pki.ca))
    c.waitForServer(20)
    return c

def gear_worker(port: int, pki: Pki, who: Cert, name: str = "tls-worker") -> gear.Worker:
    w = gear.Worker(name)
    w.addServer("127.0.0.1", port, str(who.key), str(who.cert), str(pki.ca))
    w.waitForServer(20)
    return w

@contextlib.contextmanager
def reversing(worker: gear.Worker, count: int) -> Iterator[threading.Thread]:
    """Serve ``count`` jobs of whatever the worker registered, reversed."""
    def run() -> None:
        for _ in range(count):
            try:
                job = worker.getJob()
            except gear.InterruptedError:
                return
            job.sendWorkComplete(job.arguments[::-1])

    t = threading.Thread(target=run, name="tls-reverser", daemon=True)
    t.start()
    try:
        yield t
    finally:
        worker.stopWaitingForJobs()
        t.join(10)

def run_job(client: gear.Client, name: str, data: bytes, timeout: float = 20.0) -> gear.Job:
    """Submit a foreground job and wait for its end (complete or failed)."""
    job = gear.Job(name, data)
    client.submitJob(job, timeout=timeout)
    wait_until(lambda: job.complete, timeout, what=f"job {name} to finish")
    return job

class Stunnel:
    """stunnel4 in client mode: plaintext on a loopback port, TLS to ``port``,
    checking the server's chain and its IP SAN."""

    def __init__(self, workdir: Path, port: int, ca: Path, cert: Cert | None = None) -> None:
        self.port = free_port()
        self.log = workdir / "stunnel.log"
        conf = workdir / "stunnel.conf"
        lines = ["foreground = yes", f"output = {self.log}", "debug = info", "",
                 "[gearman]", "client = yes", f"accept = 127.0.0.1:{self.port}",
                 f"connect = 127.0.0.1:{port}", f"CAfile = {ca}", "verifyChain = yes",
                 "checkIP = 127.0.0.1"]
        if cert is not None:
            lines += [f"cert = {cert.cert}", f"key = {cert.key}"]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([shutil.which("stunnel4") or "stunnel", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # Listening is announced in its log; a connection before that is refused.
        wait_until(lambda: self.log.exists() and "Configuration successful"
                   in self.log.read_text(errors="replace"), 20, what="stunnel to start")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Stunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

def run_cli(argv: Sequence[str], timeout: float = 60.0, env: dict[str, str] | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env,
                          input=input_text, stdin=None if input_text is not None
                          else subprocess.DEVNULL)



class TLSEtcdServer(EtcdServer):
    """etcd serving clients over TLS and requiring client certificates
    (--client-cert-auth), on free ports like the plaintext one."""

    def __init__(self, pki: Pki, data_dir: Path) -> None:
        super().__init__("etcd-tls", data_dir=str(data_dir))
        self.pki = pki

    @property
    def client_url(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    def _argv(self) -> list[str]:
        s = self.pki.etcd_server
        return [*super()._argv(), "--cert-file", str(s.cert), "--key-file", str(s.key),
                "--trusted-ca-file", str(self.pki.ca), "--client-cert-auth"]

    def client_args(self) -> list[str]:
        """gearmesh's flags for this etcd (etcdctl's --cacert/--cert/--key)."""
        c = self.pki.etcd_client
        return ["--etcd", self.endpoint, "--etcd-cacert", str(self.pki.ca),
                "--etcd-cert", str(c.cert), "--etcd-key", str(c.key)]

    def healthy(self) -> bool:
        ctx = context(self.pki.ca, self.pki.etcd_client)
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=1.0,
                                        context=ctx) as resp:
                body = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(body.get("health") in ("true", True))
