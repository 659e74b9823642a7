#!/usr/bin/env python3
"""The planner's caches at the server's own times: an arm's DRAM trace (``three_arms.py
--trace-dram``, ``arm-X/dram-trace.jsonl``, written by ``bench/dram_trace.py``) says when vLLM
looked each request up, when each engine step stored its chunks and when the request
finished; the planner's device cache and tier hierarchy are driven by exactly those events,
request by request (the replay's ``X-Request-Id`` names each one). No time model: what differs
from the server is the cache model's alone.

Per request, vLLM's hits at its effective lookup (the last one before the step that
scheduled it; a waiting request is looked up again every step it cannot be admitted) are
compared with the planner's at the same moment; the first requests that differ are listed.

    PYTHONPATH=. .venv/bin/python bench/plan_vs_logged.py --results out/three-arms-run10 --arms BC
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_vs_arms import BLOCK_TOKENS, arm_workload_options, kv_bytes_per_token
from three_arms import REPO
from three_arms import parse_args as arm_args
from three_arms_setup import machine

from atom_tier.plan.latency import fresh_caches
from atom_tier.plan.simulator import DEVICE, DRAM, NVME, HierarchySpec, TierSpec
from atom_tier.plan.workload import PlannedRequest, build_workload
from atom_tier.replay.client import parse_replay_request_id
from atom_tier.replay.traces import load_traces
from atom_tier.sizing import GIB

Key = tuple[str, int, int]
LOG_NAME = "dram-trace.jsonl"  # what bench/dram_trace.py writes in the arm's directory


@dataclass
class Logged:
    """One request as the server's trace shows it."""

    looks: list[tuple[float, int, int | None, int]] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    # Its stores: (time, computed tokens); before it is scheduled, promotions (C: chunks its
    # lookups bring from NVMe into DRAM), else the chunks its engine steps computed.
    stores: list[tuple[float, int]] = field(default_factory=list)
    # What each store did to DRAM: (time, positions it inserted, (request, position) evicted).
    changes: list[tuple[float, list[int], list[tuple[str, int]]]] = field(default_factory=list)
    loaded: float | None = None  # its load done (complete_load)
    finished: float | None = None

    @property
    def scheduled(self) -> float | None:
        """When vLLM scheduled it: its load (prepare_load), or without one its first store."""
        if self.loads:
            return self.loads[0]
        return self.stores[0][0] if self.stores else None

    @property
    def relooked(self) -> int:
        """Lookups after it was scheduled (vLLM preempted it and looked it up again)."""
        scheduled = self.scheduled
        return 0 if scheduled is None else sum(1 for look in self.looks if look[0] > scheduled)

    def lookup(self) -> tuple[float, int, int, int] | None:
        """(time, device hit tokens, tier hit tokens, prompt tokens) of the lookup vLLM
        scheduled it on, or None when it never ran."""
        scheduled = self.scheduled
        if scheduled is None:
            return None
        used = [look for look in self.looks if look[0] <= scheduled and look[2] is not None]
        if not used:
            return None
        time, device, hit, prompt = used[-1]
        assert hit is not None
        return time, device, hit, prompt


def read_trace(path: Path) -> tuple[dict[Key, Logged], dict[str, int]]:
    """The trace's requests by replay key, and counts of what it could not place."""
    requests: dict[Key, Logged] = {}
    counts = {"failed_stores": 0, "evict_none": 0}
    with path.open() as handle:
        for line in handle:
            event = json.loads(line)
            op = event["op"]
            if op == "evict":
                counts["evict_none"] += event["got"] < 0
                continue
            if op == "trace-error":
                raise SystemExit(f"{path}: the trace logged an error: {event}")
            key = parse_replay_request_id(event["req"])
            if key is None:  # the bench's probe requests, sent without a replay id
                continue
            logged = requests.setdefault(key, Logged())
            t = event["t"]
            if op == "look":
                logged.looks.append((t, event["dev"], event["hit"], event["prompt"]))
            elif op == "load":
                logged.loads.append(t)
            elif op == "store":
                counts["failed_stores"] += not event["ok"]
                logged.stores.append((t, max(p for p in event["pos"] if p is not None)))
                victims = [tuple(v) for v in event.get("victims") or () if v]
                logged.changes.append((t, event.get("new") or [], victims))
            elif op == "loaded":
                logged.loaded = logged.loaded or t
            elif op == "fin":
                logged.finished = t
    return requests, counts


