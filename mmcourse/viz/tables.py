"""Tables in a notebook: rows of numbers and words as a Markdown table, the form every notebook uses
for its measurements."""
from __future__ import annotations

from typing import Any, Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """`rows` (lists of cells) under `header` as a Markdown table; floats get `digits` decimals."""
    width = len(header)
    for index, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"rows[{index}] has {len(row)} cells; expected {width}, one per header column")

    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def show_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> None:
    """Display `markdown_table(header, rows, digits)` in the notebook."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(header, rows, digits)))
