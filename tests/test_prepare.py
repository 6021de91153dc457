"""`modalrec data prepare`: readers, k-core, and the pipeline end to end on tiny raw fixtures.

Encoders are replaced by small fakes injected through the library API, so these tests run
without the optional ``modalrec[prepare]`` packages (the real encoders: tests/test_encoders.py).
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modalrec.data.dataset import load_dataset
from modalrec.data.prepare import PrepareOptions, kcore_mask, prepare_dataset
from modalrec.data.prepare.images import read_image_features
from modalrec.data.prepare.interactions import detect_review_format
from modalrec.data.prepare.item_meta import amazon_item_text, detect_meta_format
from modalrec.errors import DataError, ModalrecError

# =========================================================================== k-core


def _valid_core(users, items, edges_u, edges_i, ku, ki) -> bool:
    """Is the subgraph induced by the node sets (users, items) a (ku, ki)-core?"""
    m = np.isin(edges_u, list(users)) & np.isin(edges_i, list(items))
    du = np.bincount(edges_u[m], minlength=max(users, default=0) + 1)
    di = np.bincount(edges_i[m], minlength=max(items, default=0) + 1)
    return all(du[u] >= ku for u in users) and all(di[i] >= ki for i in items)


def _brute_force_core(nu, ni, eu, ei, ku, ki) -> np.ndarray:
    """Maximal core by enumerating every pair of node subsets (tiny graphs only)."""
    best_u: set[int] = set()
    best_i: set[int] = set()
    for ru in range(nu + 1):
        for us in itertools.combinations(range(nu), ru):
            for ri in range(ni + 1):
                for its in itertools.combinations(range(ni), ri):
                    if _valid_core(us, its, eu, ei, ku, ki):
                        best_u |= set(us)  # the union of cores is a core: the maximal one is unique
                        best_i |= set(its)
    assert _valid_core(tuple(best_u), tuple(best_i), eu, ei, ku, ki)
    return np.isin(eu, list(best_u)) & np.isin(ei, list(best_i))


def _peel_core(eu, ei, ku, ki) -> np.ndarray:
    """Slow reference: remove one under-degree node at a time, in pure Python."""
    alive = set(range(len(eu)))
    changed = True
    while changed:
        changed = False
        du: dict[int, int] = {}
        di: dict[int, int] = {}
        for e in alive:
            du[eu[e]] = du.get(eu[e], 0) + 1
            di[ei[e]] = di.get(ei[e], 0) + 1
        for e in sorted(alive):
            if du[eu[e]] < ku:
                alive -= {f for f in alive if eu[f] == eu[e]}
                changed = True
                break
            if di[ei[e]] < ki:
                alive -= {f for f in alive if ei[f] == ei[e]}
                changed = True
                break
    return np.isin(np.arange(len(eu)), list(alive))


@st.composite
def bipartite(draw, max_users: int, max_items: int, max_k: int):
    nu = draw(st.integers(1, max_users))
    ni = draw(st.integers(1, max_items))
    pairs = draw(st.lists(st.tuples(st.integers(0, nu - 1), st.integers(0, ni - 1)), unique=True, max_size=nu * ni))
    ku = draw(st.integers(0, max_k))
    ki = draw(st.integers(0, max_k))
    eu = np.array([p[0] for p in pairs], dtype=np.int64)
    ei = np.array([p[1] for p in pairs], dtype=np.int64)
    return nu, ni, eu, ei, ku, ki


@settings(max_examples=150, deadline=None)
@given(bipartite(max_users=4, max_items=4, max_k=3))
def test_kcore_equals_brute_force_maximal_core(g):
    nu, ni, eu, ei, ku, ki = g
    mask, _ = kcore_mask(eu, ei, ku, ki)
    # k = 0 and k = 1 keep the same interactions (a node in a core with an edge has degree ≥ 1)
    np.testing.assert_array_equal(mask, _brute_force_core(nu, ni, eu, ei, max(ku, 1), max(ki, 1)))


@settings(max_examples=120, deadline=None)
@given(bipartite(max_users=25, max_items=25, max_k=5))
def test_kcore_degrees_and_maximality_on_larger_graphs(g):
    _, _, eu, ei, ku, ki = g
    mask, passes = kcore_mask(eu, ei, ku, ki)
    if mask.any():  # every remaining user and item has at least k interactions
        assert (np.bincount(eu[mask])[np.unique(eu[mask])] >= ku).all()
        assert (np.bincount(ei[mask])[np.unique(ei[mask])] >= ki).all()
    # ... and nothing that could stay was removed (slow one-node-at-a-time peeling agrees)
    np.testing.assert_array_equal(mask, _peel_core(eu.tolist(), ei.tolist(), ku, ki))
    assert passes >= 0


def test_kcore_cascades_until_stable():
    # A cycle u0-i0-... of users and items, each of degree 2: a 2-core as it is.
    eu = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    ei = np.array([0, 1, 1, 2, 2, 3, 3, 0])
    assert kcore_mask(eu, ei, 2)[0].all()
    # Cut one edge: the path unravels from both ends, one pass at a time.
    mask, passes = kcore_mask(eu[:-1], ei[:-1], 2)
    assert not mask.any() and passes > 2


# =========================================================================== fixtures
USERS = [f"U{k:02d}" for k in range(8)]
ITEMS = [f"B00000000{k}" for k in range(6)]  # 10-character ASINs, sorted order = index order
RARE_ITEM = "B000000009"  # one interaction: removed by the 5-core
SPARSE_USER = "ZSPARSE"  # two interactions: removed by the 5-core
T0 = 1388534400  # 2014-01-01, must survive in .inter exactly


def _interactions() -> list[tuple[str, str, float, int]]:
    """48 core interactions (8 users × 6 items) + 4 that the pipeline must drop."""
    rows = []
    for ku, u in reversed(list(enumerate(USERS))):  # file order ≠ sorted order of ids
        for ki, i in enumerate(ITEMS[::-1]):
            rows.append((u, i, float(1 + (ku + ki) % 5), T0 + 86400 * (ku * 10 + ki)))
    rows.append((SPARSE_USER, ITEMS[0], 5.0, T0))
    rows.append((SPARSE_USER, ITEMS[1], 5.0, T0))
    rows.append((USERS[0], RARE_ITEM, 4.0, T0))
    rows.append((USERS[1], ITEMS[1], 2.0, T0 + 10**8))  # a later repeat of an existing pair
    return rows


def _meta_records() -> list[dict]:
    recs = []
    for k, a in enumerate(ITEMS[:4]):
        recs.append(
            {
                "asin": a,
                "title": f"Item {k} &amp; co",
                "brand": f"Brand{k}",
                "categories": [["Science", "Lab"], ["Science"]],
                "description": f"<b>Desc</b>\n{k}.",
                "imUrl": f"http://x/{a}.jpg",
                "salesRank": {"Science": k},
            }
        )
    recs.append({"asin": ITEMS[4], "imUrl": "http://x/4.jpg"})  # a record without any text field
    recs.append({"asin": RARE_ITEM, "title": "Item 9"})  # not in the final item set
    return recs  # ITEMS[5] has no record at all


def write_ratings_csv(path: Path) -> Path:
    path.write_text("".join(f"{u},{i},{r:g},{t}\n" for u, i, r, t in _interactions()))
    return path


def write_reviews_json(path: Path, gz: bool) -> Path:
    lines = "".join(
        json.dumps(
            {
                "reviewerID": u,
                "asin": i,
                "reviewerName": "x",
                "overall": r,
                "unixReviewTime": t,
                "reviewText": "great\tproduct",
            }
        )
        + "\n"
        for u, i, r, t in _interactions()
    )
    if gz:
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)
    return path


def write_meta_2014(path: Path) -> Path:
    path.write_text("".join(repr(r) + "\n" for r in _meta_records()))  # Python literals, single quotes
    return path


def write_meta_2018(path: Path) -> Path:
    out = []
    for r in _meta_records():
        r = dict(r)
        if "categories" in r:
            r["category"] = ["Science", "Lab"]
            del r["categories"]
            r["description"] = [r["description"], "More."]
        out.append(json.dumps(r))
    path.write_text("\n".join(out) + "\n")
    return path


def write_binary_features(path: Path, asins: list[str], dim: int = 4096) -> Path:
    """Record of ASIN a = the ASIN's last digit + 1 everywhere (so rows can be checked)."""
    with open(path, "wb") as fh:
        for a in asins:
            fh.write(a.encode("ascii"))
            fh.write(np.full(dim, float(int(a[-1]) + 1), dtype="<f4").tobytes())
    return path


