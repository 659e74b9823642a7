"""Guards of the ``lmcache`` engine: each way the published vLLM + LMCache recipe went wrong.

They run when LMCache is the KV connector: ``ATOM_TIER_CONNECTOR=lmcache``, or (inside vLLM)
an operator's ``--kv-transfer-config`` naming an LMCache connector. One finding is useful
whatever the connector and runs regardless: CUDA-only packages on a ROCm machine (they break
imports for everyone, LMCache in use or not).

* native ops missing, or not built for this GPU: LMCache silently runs a torch fallback that
  was 1.7x slower than no cache -> error, fix: source build with ``BUILD_WITH_HIP=1``;
  ``ATOM_TIER_ALLOW_LMCACHE_FALLBACK`` turns it into a warning;
* chunk keys that differ between processes (hash seed) -> error where atom-tier cannot fix it;
* disk tier without ``aiofile`` -> error;
* decode-KV saving (stalled decoding 100-250 s) -> error unless
  ``ATOM_TIER_ALLOW_LMCACHE_SAVE_DECODE``;
* prefix caching off (LMCache hashes chunks with vLLM's prefix-cache hash) -> error;
* the resulting LMCache configuration, shown by ``doctor`` (or why there is none).

Probes (the extension's ELF header, installed distributions, the interpreter's hash flag) run
once per context and are kept in ``ctx.lmcache``; tests put their own there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from atom_tier.lmcache.config import LMCacheConfigError
from atom_tier.lmcache.kv_transfer import hash_algorithm, resolve_lmcache_config
from atom_tier.lmcache.native_ops import LMCacheFacts, NativeOps, OpsBuild, probe_lmcache_facts
from atom_tier.names import LMCACHE_CONNECTORS
from atom_tier.preflight.context import CheckContext
from atom_tier.preflight.findings import Finding, Level, check
from atom_tier.settings import ConnectorEngine

AREA = "lmcache"
BUILTIN_HASH = "builtin"  # LMCache's default chunk hash: Python's hash() on vLLM 0.32
HASH_KEY = "lmcache.pre_caching_hash_algorithm"
SAVE_DECODE_KEY = "lmcache.save_decode_cache"
CHUNK_KEY = "lmcache.chunk_size"  # always among the keys atom-tier sends
FALLBACK_HATCH = "ATOM_TIER_ALLOW_LMCACHE_FALLBACK=1"
SAVE_DECODE_HATCH = "ATOM_TIER_ALLOW_LMCACHE_SAVE_DECODE=1"


def lmcache_facts(ctx: CheckContext) -> LMCacheFacts:
    """The LMCache probes, run once per context (importing LMCache is slow) and kept there."""
    if ctx.lmcache is None:
        ctx.lmcache = probe_lmcache_facts()
    return ctx.lmcache


def _transfer(ctx: CheckContext) -> Any | None:
    return getattr(ctx.vllm_config, "kv_transfer_config", None)


def _extra(ctx: CheckContext) -> dict[str, Any]:
    transfer = _transfer(ctx)
    return dict(getattr(transfer, "kv_connector_extra_config", None) or {})


def lmcache_in_use(ctx: CheckContext) -> bool:
    """LMCache is (or will be) vLLM's KV connector."""
    transfer = _transfer(ctx)
    if transfer is not None and transfer.kv_connector:
        return transfer.kv_connector in LMCACHE_CONNECTORS
    return ctx.settings.connector is ConnectorEngine.LMCACHE


def source_build_fix(version: str | None) -> str:
    tag = f" && git checkout v{version}" if version else ""
    return (
        "build LMCache from source for HIP (`BUILD_WITH_HIP=1 pip install lmcache` still "
        "installs the CUDA wheel): pip uninstall -y lmcache && git clone "
        f"https://github.com/LMCache/LMCache && cd LMCache{tag} && pip install -r "
        "requirements/build.txt && CXX=hipcc BUILD_WITH_HIP=1 pip install "
        "--no-build-isolation -e ."
    )


def _ops_verdict(ops: NativeOps, torch_kind: str) -> tuple[bool, str, str]:
    """(usable, what is wrong, fix) for the installed native ops on this torch."""
    if torch_kind == "rocm":
        if ops.build is OpsBuild.HIP:
            return True, "", ""
        return False, "this torch is a ROCm build", source_build_fix(ops.version)
    if ops.build is OpsBuild.CUDA:
        return True, "", ""
    reinstall = "pip install --force-reinstall --no-deps lmcache" + (
        f"=={ops.version}" if ops.version else ""
    )
    return False, "this torch is a CUDA build", f"reinstall the PyPI wheel: {reinstall}"


