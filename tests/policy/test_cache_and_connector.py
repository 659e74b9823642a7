"""FP8 KV cache, prefix caching, async scheduling and the tiered connector on real VllmConfigs.

Platform facts (fp8 support, static graphs, AITER) come from the doubles in conftest.py;
`ROCM_FACTS` stands for an MI300X (no GPU here), `CPU_FACTS` for vLLM's CPU platform.
"""

from __future__ import annotations

import pytest
from vllm.config.compilation import CUDAGraphMode
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

from atom_tier.names import CONNECTOR_NAME
from tests.policy.conftest import CPU_FACTS, ROCM_FACTS, BuildConfig, with_facts


def test_fp8_kv_cache_when_left_at_auto(build_config: BuildConfig) -> None:
    built = build_config()
    assert built.config.cache_config.cache_dtype == "fp8"
    status = built.status("kv_cache_dtype")
    assert status.active and "float8_e4m3fnuz" in status.detail


def test_fp8_opt_out_keeps_the_model_dtype(build_config: BuildConfig) -> None:
    built = build_config(env={"ATOM_TIER_KV_CACHE_DTYPE": "auto"})
    assert built.config.cache_config.cache_dtype == "auto"
    assert "ATOM_TIER_KV_CACHE_DTYPE=auto" in built.status("kv_cache_dtype").detail


@pytest.mark.parametrize("explicit", ["bfloat16", "fp8_e5m2"])
def test_explicit_kv_cache_dtype_is_kept(build_config: BuildConfig, explicit: str) -> None:
    built = build_config(kv_cache_dtype=explicit)
    assert built.config.cache_config.cache_dtype == explicit
    assert "set by --kv-cache-dtype, kept" in built.status("kv_cache_dtype").detail


def test_chosen_fp8_variant_is_used(build_config: BuildConfig) -> None:
    built = build_config(env={"ATOM_TIER_KV_CACHE_DTYPE": "fp8_e4m3"})
    assert built.config.cache_config.cache_dtype == "fp8_e4m3"


def test_no_fp8_where_the_platform_has_none(build_config: BuildConfig) -> None:
    built = build_config(facts=with_facts(ROCM_FACTS, fp8_kv=False))
    assert built.config.cache_config.cache_dtype == "auto"
    assert not built.status("kv_cache_dtype").active


def test_cpu_fp8_needs_a_head_size_multiple_of_32(build_config: BuildConfig) -> None:
    # The tiny model's head size 32 qualifies; 48 does not (vLLM's CPU attention would refuse).
    assert build_config(facts=CPU_FACTS).config.cache_config.cache_dtype == "fp8"
    built = build_config(facts=CPU_FACTS, hf_overrides={"head_dim": 48})
    assert built.config.cache_config.cache_dtype == "auto"
    assert "divisible by 32" in built.status("kv_cache_dtype").detail


def test_prefix_caching_on_by_default_and_explicit_off_kept(build_config: BuildConfig) -> None:
    assert build_config().status("prefix_caching").active
    built = build_config(enable_prefix_caching=False)
    assert built.config.cache_config.enable_prefix_caching is False
    status = built.status("prefix_caching")
    assert not status.active and "--no-enable-prefix-caching kept" in status.detail


def test_async_scheduling_reported_as_vllm_resolved_it(build_config: BuildConfig) -> None:
    assert build_config().status("async_scheduling").active
    built = build_config(async_scheduling=False)
    assert built.config.scheduler_config.async_scheduling is False
    assert not built.status("async_scheduling").active
    cpu = build_config(facts=CPU_FACTS)  # vLLM's CPU platform turns it off in its own hook
    assert cpu.config.scheduler_config.async_scheduling is False
    assert "CPU platform" in cpu.status("async_scheduling").detail


def test_connector_set_when_none_given(build_config: BuildConfig) -> None:
    built = build_config(facts=with_facts(CPU_FACTS, connector_registered=True))
    kv = built.config.kv_transfer_config
    assert (kv.kv_connector, kv.kv_role) == (CONNECTOR_NAME, "kv_both")
    assert built.status("kv_connector").active


def test_connector_with_full_graphs_resolves_through_vllms_connector_factory(
    build_config: BuildConfig,
) -> None:
    """On a graph platform vLLM asks the connector class whether it needs PIECEWISE graphs."""
    built = build_config()  # ROCm double: static graphs, connector registered
    config = built.config
    assert config.kv_transfer_config.kv_connector == CONNECTOR_NAME
    connector_cls = KVConnectorFactory.get_connector_class(config.kv_transfer_config)
    needs_piecewise = connector_cls.requires_piecewise_for_cudagraph({})
    expected = CUDAGraphMode.PIECEWISE if needs_piecewise else CUDAGraphMode.FULL_AND_PIECEWISE
    assert config.compilation_config.cudagraph_mode == expected


def test_connector_opt_out(build_config: BuildConfig) -> None:
    built = build_config(env={"ATOM_TIER_CONNECTOR": "off"})
    assert built.config.kv_transfer_config is None
    assert "ATOM_TIER_CONNECTOR=off" in built.status("kv_connector").detail


def test_lmcache_engine_uses_vllms_lmcache_connector_configured_from_settings(
    build_config: BuildConfig,
) -> None:
    env = {
        "ATOM_TIER_CONNECTOR": "lmcache",
        "ATOM_TIER_DRAM_GB": "4",
        "ATOM_TIER_CHUNK_TOKENS": "512",
    }
    built = build_config(facts=CPU_FACTS, env=env)
    kv = built.config.kv_transfer_config
    assert (kv.kv_connector, kv.kv_role) == ("LMCacheConnectorV1", "kv_both")
    extra = kv.kv_connector_extra_config
    assert extra["lmcache.chunk_size"] == 512
    assert extra["lmcache.local_cpu"] is True and extra["lmcache.save_decode_cache"] is False
    status = built.status("kv_connector")
    assert status.active and "lmcache engine" in status.detail


def test_users_kv_transfer_config_is_kept(build_config: BuildConfig) -> None:
    given = {"kv_connector": "ExampleConnector", "kv_role": "kv_both"}
    built = build_config(facts=CPU_FACTS, kv_transfer_config=given)
    assert built.config.kv_transfer_config.kv_connector == "ExampleConnector"
    status = built.status("kv_connector")
    assert not status.active and "chose ExampleConnector, kept" in status.detail


def test_vllm_kv_offloading_flag_counts_as_a_choice(build_config: BuildConfig) -> None:
    built = build_config(facts=CPU_FACTS, kv_offloading_size=1.0)
    assert built.config.kv_transfer_config.kv_connector == "OffloadingConnector"
    assert "--kv-offloading-size" in built.status("kv_connector").detail


def test_unregistered_connector_is_not_set(build_config: BuildConfig) -> None:
    built = build_config(facts=with_facts(ROCM_FACTS, connector_registered=False))
    assert built.config.kv_transfer_config is None
    assert "not registered" in built.status("kv_connector").detail
