"""Static checks of the Dockerfile and .dockerignore (no image can be built
here), plus a build of the package from exactly the files the Dockerfile
copies, which is the part of the image build that can break."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.helm import render

ROOT = render.ROOT
pytestmark = pytest.mark.no_helm


@dataclass
class Stage:
    base: str
    name: str | None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (instruction, rest)

    def all(self, instruction: str) -> list[str]:
        return [rest for ins, rest in self.lines if ins == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    # Join continuation lines, drop comments, split into stages at FROM.
    joined = re.sub(r"\\\n", " ", text)
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        ins, _, rest = line.partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, line
            stages.append(Stage(m.group(1), m.group(2)))
        elif stages:
            stages[-1].lines.append((ins, rest.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: str) -> bool:
    for pat in ignore_patterns():
        pat = pat.removeprefix("**/")
        if any(fnmatch.fnmatch(part, pat) for part in [rel, *Path(rel).parts]):
            return True
    return False


@pytest.mark.timeout(30)
def test_multi_stage_on_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for st in stages:
        assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim|python:3\.\d+-slim", st.base)
    final = stages[-1]
    # The final stage only takes the built virtualenv from the build stage.
    copies = final.all("COPY")
    assert copies and all(c.startswith(f"--from={stages[0].name} ") for c in copies)
    for run in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apk|pip|gcc|build-essential)\b", run), run


@pytest.mark.timeout(30)
def test_runs_as_the_charts_non_root_user(stages: list[Stage]) -> None:
    (user,) = stages[-1].all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can check it"
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]


@pytest.mark.timeout(30)
def test_ports_entrypoint_and_data_dir(stages: list[Stage]) -> None:
    final = stages[-1]
    exposed = {int(p) for line in final.all("EXPOSE") for p in line.split()}
    assert exposed == {4730, 4731, 4732}
    (entry,) = final.all("ENTRYPOINT")
    assert json.loads(entry) == ["gearmesh", "serve"]
    env_line = " ".join(final.all("ENV"))
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    assert f"GEARMESH_DATA_DIR={values['dataDir']}" in env_line
    assert "PYTHONDONTWRITEBYTECODE=1" in env_line  # the root filesystem is read-only


@pytest.mark.timeout(30)
def test_dockerignore_keeps_the_context_small() -> None:
    for heavy in (".git", ".venv", ".tools", "tests", "helm", "gearmesh-data", "__pycache__"):
        assert ignored(heavy), heavy


@pytest.mark.timeout(30)
def test_copied_files_exist_and_are_not_ignored(stages: list[Stage]) -> None:
    sources = []
    for copy in stages[0].all("COPY"):
        parts = [p for p in copy.split() if not p.startswith("--")]
        sources += parts[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
        assert not ignored(src), f"Dockerfile copies {src}, which .dockerignore drops"


@pytest.mark.timeout(300)
def test_package_builds_from_the_copied_files(stages: list[Stage]) -> None:
    """`pip install .` in the build stage sees only what was copied: build a
    wheel from exactly that, and check it carries the code and the command."""
    sources = []
    for copy in stages[0].all("COPY"):
        parts = [p for p in copy.split() if not p.startswith("--")]
        sources += parts[:-1]
    missing = [s for s in sources if not (ROOT / s).exists()]
    if missing:
        pytest.fail(f"cannot build: missing {missing}")
    with tempfile.TemporaryDirectory(prefix="gearmesh-ctx-") as tmp:
        ctx = Path(tmp) / "src"
        ctx.mkdir()
        for src in sources:
            path = ROOT / src
            if path.is_dir():
                shutil.copytree(path, ctx / src, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, ctx / src)
        out = Path(tmp) / "wheels"
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--quiet", "--wheel-dir", str(out), str(ctx)],
            capture_output=True, text=True, timeout=240,
        )
        assert build.returncode == 0, build.stderr
        (wheel,) = out.glob("gearmesh-*.whl")
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            entry_points = next(n for n in names if n.endswith("entry_points.txt"))
            scripts = z.read(entry_points).decode()
    for package in ("node/", "cluster/", "gearmesh/"):
        assert any(n.startswith(package) for n in names), package
    assert re.search(r"^gearmesh\s*=\s*gearmesh\.cli:main", scripts, re.M)
    # The generated peer-protocol modules are committed next to the code.
    assert any(re.match(r"cluster/.*_pb2\.py$", n) for n in names)
