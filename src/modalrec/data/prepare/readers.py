"""Readers for raw review dumps: format detection from the content, and parsing.

Every malformed input raises :class:`~modalrec.errors.DataError` naming the file and the
line (or record) and field. Files may be gzipped (detected from the magic bytes, not the
name) and must be UTF-8 (a byte-order mark is ignored).

Interaction formats
    ``amazon-ratings``  headerless ``user,item,rating,timestamp`` (Amazon 2014 ratings CSV;
                        tab-separated works too)
    ``amazon-reviews``  JSON lines with ``reviewerID``, ``asin``, ``overall``,
                        ``unixReviewTime`` (Amazon 2014 5-core and 2018 reviews)
    ``table``           CSV/TSV with a header naming the columns (generic)
Item metadata formats
    ``amazon2014``      one Python-literal dict per line (parsed with ``ast.literal_eval``)
    ``amazon2018``      JSON lines
    ``table``           CSV/TSV with a header: an item id column and text columns
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np

from modalrec.errors import DataError

REVIEW_FORMATS = ("amazon-ratings", "amazon-reviews", "table")
META_FORMATS = ("amazon2014", "amazon2018", "table")

# Column names tried, in order, when the user names none (generic tables).
USER_COLUMNS = ("user_id", "userID", "user", "reviewerID", "userId")
ITEM_COLUMNS = ("item_id", "itemID", "item", "asin", "itemId", "parent_asin", "movieId", "id")
RATING_COLUMNS = ("rating", "overall", "score", "stars")
TIME_COLUMNS = ("timestamp", "time", "unixReviewTime", "date", "datetime")
TEXT_COLUMNS = ("title", "name", "brand", "categories", "category", "description")


# ====================================================================== files
def is_gzipped(path: Path, expected: str = "a file") -> bool:
    """Whether an existing regular file starts with the gzip magic bytes (errors name the file)."""
    if not path.exists():
        raise DataError(path, "no such file")
    if path.is_dir():
        raise DataError(path, f"is a directory; expected {expected}")
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: Path) -> IO[str]:
    """Open a (possibly gzipped) UTF-8 text file."""
    if is_gzipped(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) of every line; decoding errors name the line."""
    n = 0
    try:
        with open_text(path) as fh:
            for n, line in enumerate(fh, start=1):  # noqa: B007 - n is used after the loop on errors
                yield n, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason})", line=n + 1) from None
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(path, f"cannot read ({exc}); truncated or corrupt gzip file?", line=n + 1) from None


def first_line(path: Path) -> str:
    for _, line in iter_lines(path):
        if line.strip():
            return line
    raise DataError(path, "empty file")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _delimiter(header: str) -> str:
    return "\t" if "\t" in header else ","


# ====================================================================== interactions
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


def detect_review_format(path: Path) -> str:
    line = first_line(path).strip()
    if line.startswith("{"):
        return "amazon-reviews"
    fields = next(csv.reader([line], delimiter=_delimiter(line)))
    if len(fields) == 4 and _is_number(fields[2]) and _is_number(fields[3]):
        return "amazon-ratings"
    return "table"


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
            delim = _delimiter(line)
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


def parse_record(path: Path, line: str, n: int, literal_first: bool = False) -> dict:
    """One JSON object, or one Python-literal dict (``ast.literal_eval``, never ``eval``)."""

    def as_json():
        return json.loads(line)

    def as_literal():
        return ast.literal_eval(line)

    first, second = (as_literal, as_json) if literal_first else (as_json, as_literal)
    try:
        rec = first()
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        try:
            rec = second()
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(path, f"not a JSON object or Python dict literal ({msg})", line=n) from None
    if not isinstance(rec, dict):
        raise DataError(path, f"expected one object per line, found {type(rec).__name__}", line=n)
    return rec


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


def _pick_column(
    path: Path,
    header: list[str],
    wanted: str | None,
    candidates: tuple[str, ...],
    what: str,
    option: str,
    required: bool,
) -> int | None:
    if wanted is not None:
        wanted = header_name(wanted)  # --user-col user_id:token names the same column as user_id
        if wanted not in header:
            raise DataError(
                path, f"no column {wanted!r} (given by {option}) in the header; found: {', '.join(header)}", line=1
            )
        return header.index(wanted)
    for c in candidates:
        if c in header:
            return header.index(c)
    if required:
        raise DataError(
            path,
            f"no {what} column in the header (tried {', '.join(candidates)}; found: {', '.join(header)}); "
            f"name it with {option}",
            line=1,
        )
    return None