def events(
    logged: dict[Key, Logged],
    planned: dict[Key, PlannedRequest],
    shift: dict[Key, float] | None = None,
) -> Iterator[tuple[float, int, str, Key, int]]:
    """(time, order, what, key, tokens) in time order: lookups, stores, finishes; ``shift``
    moves all of a request's events by its seconds."""
    out: list[tuple[float, int, str, Key, int]] = []
    for key, request in logged.items():
        look = request.lookup()
        if look is None or key not in planned:
            continue
        scheduled = request.scheduled
        assert scheduled is not None
        mine = [(look[0], 0, "look", key, 0)]
        mine += [(t, 1, "store", key, tokens) for t, tokens in request.stores if t >= scheduled]
        mine += [(change[0], 1, "change", key, i) for i, change in enumerate(request.changes)]
        if request.loaded is not None:
            mine.append((request.loaded, 1, "loaded", key, 0))
        mine.append((request.finished or math.inf, 2, "fin", key, 0))
        moved = (shift or {}).get(key, 0.0)
        out += [(t + moved, order, what, key, value) for t, order, what, _, value in mine]
    return iter(sorted(out))


class ServerDram:
    """The server's DRAM tier as its stores changed it, in the planner's keys."""

    def __init__(self, planned: dict[Key, PlannedRequest], chunk: int) -> None:
        self.planned, self.chunk = planned, chunk
        self.keys: set[int] = set()
        self.names: dict[int, str] = {}

    def key(self, request: Key, position: int) -> int:
        planned, index = self.planned[request], position // self.chunk - 1
        if index < planned.covered_chunks:
            key = planned.chain[index]
        else:
            key = hash(("tail", planned.serial, index))
        self.names.setdefault(key, f"{':'.join(map(str, request))}#{index}")
        return key

    def apply(self, request: Key, new: list[int], victims: list[tuple[str, int]]) -> None:
        for owner, position in victims:
            parsed = parse_replay_request_id(owner)
            if parsed is not None and parsed in self.planned:
                self.keys.discard(self.key(parsed, position))
        self.keys.update(self.key(request, position) for position in new)

    def differences(self, planner: set[int]) -> str:
        only_server = sorted(self.names.get(k, "?") for k in self.keys - planner)
        only_planner = sorted(self.names.get(k, "?") for k in planner - self.keys)
        return f"only in the server {only_server}; only in the planner {only_planner}"


