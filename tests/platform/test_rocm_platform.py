"""AtomTierRocmPlatform with the ROCm device faked (see conftest.py: no ROCm GPU here).

What is real: vLLM's ROCm platform module and class, vLLM's plugin resolution through the
installed `vllm.platform_plugins` entry point, and VllmConfig resolution through the platform's
hooks. What is faked, and where: the GPU (`fake_rocm_device`), AMD AITER's presence
(`fake_aiter`, AITER cannot be installed here), and in the attention test the list of backends
vLLM finds valid on an MI300X (its backend modules need ROCm Triton to import).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest
import torch
import vllm.platforms
from vllm.config.compilation import CompilationMode, CUDAGraphMode
from vllm.engine.arg_utils import EngineArgs
from vllm.platforms.interface import DeviceCapability
from vllm.utils.import_utils import resolve_obj_by_qualname

from atom_tier.platform.selection import ROCM_PLATFORM

pytestmark = pytest.mark.usefixtures("fake_rocm_device")


def build(model_dir: Any, **engine_args: Any) -> Any:
    return EngineArgs(model=str(model_dir), **engine_args).create_engine_config()


def test_class_imports_with_faked_device_and_reports_its_facts(rocm_platform: Any) -> None:
    from vllm.platforms.rocm import RocmPlatform

    assert isinstance(rocm_platform, RocmPlatform) and rocm_platform.is_rocm()
    facts = rocm_platform.atom_tier_facts()
    assert facts.name == "rocm" and facts.static_graphs and facts.fp8_kv
    assert facts.gcn_arch.startswith("gfx942") and facts.fp8_dtype == "float8_e4m3fnuz"
    assert not facts.aiter_available  # AMD AITER is not installed on this machine


def test_vllm_resolves_it_through_the_installed_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugins = importlib.metadata.entry_points(group="vllm.platform_plugins")
    assert any(ep.value == "atom_tier.plugin:register_platform" for ep in plugins)
    qualname = vllm.platforms.resolve_current_platform_cls_qualname()
    assert qualname == ROCM_PLATFORM
    assert resolve_obj_by_qualname(qualname).__name__ == "AtomTierRocmPlatform"
    # Disabled: atom-tier's plugin activates nothing, and vLLM's own ROCm plugin (which sees
    # the faked GPU through FakeAmdsmi) is what vLLM would use.
    monkeypatch.setenv("ATOM_TIER_DISABLE", "1")
    from atom_tier.plugin import register_platform

    assert register_platform() is None
    assert vllm.platforms.rocm_platform_plugin() == "vllm.platforms.rocm.RocmPlatform"


def test_real_config_eager_overridden_fp8_and_connector(
    rocm_platform: Any, tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build(tiny_model_dir, enforce_eager=True)
    cc = config.compilation_config
    assert (cc.mode, cc.cudagraph_mode) == (
        CompilationMode.VLLM_COMPILE, CUDAGraphMode.FULL_AND_PIECEWISE
    )  # fmt: skip
    assert config.cache_config.cache_dtype == "fp8"
    assert config.kv_transfer_config.kv_connector == "AtomTierConnector"
    # Capture sizes as vLLM's own ROCm platform computes them for a run without eager.
    monkeypatch.setenv("ATOM_TIER_DISABLE", "1")
    stock = build(tiny_model_dir)
    assert cc.cudagraph_capture_sizes == stock.compilation_config.cudagraph_capture_sizes
    assert cc.max_cudagraph_capture_size == stock.compilation_config.max_cudagraph_capture_size


def test_vllms_eager_for_encoder_decoder_models_on_rocm_is_kept(
    rocm_platform: Any, tiny_whisper_dir: Any, tiny_model_dir: Any
) -> None:
    """vLLM's ModelConfig._verify_cuda_graph forces eager for Whisper on ROCm (no HIP graphs
    for encoder-decoder models there): the real config keeps it; a user's eager is still
    overridden on a decoder-only model."""
    config = build(tiny_whisper_dir)
    assert config.model_config.is_encoder_decoder and config.model_config.enforce_eager
    cc = config.compilation_config
    assert cc.cudagraph_mode == CUDAGraphMode.NONE and cc.mode == CompilationMode.NONE
    record = config.additional_config["atom_tier"]["decisions"]
    graphs = next(row for row in record if row[0] == "cuda_graphs")
    assert graphs[1] is False and "ModelConfig._verify_cuda_graph" in graphs[2]
    decoder = build(tiny_model_dir, enforce_eager=True)
    assert decoder.compilation_config.cudagraph_mode == CUDAGraphMode.FULL_AND_PIECEWISE


def test_disabled_behaves_like_vllms_rocm_platform(
    rocm_platform: Any, tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm.platforms.rocm import RocmPlatform

    monkeypatch.setenv("ATOM_TIER_DISABLE", "1")
    ours = build(tiny_model_dir, enforce_eager=True)
    monkeypatch.setattr(vllm.platforms, "_current_platform", RocmPlatform())
    theirs = build(tiny_model_dir, enforce_eager=True)
    for config in (ours, theirs):
        assert config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
        assert config.cache_config.cache_dtype == "auto" and config.kv_transfer_config is None
    assert ours.compilation_config.custom_ops == theirs.compilation_config.custom_ops


@pytest.mark.usefixtures("fake_aiter")
def test_real_config_with_aiter_turns_on_the_fused_pass(
    rocm_platform: Any, tiny_model_dir: Any
) -> None:
    assert rocm_platform.atom_tier_facts().aiter_enabled
    config = build(tiny_model_dir, hf_overrides={"head_dim": 128})
    cc = config.compilation_config
    assert cc.pass_config.fuse_qk_norm_rope_kvcache is True
    assert cc.use_inductor_graph_partition is True and "+rotary_embedding" in cc.custom_ops
    assert cc.cudagraph_mode == CUDAGraphMode.FULL_AND_PIECEWISE


# What vLLM 0.32's ROCm selector lists as valid on an MI300X with AITER for a bf16 decoder layer
# and no KV connector (rocm.py `_get_backend_priorities`): a double, see the module docstring.
MI300X_VALID = ("ROCM_ATTN", "ROCM_AITER_FA", "ROCM_AITER_UNIFIED_ATTN", "TRITON_ATTN")


@pytest.mark.usefixtures("fake_aiter")
def test_attention_selection_picks_aiter_where_vllm_would_pick_rocm_attn(
    rocm_platform: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm.platforms.rocm import RocmPlatform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

    def valid_on_mi300x(cls, device_capability, attn_selector_config, num_heads=None):  # type: ignore[no-untyped-def]
        ranked = [(AttentionBackendEnum[name], i) for i, name in enumerate(MI300X_VALID)]
        return ranked, {}

    monkeypatch.setattr(RocmPlatform, "get_valid_backends", classmethod(valid_on_mi300x))
    layer = AttentionSelectorConfig(
        head_size=128,
        dtype=torch.bfloat16,
        kv_cache_dtype="auto",
        block_size=16,
        use_mla=False,
        has_sink=False,
        use_sparse=False,
        use_mm_prefix=False,
        use_per_head_quant_scales=False,
        attn_type="decoder",
    )
    stock = RocmPlatform.get_attn_backend_cls(None, layer)
    ours = type(rocm_platform).get_attn_backend_cls(None, layer)
    assert stock == AttentionBackendEnum.ROCM_ATTN.get_path()
    assert ours == AttentionBackendEnum.ROCM_AITER_FA.get_path()
    explicit = type(rocm_platform).get_valid_backends(DeviceCapability(9, 4), layer)[0]
    assert min(explicit, key=lambda item: item[1])[0] == AttentionBackendEnum.ROCM_AITER_FA


def _blocks_logged_while(action: Any) -> list[str]:
    """The feature blocks atom-tier logs while ``action()`` runs."""
    import logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "features (platform" in record.getMessage():
                records.append(record.getMessage())

    logger = logging.getLogger("vllm.atom_tier")
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        action()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return records


@pytest.mark.usefixtures("fake_aiter")
def test_block_lists_aiter_sub_switches_with_the_variable_that_turns_each_off(
    rocm_platform: Any, tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vllm._aiter_ops as aiter_ops

    monkeypatch.setenv("VLLM_ROCM_USE_AITER_MOE", "0")
    aiter_ops.rocm_aiter_ops.refresh_env_variables()
    [block] = _blocks_logged_while(lambda: build(tiny_model_dir, max_num_seqs=52))
    line = next(row for row in block.splitlines() if "aiter_kernels" in row)
    assert line.lstrip().startswith("[on ]")
    assert "linear on (VLLM_ROCM_USE_AITER_LINEAR=0 turns it off)" in line
    assert "moe off (VLLM_ROCM_USE_AITER_MOE=0)" in line
    # vLLM's ROCm IR op priority put AITER's RMSNorm first (graphs are captured here).
    assert "rmsnorm on (VLLM_ROCM_USE_AITER_RMSNORM=0 turns it off)" in line
    for variable in ("VLLM_ROCM_USE_AITER_FP8BMM", "VLLM_ROCM_USE_AITER_CUSTOM_AR"):
        assert f"{variable}=0 turns it off" in line


@pytest.mark.usefixtures("fake_aiter")
def test_shuffled_kv_cache_layout_keeps_the_fused_pass_off(
    rocm_platform: Any, tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vllm._aiter_ops as aiter_ops

    monkeypatch.setenv("VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT", "1")
    aiter_ops.rocm_aiter_ops.refresh_env_variables()
    assert rocm_platform.atom_tier_facts().aiter_shuffle_kv_cache
    config = build(tiny_model_dir, hf_overrides={"head_dim": 128})
    assert config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache is False
    assert config.compilation_config.use_inductor_graph_partition is not True


def test_doctor_lists_the_aiter_sub_switches_on_a_rocm_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from atom_tier.preflight import build_context, run_preflight
    from atom_tier.settings import load_settings

    monkeypatch.setenv("VLLM_ROCM_USE_AITER_LINEAR", "0")
    monkeypatch.setenv("VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT", "1")
    found = [
        f for f in run_preflight(build_context(load_settings({}))) if f.code == "aiter-switches"
    ]
    [finding] = found
    assert "linear off (VLLM_ROCM_USE_AITER_LINEAR=0)" in finding.message
    assert "moe on (VLLM_ROCM_USE_AITER_MOE=0 turns it off)" in finding.message
    assert "VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1 disables the fused" in finding.message


def test_fp8_kv_without_checkpoint_scales_says_vllm_uses_one(
    rocm_platform: Any, tiny_model_dir: Any
) -> None:
    """The tiny model has no quantization config: vLLM loads no k/v scales and uses 1.0."""
    [block] = _blocks_logged_while(lambda: build(tiny_model_dir, max_num_seqs=53))
    line = next(row for row in block.splitlines() if "kv_cache_dtype" in row)
    assert line.lstrip().startswith("[on ]") and "fp8" in line
    assert "no KV scales, so vLLM uses 1.0" in line and "ATOM_TIER_KV_CACHE_DTYPE=auto" in line
