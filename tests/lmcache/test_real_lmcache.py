"""The translation checked by the real LMCache 0.5.6 code, in subprocesses (see conftest).

* LMCache's own config setter and ``validate()`` accept every key atom-tier sends;
* vLLM's ``LMCacheConnectorV1`` constructs on CPU vLLM, scheduler side, with the engine selected
  from atom-tier's settings, and LMCache ends up with exactly atom-tier's values even when
  recipe ``LMCACHE_*`` variables say otherwise. Further than this CPU vLLM cannot go: LMCache's
  worker needs a GPU connector ("No supported cpu connector found"), so there is no end-to-end
  run here;
* the chunk-hash choice: LMCache's default ``builtin`` keys depend on the interpreter's hash
  secret, atom-tier's choice does not;
* telemetry off unless turned on, by LMCache's own switch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lmcache_helpers import RunInLMCache, settings_of

from atom_tier.lmcache.config import (
    HostShare,
    LMCacheConfig,
    lmcache_config,
    lmcache_environment,
)
from atom_tier.lmcache.kv_transfer import lmcache_kv_transfer_config

# Scenarios in one process, each on a fresh LMCacheEngineConfig from LMCache's defaults.
VALIDATE = """
import json, sys
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.config_base import validate_and_set_config_value
results = []
for extra in json.loads(sys.argv[1]):
    config = LMCacheEngineConfig.from_env()
    names = {key: key[len("lmcache."):] for key in extra}
    accepted = {key: validate_and_set_config_value(config, names[key], extra[key]) for key in extra}
    config.validate()
    values = {name: getattr(config, name) for name in names.values()}
    results.append({"accepted": accepted, "values": values})
print(json.dumps(results))
"""

CONSTRUCT = """
import json, sys
from vllm.engine.arg_utils import EngineArgs
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
model, transfer = sys.argv[1], json.loads(sys.argv[2])
args = EngineArgs(model=model, max_model_len=512, kv_transfer_config=transfer)
config = args.create_engine_config()
connector = KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, None)
engine_config = connector._lmcache_engine.config
keys = [k[len("lmcache."):] for k in transfer["kv_connector_extra_config"]]
print(json.dumps({
    "class": type(connector).__name__,
    "values": {k: getattr(engine_config, k) for k in keys},
}))
"""

HASH_KEYS = """
import json, os, sys
os.environ["PYTHONHASHSEED"] = "0"  # what atom-tier's general plugin does, in-process
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.token_database import ChunkedTokenDatabase
result = {}
for algorithm in sys.argv[1:]:
    config = LMCacheEngineConfig.from_defaults()
    config.pre_caching_hash_algorithm = algorithm
    config.chunk_size = 4
    db = ChunkedTokenDatabase(config, None)
    tokens = list(range(12))
    result[algorithm] = {
        "function": db.hash_func.__module__ + "." + db.hash_func.__name__,
        "keys": [str(h) for _, _, h in db.process_tokens(tokens=tokens, make_key=False)],
    }
print(json.dumps(result))
"""

TELEMETRY = """
import json, os, sys
from lmcache.usage_telemetry.identity import is_usage_tracking_enabled
answers = []
for variables in json.loads(sys.argv[1]):  # LMCache reads the variable at each call
    os.environ.pop("LMCACHE_TRACK_USAGE", None)
    os.environ.update(variables)
    answers.append(is_usage_tracking_enabled())
