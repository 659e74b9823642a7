"""`atom-tier doctor`: preflight report for an operator, or JSON for CI.

Works without a GPU and without vLLM installed (it says so): it never imports vLLM or AITER.
Exit status 1 when any finding is an error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from typing import Any

from atom_tier import __version__
from atom_tier.preflight import Finding, Level, build_context, run_preflight, worst_level
from atom_tier.preflight.context import CheckContext
from atom_tier.settings import AtomTierSettings
from atom_tier.tiers.shared_url import redact

MARKS = {Level.OK: "ok", Level.INFO: "info", Level.WARNING: "WARN", Level.ERROR: "ERROR"}


def environment_summary(ctx: CheckContext) -> dict[str, Any]:
    facts = ctx.facts
    return {
        "atom_tier": __version__,
        "torch": facts.torch.version,
        "torch_build": facts.torch.kind,
        "vllm": facts.vllm_version,
        "vllm_distribution": facts.vllm_distribution,
        "aiter": list(facts.aiter_distributions),
        "host_memory_available_gb": (
            round(facts.host_memory_available / 1e9, 1) if facts.host_memory_available else None
        ),
    }


def changed_settings(settings: AtomTierSettings) -> dict[str, Any]:
    """Settings that differ from their defaults, as JSON-friendly values."""
    defaults = AtomTierSettings.model_construct()
    changed = {}
    for name in AtomTierSettings.model_fields:
        value = getattr(settings, name)
        if value != getattr(defaults, name):
            changed[name] = getattr(value, "value", value if value is None else str(value))
            if isinstance(value, bool | int | float):
                changed[name] = value
    if "shared_url" in changed:  # its password must not reach a terminal or a CI log
        changed["shared_url"] = redact(str(changed["shared_url"]))
    return changed


def report(ctx: CheckContext, findings: list[Finding]) -> dict[str, Any]:
    return {
        "status": worst_level(findings).value,
        "environment": environment_summary(ctx),
        "settings_changed": changed_settings(ctx.settings),
        "findings": [f.as_dict() for f in findings],
    }


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` where words allow: paths and commands (``/tmp/pytest-of-root``,
    ``--shm-size=2g``) are never split, at a hyphen or anywhere, so they copy and paste whole."""
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def render_text(data: dict[str, Any]) -> str:
    width = min(shutil.get_terminal_size((100, 20)).columns, 120)
    env = data["environment"]
    lines = [
        f"atom-tier {env['atom_tier']} doctor",
        "",
        "Environment",
        f"  torch   {env['torch'] or 'not installed'} ({env['torch_build']})",
        f"  vLLM    {env['vllm'] or 'not installed'}"
        + (f" ({env['vllm_distribution']})" if env["vllm_distribution"] else ""),
        f"  AITER   {', '.join(env['aiter']) or 'not installed'}",
        f"  memory  {env['host_memory_available_gb']} GB available",
        "",
        "Settings (changed from defaults)",
    ]
    changed = data["settings_changed"]
    lines += [f"  {k} = {v}" for k, v in changed.items()] or ["  none: all defaults"]
    lines += ["", "Checks"]
    code_width = max((len(f["code"]) for f in data["findings"]), default=4)
    indent = " " * (2 + 6 + code_width + 2)
    for finding in data["findings"]:
        mark = MARKS[Level(finding["level"])]
        head = f"  {mark:<5} {finding['code']:<{code_width}}  "
        body = _wrap(finding["message"], width - len(head)) or [""]
        lines.append(head + body[0])
        lines += [indent + rest for rest in body[1:]]
        if finding["fix"] and finding["level"] != Level.OK.value:
            fix = _wrap("fix: " + finding["fix"], width - len(indent))
            lines += [indent + part for part in fix]
    counts = {lv: sum(1 for f in data["findings"] if f["level"] == lv.value) for lv in Level}
    lines += [
        "",
        f"Result: {data['status'].upper()} — "
        + ", ".join(f"{n} {lv.value}" for lv, n in counts.items() if n),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    ctx = build_context()
    findings = run_preflight(ctx)
    data = report(ctx, findings)
    print(json.dumps(data, indent=2) if args.json else render_text(data))
    return 1 if data["status"] == Level.ERROR.value else 0
