"""benchmarks/tables.py: the markdown tables of the result files become the list-tables the docs include."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load():
    spec = importlib.util.spec_from_file_location("tables", BENCHMARKS / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pipe_table_becomes_a_list_table_row_for_row():
    markdown = "intro\n\n| method | NLL |\n|---|---:|\n| LoRA | 0.5 ± 0.1 |\n| MonteCLoRA | 0.4 |\n\nruns at abc\n"
    text = load().list_table("caption", markdown)
    assert text.splitlines()[:3] == [".. list-table:: caption", "   :header-rows: 1", ""]
    assert text.count("   * - ") == 3 and "     - 0.5 ± 0.1" in text and "runs at" not in text
