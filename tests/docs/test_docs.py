"""docs/: the parts generated from, or describing, the code fail here when they go stale.

- tuning.md's settings table is ``atom-tier settings --markdown`` (the README's is too);
- troubleshooting.md's finding index is every code the preflight checks can report, with the
  levels and module read from their source (tests/docs/finding_codes.py), and every code the
  page cites exists;
- architecture.md names every check module and every variable the ROCm platform sets;
- repository paths and relative links in the docs exist; the MiniMax-M2.5 arithmetic matches
  the recipe in configs/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from finding_codes import finding_codes

from atom_tier.cli.settings_table import README_BEGIN, README_END, markdown_table
from atom_tier.policy.env import import_time_env
from atom_tier.preflight import CHECK_MODULES
from atom_tier.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
OWN_DOCS = ("architecture.md", "tuning.md", "troubleshooting.md")
CODE_SHAPE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
REPO_PATH = re.compile(r"`((?:atom_tier|kernels|docker|configs|bench|tests|docs)/[^`\s]*)`")


def _text(name: str) -> str:
    return (DOCS / name).read_text()


def test_tuning_settings_table_is_current() -> None:
    text = _text("tuning.md")
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    table = text[text.index(README_BEGIN) + len(README_BEGIN) : text.index(README_END)].strip()
    assert table == markdown_table(), (
        "docs/tuning.md settings table is stale: replace the lines between its markers with "
        "the output of `atom-tier settings --markdown`"
    )


def _index_rows(text: str) -> dict[str, tuple[set[str], str]]:
    section = text[text.index("## Every finding code") :]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([^`]+)` \| ([a-z, ]+) \| `atom_tier/preflight/(\w+\.py)` \|", line)
        if match:
            levels = {level.strip() for level in match.group(2).split(",")}
            rows[match.group(1)] = (levels, match.group(3))
    return rows


def test_troubleshooting_lists_every_finding_code_with_its_levels() -> None:
    documented = _index_rows(_text("troubleshooting.md"))
    actual = {code: (levels, module) for code, (module, levels) in finding_codes().items()}
    assert set(documented) == set(actual), (
        f"missing from docs/troubleshooting.md: {sorted(set(actual) - set(documented))}; "
        f"no longer in the code: {sorted(set(documented) - set(actual))}"
    )
    for code, expected in actual.items():
        assert documented[code] == expected, (code, documented[code], expected)


def test_troubleshooting_cites_only_real_codes_and_every_section_has_all_three_parts() -> None:
    text = _text("troubleshooting.md")
    codes = set(finding_codes())
    cited: set[str] = set()
    # "Caught by" bullets (with their continuation lines) and the table's "Caught by" column.
    for bullet in re.findall(r"^- \*\*Caught by\*\*(.*?)(?=^- \*\*|^$)", text, re.M | re.S):
        cited |= set(re.findall(r"`([^`]+)`", bullet))
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith(("| Symptom", "| Code", "| `")):
            cited |= set(re.findall(r"`([^`]+)`", line.split(" | ")[1]))
    cited = {c for c in cited if CODE_SHAPE.match(c)}
    assert cited and cited <= codes, sorted(cited - codes)
    published = text[text.index("## Failures seen") : text.index("## Other problems")]
    sections = published.split("\n### ")[1:]
    assert len(sections) >= 8
    for section in sections:
        for part in ("- **Symptom**", "- **Caught by**", "- **Fix**"):
            assert part in section, (section.splitlines()[0], part)


def test_architecture_names_every_check_module_and_the_rocm_import_time_variables() -> None:
    text = _text("architecture.md")
    for module in CHECK_MODULES:
        assert f"`{module.rsplit('.', 1)[1]}`" in text, module
    for variable in import_time_env(load_settings({}), "rocm"):
        assert f"`{variable}" in text, variable


@pytest.mark.parametrize("name", OWN_DOCS)
def test_repository_paths_and_relative_links_exist(name: str) -> None:
    text = _text(name)
    for path in REPO_PATH.findall(text):
        if "…" in path or "<" in path:
            continue
        assert (REPO / path.rstrip("/")).exists(), f"{name} names a missing path: {path}"
    for target in re.findall(r"\]\(([^)#:]+\.md)(?:#([^)]+))?\)", text):
        document, anchor = (DOCS / target[0]).resolve(), target[1]
        assert document.exists(), f"{name} links to a missing file: {target[0]}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", document.read_text(), flags=re.MULTILINE)
            slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{name} links to a missing anchor: {target[0]}#{anchor}"


def test_minimax_arithmetic_matches_the_recipe() -> None:
    text = _text("tuning.md")
    per_token = 2 * 62 * 8 * 128  # FP8: one byte per value
    assert f"**{per_token:,} B**" in text
    full_context = 196_608 * per_token / 2**30
    assert f"{full_context:g} GiB" in text
    recipe = (REPO / "configs" / "minimax-m2.5-fp8-tp2-mi300x" / "dram-64gb-nvme.env").read_text()
    assert "ATOM_TIER_DRAM_GB=64\n" in recipe and "ATOM_TIER_RELOAD_CONCURRENCY=2\n" in recipe
    assert "`ATOM_TIER_RELOAD_CONCURRENCY=2`" in text
    assert f"{int(64 * 2**30 / per_token):,} tokens" in text
