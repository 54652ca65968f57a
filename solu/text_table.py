"""Plain-text tables for terminal output, shared by every package's commands."""
from __future__ import annotations


def format_table(rows: list[dict]) -> str:
    """Rows of equal keys as left-aligned columns under a header and a rule."""
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)
