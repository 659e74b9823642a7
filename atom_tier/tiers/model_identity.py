"""What a model's KV bytes depend on beyond the tokens: its weights and its numerics config.

A chunk's key is a hash of token ids, so the same prompt has the same key under any weights.
A persistent or shared tier must therefore never serve a chunk written by other weights: a
checkpoint updated in place (``/models/current``, a re-download, a fine-tune written over the
last one) would otherwise decode on the old model's KV, silently. Every such tier puts the
digest of :func:`model_identity` into its namespace.

What the weights fingerprint reads, per weight file of the model directory (sorted by name):

* an HF hub cache file (a symlink to ``blobs/<sha256 or git sha1>``): the blob's name, which
  is the digest of its content. Exact, and nothing is read.
* a safetensors file: its size, its whole header (every tensor's name, dtype, shape and
  offsets) and, for every tensor, the first, middle and last 4 KiB of its bytes (the whole
  tensor when it is small; the middle alone when the checkpoint has more than
  ``WINDOW_BUDGET / 3`` tensors, as large MoE checkpoints do).
* any other weight file (``.bin``, ``.pt``, ``.gguf``...): its size and evenly spaced windows.
* every other top-level ``.json`` but the tokenizer's and generation's files (``config.json``,
  the safetensors index, quantization configs): whole.

Why that is enough: a different checkpoint (another fine-tune, re-quantization, a different
model) changes names, shapes, dtypes or sizes, or nearly every element of each trained
tensor, and every tensor is sampled. What sampling cannot see is an edit
confined to a few elements between the windows of a tensor; an operator who makes such edits
sets ``ATOM_TIER_WEIGHTS_ID`` (or serves from the HF hub cache, which is exact).

Nothing host-specific is read (no mtimes, inodes or absolute paths), so every replica that
loads the same weights computes the same digest, wherever the checkpoint is mounted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import struct
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

WINDOW = 4096  # bytes per sampled window: one page, one read
WHOLE_TENSOR_MAX = 3 * WINDOW  # tensors up to this size are read whole
OTHER_FILE_WINDOWS = 1024  # windows of a weight file that is not safetensors
READ_THREADS = 4  # 8 was slower on 2 vCPUs (GIL hand-offs); 2-4 equal (bench/model_identity.py)
# Three windows per tensor up to this many windows in all, else one (the middle): a large MoE
# checkpoint (~90k tensors) would otherwise cost ~270k reads, over a second.
WINDOW_BUDGET = 32768
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".npz")
# Files that do not change a token's KV: the tokenizer maps text to ids (keys are ids), the
# generation config only steers sampling.
NOT_KV_JSON = re.compile(
    r"^(tokenizer|special_tokens_map|added_tokens|vocab|generation_config|chat_template|"
    r"preprocessor_config|processor_config)"
)
HUB_BLOB = re.compile(r"^(?:[0-9a-f]{64}|[0-9a-f]{40})$")
# hf_config keys that name where or with what the config was read, not what it says.
NOT_NUMERICS_KEYS = frozenset({"_name_or_path", "transformers_version"})


@dataclass(frozen=True)
class ModelIdentity:
    """The digest that goes into tier namespaces, and how it was obtained (for the log)."""

    digest: str
    source: str  # "hub-blobs", "sampled", "operator", "unverified"
    files: int = 0
    windows: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        how = {
            "hub-blobs": f"{self.files} weight files named by content (HF hub cache)",
            "sampled": (
                f"{self.files} files, {self.windows} windows, "
                f"{self.bytes_read / 2**20:.1f} MiB read in {self.seconds:.2f} s"
            ),
            "operator": "ATOM_TIER_WEIGHTS_ID",
            "unverified": "weights not identified: no other run reuses this run's chunks",
        }[self.source]
        return f"{self.digest[:16]} ({self.source}: {how})"


def numerics_digest(hf_config: Mapping[str, Any], **fields: Any) -> str:
    """Digest of the model config as loaded (overrides applied) plus engine-side numerics.

    ``hf_config`` is the model's config dict (rope scaling, quantization config, shapes);
    ``fields`` are what the engine adds (activation dtype, quantization method, KV dtype).
    """
    kept = {
        k: v for k, v in hf_config.items() if k not in NOT_NUMERICS_KEYS and not k.startswith("_")
    }
    text = json.dumps({"hf_config": kept, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hub_blob_name(path: Path) -> str | None:
    """The content digest an HF hub cache file is named by, if ``path`` is one."""
    if not path.is_symlink():
        return None
    name = Path(os.path.realpath(path)).name
    return name if HUB_BLOB.match(name) else None


def model_files(model_dir: Path) -> tuple[list[Path], list[Path]]:
    """(weight files, KV-relevant json files) at the top of ``model_dir``, sorted by name."""
    weights, configs = [], []
    for path in sorted(model_dir.iterdir(), key=lambda p: p.name):
        if not path.is_file():
            continue
        if path.name.endswith(WEIGHT_SUFFIXES):
            weights.append(path)
        elif path.suffix == ".json" and not NOT_KV_JSON.match(path.name):
            configs.append(path)
    return weights, configs


def _windows(start: int, length: int, per_tensor: int) -> list[tuple[int, int]]:
    """(offset, size) windows sampling a tensor: start, middle, end (or the middle alone)."""
    if length <= WHOLE_TENSOR_MAX:
        return [(start, length)] if length else []
    middle = start + (length - WINDOW) // 2
    if per_tensor == 1:
        return [(middle, WINDOW)]
    return [(start, WINDOW), (middle, WINDOW), (start + length - WINDOW, WINDOW)]


def safetensors_header(path: Path, size: int) -> tuple[bytes, int, dict[str, Any]]:
    """(raw header, offset of the data, tensors) of a safetensors file; ValueError if not one."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ValueError(f"{path}: safetensors header longer than the file")
        header = f.read(header_len)
    tensors = json.loads(header)
    tensors.pop("__metadata__", None)
    return prefix + header, 8 + header_len, tensors


