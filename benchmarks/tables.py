"""A markdown pipe table as a reStructuredText ``list-table``: the result files the docs include.

>>> print(list_table("two rows", "| a | b |\\n|---|---:|\\n| 1 | 2 |\\n| 3 | 4 |\\n"))
.. list-table:: two rows
   :header-rows: 1
<BLANKLINE>
   * - a
     - b
   * - 1
     - 2
   * - 3
     - 4
<BLANKLINE>
"""

from __future__ import annotations

__all__ = ["list_table"]


def list_table(caption: str, markdown: str) -> str:
    """The first pipe table of ``markdown`` (its header row, then every row after the ``---`` line)."""
    rows = [line.strip() for line in markdown.splitlines() if line.strip().startswith("|")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    cells = [row for row in cells if not all(set(cell) <= set("-: ") for cell in row)]
    lines = [f".. list-table:: {caption}", "   :header-rows: 1", ""]
    lines += ["   * - " + "\n     - ".join(row) for row in cells]
    return "\n".join(lines) + "\n"
