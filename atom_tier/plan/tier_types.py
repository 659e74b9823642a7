"""The planner's tier names, the tiers of one configuration, and what a simulation counts."""

from __future__ import annotations

from dataclasses import dataclass, field

DEVICE = "device"
DRAM = "dram"
NVME = "nvme"
SHARED = "shared"


@dataclass(frozen=True)
class TierSpec:
    name: str
    chunks: int
    policy: str = "lru"


@dataclass(frozen=True)
class HierarchySpec:
    """Capacities in chunks; secondary tiers are looked up in order after DRAM."""

    dram: TierSpec
    secondaries: tuple[TierSpec, ...] = ()


@dataclass
class TierCounters:
    hit_tokens: int = 0
    inserted: int = 0
    evicted: int = 0
    promotions_failed: int = 0


@dataclass
class SimulationResult:
    """Token counts of one configuration over the whole workload."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0
    tiers: dict[str, TierCounters] = field(default_factory=dict)
    stores_failed: int = 0

    @property
    def hit_tokens(self) -> int:
        return sum(t.hit_tokens for t in self.tiers.values())

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
