"""The planner's time model: running times, admission and the closed loop, worked out by hand.

Trace blocks and KV blocks are 64 tokens, chunks 256 tokens; every request outputs 10 tokens
(9 decode steps after the first token) and users think 1 s between requests.
"""

from __future__ import annotations

import math

import pytest
from plan_helpers import session

from atom_tier.plan.latency import ServerModel, TimedSimulation, server_model_from_metrics
from atom_tier.plan.simulator import DEVICE, DRAM, HierarchySpec, TierSpec
from atom_tier.plan.workload import WorkloadOptions, build_workload
from atom_tier.replay.traces import ReplayInputError

IDS_8 = list(range(1, 9))  # 512 tokens
IDS_16 = list(range(1, 17))  # 1,024 tokens, starting with IDS_8
# 512 prefilled tokens: 0.5 s; 9 decode steps: 0.09 s.
MODEL = ServerModel(prefill_tokens_per_s=1024, decode_s_per_token=0.01)


def run(sessions: list, users: int, model: ServerModel, device_chunks: int | None):
    timed = TimedSimulation(
        HierarchySpec(TierSpec(DRAM, 0)), device_chunks, model, chunk_tokens=256, block_tokens=64
    )
    options = WorkloadOptions(users=users, warm_prefix_pct=0.0)
    workload = build_workload(
        sessions, options, chunk_tokens=256, block_tokens=64, respond=timed.respond
    )
    return workload, timed


def test_running_time_adds_prefill_load_decode_and_overhead() -> None:
    model = ServerModel(
        prefill_tokens_per_s=10_000, decode_s_per_token=0.01, load_tokens_per_s=5_120,
        overhead_s=0.05,
    )  # fmt: skip
    # 0.05 + 1000 / 10000 + 512 / 5120 + (11 - 1) x 0.01
    assert model.running_s(1000, 512, 11) == pytest.approx(0.35)
    assert model.running_s(0, 0, 0) == pytest.approx(0.05)  # no output: no decode step


def test_a_user_comes_back_sooner_after_a_request_that_hit() -> None:
    # Request 0 prefills 512 tokens: 0.5 + 0.09 = 0.59 s. The user thinks 1 s and sends
    # request 1 at 1.59; its first 512 tokens hit on the device, 512 are prefilled: it ends
    # 0.59 s later, at 2.18 (a constant 1 s latency would have sent it at 2.0).
    workload, timed = run([session("s", [(IDS_8, 0), (IDS_16, 0)])], 1, MODEL, None)
    assert [r.time for r in workload.requests] == pytest.approx([0.0, 1.59])
    assert timed.times.admitted == pytest.approx([0.0, 1.59])
    assert timed.times.ended == pytest.approx([0.59, 2.18])
    assert timed.times.mean_latency_s == pytest.approx(0.59)
    result = timed.result()
    assert result.tiers[DEVICE].hit_tokens == 512
    assert result.prefill_tokens == 512 + 512


def test_blocks_admission_waits_until_the_prompt_fits() -> None:
    # 3 chunks x 4 blocks less the null block = 11 blocks. The first request holds its 8
    # prompt blocks and 1 of output (tokens 0-520); the second needs 8 new blocks and 2 are
    # free: it waits for the first to end (0.59 s) and ends at 1.18.
    sessions = [session("a", [(IDS_8, 0)]), session("b", [(list(range(20, 28)), 0)])]
    _, timed = run(sessions, 2, MODEL, 3)
    assert timed.times.admitted == pytest.approx([0.0, 0.59])
    assert timed.times.ended == pytest.approx([0.59, 1.18])
    assert timed.times.mean_queue_s == pytest.approx(0.295)
    # With room for both (7 chunks: 27 blocks), both run at once.
    _, roomy = run(sessions, 2, MODEL, 7)
    assert roomy.times.admitted == pytest.approx([0.0, 0.0])


def test_throughput_admission_spaces_requests_by_running_time_over_concurrency() -> None:
    # Two requests sent at 0, each running 0.59 s; a server that runs 2 at once on average
    # takes the next one 0.59 / 2 = 0.295 s after the first, whatever the blocks.
    sessions = [session("a", [(IDS_8, 0)]), session("b", [(list(range(20, 28)), 0)])]
    model = ServerModel(
        prefill_tokens_per_s=1024, decode_s_per_token=0.01, admission="throughput", running=2
    )
    _, timed = run(sessions, 2, model, None)
    assert timed.times.admitted == pytest.approx([0.0, 0.295])
    assert timed.times.ended == pytest.approx([0.59, 0.885])


METRICS = """\
# HELP vllm:request_prefill_time_seconds Histogram of time spent in PREFILL phase.
vllm:request_prefill_time_seconds_sum{engine="0",model_name="m"} 2.5
vllm:request_prefill_time_seconds_count{engine="0",model_name="m"} 10.0
vllm:request_decode_time_seconds_sum{engine="0",model_name="m"} 1.0
vllm:request_inference_time_seconds_sum{engine="0",model_name="m"} 30.0
vllm:request_prefill_kv_computed_tokens_sum{engine="0",model_name="m"} 20000.0
vllm:generation_tokens_total{engine="0",model_name="m"} 110.0
vllm:kv_offload_load_time_total{engine="0",model_name="m"} 0.5
vllm:kv_offload_load_bytes_total{engine="0",model_name="m"} 1024000.0
"""


def test_rates_come_from_the_servers_metrics() -> None:
    model = server_model_from_metrics(METRICS, kv_bytes_per_token=1024, elapsed_s=60)
    # 20,000 computed tokens in 2.5 s of prefill less 0.5 s of loads; 1,000 tokens loaded in
    # 0.5 s; 1.0 s of decode over 110 - 10 tokens; 30 s of inference over 60 s.
    assert model.prefill_tokens_per_s == pytest.approx(10_000)
    assert model.load_tokens_per_s == pytest.approx(2_000)
    assert model.decode_s_per_token == pytest.approx(0.01)
    assert model.running == pytest.approx(0.5)
    assert "10,000 tok/s" in model.describe() and "10.00 ms" in model.describe()


def test_no_loads_measured_means_loads_are_free() -> None:
    text = METRICS.replace("kv_offload_load_time_total", "other_total").replace(
        'vllm:request_prefill_time_seconds_sum{engine="0",model_name="m"} 2.5',
        'vllm:request_prefill_time_seconds_sum{engine="0",model_name="m"} 2.0',
    )
    model = server_model_from_metrics(text, kv_bytes_per_token=1024, elapsed_s=60)
    assert model.load_tokens_per_s == math.inf
    assert model.prefill_tokens_per_s == pytest.approx(10_000)


def test_bad_model_inputs_are_refused() -> None:
    with pytest.raises(ReplayInputError, match="no finished request"):
        server_model_from_metrics("", kv_bytes_per_token=1024, elapsed_s=60)
    with pytest.raises(ReplayInputError, match="positive"):
        ServerModel(prefill_tokens_per_s=0, decode_s_per_token=0.01)
    with pytest.raises(ReplayInputError, match="admission"):
        ServerModel(prefill_tokens_per_s=1, decode_s_per_token=0.01, admission="lifo")