def png_bytes(rgb: tuple[int, int, int], w: int = 4, h: int = 3) -> bytes:
    """A minimal valid RGB PNG of one colour (no Pillow needed)."""
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class FakeText:
    """Feature = (the k of 'Item k' in the text or -1, text length); records every batch."""

    name = "fake-text"

    def __init__(self):
        self.batches: list[list[str]] = []

    def encode(self, texts):
        self.batches.append(list(texts))
        ks = [float(m.group(1)) if (m := re.search(r"Item (\d)", t)) else -1.0 for t in texts]
        return np.array([[k, len(t)] for k, t in zip(ks, texts, strict=True)], dtype=np.float32)


class FakeImage:
    """Decodes our own minimal PNGs; feature = the RGB of the first pixel. Raises on anything else."""

    name = "fake-image"

    def load(self, path):
        data = Path(path).read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("not a PNG")
        pos, idat = 8, b""
        while pos < len(data):
            (n,) = struct.unpack(">I", data[pos : pos + 4])
            if data[pos + 4 : pos + 8] == b"IDAT":
                idat += data[pos + 8 : pos + 8 + n]
            pos += 12 + n
        raw = zlib.decompress(idat)
        return np.frombuffer(raw[1:4], dtype=np.uint8).astype(np.float32)

    def encode(self, images):
        return np.stack(images)


