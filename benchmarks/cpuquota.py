"""CPU quotas for benchmark server processes, through cgroups.

A quota per server process makes each behave as if it ran on a small
machine of its own, so "three nodes" means three times the CPU rather than
three processes fighting over the same cores. cgroup v1 (``cpu`` controller
mounted at /sys/fs/cgroup/cpu: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``)
and cgroup v2 (``cpu.max`` in the unified hierarchy) are both handled; where
neither is writable, :func:`detect` raises :class:`QuotaUnavailable` with a
one-line reason.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")


class QuotaUnavailable(Exception):
    pass


class Quota:
    """One cgroup holding the processes given to :meth:`add`, limited to
    ``cores`` of CPU per ``period_us``. Remove it with :meth:`remove`."""

    def __init__(self, path: Path, version: int, cores: float, period_us: int) -> None:
        self.path = path
        self.version = version
        quota = max(int(cores * period_us), 1000)
        path.mkdir()
        if version == 1:
            (path / "cpu.cfs_period_us").write_text(str(period_us))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (path / "cpu.max").write_text(f"{quota} {period_us}")

    def add(self, pid: int) -> None:
        # cgroup.procs moves the whole process, every thread included.
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_us(self) -> int:
        """Time the group spent throttled so far, microseconds."""
        try:
            text = (self.path / "cpu.stat").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":  # v1: nanoseconds
                return int(value) // 1000
            if key == "throttled_usec":  # v2
                return int(value)
        return 0

    def remove(self) -> None:
        """Move any process still inside back to the root and delete the group."""
        parent = self.path.parent
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (parent / "cgroup.procs").write_text(pid)
            self.path.rmdir()
        except OSError:
            pass


class Quotas:
    """Factory of :class:`Quota` groups under one parent directory."""

    def __init__(self, version: int, parent: Path, cores: float, period_us: int) -> None:
        self.version = version
        self.parent = parent
        self.cores = cores
        self.period_us = period_us
        self._made: list[Quota] = []
        self._n = 0

    def describe(self) -> str:
        knob = "cpu.cfs_quota_us/cpu.cfs_period_us" if self.version == 1 else "cpu.max"
        return (f"cgroup v{self.version} ({knob} under {self.parent}): {self.cores:g} core "
                f"per server process, period {self.period_us / 1000:g} ms")

    def new(self, name: str) -> Quota:
        self._n += 1
        q = Quota(self.parent / f"gearmesh-scale-{os.getpid()}-{self._n}-{name}",
                  self.version, self.cores, self.period_us)
        self._made.append(q)
        return q

    def remove_all(self) -> None:
        for q in self._made:
            q.remove()
        self._made = []


def detect(cores: float, period_us: int) -> Quotas:
    """The cgroup flavour this machine lets us write, or QuotaUnavailable."""
    v1 = V1_ROOT / "cpu.cfs_quota_us"
    if v1.exists() and os.access(V1_ROOT, os.W_OK):
        return Quotas(1, V1_ROOT, cores, period_us)
    controllers = V2_ROOT / "cgroup.controllers"
    if (controllers.exists() and "cpu" in controllers.read_text().split()
            and os.access(V2_ROOT, os.W_OK)):
        subtree = V2_ROOT / "cgroup.subtree_control"
        if "cpu" not in subtree.read_text().split():
            try:
                subtree.write_text("+cpu")
            except OSError as exc:
                raise QuotaUnavailable(
                    f"cannot enable the cpu controller in {subtree}: {exc}") from exc
        return Quotas(2, V2_ROOT, cores, period_us)
    raise QuotaUnavailable(
        f"no writable cgroup CPU controller (need root and cgroup v1 {V1_ROOT} or v2 "
        f"{V2_ROOT}/cpu.max)")
