"""How commands print: times and tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import click


def format_time(ms: float | None) -> str:
    """A time in milliseconds, in UTC, for tables; "-" for none."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the first one the header) as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