def replay_arm(
    opts: argparse.Namespace,
    sessions: Any,
    arm: str,
    logged: dict[Key, Logged],
    show: int,
    server_device: bool = False,
    shift: dict[Key, float] | None = None,
) -> dict[str, Any]:
    """The planner over the logged events; ``server_device``: the tiers are looked up past
    the server's own device hit instead of the planner's device model's (the tiers alone);
    ``shift``: seconds each request's events move by (how much the hits hang on the order)."""
    options = arm_workload_options(opts, request_s=1.0, duration=opts.duration * 4)
    chunk = opts.chunk_tokens
    workload = build_workload(sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS)
    planned = {(r.session_id, r.cycle, r.index): r for r in workload.requests}
    missing = [key for key, r in logged.items() if r.lookup() is not None and key not in planned]
    per_chunk = chunk * kv_bytes_per_token(opts)
    nvme = (TierSpec(NVME, int(opts.nvme_gb * GIB // per_chunk)),) if arm == "C" else ()
    spec = HierarchySpec(TierSpec(DRAM, int(opts.dram_gb * GIB // per_chunk), "lru"), nvme)
    device, hierarchy = fresh_caches(spec, opts.kv_blocks * BLOCK_TOKENS // chunk, chunk,
                                     BLOCK_TOKENS)  # fmt: skip
    live: dict[Key, tuple[Any, Any]] = {}
    contents = ServerDram(planned, chunk)
    start = min(r.looks[0][0] for r in logged.values() if r.looks)
    diverged: list[str] = []
    server = {"device": 0, "tiers": 0, "prompt": 0}
    model = {"device": 0, "tiers": 0}
    differ: list[str] = []
    prompt_mismatch = 0
    for time, _, what, key, tokens in events(logged, planned, shift):
        request = planned[key]
        if what == "change":
            _, new, victims = logged[key].changes[tokens]
            contents.apply(key, new, victims)
        elif what == "look":
            planner_dram = set(getattr(hierarchy.dram, "order", ()))
            if planner_dram != contents.keys:
                if not diverged:
                    diverged.append(f"  first at {time - start:.3f} s, before "
                                    f"{':'.join(map(str, key))}: "
                                    f"{contents.differences(planner_dram)}")  # fmt: skip
                diverged.append("")
            look = logged[key].lookup()
            assert look is not None
            _, s_device, s_hit, s_prompt = look
            prompt_mismatch += s_prompt != request.input_tokens
            p_device = device.lookup(request, time)
            if server_device:
                p_device = s_device
            p_hit = hierarchy.lookup(request, p_device, time, defer=True)
            live[key] = (device.detach(), hierarchy.detach())
            server["device"] += s_device
            server["tiers"] += s_hit
            server["prompt"] += s_prompt
            model["device"] += p_device
            model["tiers"] += p_hit
            if (s_device, s_hit) != (p_device, p_hit) and len(differ) < show:
                differ.append(f"  {time - start:8.3f} s {':'.join(map(str, key))}: "
                              f"server device {s_device} tiers {s_hit}, "
                              f"planner device {p_device} tiers {p_hit}")  # fmt: skip
        elif what == "loaded":
            looked = live[key][1]
            if looked is not None:
                hierarchy.loaded(looked, time)
        elif what == "store":
            looked = live[key][1]
            if looked is not None:
                hierarchy.store(looked, tokens, time)
        else:
            held, looked = live.pop(key)
            device.hold_detached(held, time)
            hierarchy.hold_detached(looked, time)
    hierarchy.finish()
    tiers = hierarchy.result.tiers
    return {
        "requests": sum(1 for r in logged.values() if r.lookup() is not None),
        "not_in_plan": len(missing),
        "prompt_mismatch": prompt_mismatch,
        "relooked": sum(1 for r in logged.values() if r.relooked),
        "server": server,
        "planner": model
        | {name: tiers[name].hit_tokens for name in (DEVICE, DRAM, NVME) if name in tiers},
        "differ": differ,
        "diverged": diverged,
    }


def _pct(predicted: float, actual: float) -> str:
    return f"{(predicted - actual) / actual * 100:+.1f} %" if actual else "-"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--results", type=Path, default=REPO / "out" / "three-arms")
    own.add_argument("--arms", dest="logged_arms", default="BC")
    own.add_argument("--chunk-tokens", type=int, default=256)
    own.add_argument("--show", type=int, default=12, help="requests that differ, listed")
    own.add_argument(
        "--server-device",
        action="store_true",
        help="look the tiers up past the server's device hit, not the planner's device model's",
    )
    own.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        help="also move each request's events together by a uniform draw in +-JITTER ms, "
        "--seeds times, and print the hits of each draw",
    )
    own.add_argument("--seeds", type=int, default=5)
    mine, rest = own.parse_known_args(argv)
    opts = arm_args(rest)
    opts.chunk_tokens = mine.chunk_tokens
    sessions = load_traces(opts.traces, limit=opts.limit_traces, seed=opts.seed).sessions
    print(f"machine: {machine()} ({platform.python_version()})")
    for arm in mine.logged_arms:
        path = mine.results / f"arm-{arm}" / LOG_NAME
        if not path.is_file():
            print(f"arm {arm}: no {path}")
            continue
        logged, counts = read_trace(path)
        got = replay_arm(opts, sessions, arm, logged, mine.show, mine.server_device)
        server, model = got["server"], got["planner"]
        print(f"\narm {arm}: {got['requests']} requests scheduled "
              f"({got['not_in_plan']} not in the plan, {got['prompt_mismatch']} with another "
              f"prompt length, {got['relooked']} looked up again after running); "
              f"server stores refused {counts['failed_stores']}, evictions refused "
              f"{counts['evict_none']}")  # fmt: skip
        print(f"  prompt tokens        {server['prompt']:>10,}")
        for name, label in (("device", "device hit tokens"), ("tiers", "tier hit tokens")):
            print(f"  {label:<20} server {server[name]:>10,}  planner {model[name]:>10,}  "
                  f"{_pct(model[name], server[name])}")  # fmt: skip
        for name in (DRAM, NVME):
            if name in model:
                print(f"  planner {name:<12} {model[name]:>10,}")
        if got["diverged"]:
            print(f"  DRAM contents differ at {len(got['diverged'])} lookups; "
                  f"{got['diverged'][0].strip()}")  # fmt: skip
        if got["differ"]:
            print("  first requests that differ (seconds from the first lookup):")
            print("\n".join(got["differ"]))
        if mine.jitter_ms:
            print(f"  each request's events moved by a uniform draw in +-{mine.jitter_ms:g} ms:")
            for seed in range(mine.seeds):
                draw = random.Random(seed)
                shift = {key: draw.uniform(-1, 1) * mine.jitter_ms / 1000 for key in logged}
                moved = replay_arm(opts, sessions, arm, logged, 0, mine.server_device, shift)
                hits = moved["planner"]
                print(f"    seed {seed}: device {hits['device']:>10,} "
                      f"({_pct(hits['device'], server['device'])}), tiers {hits['tiers']:>10,} "
                      f"({_pct(hits['tiers'], server['tiers'])})"
                      + "".join(f", {n} {hits[n]:,}" for n in (DRAM, NVME) if n in hits)
                      )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
