"""``atom-tier plan --metrics``: per-tier verdicts from hand-made /metrics text."""

from __future__ import annotations

from pathlib import Path

import pytest

from atom_tier.cli import main
from atom_tier.plan.deployment import PlanInputError
from atom_tier.plan.observed import observe

L = 'engine="0",model_name="m"'


def metrics_text(
    *, prompt: int, device: int, host: int = 0, disk: int = 0, dram: bool = True,
    dram_used: int = 1000, stored: int = 5000, promoted: int = 500,
    nvme: bool = True, nvme_used: int = 3000, nvme_evicted: int = 0,
) -> str:  # fmt: skip
    """A vLLM 0.32 /metrics page with these counters (the names a real server prints)."""
    computed = prompt - device - host - disk
    lines = [
        "# HELP vllm:prompt_tokens Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens counter",
        f"vllm:prompt_tokens_total{{{L}}} {prompt:.1f}",
        f'vllm:prompt_tokens_by_source_total{{{L},source="local_compute"}} {computed}',
        f'vllm:prompt_tokens_cached_by_source_total{{{L},source="device"}} {device}',
        f'vllm:prompt_tokens_cached_by_source_total{{{L},source="host"}} {host}',
        f'vllm:prompt_tokens_cached_by_source_total{{{L},source="disk"}} {disk}',
        f'vllm:cache_config_info{{block_size="128",num_gpu_blocks="10",{L}}} 1.0',
        f"vllm:kv_cache_usage_perc{{{L}}} 0.5",
    ]
    if dram:
        lines += [
            f'atom_tier:kv_tier_capacity_bytes{{{L},tier="0:primary"}} 1000.0',
            f'atom_tier:kv_tier_used_bytes{{{L},tier="0:primary"}} {dram_used}',
            f"vllm:kv_offload_store_bytes_total{{{L}}} {stored}",
            f'vllm:kv_offload_tiering_read_bytes_total{{{L},tier="1:AtomTierNvmeTier"}} {promoted}',
        ]
    if nvme:
        lines += [
            f"atom_tier:nvme_tier_capacity_bytes{{{L}}} 10000",
            f"atom_tier:nvme_tier_usage_bytes{{{L}}} {nvme_used}",
            f"atom_tier:nvme_tier_evicted_bytes_total{{{L}}} {nvme_evicted}",
        ]
    return "\n".join(lines) + "\n"


def test_three_tiers_too_small_too_small_too_large() -> None:
    seen = observe(metrics_text(prompt=10000, device=1000, host=2000, disk=3000))
    device, dram, nvme = seen.tiers
    assert [t.name for t in seen.tiers] == ["device", "DRAM tier", "NVMe tier"]
    assert seen.prompt_tokens == 10000 and seen.computed_tokens == 4000
    # device: 1000 hits, 2000 + 3000 served below -> 5000 / 6000 lost
    assert device.capacity == 1280 and device.evicted_bytes is None
    assert device.lost_share == pytest.approx(5000 / 6000)
    assert device.verdict == "too small"
    # DRAM: reached by 10000 - 1000; 2000 hits; 3000 below -> 60 % lost; evicted 5000 + 500 - 1000
    assert dram.reached_tokens == 9000 and dram.hit_rate == pytest.approx(2000 / 9000)
    assert dram.lost_share == pytest.approx(0.6) and dram.evicted_bytes == 4500
    assert dram.verdict == "too small"
    # NVMe, the last tier: 3000 of 7000, nothing evicted, 30 % full -> too large
    assert nvme.reached_tokens == 7000 and nvme.fill == pytest.approx(0.3)
    assert nvme.verdict == "too large"


def test_right_sizes_and_the_last_tier_that_turns_over() -> None:
    # No NVMe: DRAM is the last tier. Device: 1500 / 7500 lost = 20 % < 25 %.
    # DRAM: 1500 hits of 2000 reaching it (75 %), evicted 4500 -> right.
    seen = observe(metrics_text(prompt=8000, device=6000, host=1500, nvme=False))
    device, dram = seen.tiers
    assert device.lost_share == pytest.approx(0.2) and device.verdict == "right"
    assert dram.last and dram.hit_rate == pytest.approx(0.75) and dram.verdict == "right"
    # Same DRAM serving 500 of 2000 (25 % < 50 %) after evicting: too small.
    seen = observe(metrics_text(prompt=8000, device=6000, host=500, nvme=False))
    assert seen.tiers[1].verdict == "too small"
    # Evicted nothing (stored == used) and 60 % full: neither too large (> 50 %) nor too small.
    seen = observe(
        metrics_text(prompt=8000, device=6000, host=500, nvme=False, dram_used=600, stored=600,
                     promoted=0)
    )  # fmt: skip
    assert seen.tiers[1].evicted_bytes == 0 and seen.tiers[1].verdict == "right"


def test_no_connector_and_idle_tier() -> None:
    seen = observe(metrics_text(prompt=4000, device=0, dram=False, nvme=False))
    assert [t.name for t in seen.tiers] == ["device"]
    # Everything served above the NVMe tier: nothing reaches it.
    seen = observe(metrics_text(prompt=3000, device=1000, host=2000))
    assert seen.tiers[2].reached_tokens == 0 and seen.tiers[2].verdict == "idle"


def test_not_a_vllm_page_is_one_error() -> None:
    with pytest.raises(PlanInputError, match="no vLLM prompt-token counters"):
        observe("# nothing\nprocess_cpu_seconds_total 3.0\n", "x")


def test_cli_prints_verdicts_and_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "metrics.txt"
    saved.write_text(metrics_text(prompt=10000, device=1000, host=2000, disk=3000))
    assert main(["plan", "--metrics", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "DRAM tier: too small — 60% of the reuse" in out
    assert "NVMe tier: too large — it evicted nothing and is 30% full" in out
    assert "rule: too small = at least 25%" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan"], "give a traces folder, or --metrics URL"),
        (["plan", "traces", "--metrics", "http://x"], "not both"),
        (["plan", "--metrics", "/nonexistent/metrics.txt"], "not an http(s) URL"),
        (["plan", "--metrics", "http://127.0.0.1:9"], "cannot read it"),
    ],
)
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
