"""scripts/install-helm is idempotent and the Helm it installs stays out of git."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helm import render

SCRIPT = render.ROOT / "scripts" / "install-helm"


@pytest.mark.timeout(60)
def test_second_run_is_a_no_op() -> None:
    if not (render.ROOT / ".tools" / "helm").exists():
        pytest.skip("scripts/install-helm has not been run here")
    # A PATH with just what an up-to-date check needs, and no npm: a run that
    # tried to download again would fail.
    with tempfile.TemporaryDirectory(prefix="bare-path-") as bare:
        for tool in ("bash", "grep", "dirname"):
            found = shutil.which(tool)
            assert found, tool
            os.symlink(found, Path(bare) / tool)
        env = {"PATH": bare, "HOME": bare}
        run = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ".tools/helm"


@pytest.mark.no_helm
@pytest.mark.timeout(30)
def test_tools_dir_is_gitignored() -> None:
    ignored = (render.ROOT / ".gitignore").read_text().split()
    assert ".tools/" in ignored