@check("lmcache-native-ops", area=AREA)
def check_native_ops(ctx: CheckContext) -> Iterator[Finding]:
    if not lmcache_in_use(ctx):
        return
    ops = lmcache_facts(ctx).native_ops
    torch_kind = ctx.facts.torch.kind
    code = "lmcache-native-ops"
    if ops.build is OpsBuild.NOT_INSTALLED:
        fix = source_build_fix(None) if torch_kind == "rocm" else "pip install lmcache"
        yield Finding(Level.ERROR, code, "LMCache is the KV connector but is not installed", fix)
        return
    if torch_kind not in ("rocm", "cuda"):
        yield Finding(
            Level.WARNING,
            code,
            f"{ops.describe()}. This torch has no GPU build ({torch_kind}): LMCache's vLLM "
            "connector cannot serve here (no supported CPU connector)",
            "use ATOM_TIER_CONNECTOR=native on CPU; run the lmcache engine on a ROCm GPU",
        )
        return
    usable, why, fix = _ops_verdict(ops, torch_kind)
    if usable:
        yield Finding(Level.OK, code, f"{ops.describe()}, matching this {torch_kind} torch")
        return
    slower = "1.7x slower than no cache in published runs"
    if ops.build is OpsBuild.MISSING:
        message = f"{ops.describe()} ({slower})"
    else:
        message = (
            f"{ops.describe()}, but {why}: LMCache cannot load them and silently runs its "
            f"torch fallback ({slower})"
        )
    if ctx.settings.allow_lmcache_fallback:
        yield Finding(Level.WARNING, code, f"{message}; allowed by {FALLBACK_HATCH}", fix)
    else:
        yield Finding(Level.ERROR, code, message, f"{fix}; or set {FALLBACK_HATCH} to accept it")


def effective_hash_algorithm(ctx: CheckContext) -> str:
    """The chunk hash LMCache will use: the extra-config key (atom-tier's or the operator's);
    LMCache's default for an operator-written LMCache config without it; else atom-tier's."""
    extra = _extra(ctx)
    if HASH_KEY in extra:
        return str(extra[HASH_KEY])
    transfer = _transfer(ctx)
    if transfer is not None and transfer.kv_connector:
        return BUILTIN_HASH
    return hash_algorithm(ctx.vllm_config)


@check("lmcache-hash-seed", area=AREA)
def check_hash_seed(ctx: CheckContext) -> Iterator[Finding]:
    if not lmcache_in_use(ctx):
        return
    code, seed = "lmcache-hash-seed", ctx.env.pythonhashseed
    algorithm = effective_hash_algorithm(ctx)
    if algorithm != BUILTIN_HASH:
        shown = f"PYTHONHASHSEED={seed if seed is not None else '0 (atom-tier sets it in vLLM)'}"
        yield Finding(
            Level.OK,
            code,
            f"LMCache keys chunks with vLLM's {algorithm} hash seeded from {shown}: the same "
            "keys in every process and after restarts",
        )
        return
    fix = (
        "export PYTHONHASHSEED=0 in the environment vLLM starts in (the manifest), or remove "
        f"{HASH_KEY}=builtin from --kv-transfer-config so atom-tier's choice applies"
    )
    problem = None
    if seed is None or not seed.isdigit():
        problem = f"PYTHONHASHSEED={seed!r} is not a fixed integer"
    elif seed == "0" and lmcache_facts(ctx).hash_randomization:
        problem = "PYTHONHASHSEED=0 was set after this process started (too late for hash())"
    if problem is None:
        yield Finding(Level.OK, code, f"LMCache's builtin hash is fixed by PYTHONHASHSEED={seed}")
        return
    yield Finding(
        Level.ERROR,
        code,
        f"LMCache keys chunks with Python's hash() (its `builtin` hash on this vLLM) and "
        f"{problem}: each process keys chunks differently, so stored KV is never found. A seed "
        "set inside a running interpreter cannot change its hash()",
        fix,
    )


