"""The layers of docs/architecture.md, enforced: each module imports only its own layer and the
layers above it. Every import counts, function-local ones too (they hide cycles otherwise).

Two exceptions, both by name rather than by import statement, and both documented:
``preflight.CHECK_MODULES`` names the check modules it loads, and vLLM's entry points and
factories name classes by module path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "atom_tier"

# Top to bottom, as docs/architecture.md draws them. A module's layer is its first path part
# below atom_tier (a package) or its file name (a top-level module).
LAYERS: list[tuple[str, set[str]]] = [
    ("settings", {"__init__", "settings", "choices", "names", "log", "versions"}),
    ("sizing", {"sizing"}),
    ("kernels", {"kernels"}),
    ("tiers", {"tiers"}),
    ("lmcache", {"lmcache"}),
    ("preflight", {"preflight"}),
    ("policy", {"policy"}),
    ("connector", {"connector"}),
    ("platform", {"platform"}),
    ("plugin", {"plugin"}),
    ("tools", {"cli", "replay", "plan", "devtools"}),
]
# Above it but still not allowed: policy is pure functions, so it reads no tier and does not
# probe LMCache (the platform passes in what needs a probe).
FORBIDDEN = {"policy": {"tiers", "lmcache"}}
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}
NAME = {part: name for name, parts in LAYERS for part in parts}


def part_of(module: str) -> str | None:
    """The layer key of ``atom_tier.x.y`` (``x``); None for modules outside atom_tier."""
    pieces = module.split(".")
    if pieces[0] != "atom_tier":
        return None
    return pieces[1] if len(pieces) > 1 else "__init__"


def sources() -> list[tuple[str, Path]]:
    found = [
        (".".join(p.relative_to(ROOT).with_suffix("").parts), p) for p in PACKAGE.rglob("*.py")
    ]
    found += [(f"atom_tier.kernels.{p.stem}", p) for p in (ROOT / "kernels").rglob("*.py")]
    return sorted(found)


def imports_of(module: str, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the tree, relative ones resolved."""
    package = module.rsplit(".", 1)[0] if not module.endswith("__init__") else module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from atom_tier import policy` imports the submodule `atom_tier.policy`.
            if target == "atom_tier":
                found += [
                    (node.lineno, f"atom_tier.{a.name}")
                    for a in node.names
                    if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()
                ]
    return found


def violations(module: str, tree: ast.AST) -> list[str]:
    own = part_of(module)
    assert own in RANK, f"{module} is in no layer: add its package to LAYERS and the docs"
    bad = []
    for line, target in imports_of(module, tree):
        other = part_of(target)
        if other is None or other == own:
            continue
        if other not in RANK:
            bad.append(f"{module}:{line} imports {target}, which is in no layer")
        elif other in FORBIDDEN.get(own, ()):
            bad.append(f"{module}:{line} ({NAME[own]}) imports {target}: {NAME[own]} is pure")
        elif RANK[other] > RANK[own]:
            bad.append(
                f"{module}:{line} ({NAME[own]}) imports {target} ({NAME[other]}, a lower layer)"
            )
    return bad


def test_every_import_goes_up_the_layers() -> None:
    found = []
    for module, path in sources():
        found += violations(module, ast.parse(path.read_text(), str(path)))
    assert found == [], "imports against the layers:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("atom_tier.tiers.x", "from atom_tier.connector import spec", True),
        ("atom_tier.tiers.x", "def f():\n    import atom_tier.policy.plan", True),
        ("atom_tier.policy.cache", "from atom_tier.lmcache.kv_transfer import f", True),
        ("atom_tier.connector.x", "from atom_tier.preflight import probes", False),
        ("atom_tier.connector.x", "from . import metrics", False),
        ("atom_tier.sizing", "from atom_tier import policy", True),
    ],
)
def test_the_rule_sees_an_import_down_the_layers(module: str, source: str, caught: bool) -> None:
    assert bool(violations(module, ast.parse(source))) is caught


def test_the_architecture_page_lists_the_same_layers() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| Layer | Modules | Role |") :].split("\n\n", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == [name for name, _ in LAYERS]
