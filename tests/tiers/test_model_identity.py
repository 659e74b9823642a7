"""The model identity in every persistent tier's namespace: real checkpoint files on disk.

Each test writes real safetensors (or other) files and checks the one property that keeps a
tier from serving KV of other weights: the digest changes when the weights or their numerics
change, and stays put when only where or when the files were written changes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from atom_tier.devtools.tiny_model import build_tiny_model
from atom_tier.tiers import model_identity as model_identity_module
from atom_tier.tiers.model_identity import (
    WINDOW,
    model_identity,
    numerics_digest,
    safetensors_header,
    safetensors_windows,
    weights_fingerprint,
)


def _checkpoint(root: Path, seed: int = 0, *, config: dict[str, object] | None = None) -> Path:
    """Two safetensors shards (a large tensor, a small one each) and a config.json."""
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for shard in (0, 1):
        tensors = {
            f"layers.{shard}.proj.weight": torch.randn(256, 512, generator=gen),  # 512 KiB
            f"layers.{shard}.norm.weight": torch.randn(64, generator=gen),
        }
        save_file(tensors, str(root / f"model-0000{shard + 1}-of-00002.safetensors"))
    (root / "config.json").write_text(json.dumps(config or {"rope_theta": 10000.0}))
    (root / "tokenizer.json").write_text('{"model": "w"}')
    return root


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _tensor_offset(path: Path, name: str) -> tuple[int, int]:
    """(absolute start, length) of a tensor's bytes, read from the header by hand."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    begin, end = header[name]["data_offsets"]
    return 8 + header_len + begin, end - begin


def test_same_weights_elsewhere_and_later_have_the_same_digest(tmp_path: Path) -> None:
    first = weights_fingerprint(_checkpoint(tmp_path / "a"))
    copy = tmp_path / "mounted" / "elsewhere"
    shutil.copytree(tmp_path / "a", copy)  # new inodes, new path
    for path in copy.iterdir():
        os.utime(path, (1, 1))
    again = weights_fingerprint(copy)
    assert again.digest == first.digest
    assert first.source == "sampled" and first.files == 2
    # 2 shards x (3 windows of the 512 KiB tensor + the 256-byte norm tensor, whole, read
    # together with the big tensor's first window, which follows it in the file)
    assert first.windows == 6
    assert first.bytes_read == 2 * (3 * WINDOW + 64 * 4)


def test_another_seed_is_another_digest(tmp_path: Path) -> None:
    assert (
        weights_fingerprint(_checkpoint(tmp_path / "a", 0)).digest
        != weights_fingerprint(_checkpoint(tmp_path / "b", 1)).digest
    )


@pytest.mark.parametrize(
    "where",
    ["start of a large tensor", "middle of a large tensor", "end of a large tensor", "small"],
)
def test_a_change_in_any_sampled_window_changes_the_digest(tmp_path: Path, where: str) -> None:
    root = _checkpoint(tmp_path / "m")
    before = weights_fingerprint(root).digest
    shard = root / "model-00002-of-00002.safetensors"
    name = "layers.1.norm.weight" if where == "small" else "layers.1.proj.weight"
    start, length = _tensor_offset(shard, name)
    offset = {
        "start of a large tensor": start + 10,
        "middle of a large tensor": start + length // 2,
        "end of a large tensor": start + length - 10,
        "small": start + length - 4,
    }[where]
    _patch(shard, offset, b"\x7f\x7f")
    assert weights_fingerprint(root).digest != before


def test_an_edit_between_windows_is_not_seen(tmp_path: Path) -> None:
    """The documented limit of sampling (ATOM_TIER_WEIGHTS_ID is the operator's answer)."""
    root = _checkpoint(tmp_path / "m")
    before = weights_fingerprint(root).digest
    shard = root / "model-00001-of-00002.safetensors"
    start, length = _tensor_offset(shard, "layers.0.proj.weight")
    _patch(shard, start + length // 4, b"\x7f\x7f")  # between the first and middle windows
    assert weights_fingerprint(root).digest == before


def test_config_counts_tokenizer_does_not(tmp_path: Path) -> None:
    root = _checkpoint(tmp_path / "m")
    before = weights_fingerprint(root).digest
    (root / "tokenizer.json").write_text('{"model": "another"}')
    (root / "generation_config.json").write_text('{"temperature": 0.1}')
    assert weights_fingerprint(root).digest == before
    (root / "config.json").write_text(json.dumps({"rope_theta": 500000.0}))
    assert weights_fingerprint(root).digest != before


def test_renamed_or_reshaped_tensors_change_the_header_digest(tmp_path: Path) -> None:
    root = _checkpoint(tmp_path / "m")
    before = weights_fingerprint(root).digest
    shard = root / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data.replace(b"layers.0.norm.weight", b"layers.0.norm.weighu"))
    assert weights_fingerprint(root).digest != before


