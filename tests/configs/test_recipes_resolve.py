"""Each model-family recipe resolved as `vllm serve --config` resolves it, on a CPU-sized model of
the same architecture, through atom-tier's real ROCm platform class; then atom-tier's decisions.

Real: vLLM's serve parser and `--config` expansion (test_configs.serve_args), EngineArgs, the
VllmConfig with atom-tier's hooks inside, vLLM's MODELS_CONFIG_MAP hooks. Faked (no ROCm here,
see tests/platform/conftest.py): torch.version.hip, amdsmi, the MI300X device, AITER's presence.
Stand-ins: config.json files of the same architecture and attention shape (stand_ins.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stand_ins import write_stand_in
from test_configs import CONFIGS, engine_args, serve_args
from vllm.reasoning import ReasoningParserManager

# recipe folder -> (stand-in kind, what atom-tier must decide: feature -> active, reason text)
RECIPES: dict[str, tuple[str, dict[str, tuple[bool, str]]]] = {
    "llama-3.3-70b-tp2-mi300x": ("llama", {
        "fused_qk_norm_rope_kvcache": (False, "no per-head q/k norm"),
        "kv_cache_dtype": (True, "fp8"),
        "aiter_attention": (True, "ROCM_AITER_FA"),
    }),
    "qwen3-32b-tp1-mi300x": ("qwen3", {
        "fused_qk_norm_rope_kvcache": (True, "per-head q/k norms, head dim 128"),
        "kv_cache_dtype": (True, "fp8"),
        "aiter_attention": (True, "ROCM_AITER_FA"),
    }),
    "deepseek-r1-fp8-tp8-mi300x": ("deepseek_v3", {
        "fused_qk_norm_rope_kvcache": (False, "MLA"),
        "kv_cache_dtype": (True, "fp8"),
        "aiter_attention": (True, "ROCM_AITER_MLA"),
    }),
    "gpt-oss-120b-tp1-mi300x": ("gpt_oss", {
        "fused_qk_norm_rope_kvcache": (False, "no per-head q/k norm"),
        "kv_cache_dtype": (False, "vLLM's config hook"),
        "aiter_attention": (True, "ROCM_AITER_FA"),
    }),
}  # fmt: skip


@pytest.mark.usefixtures("fake_aiter")
@pytest.mark.parametrize("folder", list(RECIPES))
def test_recipe_resolves_and_atom_tier_decides_for_its_architecture(
    folder: str, rocm_platform: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    kind, expected = RECIPES[folder]
    recipe = CONFIGS / folder / "serve.yaml"
    max_len = engine_args(recipe).max_model_len
    assert max_len is not None
    stand_in = write_stand_in(kind, tmp_path / kind, tiny_model_dir, max_len)
    text = recipe.read_text()
    model = engine_args(recipe).model
    # The stand-in's tokenizer has no <think> tokens, which a reasoning parser looks up while the
    # config is built; the parser itself must exist in this vLLM.
    parser = serve_args("--config", str(recipe)).reasoning_parser
    if parser:
        assert ReasoningParserManager.get_reasoning_parser(parser)
    lines = [line for line in text.splitlines() if not line.startswith("reasoning-parser:")]
    copy = tmp_path / "serve.yaml"
    copy.write_text("\n".join(lines).replace(f"model: {model}", f"model: {stand_in}") + "\n")
    config = engine_args(copy).create_engine_config()
    assert config.model_config.max_model_len == max_len
    cc = config.compilation_config
    assert cc.cudagraph_mode.name == "FULL_AND_PIECEWISE"
    assert config.kv_transfer_config.kv_connector == "AtomTierConnector"
    decisions = {
        row[0]: (row[1], row[2]) for row in config.additional_config["atom_tier"]["decisions"]
    }
    for feature, (active, reason) in expected.items():
        assert decisions[feature][0] is active, (feature, decisions[feature])
        assert reason in decisions[feature][1], (feature, decisions[feature])
    fused = expected["fused_qk_norm_rope_kvcache"][0]
    assert cc.pass_config.fuse_qk_norm_rope_kvcache is fused
    # Inductor graph partition only where the pass needs it.
    assert (cc.use_inductor_graph_partition is True) is fused
