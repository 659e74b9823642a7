"""``atom-tier plan --metrics``: size verdicts for each tier of a running server, from its
``/metrics`` (cumulative counters since the server started).

For each tier, top down (device prefix cache, DRAM tier, NVMe tier):

* **hits**: prompt tokens it served (``vllm:prompt_tokens_cached_by_source``: ``device``,
  ``host`` = DRAM tier, ``disk`` = NVMe tier);
* **reached**: prompt tokens that got as far as its lookup (prompt tokens minus those served
  by the tiers above); **hit rate** = hits / reached;
* **lost**: tokens served by the tiers below it. Every chunk below passed through this tier
  first (device -> DRAM stores, DRAM -> NVMe write-on-store), so these are reuses this tier had
  held and evicted. **Lost share** = lost / (hits + lost);
* **evicted**: DRAM: bytes stored or promoted into it minus bytes it holds; NVMe: the tier's
  ``evicted_bytes`` counter; device: vLLM's sampled block-eviction histogram when the server
  runs with ``--kv-cache-metrics``, else not observable;
* **fill**: used / capacity (``atom_tier:kv_tier_*`` gauges; device: ``vllm:kv_cache_usage_perc``).

The rule (thresholds below, printed with every verdict):

1. **too small** when its lost share is at least ``LOST_SHARE`` (a quarter of the reuse that
   reached it came from further down: it had evicted prefixes that came back); for the last
   tier, whose lost reuse nobody sees, when it evicted and its hit rate is below
   ``LAST_HIT_RATE`` (it turns over and serves under half of what reaches it);
2. **too large** when it evicted nothing and is at most ``FILL`` full: it never filled, and a
   tier of half the size would have held everything it was given;
3. **right** otherwise. A tier no prompt token reached is **idle** (no verdict).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from atom_tier.plan.deployment import PlanInputError
from atom_tier.replay.metrics import HIT_METRIC, SOURCE_METRIC, Sample, parse_prometheus
from atom_tier.sizing import human_size

LOST_SHARE = 0.25
LAST_HIT_RATE = 0.5
FILL = 0.5

PROMPT_METRIC = "vllm:prompt_tokens"
USED = "atom_tier:kv_tier_used_bytes"
CAPACITY = "atom_tier:kv_tier_capacity_bytes"
DRAM_LABEL = "0:primary"
STORE_BYTES = "vllm:kv_offload_store_bytes"
TRANSFER_BYTES = "vllm:kv_offload_total_bytes"  # older name, with a transfer_type label
STORE_TYPE = "GPU_to_CPU"
PROMOTED_BYTES = "vllm:kv_offload_tiering_read_bytes"
NVME_EVICTED = "atom_tier:nvme_tier_evicted_bytes"
NVME_USED = "atom_tier:nvme_tier_usage_bytes"
NVME_CAPACITY = "atom_tier:nvme_tier_capacity_bytes"
DEVICE_EVICTIONS = "vllm:kv_block_lifetime_seconds_count"
DEVICE_USAGE = "vllm:kv_cache_usage_perc"
CACHE_INFO = "vllm:cache_config_info"

RULE = (
    f"rule: too small = at least {LOST_SHARE:.0%} of the reuse that reached the tier was served "
    f"by the tiers below (it had evicted it), or, for the last tier, it evicted and its hit "
    f"rate is under {LAST_HIT_RATE:.0%}; too large = it evicted nothing and is at most "
    f"{FILL:.0%} full; right = neither. Counters are cumulative since the server started."
)


@dataclass(frozen=True)
class TierView:
    """One tier's counters and its verdict."""

    name: str
    hit_tokens: float
    reached_tokens: float
    lost_tokens: float
    last: bool
    evicted_bytes: float | None  # None: not observable on this server
    used: float | None  # bytes (device: fraction of the pool, as vLLM reports it)
    capacity: float | None  # bytes (device: tokens)
    fill: float | None
    verdict: str
    reason: str

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.reached_tokens if self.reached_tokens else 0.0

    @property
    def lost_share(self) -> float:
        total = self.hit_tokens + self.lost_tokens
        return self.lost_tokens / total if total else 0.0


