"""CPU-sized stand-ins for the recipes' models: the same architecture and attention shape (head
dim, q/k norms, MLA ranks, sliding windows, MoE), a few tiny layers, random weights unneeded.

vLLM builds a VllmConfig from config.json and the tokenizer only (no weight is read), so each
stand-in is a config written by transformers' own config class plus the tiny model's tokenizer.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

VOCAB = 600  # covers the tiny model's tokenizer (atom_tier.devtools.tiny_model)


def _llama(max_len: int) -> Any:
    from transformers import LlamaConfig

    # Llama-3.x 70B: head dim 128 (8192 / 64 heads), GQA 8 KV heads, no q/k norm.
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        max_position_embeddings=max_len, dtype="bfloat16", architectures=["LlamaForCausalLM"],
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    )  # fmt: skip


def _qwen3(max_len: int) -> Any:
    from transformers import Qwen3Config

    # Qwen3-32B: head dim 128, per-head q/k RMSNorm.
    return Qwen3Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        layer_types=["full_attention"] * 2, max_position_embeddings=max_len, dtype="bfloat16",
        architectures=["Qwen3ForCausalLM"],
    )  # fmt: skip


def _deepseek_v3(max_len: int) -> Any:
    from transformers import DeepseekV3Config

    # DeepSeek-V3/R1: MLA with kv_lora_rank 512 and a 64-dim RoPE part (576-wide latent KV),
    # q_lora_rank 1536, MoE after the first dense layer; 8 heads so tensor parallel 8 divides them.
    return DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, moe_intermediate_size=64,
        num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, n_group=1, topk_group=1, num_attention_heads=8,
        num_key_value_heads=8, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, max_position_embeddings=max_len, dtype="bfloat16",
        architectures=["DeepseekV3ForCausalLM"],
    )  # fmt: skip


def _gpt_oss(max_len: int) -> Any:
    from transformers import GptOssConfig

    # gpt-oss: head dim 64, alternating 128-token sliding-window and full attention, MoE.
    return GptOssConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
        num_local_experts=4, num_experts_per_tok=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=64, sliding_window=128,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=max_len,
        dtype="bfloat16", architectures=["GptOssForCausalLM"],
    )  # fmt: skip


CONFIGS: dict[str, Callable[[int], Any]] = {
    "llama": _llama,
    "qwen3": _qwen3,
    "deepseek_v3": _deepseek_v3,
    "gpt_oss": _gpt_oss,
}


def write_stand_in(kind: str, out: Path, tokenizer_from: Path, max_len: int) -> Path:
    """config.json of ``kind`` (a key of CONFIGS) and the tiny model's tokenizer in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    CONFIGS[kind](max_len).save_pretrained(str(out))
    for path in tokenizer_from.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, out / path.name)
    return out
