"""Readers of the item metadata (``--meta``) and the composition of each item's text.

Item metadata formats
    ``amazon2014``      one Python-literal dict per line (parsed with ``ast.literal_eval``)
    ``amazon2018``      JSON lines
    ``table``           CSV/TSV with a header: an item id column and text columns
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalrec.data.prepare.sources import (
    ITEM_COLUMNS,
    first_line,
    header_name,
    iter_lines,
    parse_record,
    pick_column,
    table_header,
    table_with_header,
)
from modalrec.errors import DataError

META_FORMATS = ("amazon2014", "amazon2018", "table")

# Text columns of an item table used when the user names none, as present.
TEXT_COLUMNS = ("title", "name", "brand", "categories", "category", "description")

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")
_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"\\]+)['"]""")


# ====================================================================== text composition
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


# ====================================================================== readers
@dataclass
class ItemMeta:
    """Composed text of the items found in a metadata file (only the wanted ones are kept)."""

    texts: dict[str, str]
    format: str
    records: int
    duplicates: int
    text_fields: list[str]


def detect_meta_format(path: Path) -> str:
    """The metadata format of a file, from its first non-blank line."""
    line = first_line(path).strip()
    if line.startswith("{"):
        try:
            json.loads(line)
            return "amazon2018"
        except ValueError:
            return "amazon2014"
    return "table"


def read_amazon_meta(path: Path, fmt: str, wanted: set[str] | None) -> ItemMeta:
    """Texts of the wanted items of an Amazon 2014 (literal dicts) or 2018 (JSON) metadata file."""
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


def _item_column(path: Path, header: list[str], item_col: str | None) -> int:
    """Index of an item table's id column: the one named by ``--item-col`` if present, else a usual name."""
    candidates = ((item_col,) if item_col else ()) + ITEM_COLUMNS
    ci = pick_column(path, header, None, candidates, "item id", "--item-col", True)
    assert ci is not None  # a required column: pick_column raised otherwise
    return ci


def read_item_table(
    path: Path, wanted: set[str] | None, item_col: str | None = None, text_cols: Sequence[str] | None = None
) -> ItemMeta:
    """CSV/TSV item table: the id column and the text columns (default: title, name, brand,
    categories, category, description as present; if none is, every other column)."""
    rows, header = table_with_header(path)
    ci = _item_column(path, header, item_col)
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


def check_meta_columns(
    path: Path, fmt: str = "auto", item_col: str | None = None, text_cols: Sequence[str] | None = None
) -> None:
    """Check an item table's header (id and text columns) before anything slow runs.

    The metadata counterpart of
    :func:`~modalrec.data.prepare.interactions.check_interaction_columns`.
    """
    if not path.is_file():
        raise DataError(path, "no such file")
    if fmt == "auto":
        fmt = detect_meta_format(path)
    if fmt != "table":
        return
    header = table_header(path)
    _item_column(path, header, item_col)
    missing = [c for c in text_cols or [] if header_name(c) not in header]
    if missing:
        raise DataError(
            path, f"no column {missing[0]!r} (given by --text-cols) in the header; found: {', '.join(header)}", line=1
        )


def read_item_meta(
    path: Path,
    fmt: str = "auto",
    wanted: set[str] | None = None,
    item_col: str | None = None,
    text_cols: Sequence[str] | None = None,
) -> ItemMeta:
    """Texts of the wanted items (all when ``wanted`` is None) of a metadata file in format ``fmt``."""
    if fmt == "auto":
        fmt = detect_meta_format(path)
    if fmt in ("amazon2014", "amazon2018"):
        return read_amazon_meta(path, fmt, wanted)
    if fmt == "table":
        return read_item_table(path, wanted, item_col, text_cols)
    raise DataError(path, f"unknown metadata format {fmt!r} (choose from auto, {', '.join(META_FORMATS)})")
