"""The paper's numbers as printed: one parser for every table spec.

A table's numbers are pasted as text, one line per row and one item per column (``-`` where
the paper leaves a cell blank); the parser checks that there is one line per row, so a row
added to a spec without its numbers cannot shift the numbers of the rows below it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperValue:
    value: float
    std: float | None = None


def pv(text: str) -> PaperValue:
    """Parse a paper figure such as ``"89.06±0.17"`` or ``"86.4"``."""
    value, _, std = text.replace(" ", "").partition("±")
    return PaperValue(float(value), float(std) if std else None)


def paper_table(rows: list[str], columns: list[str], text: str) -> dict[tuple[str, str], PaperValue]:
    """(row, column) -> the paper's number, from one line per row of items per column."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != len(rows):
        raise ValueError(f"{len(lines)} lines of paper numbers for {len(rows)} rows")
    values = {}
    for row, line in zip(rows, lines):
        items = line.split()
        if len(items) > len(columns):
            raise ValueError(f"row {row!r}: {len(items)} paper numbers for {len(columns)} columns")
        for column, item in zip(columns, items):
            if item != "-":
                values[(row, column)] = pv(item)
    return values