def _read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


# =========================================================================== end to end
def test_amazon2014_ratings_csv_with_literal_meta_and_binary_features(tmp_path):
    reviews = write_ratings_csv(tmp_path / "ratings_Sci.csv")
    meta = write_meta_2014(tmp_path / "meta_Sci.json")
    # features for items 0..3 and the rare item, out of order, item 2 twice (first wins), 4 and 5 missing
    feats = write_binary_features(
        tmp_path / "image_features_Sci.b", [ITEMS[3], RARE_ITEM, ITEMS[0], ITEMS[2], ITEMS[1], ITEMS[2]]
    )
    with open(feats, "r+b") as fh:  # make the duplicate record of item 2 distinguishable
        fh.seek(5 * (10 + 4 * 4096) + 10)
        fh.write(np.full(4096, 99.0, dtype="<f4").tobytes())
    out = tmp_path / "sci"
    enc = FakeText()
    res = prepare_dataset(reviews, out, PrepareOptions(meta=meta, image_features=feats, batch_size=2), text_encoder=enc)
    assert res.path == out and out.is_dir()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "sci.inter",
            "u_id_mapping.csv",
            "i_id_mapping.csv",
            "text_feat.npy",
            "image_feat.npy",
            "item_text.tsv",
            "prepare.json",
        ]
    )
    assert not list(tmp_path.glob(".sci*")), "no temporary sibling may remain"

    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (8, 6, 48)
    assert ds.warnings == []
    assert ds.summary()["per_split"] == {"train": 32, "valid": 8, "test": 8}

    # mappings: contiguous ids in the sorted order of the original ids
    assert _read_tsv(out / "u_id_mapping.csv") == [["user_id", "userID"]] + [[u, str(k)] for k, u in enumerate(USERS)]
    assert _read_tsv(out / "i_id_mapping.csv") == [["asin", "itemID"]] + [[a, str(k)] for k, a in enumerate(ITEMS)]

    # the .inter keeps exact unix times and ratings, and the earliest of a repeated pair
    rows = _read_tsv(out / "sci.inter")
    assert rows[0] == ["userID", "itemID", "rating", "timestamp", "x_label"]
    expected = {(USERS.index(u), ITEMS.index(i)): (r, t) for u, i, r, t in _interactions()[:48]}
    got = {(int(r[0]), int(r[1])): (float(r[2]), int(r[3])) for r in rows[1:]}
    assert got == expected
    assert str(T0) in {r[3] for r in rows[1:]}

    # image rows aligned with item ids; missing items get the mean of the found ones
    img = np.load(out / "image_feat.npy")
    assert img.shape == (6, 4096) and img.dtype == np.float32
    for k in range(4):
        assert np.all(img[k] == k + 1)
    np.testing.assert_allclose(img[4], 2.5)
    np.testing.assert_allclose(img[5], 2.5)

    # text: composed title + brand + categories + description, HTML cleaned; missing → mean of the others
    txt = np.load(out / "text_feat.npy")
    np.testing.assert_array_equal(txt[:4, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(txt[4], txt[:4].mean(axis=0))
    np.testing.assert_allclose(txt[5], txt[:4].mean(axis=0))
    assert sum(len(b) for b in enc.batches) == 4 and max(len(b) for b in enc.batches) == 2  # batched, no empties
    item_text = _read_tsv(out / "item_text.tsv")
    assert item_text[0] == ["itemID", "asin", "text"]
    assert item_text[1] == ["0", ITEMS[0], "Item 0 & co. Brand0. Science, Lab. Desc 0."]
    assert item_text[5] == ["4", ITEMS[4], ""] and item_text[6] == ["5", ITEMS[5], ""]
    assert ds.title(0).startswith("Item 0")

    rep = json.loads((out / "prepare.json").read_text())
    assert rep["inputs"]["reviews"]["format"] == "amazon-ratings"
    assert rep["inputs"]["meta"]["format"] == "amazon2014"
    import hashlib

    for key, path in (("reviews", reviews), ("meta", meta), ("image_features", feats)):
        assert rep["inputs"][key]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rep["parameters"]["kcore"] == 5 and rep["parameters"]["split"] == "mmrec"
    c = rep["counts"]
    assert c["records"] == 52 and c["duplicates"] == 1
    assert c["before_kcore"] == {"users": 9, "items": 7, "interactions": 51}
    assert c["removed_by_kcore"] == {"users": 1, "items": 1, "interactions": 3}
    assert c["final"]["per_split"] == {"train": 32, "valid": 8, "test": 8}
    assert rep["image"]["items_missing"] == 2 and rep["image"]["missing_examples"] == ITEMS[4:]
    assert rep["image"]["duplicate_records"] == 1 and rep["image"]["records"] == 6
    assert rep["text"]["items_without_record"] == 1 and rep["text"]["items_with_empty_text"] == 1
    assert rep["text"]["encoder"] == {"model": "fake-text"} and rep["text"]["dim"] == 2
    assert any("no text" in w for w in rep["warnings"]) and any("no image feature" in w for w in rep["warnings"])
    assert {"read_interactions", "filter", "split", "encode_text", "write", "total"} <= set(rep["timings_s"])
    assert set(rep["files"]) == {p.name for p in out.iterdir()}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_reviews_json_lines_with_2018_meta(tmp_path, gz):
    reviews = write_reviews_json(tmp_path / ("reviews.json.gz" if gz else "reviews.json"), gz)
    meta = write_meta_2018(tmp_path / "meta.json")
    out = tmp_path / "out"
    res = prepare_dataset(reviews, out, PrepareOptions(meta=meta, split="loo"), text_encoder=FakeText())
    assert res.report["inputs"]["reviews"]["format"] == "amazon-reviews"
    assert res.report["inputs"]["meta"]["format"] == "amazon2018"
    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (8, 6, 48)
    # loo by time: each user's latest interaction is test, the one before valid
    for u in range(8):
        m = ds.users == u
        t, lab = ds.timestamps[m], ds.labels[m]
        assert lab[np.argmax(t)] == 2 and lab[np.argsort(t)[-2]] == 1
    text = _read_tsv(out / "item_text.tsv")
    assert text[2][2] == "Item 1 & co. Brand1. Science, Lab. Desc 1. More."


def test_gzip_and_plain_inputs_give_identical_folders(tmp_path):
    a = prepare_dataset(write_reviews_json(tmp_path / "r.json", False), tmp_path / "a")
    b = prepare_dataset(write_reviews_json(tmp_path / "r.json.gz", True), tmp_path / "b")
    assert (a.path / "a.inter").read_text() == (b.path / "b.inter").read_text()
    assert a.report["inputs"]["reviews"]["sha256"] != b.report["inputs"]["reviews"]["sha256"]
    # and the same seed gives the same split; another seed another one
    c = prepare_dataset(write_reviews_json(tmp_path / "r2.json", False), tmp_path / "c", PrepareOptions(seed=1))
    assert (a.path / "a.inter").read_text() != (c.path / "c.inter").read_text()


def test_generic_csv_item_table_and_image_folder(tmp_path):
    rows = _interactions()
    reviews = tmp_path / "inter.csv"
    reviews.write_text("user_id,item_id,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    table = tmp_path / "items.csv"
    table.write_text(
        "item_id,title,description,price\n"
        + "".join(f'{a},"Item {k}, the best","line one\nline two",{k}.99\n' for k, a in enumerate(ITEMS))
        + f"{RARE_ITEM},Item 9,,1\n"
    )
    imgs = tmp_path / "images"
    imgs.mkdir()
    for k, a in enumerate(ITEMS[:4]):
        (imgs / f"{a}.png").write_bytes(png_bytes((10 * k, 20, 30)))
    (imgs / f"{ITEMS[4]}.png").write_bytes(b"this is not an image")  # corrupt → counted and mean-filled
    (imgs / "notes.txt").write_text("ignored")  # ITEMS[5]: no file at all
    out = tmp_path / "generic"
    res = prepare_dataset(
        reviews,
        out,
        PrepareOptions(meta=table, images=imgs, batch_size=3),
        text_encoder=FakeText(),
        image_encoder=FakeImage(),
    )
    assert res.report["inputs"]["reviews"]["format"] == "table"
    assert res.report["inputs"]["meta"]["format"] == "table"
    assert res.report["parameters"]["columns"] == {
        "user": "user_id",
        "item": "item_id",
        "rating": "rating",
        "time": "timestamp",
    }
    assert _read_tsv(out / "i_id_mapping.csv")[0] == ["item_id", "itemID"]
    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items, len(ds.users)) == (8, 6, 48)
    img = ds.features["image"]
    np.testing.assert_array_equal(img[:4], [[0, 20, 30], [10, 20, 30], [20, 20, 30], [30, 20, 30]])
    np.testing.assert_allclose(img[4], [15, 20, 30])
    np.testing.assert_allclose(img[5], [15, 20, 30])
    rep = res.report["image"]
    assert rep["items_with_feature"] == 4 and rep["unreadable"] == 1 and rep["items_without_file"] == 1
    assert rep["unreadable_examples"][0]["file"] == f"{ITEMS[4]}.png"
    assert "not a PNG" in rep["unreadable_examples"][0]["error"]
    assert res.report["inputs"]["images"]["files"] == 5
    assert any("could not be read" in w for w in res.report["warnings"])
    # text columns: title and description (auto), the price column is not text
    assert res.report["text"]["fields"] == ["title", "description"]
    assert _read_tsv(out / "item_text.tsv")[1][2] == "Item 0, the best. line one line two"
    assert res.report["text"]["items_without_record"] == 0


def test_generic_tsv_named_columns_without_rating_and_iso_dates(tmp_path):
    reviews = tmp_path / "log.tsv"
    lines = ["who\twhat\twhen\tclicks"]
    for u, i, _, t in _interactions():
        day = np.datetime64(t, "s").astype("datetime64[s]").item().isoformat()
        lines.append(f"{u}\t{i}\t{day}\t3")
    reviews.write_text("\n".join(lines) + "\n")
    out = tmp_path / "tsv"
    res = prepare_dataset(
        reviews, out, PrepareOptions(user_col="who", item_col="what", time_col="when", split="temporal")
    )
    assert res.report["parameters"]["columns"] == {"user": "who", "item": "what", "rating": None, "time": "when"}
    rows = _read_tsv(out / "tsv.inter")
    assert rows[0] == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert {r[2] for r in rows[1:]} == {"1"} and str(T0) in {r[3] for r in rows[1:]}
    ds = load_dataset(out)
    # the latest user has all interactions after the cut: MMRec's cold-start filter drops them on load
    assert res.report["counts"]["final"]["interactions"] == 48 and len(ds.users) == 42
    assert any("no training interaction" in w for w in res.report["warnings"])
    # temporal: every train interaction is no later than every test interaction
    t = np.array([int(r[3]) for r in rows[1:]])
    lab = np.array([int(r[4]) for r in rows[1:]])
    assert t[lab == 0].max() <= t[lab == 1].min() <= t[lab == 1].max() <= t[lab == 2].min()
    assert np.bincount(lab).tolist() == [38, 5, 5]  # round(0.8 * 48), then 10 % each
    with pytest.raises(DataError, match="no rating column"):
        prepare_dataset(reviews, tmp_path / "x", PrepareOptions(user_col="who", item_col="what", min_rating=4))
    with pytest.raises(DataError, match=r"log\.tsv:1: no column 'nope' \(given by --user-col\)"):
        prepare_dataset(reviews, tmp_path / "x", PrepareOptions(user_col="nope"))
    with pytest.raises(DataError, match=r"log\.tsv:1: no user column"):
        prepare_dataset(reviews, tmp_path / "x")


def test_no_time_column_mmrec_ok_loo_refused(tmp_path):
    reviews = tmp_path / "pairs.csv"
    reviews.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i, _, _ in _interactions()))
    prepare_dataset(reviews, tmp_path / "ok")
    assert _read_tsv(tmp_path / "ok" / "ok.inter")[0] == ["userID", "itemID", "rating", "x_label"]
    with pytest.raises(DataError, match="needs a 'timestamp' column"):
        prepare_dataset(reviews, tmp_path / "loo", PrepareOptions(split="loo"))
    assert not (tmp_path / "loo").exists()