print(json.dumps(answers))
"""


def scenarios(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "dram only": {"ATOM_TIER_DRAM_GB": 6, "ATOM_TIER_CHUNK_TOKENS": 512},
        "dram and disk": {
            "ATOM_TIER_DRAM_GB": 8,
            "ATOM_TIER_NVME_PATH": tmp_path,
            "ATOM_TIER_NVME_GB": 20,
        },
        "disk only (recipe names)": {
            "LMCACHE_LOCAL_CPU": "False",
            "LMCACHE_LOCAL_DISK": f"file://{tmp_path}/",
            "LMCACHE_MAX_LOCAL_DISK_SIZE": 5,
        },
        "decode saved": {"ATOM_TIER_DRAM_GB": 1, "ATOM_TIER_SAVE_DECODE": "true"},
    }


SCENARIOS = ("dram only", "dram and disk", "disk only (recipe names)", "decode saved")


@pytest.fixture(scope="module")
def validated(
    run_in_lmcache: RunInLMCache, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[LMCacheConfig, dict[str, Any]]]:
    """Each scenario's configuration, and what LMCache's setter and ``validate()`` made of its
    keys: all scenarios in one LMCache process (each one starting an interpreter that imports
    LMCache costs seconds)."""
    folder = tmp_path_factory.mktemp("scenarios")
    configs = [
        lmcache_config(settings_of(**scenarios(folder)[name]), HostShare(workers=2))
        for name in SCENARIOS
    ]
    results = run_in_lmcache(VALIDATE, json.dumps([c.extra_config() for c in configs]))
    return dict(zip(SCENARIOS, zip(configs, results, strict=True), strict=True))


@pytest.mark.parametrize("name", SCENARIOS)
def test_lmcache_validates_every_key(
    validated: dict[str, tuple[LMCacheConfig, dict[str, Any]]], name: str
) -> None:
    config, result = validated[name]
    assert all(result["accepted"].values()), result["accepted"]
    assert result["values"] == config.config_keys()


def test_connector_constructs_with_atom_tiers_configuration(
    run_in_lmcache: RunInLMCache, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = settings_of(
        ATOM_TIER_CONNECTOR="lmcache",
        ATOM_TIER_DRAM_GB=3,
        ATOM_TIER_NVME_PATH=tmp_path,
        ATOM_TIER_NVME_GB=7,
        ATOM_TIER_CHUNK_TOKENS=128,
    )
    transfer = lmcache_kv_transfer_config(settings)
    # Recipe variables that disagree: atom-tier's keys are applied after LMCache reads them.
    recipe = {"LMCACHE_MAX_LOCAL_CPU_SIZE": "99", "LMCACHE_CHUNK_SIZE": "64"}
    result = run_in_lmcache(CONSTRUCT, str(tiny_model_dir), json.dumps(transfer), env=recipe)
    assert result["class"] == "LMCacheConnectorV1"
    expected = {
        k.removeprefix("lmcache."): v for k, v in transfer["kv_connector_extra_config"].items()
    }
    assert result["values"] == expected
    assert result["values"]["max_local_cpu_size"] == 3.0 and result["values"]["chunk_size"] == 128


def test_builtin_hash_differs_between_processes_atom_tiers_does_not(
    run_in_lmcache: RunInLMCache,
) -> None:
    """Two processes started with different hash secrets, both seeded in-process afterwards."""
    ours = lmcache_config(settings_of(ATOM_TIER_DRAM_GB=1)).pre_caching_hash_algorithm
    first, second = (
        run_in_lmcache(HASH_KEYS, "builtin", ours, env={"PYTHONHASHSEED": seed})
        for seed in ("1", "2")
    )
    assert first["builtin"]["function"] == "builtins.hash"  # the fallback on vLLM 0.32
    assert first["builtin"]["keys"] != second["builtin"]["keys"]
    assert first[ours]["function"] == f"vllm.utils.hashing.{ours}"
    assert first[ours]["keys"] == second[ours]["keys"]


def test_telemetry_is_off_unless_turned_on(run_in_lmcache: RunInLMCache) -> None:
    from atom_tier.settings import load_settings

    environments = [
        lmcache_environment(load_settings({})),
        lmcache_environment(load_settings({"ATOM_TIER_LMCACHE_TELEMETRY": "1"})),
        lmcache_environment(load_settings({"LMCACHE_TRACK_USAGE": "False"})),
        {},  # LMCache's own default, which is why atom-tier sets the variable
    ]
    answers = run_in_lmcache(TELEMETRY, json.dumps(environments))
    assert answers == [False, True, False, True]
