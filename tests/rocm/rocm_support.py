"""Helpers of the ROCm integration tests: GPU detection, the test model, reading server logs.

Everything here is real on an AMD GPU host (inside docker/Dockerfile.rocm); nothing is faked.
Two inputs come from the environment docker/run-rocm-tests.sh sets: ``ROCM_TEST_MODEL`` (a
local model directory to test instead of the generated model; ``--model-dir``) and
``ROCM_TEST_RESULTS`` (a folder where server logs and replay results are kept for the operator).
"""

from __future__ import annotations

import os
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from atom_tier.devtools.tiny_model import ModelShape, build_tiny_model

MODEL_ENV = "ROCM_TEST_MODEL"
RESULTS_ENV = "ROCM_TEST_RESULTS"
# One line of atom-tier's feature block: "  [on ] cuda_graphs   FULL_AND_PIECEWISE, ...".
FEATURE_LINE = re.compile(r"\[(on |off)\] (\w+) +(.*)$")
ATTENTION_CHOICE = re.compile(r"(?:Using|Overriding with) (\w+) (?:backend )?out of potential")
ALL_REDUCE_CHOICE = re.compile(r"Using \[([^\]]*)\] all-reduce backends")
ENGINE_GRAPH_MODE = re.compile(r"'cudagraph_mode': <CUDAGraphMode\.(\w+)")
ENGINE_KV_DTYPE = re.compile(r"kv_cache_dtype=(\w+)")


@cache
def rocm_gpu_count() -> int:
    """AMD GPUs visible to a ROCm build of torch; 0 elsewhere (CPU or CUDA torch)."""
    try:
        import torch
    except ImportError:
        return 0
    if not getattr(torch.version, "hip", None):
        return 0
    return int(torch.cuda.device_count())


def skip_reason(gpus_needed: int = 1) -> str | None:
    """Why these tests cannot run here, or None when they can."""
    try:
        import torch

        build = f"torch {torch.__version__}"
        hip = getattr(torch.version, "hip", None)
    except ImportError:
        build, hip = "no torch", None
    if not hip:
        return f"needs a ROCm build of torch and an AMD GPU ({build} is not a ROCm build)"
    found = rocm_gpu_count()
    if found < gpus_needed:
        return f"needs {gpus_needed} AMD GPU(s), {found} visible (HIP_VISIBLE_DEVICES?)"
    return None


def write_model(out_dir: Path) -> Path:
    """A small random Qwen3 AITER's kernels accept: head dim 128 (the fused QK-norm/RoPE/cache
    op supports 64/128/256), 2 KV heads (tensor parallel 2 splits them), bf16, with the
    generated tiny model's tokenizer, so no download is needed."""
    shape = ModelShape(hidden_size=256, intermediate_size=512, heads=4, kv_heads=2, head_dim=128)
    return build_tiny_model(out_dir, shape=shape)


def model_under_test(tmp_root: Path) -> str:
    """The model under test: ``ROCM_TEST_MODEL`` (a local directory) when set, else the
    generated one."""
    chosen = os.environ.get(MODEL_ENV)
    return chosen if chosen else str(write_model(tmp_root / "rocm-test-model"))


def model_config(model: str) -> dict[str, Any]:
    from transformers import AutoConfig

    return dict(AutoConfig.from_pretrained(model).to_dict())


def kv_bytes_per_token(model: str, dtype_bytes: int = 1) -> int:
    """2 x layers x KV heads x head dim x dtype bytes (FP8 KV: 1 byte), all ranks together."""
    config = model_config(model)
    config = config.get("text_config", config)
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return int(2 * config["num_hidden_layers"] * heads * head_dim * dtype_bytes)


def features(log: str) -> dict[str, tuple[bool, str]]:
    """atom-tier's feature block: name -> (active, detail), the last one logged wins."""
    found: dict[str, tuple[bool, str]] = {}
    for line in log.splitlines():
        match = FEATURE_LINE.search(line)
        if match:
            found[match.group(2)] = (match.group(1) == "on ", match.group(3).strip())
    return found


def attention_backends(log: str) -> set[str]:
    return set(ATTENTION_CHOICE.findall(log))


def all_reduce_backends(log: str) -> list[list[str]]:
    return [re.findall(r"'(\w+)'", group) for group in ALL_REDUCE_CHOICE.findall(log)]


def keep_log(log_path: Path, name: str) -> None:
    """Copy a server log where docker/run-rocm-tests.sh collects results, when it asked."""
    folder = os.environ.get(RESULTS_ENV)
    if folder and log_path.exists():
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, Path(folder) / f"{name}.log")
