"""The README's settings table is generated from the settings model; this fails when stale."""

from __future__ import annotations

from pathlib import Path

from atom_tier.cli.settings_table import README_BEGIN, README_END, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    table = text[text.index(README_BEGIN) + len(README_BEGIN) : text.index(README_END)].strip()
    assert table == markdown_table(), (
        "README settings table is stale: regenerate with `atom-tier settings --markdown`"
    )


def test_readme_gives_the_two_commands_ci_runs() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in text and "make demo" in text
    assert "\nmake test\n" in ci
