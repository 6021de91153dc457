"""Readers of the interaction file (``--reviews``): format detection from the content, and parsing.

Interaction formats
    ``amazon-ratings``  headerless ``user,item,rating,timestamp`` (Amazon 2014 ratings CSV;
                        tab-separated works too)
    ``amazon-reviews``  JSON lines with ``reviewerID``, ``asin``, ``overall``,
                        ``unixReviewTime`` (Amazon 2014 5-core and 2018 reviews)
    ``table``           CSV/TSV with a header naming the columns (generic)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from modalrec.data.prepare.sources import (
    ITEM_COLUMNS,
    delimiter,
    first_line,
    iter_lines,
    parse_record,
    pick_column,
    table_header,
    table_with_header,
)
from modalrec.errors import DataError

REVIEW_FORMATS = ("amazon-ratings", "amazon-reviews", "table")

# Column names tried, in order, when the user names none (generic tables).
USER_COLUMNS = ("user_id", "userID", "user", "reviewerID", "userId")
RATING_COLUMNS = ("rating", "overall", "score", "stars")
TIME_COLUMNS = ("timestamp", "time", "unixReviewTime", "date", "datetime")


@dataclass
class RawInteractions:
    """Interactions as integer codes into ``user_ids``/``item_ids`` (original ids, in first-seen order)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    user_ids: list[str]
    item_ids: list[str]
    format: str
    columns: dict[str, str | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class ColumnNames:
    """Columns of an interaction table named by the user (``--user-col`` …); None: try the usual names."""

    user: str | None = None
    item: str | None = None
    rating: str | None = None
    time: str | None = None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def detect_review_format(path: Path) -> str:
    """The interaction format of a file, from its first non-blank line."""
    line = first_line(path).strip()
    if line.startswith("{"):
        return "amazon-reviews"
    fields = next(csv.reader([line], delimiter=delimiter(line)))
    if len(fields) == 4 and _is_number(fields[2]) and _is_number(fields[3]):
        return "amazon-ratings"
    return "table"


def _review_format(path: Path, fmt: str) -> str:
    """``fmt``, detected from the content when ``auto``; an unknown name is an error."""
    if fmt == "auto":
        fmt = detect_review_format(path)
    if fmt not in REVIEW_FORMATS:
        raise DataError(path, f"unknown interaction format {fmt!r} (choose from auto, {', '.join(REVIEW_FORMATS)})")
    return fmt


def parse_time(path: Path, value: str, column: str, line: int) -> float:
    """A number (e.g. unix seconds) or an ISO-8601 date/time (naive ones are taken as UTC)."""
    v = value.strip()
    try:
        return float(v)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise DataError(path, f"{column} {value!r} is neither a number nor an ISO date", line=line) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _parse_float(path: Path, value: str, column: str, line: int) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"{column} {value!r} is not a number", line=line) from None
    if not np.isfinite(x):
        raise DataError(path, f"{column} {value!r} is not a finite number", line=line)
    return x