def safetensors_windows(
    base: int, tensors: dict[str, Any], per_tensor: int
) -> list[tuple[int, int]]:
    """Every tensor's windows, in file order, windows less than a page apart read as one."""
    windows: list[tuple[int, int]] = []
    for entry in tensors.values():
        begin, end = entry["data_offsets"]
        windows.extend(_windows(base + begin, end - begin, per_tensor))
    windows.sort()
    merged: list[tuple[int, int]] = []
    for offset, length in windows:
        if merged and offset - (merged[-1][0] + merged[-1][1]) < WINDOW:
            last_offset, last_length = merged[-1]
            merged[-1] = (last_offset, max(last_length, offset + length - last_offset))
        else:
            merged.append((offset, length))
    return merged


def spread_plan(size: int) -> list[tuple[int, int]]:
    """Evenly spaced windows over a file whose layout is not parsed."""
    if size <= OTHER_FILE_WINDOWS * WINDOW:
        return [(0, size)] if size else []
    last = OTHER_FILE_WINDOWS - 1
    return [(i * (size - WINDOW) // last, WINDOW) for i in range(OTHER_FILE_WINDOWS)]


def _read_windows(path: Path, windows: list[tuple[int, int]], pool: ThreadPoolExecutor) -> bytes:
    """Digest of the windows' bytes in plan order (reads run on the pool's threads).

    Windows are hashed with XXH3-128: this detects accidental change (another checkpoint),
    not an adversary, who could rewrite the weights anyway; sha256 was 4x slower here.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        batch = max(1, len(windows) // (READ_THREADS * 4))
        groups = [windows[i : i + batch] for i in range(0, len(windows), batch)]

        def read(group: list[tuple[int, int]]) -> bytes:
            h = xxhash.xxh3_128()
            for offset, length in group:
                h.update(os.pread(fd, length, offset))
            return h.digest()

        digest = hashlib.sha256()
        for part in pool.map(read, groups):
            digest.update(part)
        return digest.digest()
    finally:
        os.close(fd)


@dataclass
class _FilePlan:
    path: Path
    blob: str | None = None
    size: int = 0
    header: bytes = b""
    windows: list[tuple[int, int]] = field(default_factory=list)


def _plan(weights: list[Path]) -> list[_FilePlan]:
    """What to read of each weight file; headers are parsed first to count the tensors."""
    plans = [_FilePlan(path, hub_blob_name(path)) for path in weights]
    parsed: list[tuple[_FilePlan, int, dict[str, Any]]] = []
    for plan in plans:
        if plan.blob is not None:
            continue
        plan.size = plan.path.stat().st_size
        if plan.path.suffix == ".safetensors":
            plan.header, base, tensors = safetensors_header(plan.path, plan.size)
            parsed.append((plan, base, tensors))
        else:
            plan.windows = spread_plan(plan.size)
    tensors_total = sum(len(tensors) for _, _, tensors in parsed)
    per_tensor = 3 if 3 * tensors_total <= WINDOW_BUDGET else 1
    for plan, base, tensors in parsed:
        plan.windows = safetensors_windows(base, tensors, per_tensor)
    return plans


def weights_fingerprint(model_dir: Path) -> ModelIdentity:
    """Fingerprint of the weights and config files in ``model_dir`` (see the module doc)."""
    started = time.monotonic()
    weights, configs = model_files(model_dir)
    if not weights:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {model_dir}")
    plans = _plan(weights)
    digest = hashlib.sha256()
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="atom-tier-fingerprint") as pool:
        for plan in plans:
            digest.update(plan.path.name.encode() + b"\0")
            if plan.blob is not None:
                digest.update(b"blob:" + plan.blob.encode())
                continue
            digest.update(plan.size.to_bytes(8, "little") + plan.header)
            digest.update(_read_windows(plan.path, plan.windows, pool))
    for path in configs:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return ModelIdentity(
        digest=digest.hexdigest(),
        source="hub-blobs" if all(plan.blob for plan in plans) else "sampled",
        files=len(weights),
        windows=sum(len(plan.windows) for plan in plans),
        bytes_read=sum(length for plan in plans for _, length in plan.windows),
        seconds=time.monotonic() - started,
    )


def locate_weights(model: str, revision: str | None, download_dir: str | None) -> Path | None:
    """The directory vLLM loaded ``model`` from: a local path, or its HF hub cache snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        found = snapshot_download(
            repo_id=model, revision=revision, cache_dir=download_dir, local_files_only=True
        )
    except Exception:  # not a hub id, or not in the cache: vLLM loaded it some other way
        return None
    return Path(found)


def model_identity(
    model: str,
    numerics: str,
    *,
    revision: str | None = None,
    download_dir: str | None = None,
    weights_id: str | None = None,
    load_format: str | None = None,
) -> ModelIdentity:
    """The identity a tier namespace carries: the weights (or the operator's id) + numerics.

    Where the weights cannot be found, or are vLLM's dummy weights (integer parameters are
    left uninitialised there: not reproducible), the identity is random: this run's chunks are
    then never served to another run, which costs reuse but never correctness.
    """
    if load_format == "dummy" and not weights_id:
        weights = ModelIdentity(secrets.token_hex(32), "unverified")
    elif weights_id:
        weights = ModelIdentity(
            hashlib.sha256(b"operator:" + weights_id.encode()).hexdigest(), "operator"
        )
    else:
        located = locate_weights(model, revision, download_dir)
        try:
            if located is None:
                raise FileNotFoundError(model)
            weights = weights_fingerprint(located)
        except (OSError, ValueError):
            weights = ModelIdentity(secrets.token_hex(32), "unverified")
    combined = hashlib.sha256(f"{weights.digest}:{numerics}".encode()).hexdigest()
    return ModelIdentity(
        combined,
        weights.source,
        weights.files,
        weights.windows,
        weights.bytes_read,
        weights.seconds,
    )
