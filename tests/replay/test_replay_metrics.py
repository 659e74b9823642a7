"""The server's cache counters parsed from Prometheus text as vLLM prints it."""

from __future__ import annotations

from atom_tier.replay.metrics import (
    KNOWN_TIERS,
    CacheCounters,
    parse_prometheus,
    sum_counters,
    tier_order,
)

# The shape of vLLM 0.32's exposition (seen on the CPU server): `_total` counters with
# `_created` companions, two engines, comments and a histogram line.
EXPOSITION = """\
# HELP vllm:prompt_tokens_cached_by_source_total Prefix-cache hit tokens by the cache tier
# TYPE vllm:prompt_tokens_cached_by_source_total counter
vllm:prompt_tokens_cached_by_source_total{engine="0",model_name="tiny",source="device"} 800.0
vllm:prompt_tokens_cached_by_source_total{engine="1",model_name="tiny",source="device"} 200.0
vllm:prompt_tokens_cached_by_source_total{engine="0",model_name="tiny",source="host"} 64.0
vllm:prompt_tokens_cached_by_source_total{engine="0",model_name="tiny",source="disk"} 0.0
vllm:prompt_tokens_cached_by_source_created{engine="0",model_name="tiny",source="device"} 1.7e9
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="local_compute"} 300.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="local_cache_hit"} 800.0
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="tiny"} 0.0
garbage line without a value
vllm:odd_value{source="x"} NaNish
"""


def test_parse_keeps_names_labels_and_values() -> None:
    samples = parse_prometheus(EXPOSITION)
    first = samples[0]
    assert first.name == "vllm:prompt_tokens_cached_by_source_total"
    assert dict(first.labels) == {"engine": "0", "model_name": "tiny", "source": "device"}
    assert first.value == 800.0
    assert all(s.name != "vllm:odd_value" for s in samples)


def test_hits_are_summed_per_tier_over_engines_and_created_is_ignored() -> None:
    counters = CacheCounters.from_text(EXPOSITION)
    assert counters.available
    assert dict(counters.hits) == {"device": 1000.0, "host": 64.0, "disk": 0.0}
    assert counters.computed == 300.0
    assert counters.hit_total == 1064.0


def test_difference_between_snapshots() -> None:
    before = CacheCounters.from_text(EXPOSITION)
    after = CacheCounters.from_text(
        EXPOSITION.replace("} 64.0", "} 192.0").replace("} 300.0", "} 350.0")
    )
    delta = after.minus(before)
    assert delta.hits["host"] == 128.0 and delta.hits["device"] == 0.0
    assert delta.computed == 50.0
    # A server restart between snapshots reads as nothing, never as negative hits.
    assert before.minus(after).hits["host"] == 0.0


def test_a_server_without_vllm_counters_is_not_available() -> None:
    assert not CacheCounters.from_text("# nothing\nprocess_cpu_seconds_total 3.0\n").available


def test_tier_order_is_fixed_then_extra_by_name() -> None:
    assert tier_order(["zeta", "host", "alpha"]) == [*KNOWN_TIERS, "alpha", "zeta"]


def test_requests_the_servers_hold_are_counted_as_busy() -> None:
    # vLLM's gauges of running and waiting requests; the replay reads its final counters once
    # they are 0 on every server.
    gauges = (
        'vllm:num_requests_running{engine="0",model_name="tiny"} 2.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0\n'
    )
    busy = CacheCounters.from_text(EXPOSITION + gauges)
    assert busy.busy == 3.0
    assert CacheCounters.from_text(EXPOSITION).busy == 0.0
    assert sum_counters([busy, busy]).busy == 6.0
