"""The benchmark scenarios, by name."""

from __future__ import annotations

from collections.abc import Callable

from gearmesh.bench.config import Config
from gearmesh.bench.engine import Scenario
from gearmesh.bench.scenarios.bg import BgScenario
from gearmesh.bench.scenarios.burst import BurstScenario
from gearmesh.bench.scenarios.coalesce import CoalesceScenario
from gearmesh.bench.scenarios.drain import DrainScenario
from gearmesh.bench.scenarios.overload import OverloadScenario
from gearmesh.bench.scenarios.rt import RtScenario

SCENARIOS: dict[str, Callable[[Config], Scenario]] = {
    "bg": BgScenario,
    "drain": DrainScenario,
    "rt": RtScenario,
    "coalesce": CoalesceScenario,
    "burst": lambda cfg: OverloadScenario(cfg) if cfg.overload else BurstScenario(cfg),
}
