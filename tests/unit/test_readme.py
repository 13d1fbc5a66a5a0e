"""The README stands on its own and tells a newcomer what they need in the first hour (issue 11, item 11)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _links(text: str) -> list[str]:
    return [m.group(1).split("#")[0] for m in re.finditer(r"\]\(([^)\s]+)\)", text)
            if not m.group(1).startswith(("http://", "https://", "#", "mailto:"))]


def test_every_relative_link_points_inside_the_repository_at_a_file_that_exists():
    for doc in DOCS:
        for link in _links(doc.read_text()):
            target = (doc.parent / link).resolve()
            assert target.is_relative_to(ROOT), f"{doc.name} links outside the repository: {link}"
            assert target.exists(), f"{doc.name} links a missing file: {link}"


def test_no_path_outside_the_repository_is_named():
    for doc in DOCS:
        assert not re.search(r"`\.\./|\]\(\.\./\.\./|\.\./shared", doc.read_text()), doc.name


def test_the_design_document_is_in_the_repository_and_linked():
    assert (ROOT / "docs" / "DESIGN.md").exists()
    assert "](docs/DESIGN.md)" in README.split("## Architecture")[0]


def test_the_commands_table_starts_with_how_to_get_the_commands_on_path():
    before_table = README.split("## Commands", 1)[1].split("| command |", 1)[0]
    assert "source .venv/bin/activate" in before_table and "./dev shell" in before_table
    assert re.search(r"^  shell\)", (ROOT / "dev").read_text(), re.M), "./dev shell is documented but missing"


def test_the_demo_and_test_commands_say_what_to_expect():
    assert re.search(r"not a terminal.*\n?.*headless", README)
    assert re.search(r"\./dev test .*about \d+ minutes", README)
