"""The chart only hands the node flags and GEARMESH_* variables it knows.

The reference is docs/configuration.md's table; when the installed
`gearmesh serve --help` works, its output is checked too, so the chart, the
docs and the binary cannot drift apart unnoticed.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import pytest

from tests.helm import render
from tests.helm.render import node_command
from tests.helm.scenarios import SCENARIOS

DOCS = render.ROOT / "docs" / "configuration.md"
GEARMESH = render.ROOT / ".venv" / "bin" / "gearmesh"
# Set by the chart for the downward API; not node settings.
PLUMBING_ENV = {"POD_NAME", "POD_NAMESPACE"}
BOOLEAN_WORDS = {"1", "true", "yes", "on", "0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # e.g. ("-p", "--port")
    env: str
    default: str

    @property
    def long(self) -> str:
        return next(f for f in self.flags if f.startswith("--"))


def parse_docs_table(text: str) -> dict[str, Option]:
    """Rows of the `| flag | env | default | meaning |` table, by env name."""
    options: dict[str, Option] = {}
    row = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`(GEARMESH_[A-Z0-9_]+)`\s*\|([^|]*)\|")
    for line in text.splitlines():
        m = row.match(line.strip())
        if not m:
            continue
        flags = tuple(f.strip() for f in m.group(1).split(","))
        options[m.group(2)] = Option(flags, m.group(2), m.group(3).strip().strip("`"))
    return options


@pytest.fixture(scope="module")
def documented() -> dict[str, Option]:
    if not DOCS.exists():
        pytest.skip(f"{DOCS} not written yet")
    options = parse_docs_table(DOCS.read_text())
    assert len(options) >= 20, "the configuration table did not parse"
    return options


@pytest.fixture(scope="module")
def help_text() -> str:
    """`gearmesh serve --help`, or skip while the CLI does not run yet."""
    if not GEARMESH.exists():
        pytest.skip(f"{GEARMESH} not installed")
    try:
        proc = subprocess.run(
            [str(GEARMESH), "serve", "--help"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"gearmesh serve --help did not run: {exc}")
    if proc.returncode != 0 or "--" not in proc.stdout:
        pytest.skip(f"gearmesh serve --help does not work yet: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def chart_flags(argv: list[str]) -> list[str]:
    """Option names in argv after `gearmesh serve` (values dropped)."""
    return [a.split("=", 1)[0] for a in argv[2:] if a.startswith("-")]


@pytest.mark.no_helm
@pytest.mark.timeout(30)
def test_docs_table_follows_the_naming_rule(documented: dict[str, Option]) -> None:
    # The documented rule: GEARMESH_ + long flag, upper case, - to _. The
    # checks below lean on it.
    for env, opt in documented.items():
        assert env == "GEARMESH_" + opt.long[2:].upper().replace("-", "_"), opt


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_node_gets_only_documented_settings(name: str, documented: dict[str, Option]) -> None:
    argv, env = node_command(render.render(SCENARIOS[name]))
    assert argv[:2] == ["gearmesh", "serve"]
    known_flags = {f for opt in documented.values() for f in opt.flags}
    unknown_flags = [f for f in chart_flags(argv) if f not in known_flags]
    assert not unknown_flags, f"flags not in docs/configuration.md: {unknown_flags}"
    unknown_env = [k for k in env if k.startswith("GEARMESH_") and k not in documented]
    assert not unknown_env, f"GEARMESH_* not in docs/configuration.md: {unknown_env}"
    others = set(env) - set(documented) - PLUMBING_ENV
    assert not others, f"unexpected variables: {others}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_setting_values_have_the_documented_shape(name: str, documented: dict[str, Option]) -> None:
    _, env = node_command(render.render(SCENARIOS[name]))
    levels = ["FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"]
    for key, value in env.items():
        if key not in documented:
            continue
        default = documented[key].default
        if default in ("off", "on"):
            assert value.lower() in BOOLEAN_WORDS, (key, value)
        elif default.isdigit():
            assert value.isdigit(), (key, value)
    assert env["GEARMESH_VERBOSE"] in levels
    assert env["GEARMESH_QUEUE"] in {"sqlite", "memory"}
    assert env["GEARMESH_FSYNC"] in {"always", "batch", "never"}
    if "GEARMESH_ETCD" in env:
        for endpoint in env["GEARMESH_ETCD"].split(","):
            assert re.fullmatch(r"(https?://)?[A-Za-z0-9.-]+:\d+", endpoint), endpoint


@pytest.mark.no_helm
@pytest.mark.timeout(30)
def test_dockerfile_env_is_documented(documented: dict[str, Option]) -> None:
    dockerfile = (render.ROOT / "Dockerfile").read_text()
    names = set(re.findall(r"\b(GEARMESH_[A-Z0-9_]+)=", dockerfile))
    assert names, "the image should set GEARMESH_DATA_DIR"
    assert names <= set(documented)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_binary_knows_every_flag_and_variable(name: str, help_text: str) -> None:
    argv, env = node_command(render.render(SCENARIOS[name]))
    in_help = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))
    missing = [f for f in chart_flags(argv) if f not in in_help]
    assert not missing, f"`gearmesh serve --help` lacks {missing}"
    for key in env:
        if not key.startswith("GEARMESH_"):
            continue
        # Each variable stands for the long flag of the same name.
        flag = "--" + key.removeprefix("GEARMESH_").lower().replace("_", "-")
        assert flag in in_help, f"{key}: `gearmesh serve --help` has no {flag}"


@pytest.mark.no_helm
@pytest.mark.timeout(30)
def test_docs_match_the_binary(documented: dict[str, Option], help_text: str) -> None:
    in_help = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))
    missing = sorted(opt.long for opt in documented.values() if opt.long not in in_help)
    assert not missing, f"documented but not in `gearmesh serve --help`: {missing}"
