"""What a node can tell about itself: counters and a read-only view for the
HTTP endpoint and the admin protocol. Counters are plain ints bumped on the hot
path (no locks: a node is one event loop)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from node.flowcontrol import FlowControl
    from node.looplag import LagHistogram


@dataclass(slots=True)
class Counters:
    submitted: int = 0  # new jobs created here (coalesced submits not included)
    coalesced: int = 0  # submits attached to an existing job
    completed: int = 0
    failed: int = 0  # WORK_FAIL, WORK_EXCEPTION, retries exhausted, cancel
    requeued: int = 0  # worker lost / timed out while holding a job
    rejected: int = 0  # QUEUE_ERROR and other refused submits
    forwarded: int = 0  # submits sent to another node (cluster)
    rerouted: int = 0  # forwarded submits sent again because their owner was lost
    pushed: int = 0  # jobs this owner handed to another node's sleeping worker
    noops_sent: int = 0  # NOOPs sent to sleeping workers (the wake policy's herd)
    handed_off: int = 0  # queued jobs moved to their new owner while draining
    connections_accepted: int = 0
    connections_refused: int = 0
    protocol_errors: int = 0
    lease_losses: int = 0  # cluster: times etcd dropped this live node's registration
    peer_batches_sent: int = 0
    peer_frames_sent: int = 0
    store_commits: int = 0
    store_commit_seconds: float = 0.0  # sum of commit latencies
    store_commit_jobs: int = 0
    # cluster replication (cluster/replicas.py), copied here once a second
    replica_copies_sent: int = 0
    replica_frames_sent: int = 0
    promoted: int = 0
    under_replicated: int = 0  # a gauge: jobs here with fewer than two copies


@dataclass(frozen=True, slots=True)
class FunctionStat:
    name: bytes
    queued: int
    running: int
    workers: int


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A queued (or delayed) job as the HTTP API shows it: a copy, never the job."""

    handle: bytes
    unique: bytes
    priority: int  # 0 high, 1 normal, 2 low
    state: str  # "queued" or "delayed" (an epoch job whose time has not come)
    created: float  # Unix time this node took the job (replayed jobs: the replay)
    size: int  # payload bytes
    background: bool
    when: int  # epoch time for delayed jobs, else 0


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """A connection that registered functions, as the HTTP API shows it."""

    fd: int
    peer: str
    client_id: bytes
    functions: tuple[bytes, ...]
    running: int  # jobs it holds now
    asleep: bool  # sent PRE_SLEEP and was not woken since


class NodeView(Protocol):
    """Read-only view of a running node (implemented by node.server.Node)."""

    counters: Counters
    flow: FlowControl
    #: peer node → (frames, bytes) queued for it (empty on a standalone node).
    peer_outboxes: Callable[[], Mapping[str, tuple[int, int]]]

    def loop_lag(self) -> LagHistogram: ...

    def function_stats(self) -> Iterable[FunctionStat]: ...

    def connection_count(self) -> int: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready once the store is replayed, the cluster
        (if any) is joined, and the node is not draining."""
        ...

    def cluster_epoch(self) -> int:
        """Partition-map epoch (etcd revision); 0 on a standalone node."""
        ...

    def queued_jobs(self, function: bytes, limit: int) -> tuple[int, list[JobSnapshot]]:
        """(how many, the first ``limit`` in dispatch order) of a function's
        queued and delayed jobs."""
        ...

    def worker_snapshots(self) -> list[WorkerSnapshot]: ...

    def cancel_job(self, handle: bytes) -> bool:
        """Admin `cancel job`: True when the job was here and is gone now."""
        ...