def test_safetensors_windows_follow_the_header(tmp_path: Path) -> None:
    root = _checkpoint(tmp_path / "m")
    shard = root / "model-00001-of-00002.safetensors"
    big_start, big_len = _tensor_offset(shard, "layers.0.proj.weight")
    small_start, small_len = _tensor_offset(shard, "layers.0.norm.weight")
    assert small_start + small_len == big_start  # the layout this test expects
    _raw, base, tensors = safetensors_header(shard, shard.stat().st_size)
    middle = (big_start + (big_len - WINDOW) // 2, WINDOW)
    assert safetensors_windows(base, tensors, per_tensor=3) == [
        (small_start, small_len + WINDOW),  # adjacent windows are one read
        middle,
        (big_start + big_len - WINDOW, WINDOW),
    ]
    assert safetensors_windows(base, tensors, per_tensor=1) == [(small_start, small_len), middle]


def test_past_the_window_budget_each_tensor_is_sampled_once_in_the_middle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _checkpoint(tmp_path / "m")
    monkeypatch.setattr(model_identity_module, "WINDOW_BUDGET", 8)  # 4 tensors x 3 > 8
    before = weights_fingerprint(root)
    assert before.windows == 4
    shard = root / "model-00002-of-00002.safetensors"
    start, length = _tensor_offset(shard, "layers.1.proj.weight")
    _patch(shard, start + length // 2, b"\x7f\x7f")
    assert weights_fingerprint(root).digest != before.digest


def test_hub_cache_files_are_identified_by_their_blob_name_without_reading(
    tmp_path: Path,
) -> None:
    """The HF hub cache layout: snapshots/<rev>/<file> -> ../../blobs/<sha256 of content>."""
    blobs = tmp_path / "hub" / "blobs"
    snapshot = tmp_path / "hub" / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    source = _checkpoint(tmp_path / "src")
    for i, path in enumerate(sorted(source.glob("*.safetensors"))):
        blob = blobs / (f"{i:x}" * 64)[:64]
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    shutil.copy(source / "config.json", snapshot / "config.json")
    identity = weights_fingerprint(snapshot)
    assert identity.source == "hub-blobs" and identity.bytes_read == 0
    # Another revision of one file is another blob name.
    link = snapshot / "model-00002-of-00002.safetensors"
    other = blobs / ("f" * 64)
    shutil.copy(link, other)
    link.unlink()
    link.symlink_to(os.path.relpath(other, snapshot))
    assert weights_fingerprint(snapshot).digest != identity.digest


def test_other_weight_formats_are_sampled_across_the_file(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    weights = root / "pytorch_model.bin"
    weights.write_bytes(os.urandom(8 * 2**20))
    before = weights_fingerprint(root)
    assert before.windows == 1024
    _patch(weights, 8 * 2**20 - 1, b"\x00" if weights.read_bytes()[-1:] != b"\x00" else b"\x01")
    assert weights_fingerprint(root).digest != before.digest


def test_the_tiny_test_model_rebuilt_with_other_weights(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "current", seed=0)
    first = weights_fingerprint(model).digest
    assert weights_fingerprint(build_tiny_model(tmp_path / "copy", seed=0)).digest == first
    build_tiny_model(model, seed=1)  # same path, same shapes, other weights
    assert weights_fingerprint(model).digest != first


def test_identity_combines_weights_and_numerics(tmp_path: Path) -> None:
    root = str(_checkpoint(tmp_path / "m"))
    config = {"hidden_size": 128, "rope_scaling": None, "_name_or_path": "/a"}
    numerics = numerics_digest(config, dtype="bfloat16", kv_cache_dtype="auto")
    base = model_identity(root, numerics)
    assert base.source == "sampled"
    assert model_identity(root, numerics).digest == base.digest
    # Where the config was read from is not what it says.
    moved = numerics_digest(
        {**config, "_name_or_path": "/b"}, dtype="bfloat16", kv_cache_dtype="auto"
    )
    assert moved == numerics
    for changed in (
        numerics_digest(
            {**config, "rope_scaling": {"factor": 4.0}}, dtype="bfloat16", kv_cache_dtype="auto"
        ),
        numerics_digest(config, dtype="float16", kv_cache_dtype="auto"),
        numerics_digest(config, dtype="bfloat16", kv_cache_dtype="fp8"),
    ):
        assert model_identity(root, changed).digest != base.digest


def test_unidentifiable_weights_get_a_random_identity(tmp_path: Path) -> None:
    """No weight files, an unknown hub id, or vLLM's dummy weights: never reused."""
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text("{}")
    for model, fmt in (
        (str(config_only), None),
        ("no-such-org/no-such-model", None),
        (str(_checkpoint(tmp_path / "m")), "dummy"),
    ):
        one = model_identity(model, "n", load_format=fmt)
        two = model_identity(model, "n", load_format=fmt)
        assert one.source == two.source == "unverified"
        assert one.digest != two.digest


def test_an_operator_weights_id_replaces_the_fingerprint(tmp_path: Path) -> None:
    root = str(_checkpoint(tmp_path / "m"))
    pinned = model_identity(root, "n", weights_id="ckpt-2026-12-01")
    assert pinned.source == "operator" and pinned.bytes_read == 0
    assert model_identity("s3://bucket/model", "n", weights_id="ckpt-2026-12-01") == pinned
    assert model_identity(root, "n", weights_id="ckpt-2026-12-07").digest != pinned.digest
