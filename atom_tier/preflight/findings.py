"""What a preflight check reports, and the registry checks join."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atom_tier.preflight.context import CheckContext


class Level(str, Enum):
    """How much a finding matters. ERROR stops vLLM start-up and makes `doctor` exit 1."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return list(Level).index(self)


@dataclass(frozen=True)
class Finding:
    """One result of a check: a stable code, what was found, and how to fix it."""

    level: Level
    code: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["level"] = self.level.value
        return data


CheckFn = Callable[["CheckContext"], Iterable[Finding]]


@dataclass(frozen=True)
class Check:
    """A registered check: its name, the area it belongs to, and the function."""

    name: str
    area: str
    run: CheckFn


_REGISTRY: dict[str, Check] = {}


def check(name: str, area: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check under a unique name (its module must be in ``CHECK_MODULES``)."""

    def decorate(fn: CheckFn) -> CheckFn:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise ValueError(f"preflight check {name!r} is registered twice")
        _REGISTRY[name] = Check(name, area, fn)
        return fn

    return decorate


def registered_checks() -> list[Check]:
    return list(_REGISTRY.values())


def worst_level(findings: Iterable[Finding]) -> Level:
    return max((f.level for f in findings), key=lambda lv: lv.rank, default=Level.OK)


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level is Level.ERROR]