def test_min_rating_threshold_then_kcore(tmp_path):
    reviews = write_ratings_csv(tmp_path / "r.csv")
    res = prepare_dataset(reviews, tmp_path / "o", PrepareOptions(min_rating=3, kcore=2))
    assert res.report["counts"]["below_min_rating"] == sum(r < 3 for _, _, r, _ in _interactions())
    ds = load_dataset(tmp_path / "o")
    assert ds.n_users == 9  # the sparse user's two 5-star ratings pass the 2-core
    n_kept = 2 + sum(r >= 3 for _, _, r, _ in _interactions()[:48])
    assert ds.n_items == 6 and res.report["counts"]["final"]["interactions"] == n_kept
    # the sparse user's two interactions go to valid and test; loading drops them (cold start), reported
    assert len(ds.users) == n_kept - 2 and any("no training interaction" in w for w in res.report["warnings"])
    # kcore 0 keeps everything (sparse user, rare item), de-duplicated
    res0 = prepare_dataset(reviews, tmp_path / "k0", PrepareOptions(kcore=0))
    assert res0.report["counts"]["final"]["interactions"] == 51


def test_kcore_removing_everything_is_an_error(tmp_path):
    reviews = write_ratings_csv(tmp_path / "r.csv")
    with pytest.raises(DataError, match=r"r\.csv: no interaction is left after the 9-core filter"):
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(kcore=9))
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == [reviews]


