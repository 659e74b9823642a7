"""A tiny random-weight Qwen3 model that CPU vLLM really serves, for tests and `make demo`.

No weights can be downloaded on development machines, so the model is generated: a Qwen3
config (it has the q/k norms that atom-tier's fused QK-norm + RoPE path targets), random bf16
weights from a fixed seed, and a WordLevel tokenizer over a small made-up vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WORDS = 500
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
MARKER_FILE = "atom-tier-tiny-model.json"
# Bump when what build_tiny_model writes changes, so an old cached directory is rebuilt.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class ModelShape:
    """The transformer's dimensions; the default is the test model (head dim 32)."""

    hidden_size: int = 128
    intermediate_size: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|> {{ message['role'] }} {{ message['content'] }}"
    " <|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def vocabulary() -> dict[str, int]:
    """Token string -> id: the special tokens, the roles of the chat template, then w0..wN."""
    tokens = [*SPECIAL_TOKENS, "system", "user", "assistant"]
    tokens += [f"w{i}" for i in range(WORDS)]
    return {token: index for index, token in enumerate(tokens)}


def words(count: int, *, start: int = 0) -> str:
    """A prompt of `count` vocabulary words (each one token), deterministic from `start`."""
    return " ".join(f"w{(start + i * 7) % WORDS}" for i in range(count))


def fast_tokenizer(tokenizer: Any) -> Any:
    """A `tokenizers.Tokenizer` as the transformers tokenizer the test models ship: their
    special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        bos_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _write_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast_tokenizer(tokenizer).save_pretrained(str(out_dir))


def _write_model(out_dir: Path, seed: int, shape: ModelShape) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    vocab_size = len(vocabulary())
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        layer_types=["full_attention"] * shape.layers,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        dtype="bfloat16",
        bos_token_id=None,
        eos_token_id=vocabulary()["<|endoftext|>"],
        pad_token_id=vocabulary()["<pad>"],
    )
    torch.manual_seed(seed)
    # transformers' type stubs reject a dtype for `.to`, which it accepts at run time.
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(str(out_dir), safe_serialization=True)


def build_tiny_model(out_dir: Path, *, seed: int = 0, shape: ModelShape | None = None) -> Path:
    """Write the model to `out_dir` (created) unless an identical one is there already."""
    out_dir = Path(out_dir)
    shape = shape or ModelShape()
    marker = out_dir / MARKER_FILE
    wanted = {"format": FORMAT_VERSION, "seed": seed, "shape": asdict(shape)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_model(out_dir, seed, shape)
    _write_tokenizer(out_dir)
    marker.write_text(json.dumps(wanted))
    return out_dir


def build_bench_model(out_dir: Path, *, hidden: int = 384, layers: int = 4) -> Path:
    """A random Qwen3 of ``layers`` × ``hidden`` with the test model's tokenizer (cached).

    The test model recomputes a prompt about as fast as its KV reloads from a tier; this one
    spends ~13 MFLOP per token for 2 KB of KV at the defaults, which puts prefill on a 2-core
    CPU in the regime of real models, where a reload is much cheaper than a recompute
    (`make demo`, bench/three_arms.py).
    """
    shape = ModelShape(
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        layers=layers,
        heads=max(2, hidden // 64),
        kv_heads=2,
        head_dim=64,
    )
    return build_tiny_model(out_dir, shape=shape)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write atom-tier's tiny random test model.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_model(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
