"""How the book's tables look (presentation only): fractions as percentages, seconds with a unit, counts with
thousands separators, no index column, and an explicit "—" instead of NaN."""

from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

__all__ = ["NA", "percent", "seconds", "show", "rerun"]

#: What an empty cell shows; the table's caption or the text beside it says why a cell is empty.
NA = "—"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def percent(value, digits: int = 1) -> str:
    """A fraction as a percentage (``0.05501`` -> ``"5.5%"``); text passes through; missing -> :data:`NA`."""
    if _missing(value):
        return NA
    if isinstance(value, str):
        return value
    return f"{float(value):.{digits}%}"


def seconds(value, digits: int = 1) -> str:
    """Seconds with a unit (``5.501181`` -> ``"5.5 s"``); missing -> :data:`NA`."""
    if _missing(value):
        return NA
    if isinstance(value, str):
        return value
    return f"{float(value):,.{digits}f} s"


def _count(value) -> str:
    if _missing(value):
        return NA
    if isinstance(value, str):
        return value
    return f"{int(round(float(value))):,}"


def _decimal(digits: int):
    def fmt(value) -> str:
        if _missing(value):
            return NA
        if isinstance(value, str):
            return value
        return f"{float(value):,.{digits}f}"
    return fmt


def show(frame: pd.DataFrame, percent_columns: Iterable[str] = (), seconds_columns: Iterable[str] = (),
         count_columns: Iterable[str] = (), rate_columns: Iterable[str] = (), decimals: dict[str, int] | None = None,
         digits: int = 1, index: bool = False, caption: str | None = None):
    """A styled table: ``percent_columns`` (fractions) as percentages with ``digits`` decimals, ``rate_columns``
    (poison rates) as :func:`clipguard.book.checks.format_rate` prints them, ``seconds_columns`` with a unit,
    ``count_columns`` as integers with separators, ``decimals`` = {column: digits} for other numbers; missing cells
    as :data:`NA` everywhere; the index hidden unless ``index``. Unknown column names fail (a renamed column must
    not silently lose its format). Style the result further with ``.set_caption`` etc., not ``.format`` (a second
    ``.format`` resets the other columns)."""
    from .checks import format_rate

    named = {"percent": list(percent_columns), "seconds": list(seconds_columns), "count": list(count_columns),
             "rate": list(rate_columns), "decimals": list(decimals or {})}
    unknown = sorted({c for cols in named.values() for c in cols} - set(frame.columns))
    if unknown:
        raise KeyError(f"show: no column(s) {unknown}; columns are {list(frame.columns)}")
    formats = {}
    for column in named["percent"]:
        formats[column] = lambda v, d=digits: percent(v, d)
    for column in named["seconds"]:
        formats[column] = seconds
    for column in named["count"]:
        formats[column] = _count
    for column in named["rate"]:
        formats[column] = lambda v: NA if _missing(v) else format_rate(v)
    for column, d in (decimals or {}).items():
        formats[column] = _decimal(d)
    styler = frame.style.format(formats, na_rep=NA)
    if not index:
        styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    return styler


def rerun(profile: str, only: str):
    """The closing cell of a chapter: the commands that rerun it (and rebuild the book) at ``profile``."""
    from IPython.display import Markdown

    return Markdown(f"**Rerun this page:** `python -m clipguard.notebooks run --profile {profile} --only "
                    f"{only}`, then `python -m clipguard.notebooks build` to rebuild the book. Other parameters: add "
                    "`-p NAME VALUE` (the page's first code cell lists them).")
