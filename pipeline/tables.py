"""Rows of results as CSV and Markdown: the one implementation every report, evaluation and benchmark uses."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``rows`` in first-seen order, leaving out keys whose values are lists or dicts."""
    return list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                float_format: str | None = None) -> str:
    """CSV text with a header; missing values and NaN are empty cells, keys outside ``columns`` are ignored.

    :param columns: the columns in order (default :func:`table_columns`).
    :param float_format: a format spec for floats (e.g. ``".6g"``; default ``str``).
    """
    columns = table_columns(rows) if columns is None else list(columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k, ""), float_format) for k in columns})
    return out.getvalue()


def _csv_cell(value: Any, float_format: str | None) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return format(value, float_format) if float_format else value
    return value


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` holds one character per column, ``l`` (default) or ``r``."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align has {len(align)} characters for {len(header)} columns")
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
