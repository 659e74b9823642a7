"""Project rules that keep the code honest: one reader of the environment."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "atom_tier").rglob("*.py")), *sorted((ROOT / "kernels").rglob("*.py"))]
ENV_READER = ROOT / "atom_tier" / "settings.py"


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read one variable: os.getenv, os.environ.get/[...]/`in`. Setting is allowed,
    and so is copying the whole environment for a child process."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func
            if (
                target.attr == "getenv"
                and isinstance(target.value, ast.Name)
                and target.value.id == "os"
            ):
                lines.append(node.lineno)
            if target.attr in ("get", "pop") and _is_os_environ(target.value):
                lines.append(node.lineno)
        if isinstance(node, ast.Subscript) and _is_os_environ(node.value):
            if isinstance(node.ctx, ast.Load):
                lines.append(node.lineno)
        if isinstance(node, ast.Compare) and any(_is_os_environ(c) for c in node.comparators):
            lines.append(node.lineno)
    return lines


def test_only_settings_reads_the_environment() -> None:
    offenders = []
    for path in SOURCES:
        if path == ENV_READER:
            continue
        for line in environment_reads(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, "read variables through atom_tier.settings instead: " + ", ".join(
        offenders
    )


def test_rule_catches_a_read() -> None:
    sample = (
        "import os\nx = os.environ['A']\ny = os.getenv('B')\n"
        "os.environ['C'] = '1'\nz = 'D' in os.environ\n"
    )
    assert environment_reads(ast.parse(sample)) == [2, 3, 5]
