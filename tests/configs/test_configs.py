"""configs/: every recipe parses the way vLLM and atom-tier will read it in production.

YAML recipes go through the code path of ``vllm serve --config FILE``: vLLM's CLI parser
(``FlexibleArgumentParser`` with the ``serve`` subcommand, which expands ``--config`` in
``_pull_args_from_config``/``load_config_file``), the serve subcommand's own validation, then
``AsyncEngineArgs.from_cli_args``. An unknown or misspelt key therefore fails here as it would
at start-up. Env files are read with Docker's ``--env-file`` rules and validated by
``atom_tier.settings.load_settings(dict)``. The tiny CPU recipe is also served for real.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
import vllm.envs
from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager
from vllm.utils.argparse_utils import FlexibleArgumentParser

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.preflight.checks_connector import evaluate_dram_tier
from atom_tier.preflight.findings import Level
from atom_tier.settings import AtomTierSettings, ConnectorEngine, load_settings, settings_fields
from atom_tier.sizing import DramBudget, dram_requirement, dram_tier_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MINIMAX = CONFIGS / "minimax-m2.5-fp8-tp2-mi300x"
TINY = CONFIGS / "tiny-cpu"
YAMLS = sorted(CONFIGS.rglob("*.yaml"))
ENV_FILES = sorted(CONFIGS.rglob("*.env"))
# Variables a recipe may set besides atom-tier's own: Python's hash seed, and vLLM's (checked
# against vLLM's registry of environment variables below).
FOREIGN_ALLOWED = {"PYTHONHASHSEED"}
SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:,+-]*")

# MiniMax-M2.5's attention shape (config.json: num_hidden_layers 62, num_key_value_heads 8,
# head_dim 128; every layer full attention), FP8 KV cache: 1 byte per value.
MINIMAX_KV_BYTES_PER_TOKEN = 2 * 62 * 8 * 128 * 1


def serve_args(*argv: str) -> argparse.Namespace:
    """``vllm serve ARGV`` parsed and validated exactly as vLLM's CLI main does it."""
    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    command = ServeSubcommand()
    command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
    args = parser.parse_args(["serve", *argv])
    command.validate(args)
    return args


def engine_args(path: Path, *extra: str) -> AsyncEngineArgs:
    return AsyncEngineArgs.from_cli_args(serve_args("--config", str(path), *extra))


def read_env_file(path: Path) -> dict[str, str]:
    """Docker ``--env-file`` rules, held to what a shell ``. FILE`` reads the same way."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        where = f"{path.name}:{number}"
        assert sep, f"{where}: KEY=VALUE expected (a bare KEY would copy the host's value)"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"{where}: bad variable name {name!r}"
        assert SHELL_SAFE.fullmatch(value), (
            f"{where}: {value!r}: Docker keeps quotes, spaces and '#' literally; a shell does not"
        )
        assert name not in values, f"{where}: {name} set twice"
        values[name] = value
    return values


def test_every_recipe_folder_has_yaml_and_env_files() -> None:
    assert {p.parent.name for p in YAMLS} == {
        "minimax-m2.5-fp8-tp2-mi300x",
        "tiny-cpu",
        "llama-3.3-70b-tp2-mi300x",
        "qwen3-32b-tp1-mi300x",
        "deepseek-r1-fp8-tp8-mi300x",
        "gpt-oss-120b-tp1-mi300x",
    }
    assert {p.parent for p in ENV_FILES} == {p.parent for p in YAMLS}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_parses_with_vllms_serve_parser_and_leaves_atom_tiers_choices_alone(
    path: Path,
) -> None:
    args = engine_args(path)
    # The published runs lost 3-5x to eager mode: no recipe may ask for it.
    assert args.enforce_eager is False
    # FP8 KV cache and the tiered connector come from atom-tier (settings/env), not the YAML.
    assert args.kv_cache_dtype == "auto"
    assert args.kv_transfer_config is None
    assert args.compilation_config.cudagraph_mode is None


def test_yaml_parsing_is_strict_about_unknown_keys(tmp_path: Path) -> None:
    """The parser really reads the file: a misspelt key stops `vllm serve`."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((MINIMAX / "serve.yaml").read_text() + "tensor-paralel-size: 2\n")
    with pytest.raises(SystemExit):
        serve_args("--config", str(bad))


def test_minimax_recipe_is_the_published_setup() -> None:
    args = engine_args(MINIMAX / "serve.yaml")
    assert args.model == "MiniMaxAI/MiniMax-M2.5"
    assert args.tensor_parallel_size == 2 and args.trust_remote_code is True
    assert args.max_model_len == 196_608
    cli = serve_args("--config", str(MINIMAX / "serve.yaml"))
    # The parsers named exist in this vLLM (their classes import).
    assert ToolParserManager.get_tool_parser(cli.tool_call_parser)
    assert ReasoningParserManager.get_reasoning_parser(cli.reasoning_parser)
    # Command-line flags still win over the file, as `vllm serve` documents.
    assert engine_args(MINIMAX / "serve.yaml", "--max-model-len", "131072").max_model_len == 131072


