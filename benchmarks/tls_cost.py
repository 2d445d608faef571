"""What TLS on the Gearman port costs: `gearmesh bench` against one
standalone node in plaintext and one with --ssl, interleaved rounds.

    .venv/bin/python benchmarks/tls_cost.py [--rounds 3] [--jobs 30000]

Certificates are made for the run with the openssl command line (EC P-256,
as docs/security.md shows). Per scenario and target it prints the median
throughput and p99 of the rounds, and the node's own CPU per job (from
/proc/PID/stat around each run), which is what TLS adds to; the ratio is
TLS over plaintext.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import PY, Standalone

_TICK = os.sysconf("SC_CLK_TCK")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=bench-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=bench", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
             cwd=d)
    return d / "ca.pem", d / "server.pem", d / "server.key"


class TLSNode(Standalone):
    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__("gm-memory-tls", "gearmesh memory, TLS", "memory")
        self.files = (cert, key)

    def launch(self, tmp: Path) -> str:
        from targets import free_port
        port = free_port()
        cert, key = self.files
        p = self.spawn("gearmesh", [PY, "-m", "gearmesh", "serve", "-L", "127.0.0.1",
                                    "-p", str(port), "--http-port", "0", "--queue", "memory",
                                    "--data-dir", str(tmp / "data"), "--ssl",
                                    "--ssl-certificate", str(cert), "--ssl-key", str(key)])
        self.wait_ready(p, port)
        return f"127.0.0.1:{port}"


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def run(scenario: str, servers: str, pid: int, jobs: int, extra: list[str]) -> dict[str, Any]:
    before = _cpu(pid)
    out = subprocess.run([PY, "-m", "gearmesh.bench", scenario, "--servers", servers,
                          "--jobs", str(jobs), "--json", "--no-progress", *extra],
                         capture_output=True, text=True, timeout=600)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    if not doc.get("ok"):
        raise SystemExit(f"{scenario} on {servers} failed: {doc.get('error')} {doc['metrics']}")
    m = doc["metrics"]
    rate = m.get("jobs_per_s") or m.get("submits_per_s")
    p99 = (m.get("latency") or {}).get("p99_ms")
    return {"rate": rate, "p99": p99, "cpu_us": (_cpu(pid) - before) / jobs * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=30000)
    ap.add_argument("--scenarios", default="rt,bg")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gmbench-tls-") as d:
        ca, cert, key = make_certs(Path(d))
        plain, tls = Standalone("gm-memory", "gearmesh memory", "memory"), TLSNode(cert, key)
        targets = {"plaintext": (plain, []), "tls": (tls, ["--tls-ca", str(ca)])}
        addrs = {name: t.start() for name, (t, _) in targets.items()}
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        try:
            for _ in range(opts.rounds):
                for scenario in opts.scenarios.split(","):
                    for name, (t, extra) in targets.items():
                        r = run(scenario, addrs[name], t.server_pids()[0], opts.jobs, extra)
                        results.setdefault((scenario, name), []).append(r)
        finally:
            for t, _ in targets.values():
                t.stop()
    print(f"{'scenario':8} {'target':10} {'jobs/s':>10} {'p99 ms':>8} {'node CPU µs/job':>16}")
    for scenario in opts.scenarios.split(","):
        med: dict[str, dict[str, float]] = {}
        for name in targets:
            rows = results[(scenario, name)]
            med[name] = {k: statistics.median(r[k] for r in rows)
                         for k in ("rate", "cpu_us")}
            p99s = [r["p99"] for r in rows if r["p99"] is not None]
            p99 = f"{statistics.median(p99s):8.2f}" if p99s else f"{'-':>8}"
            print(f"{scenario:8} {name:10} {med[name]['rate']:10,.0f} {p99} "
                  f"{med[name]['cpu_us']:16.1f}")
        print(f"{scenario:8} {'tls/plain':10} {med['tls']['rate'] / med['plaintext']['rate']:10.2f}"
              f" {'':8} {med['tls']['cpu_us'] / med['plaintext']['cpu_us']:16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
