"""Bench instrument: vLLM's LRU DRAM tier with a log of what the connector did, request by
request, so the planner can be run at the server's own times (``bench/plan_vs_logged.py``).

Not part of atom-tier. ``bench/three_arms.py --trace-dram`` loads it in the arm's server
through vLLM's out-of-tree cache-policy hook (``eviction_policy: TracedLRUCachePolicy``,
``cache_policy_module_path: bench.dram_trace`` in ``kv_connector_extra_config``): the
engine core imports this module when it builds the DRAM tier, and the module wraps vLLM's
offloading scheduler and CPU manager there (this process only) to log, one JSON object per
line in ``dram-trace.jsonl`` in the server's working directory, with ``time.time()``:

- ``look``: a lookup (``get_num_new_matched_tokens``): device hit tokens, tier hit tokens
  (None: asked again next step), prompt tokens;
- ``load``: the chunks a request loads (``prepare_load``), by end-token position;
- ``store``: the chunks a step offers (``prepare_store``), those it stores, how many it
  evicted and which (the request and position that stored each), or ``ok: false`` when it
  could not make room;
- ``stored``: a store job done (``complete_store``); ``loaded``: a load job done
  (``complete_load``: its chunks can be evicted again); ``fin``: the request finished
  (``on_request_finished``);
- ``evict``: the LRU policy asked for ``n`` chunks and got ``got`` (-1: none).

The policy itself is vLLM's ``LRUCachePolicy`` unchanged; what the log costs (a line write
per event) is small beside a CPU engine step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.offloading.scheduler import (
    OffloadingConnectorScheduler,
)
from vllm.v1.kv_offload.base import OffloadKey, ReqContext
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy

LOG_NAME = "dram-trace.jsonl"
_log = (Path.cwd() / LOG_NAME).open("a", buffering=1)


def _write(op: str, **fields: Any) -> None:
    _log.write(json.dumps({"t": time.time(), "op": op, **fields}) + "\n")


def _positions(keys: Collection[OffloadKey], context: ReqContext) -> list[int | None]:
    return [context.get_offload_key_position(key) for key in keys]


def _wrap(cls: type, name: str, after: Callable[..., None]) -> None:
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        try:
            after(result, *args, **kwargs)
        except Exception as error:  # the log must never stop the engine
            _write("trace-error", where=name, error=repr(error))
        return result

    setattr(cls, name, wrapper)


def _looked(
    result: tuple[int | None, bool], request: Any, computed: int, *_: Any, **__: Any
) -> None:
    _write("look", req=request.request_id, dev=computed, hit=result[0],
           prompt=request.num_prompt_tokens)  # fmt: skip


def _loaded(_: Any, keys: Collection[OffloadKey], context: ReqContext) -> None:
    _write("load", req=context.req_id, pos=_positions(keys, context))


_owner: dict[OffloadKey, tuple[str, int | None]] = {}  # DRAM key -> (request, position)


def _stored_prepared(result: Any, keys: Collection[OffloadKey], context: ReqContext) -> None:
    if result is None:
        _write("store", req=context.req_id, pos=_positions(keys, context), ok=False)
        return
    new = _positions(result.keys_to_store, context)
    evicted = [_owner.pop(key, None) for key in result.evicted_keys]
    _owner.update(
        (key, (context.req_id, p)) for key, p in zip(result.keys_to_store, new, strict=True)
    )
    _write("store", req=context.req_id, pos=_positions(keys, context), ok=True, new=new,
           evicted=len(evicted), victims=evicted)  # fmt: skip


def _store_done(
    _: Any, keys: Collection[OffloadKey], context: ReqContext, success: bool = True
) -> None:
    _write("stored", req=context.req_id, pos=_positions(keys, context), ok=success)


def _load_done(_: Any, keys: Collection[OffloadKey], context: ReqContext) -> None:
    _write("loaded", req=context.req_id, pos=_positions(keys, context))


def _finished(_: Any, context: ReqContext) -> None:
    _write("fin", req=context.req_id)


_wrap(OffloadingConnectorScheduler, "get_num_new_matched_tokens", _looked)
_wrap(CPUOffloadingManager, "prepare_load", _loaded)
_wrap(CPUOffloadingManager, "prepare_store", _stored_prepared)
_wrap(CPUOffloadingManager, "complete_store", _store_done)
_wrap(CPUOffloadingManager, "complete_load", _load_done)
_wrap(CPUOffloadingManager, "on_request_finished", _finished)


class TracedLRUCachePolicy(LRUCachePolicy):
    """vLLM's LRU policy; logs each eviction request and its outcome."""

    def evict(self, n: int, protected: set[OffloadKey]) -> Any:
        victims = super().evict(n, protected)
        _write("evict", n=n, got=-1 if victims is None else len(victims))
        return victims
