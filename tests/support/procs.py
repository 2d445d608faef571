"""Run a client program (PHP, Perl, CLI) and synchronise on the lines it prints."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

Pattern = str | re.Pattern[str]


class Spawned:
    """A subprocess whose combined stdout/stderr is collected line by line."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        stdin_data: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name or os.path.basename(self.argv[0])
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,  # kill() can take its children along
        )
        if stdin_data is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin_data)
            self.proc.stdin.close()
        self._reader = threading.Thread(target=self._read, name=f"out-{self.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def matching(self, pattern: Pattern) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._cond:
            return [m for m in map(regex.search, self.lines) if m]

    def wait_for_lines(self, pattern: Pattern, count: int, timeout: float = 15.0) -> list[str]:
        """Block until ``count`` lines match ``pattern``; return them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "exited" if self._eof else f"timed out after {timeout}s"
                    raise AssertionError(
                        f"{self.name} {why} before printing {count} line(s) matching "
                        f"{regex.pattern!r}; output:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(remaining)

    def wait_for_line(self, pattern: Pattern, timeout: float = 15.0) -> re.Match[str]:
        line = self.wait_for_lines(pattern, 1, timeout)[0]
        match = re.search(pattern, line)
        assert match is not None
        return match

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for exit and for all output; kill and fail on timeout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} still running after {timeout}s; output:\n{self.output()}"
            ) from None
        self._reader.join(5)
        return rc

    def finish(self, timeout: float = 30.0) -> str:
        """Wait for a successful exit and return the output."""
        rc = self.wait(timeout)
        assert rc == 0, f"{self.name} exited with {rc}; output:\n{self.output()}"
        return self.output()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None
