"""Run real Gearman jobs through a job server and check every result.

Used by the chart's `helm test` pod (it runs in the gearmesh image, so it
uses the standard library only and speaks the Gearman binary protocol
itself). Workers connect to the --worker addresses, clients submit jobs
through each --client address; with the worker on one node and clients on
the others, every job has to cross the cluster to be done. With --tls-ca
it speaks TLS (checking the servers' chain against that CA, not their
names: it dials pod and Service names alike) and presents --tls-cert/--tls-key
when given.

Exit status 0 when every job came back with the expected result.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import struct
import sys
import threading
import time
import uuid

REQ = b"\0REQ"
RES = b"\0RES"
# Packet types used here (numbers from the Gearman protocol).
CAN_DO = 1
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_COMPLETE = 13
WORK_FAIL = 14
ERROR = 19
WORK_EXCEPTION = 25
HEADER = struct.Struct(">4sII")


class ProtocolError(Exception):
    pass


def packet(ptype: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return HEADER.pack(REQ, ptype, len(body)) + body


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, 4730
    return host, int(port)


class Conn:
    """A Gearman connection with its own read buffer, so that a read that
    times out loses no bytes and can simply be retried."""

    def __init__(self, addr: tuple[str, int], deadline: float) -> None:
        self.deadline = deadline
        sock = connect_retrying(addr, deadline)
        self.sock = TLS.wrap_socket(sock) if TLS is not None else sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, need: int, wait: float) -> bool:
        end = min(self.deadline, time.monotonic() + wait)
        while len(self.buf) < need:
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            if not chunk:
                raise ProtocolError("server closed the connection")
            self.buf += chunk
        return True

    def read(self, wait: float) -> tuple[int, list[bytes]] | None:
        """Next response packet, or None if none arrived within `wait`."""
        if not self._fill(HEADER.size, wait):
            return None
        magic, ptype, size = HEADER.unpack_from(self.buf)
        if magic != RES:
            raise ProtocolError(f"bad magic {magic!r}")
        # Once a header is in, its body follows promptly: wait to the deadline.
        if not self._fill(HEADER.size + size, self.deadline - time.monotonic()):
            raise ProtocolError("timed out in the middle of a packet")
        body = self.buf[HEADER.size : HEADER.size + size]
        self.buf = self.buf[HEADER.size + size :]
        return ptype, body.split(b"\0") if body else []

    def close(self) -> None:
        self.sock.close()


def connect_retrying(addr: tuple[str, int], deadline: float) -> socket.socket:
    # Right after an install the Service may not route yet, or DNS may not
    # have the pod's record: keep trying until the deadline.
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(addr, timeout=5)
        except OSError as exc:
            last = exc
            time.sleep(1)
            continue
        # Small request/reply packets: without this, delayed ACKs add ~40 ms
        # to every job.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ProtocolError(f"cannot connect to {addr[0]}:{addr[1]}: {last}")


# Set by main() from --tls-ca/--tls-cert/--tls-key; None = plaintext.
TLS: ssl.SSLContext | None = None


def tls_context(ca: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def result_for(payload: bytes) -> bytes:
    return b"done:" + payload[::-1]


def worker(addr: tuple[str, int], func: bytes, stop: threading.Event,
           deadline: float, errors: list[str]) -> None:
    try:
        conn = Conn(addr, deadline)
        conn.send(packet(CAN_DO, func))
        while not stop.is_set():
            conn.send(packet(GRAB_JOB))
            reply = conn.read(deadline - time.monotonic())
            if reply is None:
                raise ProtocolError("no answer to GRAB_JOB")
            ptype, args = reply
            if ptype == JOB_ASSIGN:
                handle, _func, data = args[0], args[1], b"\0".join(args[2:])
                conn.send(packet(WORK_COMPLETE, handle, result_for(data)))
            elif ptype == NO_JOB:
                conn.send(packet(PRE_SLEEP))
                # Sleep until the server NOOPs us; wake up now and then to
                # notice that the run is over.
                while not stop.is_set():
                    reply = conn.read(0.5)
                    if reply is None:
                        continue
                    if reply[0] != NOOP:
                        raise ProtocolError(f"worker got packet {reply[0]} while asleep")
                    break
            elif ptype == NOOP:
                continue
            else:
                raise ProtocolError(f"worker got packet {ptype} {args!r}")
        conn.close()
    except (OSError, ProtocolError) as exc:
        if not stop.is_set():
            errors.append(f"worker at {addr[0]}:{addr[1]}: {exc}")


def submit(addr: tuple[str, int], func: bytes, jobs: int, deadline: float) -> None:
    conn = Conn(addr, deadline)
    try:
        for _ in range(jobs):
            payload = uuid.uuid4().hex.encode()
            # A fresh unique per job: these must not coalesce with each other.
            conn.send(packet(SUBMIT_JOB, func, payload, payload))
            handle: bytes | None = None
            while True:
                reply = conn.read(deadline - time.monotonic())
                if reply is None:
                    raise ProtocolError(f"timed out waiting for job {payload.decode()}")
                ptype, args = reply
                if ptype == JOB_CREATED:
                    handle = args[0]
                elif ptype == WORK_COMPLETE and args and args[0] == handle:
                    got = b"\0".join(args[1:])
                    if got != result_for(payload):
                        raise ProtocolError(f"wrong result {got!r} for {payload!r}")
                    break
                elif ptype in (WORK_FAIL, WORK_EXCEPTION) and args and args[0] == handle:
                    raise ProtocolError(f"job {handle!r} failed (packet {ptype})")
                elif ptype == ERROR:
                    raise ProtocolError(f"server error {args!r}")
                # Anything else (status, data) is progress: keep waiting.
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="append", required=True,
                    help="HOST:PORT a worker connects to (repeatable)")
    ap.add_argument("--client", action="append", required=True,
                    help="HOST:PORT jobs are submitted through (repeatable)")
    ap.add_argument("--jobs", type=int, default=5, help="jobs per --client")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole run")
    ap.add_argument("--tls-ca", help="speak TLS; the CA of the servers' certificates")
    ap.add_argument("--tls-cert", help="client certificate to present (with --tls-ca)")
    ap.add_argument("--tls-key", help="its private key")
    opts = ap.parse_args(argv)
    global TLS
    TLS = tls_context(opts.tls_ca, opts.tls_cert, opts.tls_key) if opts.tls_ca else None

    deadline = time.monotonic() + opts.timeout
    # A function name nobody else uses, so real workers never take these jobs.
    func = f"gearmesh-roundtrip-{uuid.uuid4().hex[:12]}".encode()
    stop = threading.Event()
    errors: list[str] = []
    threads = [
        threading.Thread(target=worker, args=(parse_addr(a), func, stop, deadline, errors),
                         daemon=True)
        for a in opts.worker
    ]
    for t in threads:
        t.start()
    ok = True
    try:
        for addr in opts.client:
            started = time.monotonic()
            try:
                submit(parse_addr(addr), func, opts.jobs, deadline)
            except (OSError, ProtocolError) as exc:
                print(f"FAIL via {addr}: {exc}", flush=True)
                ok = False
                continue
            took = time.monotonic() - started
            print(f"ok   via {addr}: {opts.jobs} jobs in {took:.2f}s", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=2)
    for err in errors:
        print(f"FAIL {err}", flush=True)
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