@check("lmcache-aiofile", area=AREA)
def check_aiofile(ctx: CheckContext) -> Iterator[Finding]:
    if not lmcache_in_use(ctx) or not ctx.settings.nvme_enabled:
        return
    if ctx.facts.aiofile_importable:
        yield Finding(Level.OK, "lmcache-aiofile", "aiofile is importable for LMCache's disk tier")
        return
    yield Finding(
        Level.ERROR,
        "lmcache-aiofile",
        f"LMCache's disk tier is set (ATOM_TIER_NVME_PATH={ctx.settings.nvme_path}) but "
        "`aiofile` cannot be imported (a --no-deps or source install of LMCache skips it)",
        "pip install aiofile",
    )


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1")  # LMCache's own bool parsing


@check("lmcache-save-decode", area=AREA)
def check_save_decode(ctx: CheckContext) -> Iterator[Finding]:
    if not lmcache_in_use(ctx):
        return
    code = "lmcache-save-decode"
    extra = _extra(ctx)
    if SAVE_DECODE_KEY in extra:
        on, source = _truthy(extra[SAVE_DECODE_KEY]), f"{SAVE_DECODE_KEY} in --kv-transfer-config"
    else:
        on, source = ctx.settings.save_decode, "ATOM_TIER_SAVE_DECODE"
    if not on:
        yield Finding(Level.OK, code, "LMCache saves prompt KV only (decode-cache saving off)")
        return
    message = (
        f"LMCache decode-cache saving is on ({source}): it stalled the decode pipeline for "
        "100-250 s in published runs"
    )
    fix = f"turn it off ({source}=false)"
    if ctx.settings.allow_lmcache_save_decode:
        yield Finding(Level.WARNING, code, f"{message}; allowed by {SAVE_DECODE_HATCH}", fix)
    else:
        yield Finding(Level.ERROR, code, message, f"{fix}, or set {SAVE_DECODE_HATCH}")


@check("lmcache-prefix-caching", area=AREA)
def check_prefix_caching(ctx: CheckContext) -> Iterator[Finding]:
    config = ctx.vllm_config
    if config is None or not lmcache_in_use(ctx):
        return
    code = "lmcache-prefix-caching"
    enabled = config.cache_config.enable_prefix_caching
    if enabled or enabled is None:
        yield Finding(Level.OK, code, "prefix caching is on, as LMCache needs")
        return
    model = config.model_config
    unsupported = model is not None and not getattr(model, "is_prefix_caching_supported", True)
    if unsupported:
        reason, fix = "this model does not support it", "set ATOM_TIER_CONNECTOR=off for this model"
    else:
        reason, fix = "--no-enable-prefix-caching was given", "remove --no-enable-prefix-caching"
    yield Finding(
        Level.ERROR,
        code,
        f"prefix caching is off ({reason}): LMCache hashes chunks with vLLM's prefix-cache "
        "hash and has nothing to reuse without it",
        fix,
    )


@check("lmcache-config", area=AREA)
def check_config(ctx: CheckContext) -> Iterator[Finding]:
    """Shows what LMCache runs with (doctor's view), where atom-tier configures it."""
    if ctx.settings.connector is not ConnectorEngine.LMCACHE or not lmcache_in_use(ctx):
        return
    if _transfer(ctx) is not None and CHUNK_KEY not in _extra(ctx):
        yield Finding(
            Level.INFO,
            "lmcache-config",
            "LMCache is configured by the operator's --kv-transfer-config (and any LMCACHE_* "
            "variables); atom-tier's tier settings are not applied to it",
            "drop --kv-transfer-config to let ATOM_TIER_CONNECTOR=lmcache configure LMCache",
        )
        return
    try:
        config = resolve_lmcache_config(ctx.settings, ctx.vllm_config)
    except LMCacheConfigError as exc:
        yield Finding(Level.ERROR, "lmcache-config", exc.problem, exc.fix)
        return
    yield Finding(Level.INFO, "lmcache-config", f"LMCache configuration: {config.describe()}")


@check("lmcache-cuda-packages", area=AREA)
def check_cuda_packages(ctx: CheckContext) -> Iterator[Finding]:
    """Runs whatever the connector: these packages are harmful on ROCm in any case."""
    if ctx.facts.torch.kind != "rocm":
        return
    found = lmcache_facts(ctx).cuda_only
    if not found:
        yield Finding(Level.OK, "lmcache-cuda-packages", "no CUDA-only packages installed")
        return
    yield Finding(
        Level.WARNING,
        "lmcache-cuda-packages",
        f"CUDA-only packages are installed on this ROCm machine ({', '.join(found)}), "
        "typically pulled in by the LMCache wheel; importing them fails or misleads "
        "GPU detection",
        "pip uninstall -y " + " ".join(found),
    )