@dataclass(frozen=True)
class Observed:
    source: str
    prompt_tokens: float
    computed_tokens: float
    tiers: tuple[TierView, ...]


def read_metrics(where: str, timeout_s: float = 10.0) -> str:
    """The exposition text at ``where``: an http(s) URL (``/metrics`` added when the path is
    empty) or a file holding a saved copy."""
    if where.startswith(("http://", "https://")):
        url = where if where.rstrip("/").endswith("/metrics") else where.rstrip("/") + "/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as reply:
                return str(reply.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise PlanInputError(f"--metrics {url}: cannot read it: {error}") from None
    try:
        return Path(where).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise PlanInputError(
            f"--metrics {where}: not an http(s) URL and not a readable file: {error}"
        ) from None


class _Samples:
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def total(self, names: str | tuple[str, ...], **labels: str) -> float | None:
        """Sum of the series of the first of ``names`` present with these labels (counters
        may carry ``_total``); None when no series matches."""
        for name in (names,) if isinstance(names, str) else names:
            found = [
                s.value
                for s in self.samples
                if s.name in (name, name + "_total")
                and all(s.labels.get(k) == v for k, v in labels.items())
            ]
            if found:
                return sum(found)
        return None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for s in self.samples:
            if s.name in (name, name + "_total") and label in s.labels:
                totals[s.labels[label]] = totals.get(s.labels[label], 0.0) + s.value
        return totals

    def labels_of(self, name: str) -> dict[str, str] | None:
        return next((dict(s.labels) for s in self.samples if s.name == name), None)


def _verdict(
    *, reached: float, lost_share: float, last: bool, hit_rate: float,
    evicted: float | None, fill: float | None,
) -> tuple[str, str]:  # fmt: skip
    if reached <= 0:
        return "idle", "no prompt token reached it"
    if not last and lost_share >= LOST_SHARE:
        return "too small", (
            f"{lost_share:.0%} of the reuse that reached it came from the tiers below "
            f"(>= {LOST_SHARE:.0%}): it evicted prefixes that came back"
        )
    if last and evicted is not None and evicted > 0 and hit_rate < LAST_HIT_RATE:
        return "too small", (
            f"it evicted and served {hit_rate:.0%} of the tokens that reached it "
            f"(< {LAST_HIT_RATE:.0%})"
        )
    if evicted == 0 and fill is not None and fill <= FILL:
        return "too large", (
            f"it evicted nothing and is {fill:.0%} full (<= {FILL:.0%}): half of it would "
            "have held everything"
        )
    if evicted is None:
        return "right", "no eviction count on this server; its lost share is small"
    return "right", (
        f"lost share {lost_share:.0%} (< {LOST_SHARE:.0%})"
        + (f", hit rate {hit_rate:.0%}" if last else "")
        + (", it evicted" if evicted else ", it evicted nothing")
    )


def observe(text: str, source: str = "") -> Observed:
    """Per-tier counters and verdicts from a ``/metrics`` text; one error when it is not a
    vLLM server's."""
    s = _Samples(parse_prometheus(text))
    hits = s.by_label(HIT_METRIC, "source")
    by_source = s.by_label(SOURCE_METRIC, "source")
    prompt = s.total(PROMPT_METRIC)
    if prompt is None and by_source:
        prompt = sum(by_source.values())
    if prompt is None or not hits:
        raise PlanInputError(
            f"--metrics {source or 'text'}: no vLLM prompt-token counters "
            f"({PROMPT_METRIC}, {HIT_METRIC}): not a vLLM 0.32 server's /metrics?"
        )
    computed = by_source.get("local_compute", prompt - sum(hits.values()))
    connector = s.total(CAPACITY, tier=DRAM_LABEL) is not None
    nvme = s.total(NVME_CAPACITY) is not None
    # (name, hit source, evicted, used, capacity, fill)
    rows: list[tuple[str, str, float | None, float | None, float | None, float | None]] = []
    info = s.labels_of(CACHE_INFO) or {}
    try:
        pool = float(info["num_gpu_blocks"]) * float(info["block_size"])
    except (KeyError, ValueError):
        pool = None
    usage = s.total(DEVICE_USAGE)
    device_evictions = s.total(DEVICE_EVICTIONS)
    rows.append(("device", "device", device_evictions, usage, pool, None))
    if connector:
        capacity = s.total(CAPACITY, tier=DRAM_LABEL) or 0.0
        used = s.total(USED, tier=DRAM_LABEL) or 0.0
        stored = s.total(STORE_BYTES)
        if stored is None:
            stored = s.total(TRANSFER_BYTES, transfer_type=STORE_TYPE) or 0.0
        promoted = s.total(PROMOTED_BYTES) or 0.0
        evicted = max(0.0, stored + promoted - used)
        rows.append(
            ("DRAM tier", "host", evicted, used, capacity, used / capacity if capacity else None)
        )
    if nvme:
        capacity = s.total(NVME_CAPACITY) or 0.0
        used = s.total(NVME_USED) or 0.0
        rows.append(
            ("NVMe tier", "disk", s.total(NVME_EVICTED) or 0.0, used, capacity,
             used / capacity if capacity else None)
        )  # fmt: skip
    tiers = []
    above = 0.0
    for index, row in enumerate(rows):
        name, hit_source, evicted_bytes, used_now, size, fill = row
        own = hits.get(hit_source, 0.0)
        below = sum(hits.get(r[1], 0.0) for r in rows[index + 1 :])
        reached = max(0.0, prompt - above)
        last = index == len(rows) - 1
        rate = own / reached if reached else 0.0
        share = below / (own + below) if own + below else 0.0
        verdict, reason = _verdict(
            reached=reached, lost_share=share, last=last, hit_rate=rate,
            evicted=evicted_bytes, fill=fill,
        )  # fmt: skip
        view = TierView(
            name, own, reached, below, last, evicted_bytes, used_now, size, fill, verdict, reason
        )
        tiers.append(view)
        above += own
    return Observed(source, prompt, computed, tuple(tiers))


def _size(tier: TierView, value: float | None) -> str:
    if value is None:
        return "-"
    if tier.name == "device":
        return f"{value:,.0f} tok"
    return human_size(int(value))


def format_observed(observed: Observed) -> str:
    prompt = observed.prompt_tokens or 1.0
    shares = ", ".join(
        f"{t.name} {t.hit_tokens:,.0f} ({t.hit_tokens / prompt:.1%})" for t in observed.tiers
    )
    lines = [
        f"server metrics: {observed.source}",
        f"prompt tokens {observed.prompt_tokens:,.0f}: {shares}, prefilled "
        f"{observed.computed_tokens:,.0f} ({observed.computed_tokens / prompt:.1%})",
        "",
        f"{'tier':<10} {'capacity':>12} {'used':>10} {'evicted':>10} {'hit tokens':>12} "
        f"{'hit rate':>9} {'lost share':>10}  verdict",
    ]
    for t in observed.tiers:
        used = (
            "-" if t.used is None else f"{t.used:.0%}" if t.name == "device" else _size(t, t.used)
        )
        evicted = (
            "-" if t.evicted_bytes is None
            else f"{t.evicted_bytes:,.0f} blk" if t.name == "device"
            else _size(t, t.evicted_bytes)
        )  # fmt: skip
        lines.append(
            f"{t.name:<10} {_size(t, t.capacity):>12} {used:>10} {evicted:>10} "
            f"{t.hit_tokens:>12,.0f} {t.hit_rate:>9.1%} {t.lost_share:>10.1%}  {t.verdict}"
        )
    lines.append("")
    lines += [f"{t.name}: {t.verdict} — {t.reason}" for t in observed.tiers]
    lines += ["", RULE]
    return "\n".join(lines)
