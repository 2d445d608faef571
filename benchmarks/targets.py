"""Server setups the benchmarks start and stop: gearmand, a standalone
gearmesh node (memory or SQLite queue), a gearmesh cluster on a private
etcd, and python `gear`'s own server (gear.Server). Every process listens
on free loopback ports and lives in its own temporary directory, removed on
stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
PY = str(VENV_PY) if VENV_PY.exists() else sys.executable
GEARMAND = "/usr/sbin/gearmand"
ETCD = "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool | None:
    """True on 200, False while not ready, None when the path does not exist."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        return None if exc.code == 404 else False
    except OSError:
        return False


@dataclass
class Proc:
    name: str
    cmd: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fh = self.log.open("wb")
        self.popen = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=ROOT)
        fh.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def tail(self, n: int = 8) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def node_metrics(url: str) -> dict[str, float]:
    """Every unlabelled sample of one node's /metrics; empty when it cannot
    be read."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


def node_counters(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The named unlabelled counters (gearmesh_NAME_total) of one node's
    /metrics; empty when it cannot be read."""
    samples = node_metrics(url)
    return {n: samples[f"gearmesh_{n}_total"] for n in names
            if f"gearmesh_{n}_total" in samples}


class StartFailed(Exception):
    pass


@dataclass
class Target:
    """One kind of server setup. start() returns the --servers list."""

    key: str
    label: str
    procs: list[Proc] = field(default_factory=list)
    tmp: Path | None = None
    # Whether jobs have owners on several nodes, so that the placement
    # scenarios (rt-3way, rt-local) mean something on it.
    clustered: ClassVar[bool] = False

    def command_template(self) -> str:
        raise NotImplementedError

    def launch(self, tmp: Path) -> str:
        raise NotImplementedError

    def start(self) -> str:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"gmbench-{self.key}-"))
        self.procs = []
        try:
            return self.launch(self.tmp)
        except BaseException:
            self.stop()
            raise

    def server_pids(self) -> list[int]:
        """Process ids of the job servers (not etcd)."""
        return [p.popen.pid for p in self.procs
                if p.popen is not None and p.name != "etcd"]

    def metrics_urls(self) -> list[str]:
        """The /metrics URL of each gearmesh node of a cluster (empty for
        targets that have none worth reading)."""
        return []

    def node_addresses(self) -> list[tuple[str, str]]:
        """(node id, host:port) of each node of a running cluster, in node
        order (empty for other targets)."""
        return []

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs = []
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def spawn(self, name: str, cmd: list[str]) -> Proc:
        assert self.tmp is not None
        p = Proc(name, cmd, self.tmp / f"{name}.log")
        p.start()
        self.procs.append(p)
        return p

    def wait_ready(self, p: Proc, port: int, deadline_s: float = 30.0,
                   ready_url: str | None = None) -> None:
        end = time.monotonic() + deadline_s
        while True:
            if not p.alive():
                raise StartFailed(f"{p.name} exited: {p.tail()}")
            if port_open(port):
                if ready_url is None:
                    return
                ready = http_ok(ready_url)
                if ready is None or ready:
                    return
            if time.monotonic() > end:
                raise StartFailed(f"{p.name} not ready after {deadline_s:.0f}s: {p.tail()}")
            time.sleep(0.05)


class Gearmand(Target):
    def command_template(self) -> str:
        return f"{GEARMAND} -L 127.0.0.1 -p PORT -l none -P TMP/gearmand.pid"

    def launch(self, tmp: Path) -> str:
        if not os.access(GEARMAND, os.X_OK):
            raise StartFailed(f"{GEARMAND} not installed")
        port = free_port()
        p = self.spawn("gearmand", [GEARMAND, "-L", "127.0.0.1", "-p", str(port), "-l", "none",
                                    "-P", str(tmp / "gearmand.pid")])
        self.wait_ready(p, port)
        return f"127.0.0.1:{port}"


class Standalone(Target):
    def __init__(self, key: str, label: str, queue: str) -> None:
        super().__init__(key, label)
        self.queue = queue

    def command_template(self) -> str:
        return (f"python -m gearmesh serve -L 127.0.0.1 -p PORT --http-port 0 "
                f"--queue {self.queue} --data-dir TMP")

    def launch(self, tmp: Path) -> str:
        port = free_port()
        p = self.spawn("gearmesh", [PY, "-m", "gearmesh", "serve", "-L", "127.0.0.1",
                                    "-p", str(port), "--http-port", "0", "--queue", self.queue,
                                    "--data-dir", str(tmp / "data")])
        self.wait_ready(p, port)
        return f"127.0.0.1:{port}"


