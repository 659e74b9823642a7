"""On an AMD GPU: a plain `vllm serve` start gets atom-tier's fast configuration, for real.

Each claim is read from what vLLM itself did, not only from atom-tier's feature block: the
platform class vLLM resolved, the attention backend its workers chose, the CUDA/HIP graph mode
and KV-cache dtype in the engine's resolved config, the graphs it captured, the all-reduce
backends it enabled. The server gets no flag beyond the harness's defaults (port, model
length, memory share): everything else is atom-tier's doing.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from rocm_support import (
    ENGINE_GRAPH_MODE,
    ENGINE_KV_DTYPE,
    all_reduce_backends,
    attention_backends,
    features,
    model_config,
    skip_reason,
)

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.platform.selection import ROCM_PLATFORM
from atom_tier.policy.kernels import PER_HEAD_QK_NORM_ARCHITECTURES

pytestmark = [pytest.mark.rocm, pytest.mark.timeout(1800)]

FUSED_HEAD_DIMS = (64, 128, 256)
FUSION_COUNT = re.compile(r"QK-Norm\+RoPE/MRoPE\+KVCache fusion: replaced (\d+) pattern")
RESOLVE_PLATFORM = (
    "from vllm.platforms import current_platform as p; "
    "print(type(p).__module__ + '.' + type(p).__qualname__)"
)


@pytest.fixture(scope="module")
def server(rocm_server: object) -> CpuVllmServer:
    started: CpuVllmServer = rocm_server("tp1")  # type: ignore[operator]
    reply = started.complete("w1 w2 w3 w4 w5 w6 w7 w8", max_tokens=8, ignore_eos=True)
    assert reply["usage"]["completion_tokens"] == 8  # graphs, FP8 cache and AITER really ran
    return started


def test_vllm_resolves_atom_tiers_rocm_platform() -> None:
    """vLLM's own platform resolution, in a fresh interpreter, through the entry point."""
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE_PLATFORM], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == ROCM_PLATFORM


def test_server_runs_on_atom_tiers_platform(server: CpuVllmServer) -> None:
    # Selection's own log line comes before vLLM sets up logging and is not printed (as on
    # CPU); the feature block is written by AtomTierRocmPlatform's hook, with the GPU's arch.
    log = server.log_text()
    assert re.search(r"atom-tier \S+ features \(platform rocm, gfx9\w+\):", log), log[-4000:]
    assert features(log)["preflight"][0], features(log)["preflight"]


def test_aiter_attention_is_selected(server: CpuVllmServer) -> None:
    log = server.log_text()
    found = features(log)
    assert found["aiter"][0], found["aiter"]
    assert found["aiter_attention"][0], found["aiter_attention"]
    chosen = attention_backends(log)  # vLLM's own "Using X backend out of potential ..."
    assert chosen, "no attention backend choice in the log"
    assert all(name.startswith("ROCM_AITER") for name in chosen), chosen


def test_graphs_are_full_and_piecewise(server: CpuVllmServer) -> None:
    log = server.log_text()
    active, detail = features(log)["cuda_graphs"]
    assert active and detail.startswith("FULL_AND_PIECEWISE"), detail
    # The engine's resolved config, and the graphs its worker captured.
    modes = set(ENGINE_GRAPH_MODE.findall(log))
    assert modes == {"FULL_AND_PIECEWISE"}, modes
    assert "Capturing CUDA graphs (decode, FULL)" in log
    assert "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE)" in log


def test_kv_cache_is_fp8(server: CpuVllmServer) -> None:
    log = server.log_text()
    active, detail = features(log)["kv_cache_dtype"]
    assert active and detail.startswith("fp8"), detail
    dtypes = set(ENGINE_KV_DTYPE.findall(log))
    assert dtypes and all(d.startswith("fp8") for d in dtypes), dtypes
    info = next(k for k in server.metrics() if k.startswith("vllm:cache_config_info{"))
    assert re.search(r'cache_dtype="fp8', info), info


def test_fused_qk_norm_rope_pass_follows_the_model_and_really_fuses(server: CpuVllmServer) -> None:
    config = model_config(str(server.model_dir))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    qk_norm = any(a in PER_HEAD_QK_NORM_ARCHITECTURES for a in config.get("architectures", []))
    log = server.log_text()
    active, detail = features(log)["fused_qk_norm_rope_kvcache"]
    assert active is (qk_norm and head_dim in FUSED_HEAD_DIMS), detail
    if active:  # vLLM's own count, logged by QkNormRopeKvCacheFusionPass after compiling
        counts = [int(n) for n in FUSION_COUNT.findall(log)]
        assert counts and max(counts) > 0, counts


@pytest.mark.skipif(skip_reason(2) is not None, reason=str(skip_reason(2)))
def test_quick_reduce_int4_is_active_at_tp2(rocm_server: object) -> None:
    server: CpuVllmServer = rocm_server("tp2", args=["--tensor-parallel-size", "2"])  # type: ignore[operator]
    reply = server.complete("w9 w8 w7 w6", max_tokens=4, ignore_eos=True)
    assert reply["usage"]["completion_tokens"] == 4
    log = server.log_text()
    active, detail = features(log)["quick_reduce"]
    assert active and "vLLM INT4 at tensor parallel 2" in detail, detail
    # vLLM's own list of the all-reduce backends it enabled for the TP group.
    groups = all_reduce_backends(log)
    assert any("QUICK_REDUCE" in group for group in groups), groups
