"""`gearmesh top` in a real terminal (tmux): it shows the functions with
gearadmin's numbers and exits on `q`; `gearmesh status --api` reads the JSON API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.admin import gearadmin_status
from tests.support.rawclient import RawClient, T
from tests.support.servers import GEARMESH, ServerProcess, free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def _tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-S", sock, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout


@pytest.mark.timeout(60)
def test_top_shows_functions_and_quits_on_q(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/bootstrap --system)")
    http = free_port()
    sock = str(tmp_path / "tmux.sock")
    done = tmp_path / "rc"
    with ServerProcess(kind=GEARMESH, extra_args=["--http-port", str(http)]) as server, \
            RawClient(server.address) as client:
        for i in range(3):
            client.submit(b"resize", f"u{i}".encode(), b"x", ptype=T.SUBMIT_JOB_BG)
        client.submit(b"mail", b"m", b"x", ptype=T.SUBMIT_JOB_BG)
        assert gearadmin_status(server.port) == {"resize": (3, 0, 0), "mail": (1, 0, 0)}
        cmd = (f"cd {REPO} && {sys.executable} -m gearmesh top --servers {server.address} "
               f"--interval 0.5; echo $? > {done}")
        _tmux(sock, "new-session", "-d", "-x", "120", "-y", "40", cmd)
        try:
            def screen() -> str | None:
                text = _tmux(sock, "capture-pane", "-p")
                rows = {line.split()[0]: line.split()[1:4] for line in text.splitlines()
                        if line.split() and line.split()[0] in ("resize", "mail")}
                ok = rows.get("resize") == ["3", "0", "0"] and \
                    rows.get("mail") == ["1", "0", "0"]
                return text if ok else None

            text = wait_until(screen, 20, interval=0.2, what="top showing both functions")
            assert "NO WORKER" in text and "gearmesh top" in text
            # A new job appears at the next refresh.
            client.submit(b"resize", b"u9", b"x", ptype=T.SUBMIT_JOB_BG)
            wait_until(lambda: any(line.split()[:2] == ["resize", "4"] for line in
                                   _tmux(sock, "capture-pane", "-p").splitlines()),
                       10, interval=0.2, what="top showing the new job")
            _tmux(sock, "send-keys", "q")
            wait_until(done.exists, 10, interval=0.1, what="top to exit on q")
            wait_until(lambda: done.read_text().strip(), 5, what="the exit status")
            assert done.read_text().strip() == "0"
        finally:
            subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)


@pytest.mark.timeout(30)
def test_status_reads_the_json_api() -> None:
    http = free_port()
    with ServerProcess(kind=GEARMESH, extra_args=["--http-port", str(http)]) as server, \
            RawClient(server.address) as client, RawClient(server.address) as worker:
        client.submit(b"resize", b"a", b"x", ptype=T.SUBMIT_JOB_BG)
        client.submit(b"resize", b"b", b"x", ptype=T.SUBMIT_JOB_BG)
        worker.can_do(b"resize")
        assert worker.grab().ptype == T.JOB_ASSIGN_UNIQ
        out = subprocess.run([sys.executable, "-m", "gearmesh", "status", "--api",
                              f"127.0.0.1:{http}", "--json"], capture_output=True, text=True,
                             timeout=20, cwd=REPO)
        assert out.returncode == 0, out.stderr
        view = json.loads(out.stdout)
        total, running, workers = gearadmin_status(server.port)["resize"]
        (f,) = view["functions"]
        assert (f["name"], f["queued"] + f["running"], f["running"], f["workers"]) == \
            ("resize", total, running, workers) == ("resize", 2, 1, 1)
        text = subprocess.run([sys.executable, "-m", "gearmesh", "status", "--servers",
                               server.address], capture_output=True, text=True, timeout=20,
                              cwd=REPO).stdout
        assert text.splitlines()[1].split() == ["resize", "1", "1", "1"]