def test_out_exists_is_refused_and_failures_leave_nothing(tmp_path, monkeypatch):
    reviews = write_ratings_csv(tmp_path / "r.csv")
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        prepare_dataset(reviews, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    class Boom(FakeText):
        def encode(self, texts):
            raise RuntimeError("encoder exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        prepare_dataset(
            reviews, tmp_path / "new", PrepareOptions(meta=write_meta_2014(tmp_path / "m.json")), text_encoder=Boom()
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "m.json", "r.csv"]

    # a failure after the temporary folder exists removes it too
    import modalrec.data.prepare.pipeline as pipeline

    def broken(_path):
        raise DataError(_path, "simulated validation failure")

    monkeypatch.setattr(pipeline, "load_dataset", broken)
    with pytest.raises(DataError, match="simulated"):
        prepare_dataset(reviews, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "m.json", "r.csv"]


def test_meta_is_parsed_with_literal_eval_never_eval(tmp_path):
    reviews = write_ratings_csv(tmp_path / "r.csv")
    meta = tmp_path / "meta.json"
    marker = tmp_path / "pwned"
    meta.write_text(
        f"{{'asin': '{ITEMS[0]}', 'title': 'ok'}}\n__import__('pathlib').Path({str(marker)!r}).write_text('x')\n"
    )
    with pytest.raises(DataError, match=r"meta\.json:2: not a JSON object or Python dict literal"):
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(meta=meta), text_encoder=FakeText())
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (
            '{"reviewerID": "a", "asin": "b", "overall": 5, "unixReviewTime": 1}\n{"reviewerID": "a"\n',
            r"r\.json:2: not a JSON object",
        ),
        ('{"reviewerID": "a", "asin": "b", "overall": 5}\n', r"r\.json:1: field 'unixReviewTime' is missing"),
        (
            '{"reviewerID": "a", "asin": "b", "overall": "five", "unixReviewTime": 1}\n',
            r"r\.json:1: field 'overall' 'five' is not a number",
        ),
        ("u1,i1,5.0,100\nu1,i2,5.0\n", r"r\.json:2: expected 4 fields"),
        ("u1,i1,5.0,100\nu1,i2,x,100\n", r"r\.json:2: rating 'x' is not a number"),
        ("user,item,time\nu1,i1,yesterday\n", r"r\.json:2: column 'time': 'yesterday' is neither a number"),
        ("user,item\nu1,i1,extra\n", r"r\.json:2: expected 2 fields as in the header, found 3"),
        ("", r"r\.json: empty file"),
    ],
)
def test_malformed_reviews_name_file_and_line(tmp_path, content, pattern):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        prepare_dataset(path, tmp_path / "o", PrepareOptions(kcore=0))
    assert not (tmp_path / "o").exists()


