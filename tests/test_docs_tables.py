"""Each measured table has one home: docs/results.rst includes the tables benchmarks/tables.py writes
from the result files, and a table copied into README.md's *Measured* section equals its source."""

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# the generated markdown a table in README's *Measured* section may be a copy of
README_SOURCES = [RESULTS / "calibration_baselines" / "calibration_baselines.md"]
HISTORY = ("copied from", "measured earlier", "predates", "earlier run")


def load_tables():
    spec = importlib.util.spec_from_file_location("tables", REPO / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pipe_tables(markdown: str) -> list[list[list[str]]]:
    """Every pipe table of ``markdown`` as its rows of stripped cells, separator lines left out."""
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.strip().startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def measured_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Measured\n")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def test_every_table_in_the_readme_measured_section_is_a_generated_table_unchanged():
    sources = [table for path in README_SOURCES for table in pipe_tables(path.read_text(encoding="utf-8"))]
    copies = pipe_tables(measured_section())
    assert copies, "README's Measured section lost its baselines table"
    for copy in copies:
        assert copy in sources, f"README table starting {copy[:2]} differs from {[p.name for p in README_SOURCES]}"
    assert all(source in copies for source in sources), "README lacks a table of calibration_baselines.md"


def test_the_included_tables_are_current_with_the_result_files():
    stale = [
        str(path.relative_to(REPO))
        for path, text in load_tables().docs_tables().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"run `python benchmarks/tables.py`: out of date {stale}"


def test_each_generated_table_is_included_by_exactly_one_docs_page():
    pages = {
        page: page.read_text(encoding="utf-8") for page in (REPO / "docs").rglob("*.rst") if "_build" not in page.parts
    }
    included = [
        (page.parent / target).resolve()
        for page, text in pages.items()
        for target in re.findall(r"^\.\. include:: (\S+)$", text, flags=re.MULTILINE)
    ]
    for path in load_tables().docs_tables():
        count = included.count(path.resolve())
        assert count == 1, f"{path.relative_to(REPO)} is included {count} times"


def test_the_results_page_states_figures_without_narrating_history():
    text = (REPO / "docs" / "results.rst").read_text(encoding="utf-8").lower()
    assert [phrase for phrase in HISTORY if phrase in text] == []