def test_tiny_recipe_builds_a_real_engine_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The recipe names `.demo/tiny-model` (relative to the repository root, written by
    # `make demo`); a clean checkout has none, so the test points a copy at its own model.
    text = (TINY / "serve.yaml").read_text()
    assert "model: .demo/tiny-model" in text
    recipe = tmp_path / "serve.yaml"
    recipe.write_text(text.replace("model: .demo/tiny-model", f"model: {tiny_model_dir}"))
    args = engine_args(recipe)
    assert isinstance(args, EngineArgs)
    config = args.create_engine_config()
    assert config.model_config.max_model_len == 4096
    assert config.cache_config.num_gpu_blocks_override == 48
    assert config.model_config.served_model_name == "tiny"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_env_file_names_only_known_variables_and_loads_as_settings(path: Path) -> None:
    values = read_env_file(path)
    own = {name for name, _, _, _ in settings_fields()}
    for name in values:
        if name.startswith("ATOM_TIER_"):
            assert name in own, f"{path.name}: {name} is not an atom-tier setting (typo?)"
        elif name.startswith("VLLM_"):
            assert name in vllm.envs.environment_variables, f"{path.name}: unknown {name}"
        else:
            assert name in FOREIGN_ALLOWED, f"{path.name}: unexpected variable {name}"
    assert values.get("PYTHONHASHSEED") == "0"
    load_settings(values)  # raises SettingsError naming the variable on a bad value


def _settings(path: Path) -> AtomTierSettings:
    return load_settings(read_env_file(path))


SETUPS = {
    MINIMAX: ("hbm-only.env", "dram-64gb.env", "dram-64gb-nvme.env"),
    TINY: ("hbm-only.env", "dram.env", "dram-nvme.env"),
    CONFIGS / "llama-3.3-70b-tp2-mi300x": ("hbm-only.env", "dram-64gb.env", "dram-64gb-nvme.env"),
    CONFIGS / "qwen3-32b-tp1-mi300x": ("hbm-only.env", "dram-64gb.env", "dram-64gb-nvme.env"),
    CONFIGS / "deepseek-r1-fp8-tp8-mi300x": (
        "hbm-only.env",
        "dram-256gb.env",
        "dram-256gb-nvme.env",
    ),
    CONFIGS / "gpt-oss-120b-tp1-mi300x": ("hbm-only.env", "dram-64gb.env", "dram-64gb-nvme.env"),
}


@pytest.mark.parametrize("folder", list(SETUPS), ids=lambda p: p.name)
def test_the_three_setups_differ_only_in_their_tiers(folder: Path) -> None:
    assert sorted(p.name for p in folder.glob("*.env")) == sorted(SETUPS[folder])
    hbm, dram, nvme = (_settings(folder / name) for name in SETUPS[folder])
    assert hbm.connector is ConnectorEngine.OFF
    assert dram.connector is nvme.connector is ConnectorEngine.NATIVE
    assert dram.dram_tier_gb and dram.dram_tier_gb == nvme.dram_tier_gb  # same DRAM in B and C
    assert not dram.nvme_enabled and nvme.nvme_enabled
    assert dram.reload_concurrency == nvme.reload_concurrency


def test_minimax_dram_tier_passes_atom_tiers_own_size_guard() -> None:
    """The guard that stops start-up (with an NVMe tier) when DRAM cannot hold the reloads,
    evaluated with the recipe's values and MiniMax-M2.5's KV size."""
    max_model_len = engine_args(MINIMAX / "serve.yaml").max_model_len
    assert max_model_len is not None
    for name in ("dram-64gb.env", "dram-64gb-nvme.env"):
        settings = _settings(MINIMAX / name)
        assert settings.dram_tier_gb == 64
        requirement = dram_requirement(
            max_model_len=max_model_len,
            kv_bytes_per_token=MINIMAX_KV_BYTES_PER_TOKEN,
            max_num_seqs=256,
            chunk_tokens=settings.chunk_tokens,
            # What 2x MI300X hold (an estimate; docs/tuning.md): would need 4 prefixes.
            device_kv_tokens=800_000,
            reload_concurrency=settings.reload_concurrency,
        )
        dram = dram_tier_bytes(settings, DramBudget(None, None), 1.0)
        finding = evaluate_dram_tier(dram, requirement, settings)
        assert finding.level is Level.OK, finding.message
        # The arithmetic docs/tuning.md shows: 23.25 GiB per full-length prefix.
        assert requirement.minimum_bytes / 2 / 2**30 == pytest.approx(23.25)
    # Without the concurrency setting the NVMe setup would not start: the guard is real.
    unset = load_settings(
        {k: v for k, v in read_env_file(MINIMAX / "dram-64gb-nvme.env").items()
         if k != "ATOM_TIER_RELOAD_CONCURRENCY"}
    )  # fmt: skip
    requirement = dram_requirement(
        max_model_len=max_model_len, kv_bytes_per_token=MINIMAX_KV_BYTES_PER_TOKEN,
        max_num_seqs=256, chunk_tokens=unset.chunk_tokens, device_kv_tokens=800_000,
    )  # fmt: skip
    finding = evaluate_dram_tier(dram_tier_bytes(unset, DramBudget(None, None), 1.0),
                                 requirement, unset)  # fmt: skip
    assert finding.level is Level.ERROR and math.isclose(requirement.concurrency, 4)


@pytest.mark.server
def test_tiny_recipe_serves_on_cpu_with_both_tiers(server_factory: object, tmp_path: Path) -> None:
    env = read_env_file(TINY / "dram-nvme.env")
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    env["ATOM_TIER_NVME_PATH"] = str(nvme)  # the recipe's path is relative to the repo root
    server: CpuVllmServer = server_factory(  # type: ignore[operator]
        args=["--config", str(TINY / "serve.yaml")], env=env
    )
    reply = server.complete("w1 w2 w3 w4", max_tokens=4)
    assert reply["usage"]["completion_tokens"] == 4
    log = server.log_text()
    assert re.search(r"\[on \] kv_connector\s+AtomTierConnector", log), log[-3000:]
    assert "secondary tiers: AtomTierNvmeTier" in log
