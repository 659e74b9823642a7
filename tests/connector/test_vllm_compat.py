"""Every private vLLM (and torch) name atom-tier uses still exists in the installed packages.

Read from the packages' sources (``ast``), not imported: some live in modules that cannot be
imported without a ROCm GPU (``vllm.platforms.rocm`` queries the GPU at import). A vLLM upgrade
that moves one fails here, naming the symbol and what atom-tier uses it for.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from atom_tier.connector.vllm_compat import PRIVATE_SYMBOLS, PrivateSymbol


def _defined_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _self_attributes(cls: ast.ClassDef) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                found.add(target.attr)
    return found


def _where(symbol: PrivateSymbol) -> str:
    module, _, cls = symbol.owner.partition(":")
    return f"{module}.{cls}.{symbol.name}" if cls else f"{module}.{symbol.name}"


def is_defined(symbol: PrivateSymbol) -> bool:
    module_name, _, class_name = symbol.owner.partition(":")
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return False
    tree = ast.parse(Path(spec.origin).read_text())
    if not class_name:
        return symbol.name in _defined_names(tree.body)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    if not classes:
        return False
    if symbol.on_instance:
        return symbol.name in _self_attributes(classes[0])
    return symbol.name in _defined_names(classes[0].body)


@pytest.mark.parametrize("symbol", PRIVATE_SYMBOLS, ids=_where)
def test_private_symbol_still_exists(symbol: PrivateSymbol) -> None:
    assert is_defined(symbol), (
        f"the installed vLLM/torch no longer defines {_where(symbol)}, which atom-tier uses "
        f"for {symbol.used_for}: update atom_tier/connector/vllm_compat.py"
    )


def test_the_check_finds_a_missing_symbol() -> None:
    moved = PrivateSymbol("vllm.v1.kv_offload.cpu.manager:CPUOffloadingManager", "_gone", "x")
    assert not is_defined(moved)
    assert not is_defined(PrivateSymbol("vllm.no_such_module", "x", "x"))


def test_no_other_module_touches_vllm_private_names() -> None:
    """The seam is the only place: no `vllm._x` import and no `._x` read of a vLLM object
    elsewhere in the package (checked by name: the names in PRIVATE_SYMBOLS)."""
    package = Path(__file__).resolve().parents[2] / "atom_tier"
    seam = package / "connector" / "vllm_compat.py"
    private = {s.name for s in PRIVATE_SYMBOLS if s.name.startswith("_")} | {"_aiter_ops"}
    # `self._x` is a class's own attribute (atom-tier's host worker has a `_num_chunks` too).
    reads = re.compile(r"(?<!self)\.(" + "|".join(sorted(private)) + r")\b")
    offenders = []
    for path in package.rglob("*.py"):
        if path != seam:
            offenders += [
                f"{path.relative_to(package)}: {m}" for m in reads.findall(path.read_text())
            ]
    assert offenders == [], f"vLLM private names outside vllm_compat.py: {offenders}"
