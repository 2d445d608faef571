"""Command-line options of `gearmesh bench` and the resolved run settings."""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

from gearmesh.bench.owner import OwnedKeys, parse_nodes
from gearmesh.bench.tls import ClientTLS
from gearmesh.bench.wire import Server, parse_servers

SCENARIOS = ("bg", "drain", "rt", "coalesce", "burst")

# Per-scenario defaults for options left unset. They are sized so that each
# scenario runs for a few seconds against gearmand on a 2-core machine.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "bg": {"jobs": 200_000, "conns": 16, "inflight": 16, "workers": 16, "duration": 60.0},
    "drain": {"jobs": 100_000, "conns": 16, "inflight": 64, "workers": 16, "duration": 60.0},
    "rt": {"jobs": 50_000, "clients": 16, "workers": 16, "duration": 60.0},
    "coalesce": {"uniques": 2000, "repeat": 8, "workers": 16, "duration": 60.0},
    "burst": {
        "clients": 400, "workers": 32, "duration": 10.0, "ramp": 3.0, "uniques": 50,
        "dup_ratio": 0.7, "fg_ratio": 0.5, "work_ms": 2.0, "think_ms": 10.0,
    },
}
# burst --overload: the flash sale past capacity (8 x 50 submits every 2 ms
# is 200,000 submits/s offered).
_OVERLOAD: dict[str, Any] = {"clients": 8, "workers": 16, "duration": 10.0, "work_ms": 0.0}
_FALLBACK: dict[str, Any] = {
    "jobs": 10_000, "conns": 16, "inflight": 16, "workers": 16, "clients": 16,
    "duration": 60.0, "uniques": 2000, "repeat": 8, "work_ms": 0.0, "think_ms": 0.0,
    "ramp": 0.0, "dup_ratio": 0.0, "fg_ratio": 0.5,
}


