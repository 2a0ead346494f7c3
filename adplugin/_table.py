"""Rows of cells printed as aligned columns (the tables of placements, collectives, plans)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def columns(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """One line per row: each column as wide as its widest cell, two spaces apart, the
    columns in `right` right-aligned (numbers), trailing spaces dropped."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                      for c, (cell, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