class GearServer(Target):
    """python `gear`'s gear.Server, started by benchmarks/gear_server.py (the
    package's geard script needs python-daemon and logs at DEBUG level)."""

    SCRIPT = ROOT / "benchmarks" / "gear_server.py"

    def command_template(self) -> str:
        return "python benchmarks/gear_server.py --host 127.0.0.1 --port PORT"

    def launch(self, tmp: Path) -> str:
        port = free_port()
        p = self.spawn("gear", [PY, str(self.SCRIPT), "--host", "127.0.0.1",
                                "--port", str(port)])
        self.wait_ready(p, port)
        return f"127.0.0.1:{port}"


class Cluster(Target):
    clustered = True

    def __init__(self, key: str, label: str, nodes: int, queue: str) -> None:
        super().__init__(key, label)
        self.nodes = nodes
        self.queue = queue
        self.http_ports: list[int] = []
        self.addresses: list[tuple[str, str]] = []

    def command_template(self) -> str:
        return (f"{ETCD} --name bench --data-dir TMP/etcd --listen-client-urls "
                f"http://127.0.0.1:CPORT --advertise-client-urls http://127.0.0.1:CPORT "
                f"--listen-peer-urls http://127.0.0.1:EPORT --initial-advertise-peer-urls "
                f"http://127.0.0.1:EPORT --initial-cluster bench=http://127.0.0.1:EPORT; "
                f"then for N in 1..{self.nodes}: python -m gearmesh serve -L 127.0.0.1 "
                f"-p PORT_N --http-port HTTP_N --queue {self.queue} --data-dir TMP/nN "
                f"--etcd http://127.0.0.1:CPORT --node-id nN --peer-port PEER_N "
                f"--advertise 127.0.0.1")

    def launch(self, tmp: Path) -> str:
        if not os.access(ETCD, os.X_OK):
            raise StartFailed(f"{ETCD} not installed")
        cport, eport = free_port(), free_port()
        etcd = self.spawn("etcd", [
            ETCD, "--name", "bench", "--data-dir", str(tmp / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{cport}",
            "--advertise-client-urls", f"http://127.0.0.1:{cport}",
            "--listen-peer-urls", f"http://127.0.0.1:{eport}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{eport}",
            "--initial-cluster", f"bench=http://127.0.0.1:{eport}",
            "--log-level", "error", "--logger", "zap",
        ])
        self.wait_ready(etcd, cport, ready_url=f"http://127.0.0.1:{cport}/health")
        servers = []
        pending: list[tuple[Proc, int, str]] = []
        self.http_ports = []
        self.addresses = []
        for n in range(1, self.nodes + 1):
            port, peer, http = free_port(), free_port(), free_port()
            self.http_ports.append(http)
            p = self.spawn(f"n{n}", [
                PY, "-m", "gearmesh", "serve", "-L", "127.0.0.1", "-p", str(port),
                "--http-port", str(http), "--queue", self.queue,
                "--data-dir", str(tmp / f"n{n}"), "--etcd", f"http://127.0.0.1:{cport}",
                "--node-id", f"n{n}", "--peer-port", str(peer), "--advertise", "127.0.0.1",
            ])
            pending.append((p, port, f"http://127.0.0.1:{http}/readyz"))
            servers.append(f"127.0.0.1:{port}")
            self.addresses.append((f"n{n}", f"127.0.0.1:{port}"))
        for p, port, url in pending:
            self.wait_ready(p, port, deadline_s=60, ready_url=url)
        self.wait_converged()
        return ",".join(servers)

    def wait_converged(self, deadline_s: float = 30.0) -> None:
        """Wait until every node reports the same partition-map epoch. A
        node is ready once it is active itself, possibly before it has seen
        the last node join; until they agree, a job could be routed by a
        two-node map, which would blur the first jobs' path (and break the
        placement scenarios' owner)."""
        end = time.monotonic() + deadline_s
        epochs: set[float | None] = set()
        while True:
            epochs = {node_metrics(u).get("gearmesh_ring_epoch") for u in self.metrics_urls()}
            if len(epochs) == 1 and None not in epochs and 0 not in epochs:
                return
            if time.monotonic() > end:
                raise StartFailed(f"nodes did not agree on one partition map: epochs {epochs}")
            time.sleep(0.05)

    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{h}/metrics" for h in self.http_ports] if self.procs else []

    def node_addresses(self) -> list[tuple[str, str]]:
        return list(self.addresses) if self.procs else []


TARGETS: dict[str, Target] = {
    "gearmand": Gearmand("gearmand", "gearmand 1.1.20"),
    "memory": Standalone("memory", "gearmesh --queue memory", "memory"),
    "sqlite": Standalone("sqlite", "gearmesh --queue sqlite", "sqlite"),
    "cluster": Cluster("cluster", "gearmesh 3-node cluster", 3, "sqlite"),
    "gear": GearServer("gear", "python gear server"),
}
