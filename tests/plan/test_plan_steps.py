"""The engine-step time model and its closed loop, worked out by hand.

Trace blocks and KV blocks are 64 tokens, chunks 256 tokens; every request outputs 10 tokens
(its first with the prompt's last step, then 9 decode steps) and users think 1 s between
requests. A step takes 10 ms + 1 ms per token unless said otherwise.
"""

from __future__ import annotations

import math

import pytest
from plan_helpers import session

from atom_tier.plan.closed_loop import ClosedLoop
from atom_tier.plan.simulator import DEVICE, DRAM, HierarchySpec, TierSpec
from atom_tier.plan.steps import (
    StepModel,
    StepSimulation,
    StepTimes,
    calibrate,
    solve_costs,
    step_targets_from_metrics,
)
from atom_tier.plan.workload import WorkloadOptions, build_workload
from atom_tier.replay.traces import ReplayInputError

IDS_1 = [1]  # 64 tokens
IDS_8 = list(range(1, 9))  # 512 tokens
IDS_16 = list(range(1, 17))  # 1,024 tokens, starting with IDS_8
OTHER_8 = list(range(20, 28))
MODEL = StepModel(step_s=0.01, token_s=0.001)


def run(sessions: list, users: int, model: StepModel, device_chunks: int | None,
        dram_chunks: int = 0, **options: object) -> StepSimulation:  # fmt: skip
    sim = StepSimulation(
        HierarchySpec(TierSpec(DRAM, dram_chunks)), device_chunks, model,
        chunk_tokens=256, block_tokens=64,
    )  # fmt: skip
    opts = WorkloadOptions(users=users, warm_prefix_pct=0.0, **options)  # type: ignore[arg-type]
    sim.run(ClosedLoop(sessions, opts, chunk_tokens=256, block_tokens=64))
    return sim


def test_a_lone_request_gets_whole_steps() -> None:
    # Request 0: one step of 512 tokens (0.522 s), 9 decode steps of 1 token (0.011 s each):
    # ends at 0.621. The user thinks 1 s; request 1 (1,024 tokens, 512 hit on the device)
    # is sent at 1.621, prefills 512 tokens and ends 0.621 s later, at 2.242.
    sim = run([session("s", [(IDS_8, 0), (IDS_16, 0)])], 1, MODEL, None)
    times = sim.times
    assert times.sent == pytest.approx([0.0, 1.621])
    assert times.scheduled == pytest.approx([0.0, 1.621])
    assert times.first_token == pytest.approx([0.522, 2.143])
    assert times.ended == pytest.approx([0.621, 2.242])
    result = sim.result()
    assert result.tiers[DEVICE].hit_tokens == 512
    assert result.prefill_tokens == 512 + 512


def test_a_long_prompt_is_prefilled_in_chunks_of_the_token_budget() -> None:
    # 256 tokens a step: two steps of 0.266 s, then 9 decode steps of 0.011 s.
    model = StepModel(step_s=0.01, token_s=0.001, max_batched_tokens=256)
    sim = run([session("s", [(IDS_8, 0)])], 1, model, None)
    assert sim.times.first_token == pytest.approx([0.532])
    assert sim.times.ended == pytest.approx([0.631])
    assert sim.times.steps == 11


def test_requests_share_steps_and_a_decode_waits_beside_a_prefill() -> None:
    # Budget 256. Step 1 (0 s): a's 64 tokens and b's first 192: 0.266 s; a's first token.
    # Step 2 (0.266): a decodes 1, b prefills 255: 0.266 s. Step 3 (0.532): a 1, b its last
    # 65: 0.076 s; b's first token at 0.608. Then 2-token steps (0.012 s): a's 7 more
    # tokens end it at 0.692; b's last 2 steps alone (0.011 s) end it at 0.714.
    model = StepModel(step_s=0.01, token_s=0.001, max_batched_tokens=256)
    sessions = [session("a", [(IDS_1, 0)]), session("b", [(OTHER_8, 0)])]
    times = run(sessions, 2, model, None).times
    assert times.first_token == pytest.approx([0.266, 0.608])
    assert times.ended == pytest.approx([0.692, 0.714])
    # Prefill: a 1 step (256 tokens), b 3 steps (256 + 256 + 66). Decode: a 9 steps (256 +
    # 66 + 7 x 2 tokens), b 9 steps (7 x 2 + 2 x 1), 18 tokens decoded.
    assert (times.prefill_steps, times.prefill_step_tokens) == (4, 834)
    assert (times.decode_steps, times.decode_step_tokens, times.decoded) == (18, 352, 18)
    assert times.mean_prefill_s == pytest.approx(0.437)
    assert times.decode_s_per_token == pytest.approx(0.532 / 18)
    # The costs that made this schedule are the ones its means give back.
    assert solve_costs(times, 0.437, 0.532 / 18) == pytest.approx((0.01, 0.001))
    # Decode steps faster than 0 fixed cost allows (2 x step_s + 417 x token_s = 0.5 and
    # step_s + 19.56 x token_s = 0.001 give step_s < 0): no fixed cost, the prefill per token.
    assert solve_costs(times, 0.5, 0.001) == pytest.approx((0.0, 0.5 / 417))


def test_the_queue_head_waits_for_device_blocks() -> None:
    # 3 chunks x 4 blocks less the null block = 11 blocks. a holds 8 prompt blocks and 1 of
    # output; b needs 8 new blocks and 2 are free: it is admitted at the first step after a
    # ends (0.621) and ends 0.621 s later.
    sessions = [session("a", [(IDS_8, 0)]), session("b", [(OTHER_8, 0)])]
    times = run(sessions, 2, MODEL, 3).times
    assert times.scheduled == pytest.approx([0.0, 0.621])
    assert times.ended == pytest.approx([0.621, 1.242])
    assert times.mean_queue_s == pytest.approx(0.3105)