def _iter_table(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a CSV/TSV (delimiter from the header: tab if it has one, else comma)."""
    header = first_line(path)
    delim = _delimiter(header)
    if csv.field_size_limit() < 2**30:  # the default 128 KiB is too small for some item descriptions
        csv.field_size_limit(2**30)
    n = 0
    try:
        with open_text(path) as fh:
            reader = csv.reader(fh, delimiter=delim)
            for row in reader:
                n = reader.line_num
                if not row or not any(c.strip() for c in row):
                    continue
                yield n, row
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason})", line=n + 1) from None
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV ({exc})", line=n + 1) from None
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(path, f"cannot read ({exc}); truncated or corrupt gzip file?", line=n + 1) from None


# RecBole's atomic files type every column in the header: ``user_id:token item_id:token rating:float``.
_RECBOLE_FIELD = re.compile(r"(.+):(token|token_seq|float|float_seq)")


def header_name(field: str) -> str:
    """A header field without RecBole's ``:type`` suffix (``item_id:token`` → ``item_id``)."""
    field = field.strip()
    m = _RECBOLE_FIELD.fullmatch(field)
    return m.group(1) if m else field


def _table_with_header(path: Path):
    """(iterator over the remaining rows, header names) of a CSV/TSV table; RecBole ``:type`` suffixes dropped."""
    rows = _iter_table(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(path, "empty file") from None
    return rows, [header_name(h) for h in header]


def read_interaction_table(
    path: Path,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    time_col: str | None = None,
) -> RawInteractions:
    """A CSV/TSV with a header. Rating and time columns are optional unless named."""
    rows, header = _table_with_header(path)
    cu = _pick_column(path, header, user_col, USER_COLUMNS, "user", "--user-col", True)
    ci = _pick_column(path, header, item_col, ITEM_COLUMNS, "item", "--item-col", True)
    cr = _pick_column(path, header, rating_col, RATING_COLUMNS, "rating", "--rating-col", False)
    ct = _pick_column(path, header, time_col, TIME_COLUMNS, "time", "--time-col", False)
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


def check_interaction_columns(
    path: Path,
    fmt: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    time_col: str | None = None,
) -> None:
    """Check what can be checked from the first line alone (format, and a table's columns).

    Cheap: ``prepare`` runs it before loading any encoder, so a wrong column fails in
    milliseconds rather than after a text model has loaded.
    """
    if not path.is_file():
        raise DataError(path, "no such file")
    if fmt == "auto":
        fmt = detect_review_format(path)
    if fmt not in ("amazon-ratings", "amazon-reviews", "table"):
        raise DataError(path, f"unknown interaction format {fmt!r} (choose from auto, {', '.join(REVIEW_FORMATS)})")
    if fmt != "table":
        return
    rows, header = _table_with_header(path)
    rows.close()
    _pick_column(path, header, user_col, USER_COLUMNS, "user", "--user-col", True)
    _pick_column(path, header, item_col, ITEM_COLUMNS, "item", "--item-col", True)
    _pick_column(path, header, rating_col, RATING_COLUMNS, "rating", "--rating-col", False)
    _pick_column(path, header, time_col, TIME_COLUMNS, "time", "--time-col", False)


def check_meta_columns(
    path: Path, fmt: str = "auto", item_col: str | None = None, text_cols: list[str] | None = None
) -> None:
    """The metadata counterpart of :func:`check_interaction_columns` (an item table's header)."""
    if not path.is_file():
        raise DataError(path, "no such file")
    if fmt == "auto":
        fmt = detect_meta_format(path)
    if fmt != "table":
        return
    rows, header = _table_with_header(path)
    rows.close()
    candidates = ((item_col,) if item_col else ()) + ITEM_COLUMNS
    _pick_column(path, header, None, candidates, "item id", "--item-col", True)
    missing = [c for c in text_cols or [] if header_name(c) not in header]
    if missing:
        raise DataError(
            path, f"no column {missing[0]!r} (given by --text-cols) in the header; found: {', '.join(header)}", line=1
        )


def read_interactions(
    path: Path,
    fmt: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    time_col: str | None = None,
) -> RawInteractions:
    if fmt == "auto":
        fmt = detect_review_format(path)
    if fmt == "amazon-ratings":
        return read_amazon_ratings(path)
    if fmt == "amazon-reviews":
        return read_amazon_reviews(path)
    if fmt == "table":
        return read_interaction_table(path, user_col, item_col, rating_col, time_col)
    raise DataError(path, f"unknown interaction format {fmt!r} (choose from auto, {', '.join(REVIEW_FORMATS)})")


# ====================================================================== item metadata
_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")
_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"\\]+)['"]""")


def clean_text(value: object) -> str:
    """One line of plain text: HTML entities decoded, tags removed, whitespace collapsed."""
    if value is None:
        return ""
    if isinstance(value, float) and not np.isfinite(value):
        return ""
    if isinstance(value, list | tuple):
        return " ".join(t for t in (clean_text(v) for v in value) if t)
    text = html.unescape(str(value))
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def _categories(value: object) -> list[str]:
    """Flatten 2014 ``categories`` (list of paths) or 2018 ``category`` (list); keep first occurrences."""
    out: list[str] = []

    def walk(v):
        if isinstance(v, list | tuple):
            for x in v:
                walk(x)
        else:
            t = clean_text(v)
            if t and t not in out:
                out.append(t)

    walk(value)
    return out


def join_parts(parts: list[str]) -> str:
    """Join non-empty parts as sentences: 'a. b. c' (no doubled full stop)."""
    out = ""
    for p in parts:
        p = p.strip()
        if not p:
            continue
        if out:
            out += " " if out[-1] in ".!?" else ". "
        out += p
    return out


def amazon_item_text(rec: dict) -> str:
    """title + brand + categories + description of an Amazon 2014/2018 metadata record."""
    cats = rec.get("categories", rec.get("category"))
    return join_parts(
        [
            clean_text(rec.get("title")),
            clean_text(rec.get("brand")),
            ", ".join(_categories(cats)),
            clean_text(rec.get("description")),
        ]
    )


@dataclass
class ItemMeta:
    """Composed text of the items found in a metadata file (only the wanted ones are kept)."""

    texts: dict[str, str]
    format: str
    records: int
    duplicates: int
    text_fields: list[str]


def detect_meta_format(path: Path) -> str:
    line = first_line(path).strip()
    if line.startswith("{"):
        try:
            json.loads(line)
            return "amazon2018"
        except ValueError:
            return "amazon2014"
    return "table"


def read_amazon_meta(path: Path, fmt: str, wanted: set[str] | None) -> ItemMeta:
    texts: dict[str, str] = {}
    records = dups = 0
    literal_first = fmt == "amazon2014"
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        records += 1
        if wanted is not None:
            # Skip records of items we do not need without parsing them (metadata dumps are large);
            # only trusted when the key occurs exactly once on the line.
            found = _ASIN.findall(line)
            if len(found) == 1 and found[0].strip() not in wanted:
                continue
        rec = parse_record(path, line, n, literal_first=literal_first)
        asin = rec.get("asin")
        if asin is None or str(asin).strip() == "":
            raise DataError(path, "field 'asin' is missing", line=n)
        asin = str(asin).strip()
        if wanted is not None and asin not in wanted:
            continue
        if asin in texts:
            dups += 1
            continue
        texts[asin] = amazon_item_text(rec)
    fields = ["title", "brand", "categories" if fmt == "amazon2014" else "category", "description"]
    return ItemMeta(texts, fmt, records, dups, fields)


def read_item_table(
    path: Path, wanted: set[str] | None, item_col: str | None = None, text_cols: list[str] | None = None
) -> ItemMeta:
    """CSV/TSV item table: the id column and the text columns (default: title, name, brand,
    categories, category, description as present; if none is, every other column)."""
    rows, header = _table_with_header(path)
    candidates = ((item_col,) if item_col else ()) + ITEM_COLUMNS
    ci = _pick_column(path, header, None, candidates, "item id", "--item-col", True)
    if text_cols:
        text_cols = [header_name(c) for c in text_cols]
        missing = [c for c in text_cols if c not in header]
        if missing:
            raise DataError(
                path,
                f"no column {missing[0]!r} (given by --text-cols) in the header; found: {', '.join(header)}",
                line=1,
            )
        cols = [header.index(c) for c in text_cols]
    else:
        cols = [header.index(c) for c in TEXT_COLUMNS if c in header]
        if not cols:
            cols = [j for j in range(len(header)) if j != ci]
    texts: dict[str, str] = {}
    records = dups = 0
    width = len(header)
    for n, row in rows:
        records += 1
        if len(row) != width:
            raise DataError(path, f"expected {width} fields as in the header, found {len(row)}", line=n)
        item = row[ci].strip()
        if not item:
            raise DataError(path, f"empty item id (column {header[ci]!r})", line=n)
        if wanted is not None and item not in wanted:
            continue
        if item in texts:
            dups += 1
            continue
        texts[item] = join_parts([clean_text(row[j]) for j in cols])
    return ItemMeta(texts, "table", records, dups, [header[j] for j in cols])


def read_item_meta(
    path: Path,
    fmt: str = "auto",
    wanted: set[str] | None = None,
    item_col: str | None = None,
    text_cols: list[str] | None = None,
) -> ItemMeta:
    if fmt == "auto":
        fmt = detect_meta_format(path)
    if fmt in ("amazon2014", "amazon2018"):
        return read_amazon_meta(path, fmt, wanted)
    if fmt == "table":
        return read_item_table(path, wanted, item_col, text_cols)
    raise DataError(path, f"unknown metadata format {fmt!r} (choose from auto, {', '.join(META_FORMATS)})")


# ====================================================================== image features
def read_image_features(
    path: Path, wanted: dict[str, int], dim: int = 4096, chunk_records: int = 512
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Rows of the Amazon binary image-feature file for the wanted items.

    The file repeats a 10-byte ASIN and ``dim`` little-endian float32 values. ``wanted``
    maps an ASIN to its output row. Returns ``(features, found, records, duplicates)``:
    rows of items not in the file are zero and ``found`` is False there. The file is
    streamed (it may be several GB, gzipped or not); the first record of a repeated ASIN wins.
    """
    rec_size = 10 + 4 * dim
    dtype = np.dtype([("asin", "S10"), ("feat", "<f4", (dim,))])
    out = np.zeros((len(wanted), dim), dtype=np.float32)
    found = np.zeros(len(wanted), dtype=bool)
    records = dups = 0
    opener = gzip.open if is_gzipped(path, "the binary image-feature file") else open
    try:
        with opener(path, "rb") as fh:
            while True:
                buf = fh.read(rec_size * chunk_records)
                if not buf:
                    break
                whole = len(buf) // rec_size
                if len(buf) % rec_size:
                    raise DataError(
                        path,
                        f"truncated: record {records + whole} has {len(buf) % rec_size} of {rec_size} bytes "
                        f"(10-byte ASIN + {dim} float32)",
                    )
                block = np.frombuffer(buf, dtype=dtype)
                for r, raw in enumerate(block["asin"].tolist()):
                    asin = raw.decode("ascii", errors="replace").strip("\x00 ")
                    row = wanted.get(asin)
                    if row is None:
                        continue
                    if found[row]:
                        dups += 1
                        continue
                    vec = block["feat"][r]
                    if not np.isfinite(vec).all():
                        raise DataError(path, f"record {records + r} (ASIN {asin}) holds non-finite values")
                    out[row] = vec
                    found[row] = True
                records += whole
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(path, f"cannot read ({exc}); truncated or corrupt gzip file?") from None
    if records == 0:
        raise DataError(path, "empty file")
    return out, found, records, dups


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def list_images(directory: Path) -> tuple[dict[str, Path], int]:
    """Image files named ``<item id>.<ext>``; returns ``(id -> path, ids with several files)``.

    With several files for one id, the first by name is used.
    """
    if not directory.exists():
        raise DataError(directory, "no such directory")
    if not directory.is_dir():
        raise DataError(directory, "not a directory; --images takes a folder of <item id>.<ext> files")
    files: dict[str, Path] = {}
    ambiguous = 0
    for p in sorted(directory.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem in files:
            ambiguous += 1
            continue
        files[p.stem] = p
    return files, ambiguous
