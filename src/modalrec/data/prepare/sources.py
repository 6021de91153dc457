"""Raw input files as the readers see them: text lines, records, CSV/TSV tables and their columns.

Every malformed input raises :class:`~modalrec.errors.DataError` naming the file and the
line (or record) and field. Files may be gzipped (detected from the magic bytes, not the
name) and must be UTF-8 (a byte-order mark is ignored). The readers of each input kind
(:mod:`~modalrec.data.prepare.interactions`, :mod:`~modalrec.data.prepare.item_meta`,
:mod:`~modalrec.data.prepare.images`) build on these.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from modalrec.errors import DataError

# Item-id column names tried, in order, when the user names none (interaction and item tables).
ITEM_COLUMNS = ("item_id", "itemID", "item", "asin", "itemId", "parent_asin", "movieId", "id")


# ====================================================================== text files
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
    """The first non-blank line (what format detection looks at)."""
    for _, line in iter_lines(path):
        if line.strip():
            return line
    raise DataError(path, "empty file")


def delimiter(header: str) -> str:
    """The field separator of a CSV/TSV line: tab if it has one, else comma."""
    return "\t" if "\t" in header else ","


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


# ====================================================================== tables
def _iter_table(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a CSV/TSV (delimiter from the header: tab if it has one, else comma)."""
    header = first_line(path)
    delim = delimiter(header)
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


def table_with_header(path: Path) -> tuple[Iterator[tuple[int, list[str]]], list[str]]:
    """(iterator over the remaining rows, header names) of a CSV/TSV table; RecBole ``:type`` suffixes dropped."""
    rows = _iter_table(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(path, "empty file") from None
    return rows, [header_name(h) for h in header]


def table_header(path: Path) -> list[str]:
    """Only the header names of a CSV/TSV table (the file is closed again at once)."""
    rows, header = table_with_header(path)
    rows.close()
    return header


def pick_column(
    path: Path,
    header: list[str],
    wanted: str | None,
    candidates: tuple[str, ...],
    what: str,
    option: str,
    required: bool,
) -> int | None:
    """Index of the column named by ``option`` (``wanted``), else of the first candidate present.

    A named column that is missing is an error; an unnamed one only when ``required``.
    """
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
