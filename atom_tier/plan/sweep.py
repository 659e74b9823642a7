"""Every configuration of a sweep, the trace's ceiling and working set, and the verdict.

The workload and the device pass do not depend on the tiers' sizes, so they are computed once;
each (DRAM, NVMe) pair then runs only the tiers below the device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from atom_tier.plan.deployment import Deployment, PlanInputError, gb_value
from atom_tier.plan.simulator import (
    DRAM,
    NVME,
    SHARED,
    HierarchySpec,
    SimulationResult,
    TierSpec,
    ceiling_hits,
    device_hits,
    simulate,
)
from atom_tier.plan.workload import Workload

# A configuration within this many points of the best hit rate counts as good as the best.
CLOSE_POINTS = 2.0
_RANGE = re.compile(r"^\s*([\d.]+)\s*:\s*([\d.]+)\s*:\s*([\d.]+)\s*$")


def parse_sizes(text: str, flag: str) -> list[float]:
    """'0,16,32' or 'START:STOP:STEP' (GiB, STOP included) -> sizes; one clear error."""
    try:
        match = _RANGE.match(text)
        if match:
            start, stop, step = (float(g) for g in match.groups())
            if step <= 0:
                raise ValueError
            count = round((stop - start) / step) + 1
            sizes = [start + i * step for i in range(max(count, 0))]
        else:
            sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PlanInputError(
            f"{flag} {text!r} does not parse: give GiB sizes as '0,16,32' or 'START:STOP:STEP'"
        ) from None
    if not sizes or any(s < 0 for s in sizes):
        raise PlanInputError(f"{flag} {text!r}: sizes must be zero or more GiB")
    return sorted(set(sizes))


@dataclass(frozen=True)
class Configuration:
    dram_gb: float
    nvme_gb: float
    shared_gb: float
    result: SimulationResult


@dataclass
class Sweep:
    deployment: Deployment
    workload: Workload
    eviction: str
    configurations: list[Configuration] = field(default_factory=list)
    ceiling_tokens: int = 0
    working_set_tokens: list[int] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.input_tokens for r in self.workload.requests)

    @property
    def ceiling(self) -> float:
        return self.ceiling_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def working_set_peak_tokens(self) -> int:
        return max(self.working_set_tokens, default=0)


def working_set(workload: Workload) -> list[int]:
    """Tokens of the chunks used before and again after each request (KV worth keeping)."""
    last: dict[int, int] = {}
    firsts = np.zeros(len(workload.requests) + 1, dtype=np.int64)
    for request in workload.requests:
        before = len(last)
        keys = request.chain[: request.covered_chunks]
        last.update(zip(keys, [request.serial] * len(keys), strict=True))
        firsts[request.serial] = len(last) - before
    lasts = np.bincount(np.fromiter(last.values(), dtype=np.int64), minlength=len(firsts))
    alive = np.cumsum(firsts) - np.cumsum(lasts[: len(firsts)])
    return [int(v) * workload.chunk_tokens for v in alive[:-1]]


def run_sweep(
    workload: Workload,
    deployment: Deployment,
    *,
    dram_gb: list[float],
    nvme_gb: list[float],
    shared_gb: float = 0.0,
    eviction: str = "lru",
    request_s: float = 0.0,
    hold_s: float | None = None,
) -> Sweep:
    """``hold_s``: how long a request holds its device blocks (default ``request_s``), and
    when it ends, the DRAM tier's recency update."""
    chunk = workload.chunk_tokens
    hold = request_s if hold_s is None else hold_s
    device = device_hits(workload, deployment.device_kv_tokens // chunk, hold)
    sweep = Sweep(deployment, workload, eviction)
    sweep.ceiling_tokens = sum(ceiling_hits(workload))
    sweep.working_set_tokens = working_set(workload)
    for nvme in nvme_gb:
        for dram in dram_gb:
            secondaries = tuple(
                TierSpec(name, deployment.chunks(size * 2**30, chunk))
                for name, size in ((NVME, nvme), (SHARED, shared_gb))
                if size > 0
            )
            spec = HierarchySpec(
                TierSpec(DRAM, deployment.chunks(dram * 2**30, chunk), eviction), secondaries
            )
            sweep.configurations.append(
                Configuration(dram, nvme, shared_gb, simulate(workload, device, spec, hold))
            )
    return sweep


@dataclass(frozen=True)
class Verdict:
    regime: str
    best: Configuration
    chosen: Configuration
    settings: dict[str, str]


def verdict(sweep: Sweep) -> Verdict:
    """The regime, and the smallest tiers within CLOSE_POINTS of the best hit rate."""
    configs = sweep.configurations
    best = max(configs, key=lambda c: c.result.hit_rate)
    close = best.result.hit_rate - CLOSE_POINTS / 100
    good = [c for c in configs if c.result.hit_rate >= close]
    chosen = min(good, key=lambda c: (c.nvme_gb > 0, c.dram_gb, c.nvme_gb))
    if chosen.dram_gb == 0 and chosen.nvme_gb == 0:
        regime = "HBM enough"
        settings = {"ATOM_TIER_CONNECTOR": "off"}
    else:
        regime = "DRAM tier" if chosen.nvme_gb == 0 else "DRAM + NVMe"
        settings = {
            "ATOM_TIER_DRAM_GB": gb_value(chosen.dram_gb * 2**30, up=True),
            "ATOM_TIER_EVICTION": sweep.eviction,
            "ATOM_TIER_CHUNK_TOKENS": str(sweep.workload.chunk_tokens),
        }
        if chosen.nvme_gb > 0:
            settings["ATOM_TIER_NVME_PATH"] = "<a directory on the NVMe drive>"
            settings["ATOM_TIER_NVME_GB"] = gb_value(chosen.nvme_gb * 2**30, up=True)
    return Verdict(regime, best, chosen, settings)