class _Interner:
    """Original id → integer code, in first-seen order."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        code = self.codes.get(key)
        if code is None:
            code = self.codes[key] = len(self.codes)
        return code

    def ids(self) -> list[str]:
        return list(self.codes)


def _finish(path, fmt, users, items, ratings, timestamps, uid, iid, columns) -> RawInteractions:
    if not users:
        raise DataError(path, "no interactions found")
    return RawInteractions(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        ratings=None if ratings is None else np.asarray(ratings, dtype=np.float64),
        timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.float64),
        user_ids=uid.ids(),
        item_ids=iid.ids(),
        format=fmt,
        columns=columns,
    )


def read_amazon_ratings(path: Path) -> RawInteractions:
    """Headerless ``user,item,rating,timestamp`` (Amazon 2014 ``ratings_*.csv``)."""
    uid, iid = _Interner(), _Interner()
    users, items, ratings, times = [], [], [], []
    delim = None
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        if delim is None:
            delim = delimiter(line)
        f = line.split(delim)
        if len(f) != 4:
            raise DataError(
                path, f"expected 4 fields user{delim}item{delim}rating{delim}timestamp, found {len(f)}", line=n
            )
        u, i = f[0].strip(), f[1].strip()
        if not u or not i:
            raise DataError(path, f"empty {'user' if not u else 'item'} id", line=n)
        users.append(uid(u))
        items.append(iid(i))
        ratings.append(_parse_float(path, f[2], "rating", n))
        times.append(parse_time(path, f[3], "timestamp", n))
    cols = {"user": "field 1", "item": "field 2", "rating": "field 3", "time": "field 4"}
    return _finish(path, "amazon-ratings", users, items, ratings, times, uid, iid, cols)


def read_amazon_reviews(path: Path) -> RawInteractions:
    """JSON lines with ``reviewerID``, ``asin``, ``overall`` and ``unixReviewTime``."""
    uid, iid = _Interner(), _Interner()
    users, items, ratings, times = [], [], [], []
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        rec = parse_record(path, line, n)
        for key in ("reviewerID", "asin", "overall", "unixReviewTime"):
            if key not in rec or rec[key] is None or rec[key] == "":
                raise DataError(path, f"field {key!r} is missing", line=n)
        users.append(uid(str(rec["reviewerID"]).strip()))
        items.append(iid(str(rec["asin"]).strip()))
        ratings.append(_parse_float(path, rec["overall"], "field 'overall'", n))
        times.append(parse_time(path, str(rec["unixReviewTime"]), "field 'unixReviewTime'", n))
    cols = {"user": "reviewerID", "item": "asin", "rating": "overall", "time": "unixReviewTime"}
    return _finish(path, "amazon-reviews", users, items, ratings, times, uid, iid, cols)


def _table_columns(path: Path, header: list[str], names: ColumnNames) -> tuple[int, int, int | None, int | None]:
    """Indices of the user, item, rating and time columns (the last two optional unless named)."""
    cu = pick_column(path, header, names.user, USER_COLUMNS, "user", "--user-col", True)
    ci = pick_column(path, header, names.item, ITEM_COLUMNS, "item", "--item-col", True)
    cr = pick_column(path, header, names.rating, RATING_COLUMNS, "rating", "--rating-col", False)
    ct = pick_column(path, header, names.time, TIME_COLUMNS, "time", "--time-col", False)
    assert cu is not None and ci is not None  # required columns: pick_column raised otherwise
    return cu, ci, cr, ct


def read_interaction_table(path: Path, names: ColumnNames | None = None) -> RawInteractions:
    """A CSV/TSV with a header. Rating and time columns are optional unless named."""
    rows, header = table_with_header(path)
    cu, ci, cr, ct = _table_columns(path, header, names or ColumnNames())
    uid, iid = _Interner(), _Interner()
    users, items = [], []
    ratings = [] if cr is not None else None
    times = [] if ct is not None else None
    width = len(header)
    for n, row in rows:
        if len(row) != width:
            raise DataError(path, f"expected {width} fields as in the header, found {len(row)}", line=n)
        u, i = row[cu].strip(), row[ci].strip()
        if not u:
            raise DataError(path, f"empty user id (column {header[cu]!r})", line=n)
        if not i:
            raise DataError(path, f"empty item id (column {header[ci]!r})", line=n)
        users.append(uid(u))
        items.append(iid(i))
        if ratings is not None:
            ratings.append(_parse_float(path, row[cr].strip(), f"column {header[cr]!r}:", n))
        if times is not None:
            times.append(parse_time(path, row[ct], f"column {header[ct]!r}:", n))
    cols = {
        "user": header[cu],
        "item": header[ci],
        "rating": None if cr is None else header[cr],
        "time": None if ct is None else header[ct],
    }
    return _finish(path, "table", users, items, ratings, times, uid, iid, cols)


def check_interaction_columns(path: Path, fmt: str = "auto", names: ColumnNames | None = None) -> None:
    """Check what can be checked from the first line alone (format, and a table's columns).

    Cheap: ``prepare`` runs it before loading any encoder, so a wrong column fails in
    milliseconds rather than after a text model has loaded.
    """
    if not path.is_file():
        raise DataError(path, "no such file")
    if _review_format(path, fmt) == "table":
        _table_columns(path, table_header(path), names or ColumnNames())


def read_interactions(path: Path, fmt: str = "auto", names: ColumnNames | None = None) -> RawInteractions:
    """Every interaction of ``path`` in format ``fmt`` (``auto``: detected from the first line)."""
    fmt = _review_format(path, fmt)
    if fmt == "amazon-ratings":
        return read_amazon_ratings(path)
    if fmt == "amazon-reviews":
        return read_amazon_reviews(path)
    return read_interaction_table(path, names)