def test_binary_feature_file_errors_and_mismatch(tmp_path):
    path = write_binary_features(tmp_path / "f.b", [ITEMS[0], ITEMS[1]], dim=8)
    x, found, n, dups = read_image_features(path, {ITEMS[1]: 0, "nope": 1}, dim=8)
    assert n == 2 and dups == 0 and found.tolist() == [True, False] and np.all(x[0] == 2)
    with open(path, "ab") as fh:
        fh.write(b"B000")
    with pytest.raises(DataError, match=r"f\.b: truncated: record 2 has 4 of 42 bytes"):
        read_image_features(path, {ITEMS[0]: 0}, dim=8)
    reviews = write_ratings_csv(tmp_path / "r.csv")
    other = write_binary_features(tmp_path / "other.b", ["X000000000"], dim=8)
    with pytest.raises(DataError, match=r"other\.b: none of the 6 items has a feature"):
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(image_features=other, image_feature_dim=8))


def test_meta_without_matching_ids_is_an_error(tmp_path):
    reviews = write_ratings_csv(tmp_path / "r.csv")
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps({"asin": "OTHER", "title": "x"}) + "\n")
    with pytest.raises(DataError, match=r"m\.json: none of the 6 items has a record") as err:
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(meta=meta), text_encoder=FakeText())
    assert "first item: '" in str(err.value) and "np.str_" not in str(err.value), str(err.value)


