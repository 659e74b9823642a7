"""Hand-built sessions and workloads for the planner's tests (64-token trace blocks)."""

from __future__ import annotations

from array import array

from atom_tier.plan.workload import KeyBuilder, PlannedRequest, Workload
from atom_tier.replay.traces import Session, TraceRequest


def session(name: str, turns: list[tuple[list[int], int]], *, think: float = 1.0) -> Session:
    """A session whose requests have these (block ids, tail tokens)."""
    requests = tuple(
        TraceRequest(
            t=0.0,
            kind="n",
            input_tokens=len(ids) * 64 + tail,
            output_tokens=10,
            hash_ids=array("q", ids),
            think_time=think,
        )
        for ids, tail in turns
    )
    return Session(name, name.split("/")[0], name.split("/")[0], 64, requests, "test")


def workload(
    steps: list[tuple[Session, int]], *, chunk_tokens: int = 256, block_tokens: int = 64
) -> Workload:
    """Requests in exactly this order: (session, request index), one second apart."""
    builder = KeyBuilder(chunk_tokens=chunk_tokens, block_tokens=block_tokens, id_tokens=64)
    built = []
    for serial, (owner, index) in enumerate(steps):
        trace_request = owner.requests[index]
        chain, chunks, covered, partial, own = builder.keys(owner, 0, trace_request.hash_ids)
        built.append(
            PlannedRequest(
                serial=serial,
                time=float(serial),
                user=0,
                session_id=owner.session_id,
                cycle=0,
                index=index,
                input_tokens=trace_request.input_tokens,
                covered_tokens=covered,
                chain=chain,
                covered_chunks=chunks,
                partial=partial,
                own_partial=own,
                output_tokens=trace_request.output_tokens,
            )
        )
    return Workload(tuple(built), chunk_tokens, block_tokens, 0, 0, 0, float(len(steps)))
