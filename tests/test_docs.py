"""The design lives in the repository: docs/CLI.md is what the CLI says, and every pointer
from the code into docs/DESIGN.md names a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for pattern in ("specdec_cli/**/*.py", "native/*.[ch]pp", "bench/*.py", "bench/*.md", "README.md")
           for p in ROOT.glob(pattern)]


def test_cli_reference_is_generated_from_the_cli() -> None:
    module = load_script("docs/make_cli_md.py")
    assert (ROOT / "docs" / "CLI.md").read_text() == module.cli_reference(), \
        "docs/CLI.md is stale: run `python docs/make_cli_md.py`"


def test_design_pointers_name_existing_sections() -> None:
    sections = {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", (ROOT / "docs" / "DESIGN.md").read_text(), re.M)}
    pointers = [(p.name, m.group(1)) for p in SOURCES
                for m in re.finditer(r"docs/DESIGN\.md, ([A-Z][^);:\"\n]*)", p.read_text())]
    assert pointers, "the code points into docs/DESIGN.md somewhere"
    assert [(f, s) for f, s in pointers if s.strip(' ."') not in sections] == []


def test_nothing_points_outside_the_repository() -> None:
    outside = [p.name for p in SOURCES if re.search(r"\.\./shared|DESIGN\.md section|(?<!docs/)CLI\.md",
                                                     p.read_text())]
    assert outside == []