def test_a_load_runs_beside_the_steps_before_the_prefill() -> None:
    # As above, then b's blocks evict a's on the device (8 + 9 > 11 blocks). a's second
    # request (sent at 1.621, nothing running) loads its first 512 tokens from DRAM at 5,120
    # tok/s (0.1 s), is scheduled at 1.721, prefills 512 tokens and ends at 2.342.
    model = StepModel(step_s=0.01, token_s=0.001, load_tokens_per_s=5120)
    sessions = [session("a", [(IDS_8, 0), (IDS_16, 0)]), session("b", [(OTHER_8, 0)])]
    sim = run(sessions, 2, model, 3, dram_chunks=8)
    assert sim.times.sent == pytest.approx([0.0, 0.0, 1.621])
    assert sim.times.scheduled == pytest.approx([0.0, 0.621, 1.721])
    assert sim.times.ended == pytest.approx([0.621, 1.242, 2.342])
    result = sim.result()
    assert result.tiers[DRAM].hit_tokens == 512
    assert result.tiers[DEVICE].hit_tokens == 0


def test_calibration_finds_the_costs_of_a_schedule_that_timing_does_not_change() -> None:
    model = StepModel(step_s=0.01, token_s=0.001, max_batched_tokens=256)
    sessions = [session("a", [(IDS_1, 0)]), session("b", [(OTHER_8, 0)])]

    def simulate(candidate: StepModel) -> StepTimes:
        return run(sessions, 2, candidate, None).times

    start = StepModel(step_s=0.05, token_s=0.0003, max_batched_tokens=256)
    found, rounds = calibrate(simulate, start, prefill_s=0.437, decode_s=0.532 / 18)
    assert (found.step_s, found.token_s) == pytest.approx((model.step_s, model.token_s))
    assert rounds == 2  # the first round solves it, the second sees no change


def test_the_closed_loop_follows_the_builders_rules() -> None:
    # Session x: 3 requests, the third longer than the max context (600 tokens): the user
    # drops it after its think time and takes y at once. Each request here takes 0.621 s.
    x = session("x", [(IDS_1, 0), (IDS_8, 0), (IDS_16, 0)])
    y = session("y", [(OTHER_8, 0)])
    sim = run([x, y], 1, MODEL, None, max_context=600)
    # x0: 64 tokens, 0.074 + 0.099 s, ends 0.173; x1 sent 1.173, 448 new tokens
    # (0.458 + 0.099 s) ends 1.730; x2 would be sent at 2.730: too long; y0 at 2.730.
    assert [r for r in sim.times.sent] == pytest.approx([0.0, 1.173, 2.730])
    # The builder, every request taking 1 s, sends the same requests in the same order.
    loop = ClosedLoop([x, y], WorkloadOptions(users=1, warm_prefix_pct=0.0, max_context=600),
                      chunk_tokens=256, block_tokens=64)  # fmt: skip
    sent = []
    while (t := loop.next_time()) is not None:
        for request in loop.sends(t):
            sent.append((request.session_id, request.index, request.time))
            loop.ended(request, request.time + 1.0)
    built = build_workload(
        [x, y], WorkloadOptions(users=1, warm_prefix_pct=0.0, max_context=600, request_s=1.0),
        chunk_tokens=256, block_tokens=64,
    )  # fmt: skip
    assert sent == [(r.session_id, r.index, r.time) for r in built.requests]
    assert sent == [("x", 0, 0.0), ("x", 1, 2.0), ("y", 0, 4.0)]


def test_max_requests_stops_the_users() -> None:
    sim = run([session("s", [(IDS_8, 0), (IDS_16, 0)])], 1, MODEL, None, max_requests=1)
    assert len(sim.times.sent) == 1


METRICS = """\
vllm:request_prefill_time_seconds_sum{engine="0"} 5.0
vllm:request_prefill_time_seconds_count{engine="0"} 10.0
vllm:request_decode_time_seconds_sum{engine="0"} 2.0
vllm:request_prefill_kv_computed_tokens_sum{engine="0"} 20000.0
vllm:generation_tokens_total{engine="0"} 110.0
vllm:kv_offload_load_time_total{engine="0"} 0.5
vllm:kv_offload_load_bytes_total{engine="0"} 1024000.0
"""


def test_targets_come_from_the_servers_metrics() -> None:
    targets = step_targets_from_metrics(METRICS, kv_bytes_per_token=1024)
    # 5 s of prefill over 10 requests; 2 s of decode over 110 - 10 tokens; 2,000 computed
    # tokens a request; 1,000 tokens loaded in 0.5 s.
    assert targets.prefill_s == pytest.approx(0.5)
    assert targets.decode_s == pytest.approx(0.02)
    assert targets.computed_per_request == pytest.approx(2000)
    assert targets.load_tokens_per_s == pytest.approx(2000)
    start = targets.start()  # half the decode time a step; the rest of the prefill a token
    assert start.step_s == pytest.approx(0.01)
    assert start.token_s == pytest.approx(0.49 / 2000)
    none = METRICS.replace("kv_offload_load_time_total", "other")
    assert step_targets_from_metrics(none, kv_bytes_per_token=1024).load_tokens_per_s == math.inf


def test_bad_step_inputs_are_refused() -> None:
    with pytest.raises(ReplayInputError, match="no prefilled"):
        step_targets_from_metrics("", kv_bytes_per_token=1024)
    with pytest.raises(ReplayInputError, match="negative"):
        StepModel(step_s=-1, token_s=0.001)
    with pytest.raises(ReplayInputError, match="budget"):
        StepModel(step_s=0.01, token_s=0.001, max_batched_tokens=0)
