"""`atom-tier replay`: block-exact replay of kv-cache-tester agentic traces against a server.

Traces (``traces``) become sessions, each trace block id becomes a deterministic block of token
ids (``tokens``), closed-loop users (``scheduler``, ``runner``) send them as token-id prompts to
``/v1/completions`` with streaming (``client``), and the results become a table, CSV files and
plots (``report``, ``plots``). ``synth`` writes synthetic traces in the same format.
"""

from atom_tier.replay.traces import ReplayInputError, Session, TraceRequest, TraceSet, load_traces

__all__ = ["ReplayInputError", "Session", "TraceRequest", "TraceSet", "load_traces"]
