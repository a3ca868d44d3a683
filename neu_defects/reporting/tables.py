"""The table helpers the sweep summary, the studies and the CAM study share, on top of pandas.

Owns how a number reads in a table (4 decimals for a metric, 1 for ``fit/*`` seconds, long
Optuna floats cut to 4 significant digits), ``mean ± std`` with the sample std, the markdown
layout of every ``*.md`` table, and how a table is written as CSV (atomically, like every output).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from neu_defects.core.io import atomic_write

DECIMAL = re.compile(r"-?\d*\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")
STATS = ["mean", "std", "count"]


def fmt_param(value: Any) -> str:
    """Optuna writes floats in full (lr=0.0012345678): four significant digits are enough to read.

    Only plain decimals are shortened: ``float("70_20")`` parses too, but that is a split name.
    A missing value (NaN: a job without that override or metric) is an empty cell.
    """
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    text = str(value)
    if len(text) <= 8 or not DECIMAL.fullmatch(text):
        return text
    return f"{float(text):.4g}"


def fmt(value: Any, key: str = "") -> str:
    """A cell of column ``key``: a float with 1 decimal for ``fit/*`` seconds, else 4; else a parameter."""
    if isinstance(value, float) and not pd.isna(value):
        return f"{value:.1f}" if key.startswith("fit/") else f"{value:.4f}"
    return fmt_param(value)


def fmt_column(column: pd.Series) -> pd.Series:
    return column.map(lambda v: fmt(v, str(column.name)))


def fmt_mean_std(mean: float, std: float, count: int, key: str) -> str:
    """``mean ± std``, the mean alone for a single value (its std is undefined), nothing for none."""
    if not count:
        return ""
    return f"{fmt(mean, key)} ± {fmt(std, key)}" if count > 1 else fmt(mean, key)


def mean_std_cells(stats: pd.DataFrame, key: str) -> pd.Series:
    """The ``mean ± std`` cell of every row of ``groupby(...)[keys].agg(STATS)``, for column ``key``."""
    s = stats[key]
    # One format per row: the cell's shape (nothing, mean, mean ± std) depends on the row's count.
    return pd.Series([fmt_mean_std(*row, key) for row in zip(s["mean"], s["std"], s["count"], strict=True)],
                     index=stats.index, dtype=object)


def markdown_table(table: pd.DataFrame) -> str:
    """The frame (no index) as a GitHub markdown table: header, ``|---|`` rule, a line per row.

    Hand-written: ``DataFrame.to_markdown`` needs ``tabulate`` (not a dependency) and pads every
    cell to its column's width, which makes a one-number change rewrite the whole table in a diff.
    """
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, cells)) + " |" for cells in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, table: pd.DataFrame) -> Path:
    """The frame as CSV, no index, missing values empty, floats in full (repr)."""
    # CRLF rows, as the csv module (RFC 4180) writes them and as the committed study records are.
    return atomic_write(path, lambda h: table.to_csv(h, index=False, lineterminator="\r\n"))


def column(frame: pd.DataFrame, key: str, default: str) -> pd.Series:
    """The column as text, ``default`` where a job lacks it (or where no job has it)."""
    if key not in frame:
        return pd.Series(default, index=frame.index, dtype=object)
    return frame[key].astype(object).where(frame[key].notna(), default).map(str)
