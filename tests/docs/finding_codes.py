"""The finding codes (and the levels each can have) of atom-tier's preflight checks, read from
the check modules' source with ``ast``: every ``Finding(level, code, ...)`` call, with ``code``
and ``level`` resolved through the plain assignments of the enclosing function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

CHECKS = Path(__file__).resolve().parents[2] / "atom_tier" / "preflight"


def _levels(node: ast.expr | None, names: dict[str, ast.expr]) -> set[str]:
    if isinstance(node, ast.Name) and node.id in names:
        return _levels(names[node.id], names)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return {node.attr.lower()} if node.value.id == "Level" else set()
    if isinstance(node, ast.IfExp):
        return _levels(node.body, names) | _levels(node.orelse, names)
    return set()


def _assignments(function: ast.AST) -> dict[str, ast.expr]:
    names: dict[str, ast.expr] = {}
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                names[target.id] = node.value
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for name, value in zip(target.elts, node.value.elts, strict=False):
                    if isinstance(name, ast.Name):
                        names[name.id] = value
    return names


def finding_codes() -> dict[str, tuple[str, set[str]]]:
    """code -> (defining module file name, levels it can be reported at)."""
    found: dict[str, tuple[str, set[str]]] = {}
    levels: dict[str, set[str]] = defaultdict(set)
    for path in sorted(CHECKS.glob("checks_*.py")):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            names = _assignments(function)
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Finding"):
                    continue
                code = call.args[1] if len(call.args) > 1 else None
                if isinstance(code, ast.Name):
                    code = names.get(code.id)
                if not (isinstance(code, ast.Constant) and isinstance(code.value, str)):
                    raise AssertionError(f"{path.name}:{call.lineno}: cannot resolve the code")
                found.setdefault(code.value, (path.name, set()))
                levels[code.value] |= _levels(call.args[0], names)
    return {code: (module, levels[code]) for code, (module, _) in found.items()}