def test_bad_options(tmp_path):
    reviews = write_ratings_csv(tmp_path / "r.csv")
    with pytest.raises(ModalrecError, match="mutually exclusive"):
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(image_features=reviews, images=tmp_path))
    with pytest.raises(ModalrecError, match="--split 'random'"):
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(split="random"))
    with pytest.raises(DataError, match="no such file"):
        prepare_dataset(tmp_path / "missing.csv", tmp_path / "o")
    with pytest.raises(DataError, match="no such directory"):
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(images=tmp_path / "nope"))
    # a forced format that does not fit reports the line
    with pytest.raises(DataError, match=r"r\.csv:1: not a JSON object"):
        prepare_dataset(reviews, tmp_path / "o", PrepareOptions(review_format="amazon-reviews"))


def test_options_are_frozen_normalised_and_checked_in_order(tmp_path):
    opts = PrepareOptions(meta=str(tmp_path / "m.json"), text_cols=["title", "brand"], user_col="who")
    assert opts.meta == tmp_path / "m.json" and opts.text_cols == ("title", "brand")
    assert (opts.column_names.user, opts.column_names.item) == ("who", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.kcore = 3  # type: ignore[misc]
    assert PrepareOptions().validate(tmp_path / "ds") == "ds" and PrepareOptions(name="x").validate(tmp_path) == "x"
    with pytest.raises(ModalrecError, match="--kcore must be ≥ 0"):
        PrepareOptions(kcore=-1, batch_size=0).validate(tmp_path / "ds")
    # an existing output folder is reported before any bad setting
    reviews = write_ratings_csv(tmp_path / "r.csv")
    with pytest.raises(DataError, match="already exists"):
        prepare_dataset(reviews, tmp_path, PrepareOptions(split="random"))


def test_format_detection(tmp_path):
    assert detect_review_format(write_ratings_csv(tmp_path / "a.csv")) == "amazon-ratings"
    assert detect_review_format(write_reviews_json(tmp_path / "b.gz", True)) == "amazon-reviews"
    (tmp_path / "c.tsv").write_text("user_id\titem_id\trating\nu\ti\t5\n")
    assert detect_review_format(tmp_path / "c.tsv") == "table"
    (tmp_path / "d.tsv").write_text("u1\ti1\t5\t100\n")  # MovieLens u.data style
    assert detect_review_format(tmp_path / "d.tsv") == "amazon-ratings"
    assert detect_meta_format(write_meta_2014(tmp_path / "m14")) == "amazon2014"
    assert detect_meta_format(write_meta_2018(tmp_path / "m18")) == "amazon2018"
    (tmp_path / "t.csv").write_text("item_id,title\n")
    assert detect_meta_format(tmp_path / "t.csv") == "table"


def test_amazon_item_text_composition():
    assert (
        amazon_item_text({"title": "A", "brand": "B", "categories": [["C", "D"], ["C"]], "description": "E"})
        == "A. B. C, D. E"
    )
    assert amazon_item_text({"title": "Hi!", "category": ["X"], "description": ["p1", "", "p2"]}) == "Hi! X. p1 p2"
    assert amazon_item_text({"title": None, "imUrl": "u"}) == ""
    assert amazon_item_text({"title": "a\tb\n c", "brand": "  "}) == "a b c"


def test_cli_prepare(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import modalrec.data.encode as encode
    from modalrec.cli import app

    reviews = write_ratings_csv(tmp_path / "r.csv")
    meta = write_meta_2014(tmp_path / "m.json")
    feats = write_binary_features(tmp_path / "f.b", ITEMS[:3], dim=4096)
    monkeypatch.setattr(encode, "load_text_encoder", lambda path, device: FakeText())
    out = tmp_path / "cli"
    r = CliRunner().invoke(
        app,
        [
            "data",
            "prepare",
            "--reviews",
            str(reviews),
            "--meta",
            str(meta),
            "--image-features",
            str(feats),
            "--out",
            str(out),
            "--seed",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "8 users" in r.stdout and "6 items" in r.stdout
    assert load_dataset(out).modalities == ["image", "text"]
    rep = json.loads((out / "prepare.json").read_text())
    assert rep["parameters"]["seed"] == 3
    r = CliRunner().invoke(app, ["data", "prepare", "--reviews", str(reviews), "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.stderr and "Traceback" not in r.output


def test_recbole_atomic_header_and_numeric_item_order(tmp_path):
    """Issue 15 item 6: ``name:type`` headers need no --*-col flag; integer ids keep numeric order."""
    reviews = tmp_path / "atomic.inter"
    ids = [1, 2, 10, 100, 20]  # string order would be 1, 10, 100, 2, 20
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in (7, 30, 4, 500):
        lines += [f"{u}\t{i}\t5\t{T0 + 60 * u + j}" for j, i in enumerate(ids)]
    reviews.write_text("\n".join(lines) + "\n")
    res = prepare_dataset(reviews, tmp_path / "out", PrepareOptions(kcore=0))
    assert res.report["parameters"]["columns"] == {
        "user": "user_id",
        "item": "item_id",
        "rating": "rating",
        "time": "timestamp",
    }
    items = [r[0] for r in _read_tsv(tmp_path / "out" / "i_id_mapping.csv")[1:]]
    users = [r[0] for r in _read_tsv(tmp_path / "out" / "u_id_mapping.csv")[1:]]
    assert items == ["1", "2", "10", "20", "100"] and users == ["4", "7", "30", "500"]
    # a typed flag names the same column
    res = prepare_dataset(reviews, tmp_path / "out2", PrepareOptions(kcore=0, user_col="user_id:token"))
    assert res.report["parameters"]["columns"]["user"] == "user_id"


def test_mixed_ids_keep_string_order(tmp_path):
    reviews = tmp_path / "r.csv"
    reviews.write_text("user,item\n" + "".join(f"u{u},{i}\n" for u in range(3) for i in ("10", "9", "b7")))
    prepare_dataset(reviews, tmp_path / "o", PrepareOptions(kcore=0))
    assert [r[0] for r in _read_tsv(tmp_path / "o" / "i_id_mapping.csv")[1:]] == ["10", "9", "b7"]


def test_input_columns_are_checked_before_any_encoder_loads(tmp_path, monkeypatch):
    """Issue 15 item 6: a wrong column fails at once, not after the text model has loaded."""
    import modalrec.data.encode as encode

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the text model was loaded before the input was checked")

    monkeypatch.setattr(encode, "load_text_encoder", no_loading)
    reviews = tmp_path / "log.tsv"
    reviews.write_text("who\twhat\n1\t2\n")
    meta = tmp_path / "items.csv"
    meta.write_text("item_id,title\n2,Item 2\n")
    with pytest.raises(DataError, match=r"log\.tsv:1: no user column"):
        prepare_dataset(reviews, tmp_path / "x", PrepareOptions(meta=meta))
    with pytest.raises(DataError, match=r"items\.csv:1: no column 'blurb' \(given by --text-cols\)"):
        prepare_dataset(
            reviews, tmp_path / "x", PrepareOptions(meta=meta, user_col="who", item_col="what", text_cols=["blurb"])
        )
    assert not (tmp_path / "x").exists()
