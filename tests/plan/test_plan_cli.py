"""``atom-tier plan`` on generated traces: table, JSON, PNG, the verdict, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atom_tier.cli import main
from atom_tier.replay.synth import SynthSpec, write_traces

BASE = ["--kv-bytes-per-token", "2048", "--device-kv-tokens", "20000", "--users", "4"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plan") / "traces"
    write_traces(folder, SynthSpec(count=12, seed=0))
    return folder


def test_sweep_writes_table_json_and_png(
    traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "plan.json", tmp_path / "plan.png"
    code = main(
        ["plan", str(traces), *BASE, "--dram-gb", "0,0.05", "--nvme-gb", "0,1",
         "--json", str(out_json), "--png", str(out_png)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "regime:" in printed and "settings:" in printed
    document = json.loads(out_json.read_text())
    configs = document["configurations"]
    assert [(c["dram_gb"], c["nvme_gb"]) for c in configs] == [
        (0, 0), (0.05, 0), (0, 1), (0.05, 1)
    ]  # fmt: skip
    no_tier = configs[0]
    assert set(no_tier["hit_tokens"]) == {"device", "dram"}
    assert no_tier["hit_tokens"]["dram"] == 0
    for config in configs:
        hits = sum(config["hit_tokens"].values())
        assert hits + config["prefill_tokens"] == document["prompt_tokens"]
        assert config["hit_rate"] <= document["ceiling"]["hit_rate"] + 1e-9
    # On this workload NVMe behind the same DRAM tier serves more (it holds what DRAM lost).
    assert configs[3]["hit_rate"] >= configs[1]["hit_rate"]
    assert document["regime"] in ("HBM enough", "DRAM tier", "DRAM + NVMe")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dram-gb", "lots"], "--dram-gb 'lots' does not parse"),
        (["--nvme-gb", "-1"], "--nvme-gb '-1'"),
        (["--eviction", "fifo"], "--eviction 'fifo'"),
        (["--hold-s", "-1"], "--hold-s must not be negative"),
        (["--warm-prefix-pct", "2"], "warm prefix share must be in [0, 1], got 2"),
    ],
)
def test_bad_input_is_one_clear_error(
    traces: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(traces), *BASE, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_traces_and_model_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(tmp_path / "none"), *BASE]) == 2
    assert "does not exist" in capsys.readouterr().err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hidden_size": 128}))
    folder = tmp_path / "t"
    write_traces(folder, SynthSpec(count=1))
    assert main(["plan", str(folder), "--model", str(config), "--device-kv-tokens", "100"]) == 2
    assert "no 'num_hidden_layers'" in capsys.readouterr().err


def test_kv_bytes_from_config(tmp_path: Path) -> None:
    from atom_tier.plan.deployment import model_kv

    config = tmp_path / "config.json"
    # MiniMax-M2.5's figures (docs/tuning.md): 62 layers, 8 KV heads, head dim 128.
    config.write_text(
        json.dumps({"num_hidden_layers": 62, "num_attention_heads": 48,
                    "num_key_value_heads": 8, "head_dim": 128})
    )  # fmt: skip
    assert model_kv(config, "fp8").bytes_per_token == 126_976
    assert model_kv(tmp_path, "bf16").bytes_per_token == 253_952
    config.write_text(json.dumps({"num_hidden_layers": 4, "kv_lora_rank": 512,
                                  "qk_rope_head_dim": 64}))  # fmt: skip
    assert model_kv(config, "fp8").bytes_per_token == 4 * 576