@dataclass(frozen=True)
class Config:
    scenario: str
    # Every server of the run: each is checked for reachability and asked
    # for its admin status. client_servers and worker_servers are subsets.
    servers: tuple[Server, ...]
    client_servers: tuple[Server, ...]
    worker_servers: tuple[Server, ...]
    procs: int
    jobs: int
    conns: int
    inflight: int
    workers: int
    clients: int
    payload_size: int
    duration: float
    placement: str
    owner: str | None
    nodes: tuple[str, ...]
    uniques: int
    repeat: int
    work_ms: float
    think_ms: float
    ramp: float
    dup_ratio: float
    fg_ratio: float
    interval: float
    cleanup: bool
    unique: str
    func: str
    run_id: str
    seed: int
    progress: bool
    json_only: bool
    setup_timeout: float
    grace: float
    overload: bool = False
    pipeline: int = 50
    every_ms: float = 2.0

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("servers", "client_servers", "worker_servers"):
            d[k] = [str(s) for s in getattr(self, k)]
        if self.owner is None:
            d.pop("owner")
            d.pop("nodes")
        for k in ("progress", "json_only", "setup_timeout"):
            d.pop(k)
        return d


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if not parser.description:
        parser.description = "Load-test any Gearman server or list of servers."
    parser.epilog = (
        "Scenarios: bg = pipelined background submits/s; drain = workers empty a "
        "pre-filled queue; rt = synchronous clients and echo workers, jobs/s and "
        "latency; coalesce = K uniques each sent by R clients, the workers must run "
        "exactly K jobs; burst = ramp to many clients with duplicate uniques, mixed "
        "background and foreground. Prints a summary and one JSON line. Exit status: "
        "0 all checks passed, 1 a check failed, 2 the run could not be carried out."
    )
    parser.add_argument("scenario", choices=SCENARIOS, help="what to measure (see below)")
    parser.add_argument("--servers",
                        help="host:port[,host:port...]: the servers of the run (default: "
                             "those of --client-servers and --worker-servers, else "
                             "127.0.0.1:4730)")
    parser.add_argument("--client-servers", metavar="LIST",
                        help="clients and submitters connect only to these, round-robin "
                             "(default: --servers)")
    parser.add_argument("--worker-servers", metavar="LIST",
                        help="workers connect only to these, by --worker-placement "
                             "(default: --servers)")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="load generator processes (default: number of CPUs)")
    parser.add_argument("--jobs", type=int, help="jobs to submit / drain / run")
    parser.add_argument("--conns", type=int, help="bg/drain: submitting connections")
    parser.add_argument("--inflight", type=int,
                        help="bg/drain: submits in flight per connection")
    parser.add_argument("--workers", type=int, help="worker count")
    parser.add_argument("--clients", type=int, help="rt/burst: client connections")
    parser.add_argument("--payload-size", type=int, default=64, help="job data bytes (default 64)")
    parser.add_argument("--duration", type=float,
                        help="cap in seconds (burst: the run length)")
    parser.add_argument("--worker-placement", dest="placement", choices=("all", "spread"),
                        default="all",
                        help="all: every worker connects to every worker server; "
                             "spread: each worker connects to one, round-robin")
    parser.add_argument("--owner", metavar="NODE_ID",
                        help="gearmesh cluster: salt every job's unique id so that the "
                             "cluster's partition map gives it to this node (needs --nodes)")
    parser.add_argument("--nodes", metavar="ID,ID,...",
                        help="with --owner: the ids of all the cluster's active nodes")
    parser.add_argument("--uniques", type=int,
                        help="coalesce: K unique ids; burst: size of the hot set")
    parser.add_argument("--repeat", type=int, help="coalesce: R clients submitting each unique")
    parser.add_argument("--work-ms", type=float, help="time a worker holds each job")
    parser.add_argument("--think-ms", type=float, help="burst: mean pause between a client's jobs")
    parser.add_argument("--ramp", type=float, help="burst: seconds to bring all clients up")
    parser.add_argument("--dup-ratio", type=float,
                        help="burst: share of submits that reuse a hot unique")
    parser.add_argument("--fg-ratio", type=float, help="burst: share of foreground submits")
    parser.add_argument("--overload", action="store_true",
                        help="burst: pipelined background submits past capacity, then a "
                             "drain, with a ledger (refused / lost / duplicated)")
    parser.add_argument("--pipeline", type=int, default=50,
                        help="burst --overload: submits written per turn without waiting (50)")
    parser.add_argument("--every-ms", type=float, default=2.0,
                        help="burst --overload: milliseconds between a connection's turns (2)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="burst: timeline bucket in seconds (default 1)")
    parser.add_argument("--no-cleanup", dest="cleanup", action="store_false",
                        help="bg: leave the submitted jobs queued instead of draining them")
    parser.add_argument("--unique", choices=("job", "none"), default="job",
                        help="bg/drain/rt: job = a distinct unique id per job, as libgearman "
                             "clients send; none = empty unique, as Perl and python gear "
                             "clients send by default (default: job)")
    parser.add_argument("--function-prefix", default="gearmesh-bench",
                        help="function names are PREFIX.SCENARIO.RUNID")
    parser.add_argument("--seed", type=int, help="random seed (burst)")
    parser.add_argument("--json", dest="json_only", action="store_true",
                        help="print only the JSON line")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress line on stderr (it is off anyway when not a TTY)")
    parser.add_argument("--setup-timeout", type=float, default=300.0,
                        help="seconds allowed for connecting and pre-filling (default 300)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds to wait for outstanding jobs after a run (default 30)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="speak TLS to every server, checking its chain against this CA")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (with --tls-ca)")
    parser.add_argument("--tls-key", metavar="FILE", help="its private key")


def resolve(args: argparse.Namespace) -> Config:
    scenario: str = args.scenario
    defaults = {**_FALLBACK, **_DEFAULTS[scenario]}
    overload = bool(getattr(args, "overload", False))
    if overload:
        if scenario != "burst":
            raise ValueError("--overload is a mode of the burst scenario")
        defaults.update(_OVERLOAD)

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return defaults[name] if value is None else value

    servers, client_servers, worker_servers = _server_lists(args)
    owner: str | None = getattr(args, "owner", None)
    nodes = parse_nodes(getattr(args, "nodes", None) or "")
    if owner is None and nodes:
        raise ValueError("--nodes is only used with --owner")
    if owner is not None:
        if not nodes:
            raise ValueError("--owner needs --nodes, the ids of all active cluster nodes")
        # Fails early on a bad id list, before any process starts.
        OwnedKeys(owner, nodes)
    run_id = secrets.token_hex(4)
    seed = args.seed if args.seed is not None else int(run_id, 16)
    cfg = Config(
        scenario=scenario,
        servers=servers,
        client_servers=client_servers,
        worker_servers=worker_servers,
        procs=max(1, int(args.procs)),
        jobs=int(pick("jobs")),
        conns=int(pick("conns")),
        inflight=int(pick("inflight")),
        workers=int(pick("workers")),
        clients=int(pick("clients")),
        payload_size=int(args.payload_size),
        duration=float(pick("duration")),
        placement=args.placement,
        owner=owner,
        nodes=nodes,
        uniques=int(pick("uniques")),
        repeat=int(pick("repeat")),
        work_ms=float(pick("work_ms")),
        think_ms=float(pick("think_ms")),
        ramp=float(pick("ramp")),
        dup_ratio=float(pick("dup_ratio")),
        fg_ratio=float(pick("fg_ratio")),
        interval=float(args.interval),
        cleanup=bool(args.cleanup),
        unique=args.unique,
        func=f"{args.function_prefix}.{scenario}.{run_id}",
        run_id=run_id,
        seed=seed,
        progress=bool(args.progress),
        json_only=bool(args.json_only),
        setup_timeout=float(args.setup_timeout),
        grace=float(args.grace),
        overload=overload,
        pipeline=int(getattr(args, "pipeline", 50)),
        every_ms=float(getattr(args, "every_ms", 2.0)),
    )
    _validate(cfg)
    return cfg


def _server_lists(
    args: argparse.Namespace,
) -> tuple[tuple[Server, ...], tuple[Server, ...], tuple[Server, ...]]:
    """(servers, client servers, worker servers). A server named only in
    --client-servers or --worker-servers is added to the servers, so that it
    is probed and its queue counted like the others."""
    clients_text: str | None = getattr(args, "client_servers", None)
    workers_text: str | None = getattr(args, "worker_servers", None)
    clients = tuple(parse_servers(clients_text)) if clients_text else ()
    workers = tuple(parse_servers(workers_text)) if workers_text else ()
    if args.servers:
        servers = tuple(parse_servers(args.servers))
    elif clients or workers:
        servers = ()
    else:
        servers = (Server("127.0.0.1", 4730),)
    servers += tuple(dict.fromkeys(s for s in clients + workers if s not in servers))
    ca: str | None = getattr(args, "tls_ca", None)
    if ca:
        tls = ClientTLS(ca, getattr(args, "tls_cert", None), getattr(args, "tls_key", None))
        servers, clients, workers = (tuple(replace(s, tls=tls) for s in group)
                                     for group in (servers, clients, workers))
    elif getattr(args, "tls_cert", None):
        raise ValueError("--tls-cert needs --tls-ca")
    return servers, clients or servers, workers or servers


def _validate(cfg: Config) -> None:
    positive = {"jobs": cfg.jobs, "conns": cfg.conns, "inflight": cfg.inflight,
                "workers": cfg.workers, "clients": cfg.clients, "uniques": cfg.uniques,
                "repeat": cfg.repeat}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"--{name} must be at least 1")
    if cfg.payload_size < 0:
        raise ValueError("--payload-size must not be negative")
    if cfg.duration <= 0:
        raise ValueError("--duration must be positive")
    for name, ratio in (("dup-ratio", cfg.dup_ratio), ("fg-ratio", cfg.fg_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"--{name} must be between 0 and 1")
    if cfg.pipeline < 1 or cfg.every_ms <= 0:
        raise ValueError("--pipeline must be at least 1 and --every-ms positive")
    if cfg.interval <= 0:
        raise ValueError("--interval must be positive")
    if cfg.work_ms < 0 or cfg.think_ms < 0 or cfg.ramp < 0:
        raise ValueError("--work-ms, --think-ms and --ramp must not be negative")
    if cfg.owner is not None and cfg.unique == "none" and cfg.scenario in ("bg", "drain"):
        # An empty unique is not routed: the job stays on its entry node.
        raise ValueError("--owner needs unique ids; it cannot be used with --unique none")
