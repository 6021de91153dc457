"""Dataset folders: validation errors, warnings, modalities, titles, splits, the synthetic generator."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import HEADER, SYN_ITEMS, SYN_MODALITIES, SYN_USERS, inter_text, toy_rows, write_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modalrec.data.dataset import TEST, TRAIN, VALID, load_dataset
from modalrec.data.split import (
    resplit_dataset,
    split_labels,
    split_loo,
    split_mmrec,
    split_temporal,
)
from modalrec.data.synth import generate_synthetic
from modalrec.errors import DataError


def _raises_data_error(folder: Path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(folder, **kwargs)
    return info.value


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ================================================================ a valid folder loads
def test_valid_toy_folder_loads(make_folder):
    rows = toy_rows(4, 6)
    ds = load_dataset(make_folder(rows))
    assert (ds.n_users, ds.n_items) == (4, 6)
    assert len(ds.users) == len(rows)
    assert ds.warnings == []
    assert ds.modalities == []
    assert ds.name == "toy"
    s = ds.summary()
    assert s["per_split"] == {"train": 12, "valid": 4, "test": 4}
    assert s["density"] == pytest.approx(20 / 24)
    assert ds.train_matrix.shape == (4, 6) and ds.train_matrix.nnz == 12


# ================================================================ errors
def test_missing_column_names_file_line_and_column(make_folder):
    folder = make_folder(text="userID\titemID\trating\ttimestamp\n0\t0\t1\t5\n")
    err = _raises_data_error(folder)
    assert err.path.endswith("toy.inter") and err.line == 1
    assert "toy.inter:1" in str(err)
    assert "x_label" in str(err)


def test_space_separated_header_is_missing_column(make_folder):
    folder = make_folder(text="userID itemID x_label\n0 0 0\n")
    err = _raises_data_error(folder)
    assert "toy.inter:1" in str(err) and "tab-separated" in str(err)


def test_non_integer_id_reports_its_line(make_folder):
    rows = toy_rows()
    rows[3] = ("abc", rows[3][1], 1, 0, 0)  # data row 4 -> file line 5
    err = _raises_data_error(make_folder(rows))
    assert err.line == 5, str(err)
    assert "toy.inter:5" in str(err) and "userID" in str(err) and "'abc'" in str(err)


def test_non_integer_item_id_line_counts_blank_lines(make_folder):
    rows = toy_rows()
    body = inter_text(rows).splitlines()
    # header, 2 rows, two blank lines, then the bad row
    bad = "\t".join(["1", "x7", "1", "0", "0"])
    lines = body[:3] + ["", "   ", bad] + body[3:]
    err = _raises_data_error(make_folder(text="\n".join(lines) + "\n"))
    assert err.line == 6, str(err)
    assert "toy.inter:6" in str(err) and "itemID" in str(err)


def test_bad_x_label_line_after_blank_lines(make_folder):
    rows = toy_rows()
    body = inter_text(rows).splitlines()
    lines = body[:2] + ["", ""] + ["0\t1\t1\t0\t3"] + body[2:]
    err = _raises_data_error(make_folder(text="\n".join(lines) + "\n"))
    assert err.line == 5, str(err)
    assert "x_label" in str(err) and "3" in err.message


def test_x_label_3(make_folder):
    rows = toy_rows()
    rows[7] = (*rows[7][:4], 3)  # file line 9
    err = _raises_data_error(make_folder(rows))
    assert err.line == 9 and "toy.inter:9" in str(err)
    assert "x_label 3" in str(err)


def test_wrong_number_of_fields_reports_line(make_folder):
    rows = toy_rows()
    text = inter_text(rows).splitlines()
    text[2] = text[2] + "\textra"
    err = _raises_data_error(make_folder(text="\n".join(text) + "\n"))
    assert err.line == 3 and "toy.inter:3" in str(err)


@pytest.mark.parametrize(
    ("column", "shift", "gap"),
    [("userID", 1, None), ("itemID", 1, None), ("userID", 0, 2), ("itemID", 0, 3)],
)
def test_ids_must_be_zero_based_contiguous(make_folder, column, shift, gap):
    rows = toy_rows(4, 6)
    col = HEADER.index(column)
    new = []
    for r in rows:
        r = list(r)
        r[col] = r[col] + shift
        if gap is not None and r[col] >= gap:
            r[col] += 1
        new.append(tuple(r))
    err = _raises_data_error(make_folder(new))
    assert err.path.endswith("toy.inter")
    assert column in str(err) and "contiguous" in str(err)
    missing = 0 if shift else gap
    assert f"first missing: {missing}" in str(err)


def test_negative_id(make_folder):
    rows = toy_rows()
    rows[2] = (-1, *rows[2][1:])
    err = _raises_data_error(make_folder(rows))
    assert err.line == 4 and "negative" in str(err)


def test_huge_id_is_a_data_error_not_a_memory_error(make_folder):
    rows = toy_rows()
    rows[0] = (10**12, *rows[0][1:])
    err = _raises_data_error(make_folder(rows))
    assert "userID" in str(err) and "contiguous" in str(err)


def test_id_beyond_int64_is_a_data_error(make_folder):
    rows = toy_rows()
    rows[1] = (rows[1][0], "99999999999999999999", *rows[1][2:])
    err = _raises_data_error(make_folder(rows))
    assert err.line == 3 and "itemID" in str(err)


def test_empty_file_and_header_only(make_folder):
    assert _raises_data_error(make_folder(text="")).line == 1
    err = _raises_data_error(make_folder(text="userID\titemID\tx_label\n\n"))
    assert "no interactions" in str(err)


def test_feature_file_with_wrong_row_count(make_folder):
    folder = make_folder(toy_rows(4, 6), features={"image": np.ones((5, 3), dtype=np.float32)})
    err = _raises_data_error(folder)
    assert err.path.endswith("image_feat.npy")
    assert "5 rows" in str(err) and "6 items" in str(err)


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_features(make_folder, value, word):
    x = np.ones((6, 3), dtype=np.float32)
    x[4, 2] = value
    err = _raises_data_error(make_folder(toy_rows(4, 6), features={"text": x}))
    assert err.path.endswith("text_feat.npy")
    assert word in str(err) and "row 4" in str(err) and "column 2" in str(err)


def test_float32_features_are_memory_mapped_and_other_dtypes_converted(make_folder, monkeypatch):
    import modalrec.data.files as files_module

    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 5)).astype(np.float32)
    text = rng.normal(size=(6, 4)).astype(np.float16)
    folder = make_folder(toy_rows(4, 6), features={"image": image, "text": text})
    ds = load_dataset(folder)
    assert isinstance(ds.features["image"], np.memmap)  # mapped, not read into memory
    np.testing.assert_array_equal(ds.features["image"], image)
    assert ds.features["text"].dtype == np.float32 and not isinstance(ds.features["text"], np.memmap)
    np.testing.assert_array_equal(ds.features["text"], text.astype(np.float32))
    whole = ds.feature_hash("image")
    monkeypatch.setattr(files_module, "FEATURE_BLOCK_BYTES", 1)  # one row per block: the same hash
    assert load_dataset(folder).feature_hash("image") == whole


def test_a_non_finite_value_is_found_in_a_later_row_block(make_folder, monkeypatch):
    import modalrec.data.files as files_module

    monkeypatch.setattr(files_module, "FEATURE_BLOCK_BYTES", 8)  # two rows of 3 float32 per block
    x = np.ones((6, 3), dtype=np.float32)
    x[5, 1] = np.nan
    err = _raises_data_error(make_folder(toy_rows(4, 6), features={"image": x}))
    assert "row 5" in str(err) and "column 1" in str(err)


def test_feature_file_not_2d_or_unreadable(make_folder):
    folder = make_folder(toy_rows(4, 6), features={"image": np.ones(6, dtype=np.float32)})
    assert "2-D" in str(_raises_data_error(folder))
    folder = make_folder(toy_rows(4, 6))
    (folder / "text_feat.npy").write_bytes(b"not a npy file")
    err = _raises_data_error(folder)
    assert err.path.endswith("text_feat.npy")


def test_empty_training_split(make_folder):
    rows = [(u, i, 1, 0, 1 if (u + i) % 2 else 2) for u in range(3) for i in range(3)]
    err = _raises_data_error(make_folder(rows))
    assert err.path.endswith("toy.inter") and "training split" in str(err)


def test_no_inter_file(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    np.save(folder / "image_feat.npy", np.ones((3, 2)))
    err = _raises_data_error(folder)
    assert err.path == str(folder) and "no *.inter file" in str(err)


def test_missing_directory(tmp_path):
    err = _raises_data_error(tmp_path / "nope")
    assert "nope" in str(err) and "not a directory" in str(err)


def test_two_inter_files(make_folder):
    folder = make_folder(toy_rows())
    (folder / "other.inter").write_text(inter_text(toy_rows()))
    err = _raises_data_error(folder)
    assert err.path == str(folder)
    assert "found 2" in str(err) and "other.inter" in str(err) and "toy.inter" in str(err)


def test_unknown_modality_requested(make_folder):
    folder = make_folder(toy_rows(4, 6), features={"image": np.ones((6, 3), dtype=np.float32)})
    err = _raises_data_error(folder, modalities=["audio"])
    assert err.path.endswith("audio_feat.npy")
    assert "'audio'" in str(err) and "image" in str(err)


# ================================================================ warnings
def test_repeated_pairs_are_deduplicated_with_count(make_folder):
    rows = toy_rows(4, 6)
    rows += [rows[0], rows[0], rows[5]]  # three extra copies of two training pairs
    ds = load_dataset(make_folder(rows))
    assert len(ds.users) == len(toy_rows(4, 6))
    assert any("3 repeated" in w for w in ds.warnings), ds.warnings
    assert all(w.startswith("toy.inter") for w in ds.warnings)
    pairs = set(zip(ds.users.tolist(), ds.items.tolist(), strict=True))
    assert len(pairs) == len(ds.users)


def test_pair_in_train_and_test_keeps_the_train_copy(make_folder):
    rows = toy_rows(4, 6)
    train_item = next(r[1] for r in rows if r[0] == 1 and r[4] == TRAIN)
    # the test copy comes FIRST in the file, so "keep the first line" alone would keep the test copy
    rows.insert(0, (1, train_item, 1, 999, TEST))
    ds = load_dataset(make_folder(rows))
    mask = (ds.users == 1) & (ds.items == train_item)
    assert mask.sum() == 1
    assert ds.labels[mask][0] == TRAIN
    assert any("1 repeated" in w for w in ds.warnings), ds.warnings
    assert ds.split_matrix("test")[1, train_item] == 0
    assert ds.split_matrix("test")[1].nnz == 1


def test_users_without_training_are_dropped_with_count(make_folder):
    rows = toy_rows(4, 6)
    rows += [(4, 0, 1, 0, VALID), (4, 1, 1, 0, TEST), (5, 2, 1, 0, TEST)]
    ds = load_dataset(make_folder(rows))
    assert not np.isin(ds.users, [4, 5]).any()
    assert ds.n_users == 6  # ids stay valid; the users simply have no interactions
    assert any("3 valid/test interactions of 2 users" in w for w in ds.warnings), ds.warnings


# ================================================================ modalities and titles
def test_dataset_without_features_has_no_modalities(make_folder):
    ds = load_dataset(make_folder(toy_rows()))
    assert ds.modalities == [] and ds.features == {}
    assert ds.summary()["modalities"] == {}


def test_feature_files_not_ending_in_feat_npy_are_ignored(make_folder):
    folder = make_folder(toy_rows(4, 6), features={"image": np.ones((6, 3), dtype=np.float32)})
    np.save(folder / "text_feat_minilm.npy", np.full((2, 2), np.nan))  # would be invalid if read
    np.save(folder / "notes.npy", np.ones(3))
    ds = load_dataset(folder)
    assert ds.modalities == ["image"]
    assert ds.features["image"].dtype == np.float32 and ds.features["image"].shape == (6, 3)


def test_modalities_argument_selects_and_orders(make_folder):
    feats = {"image": np.ones((6, 3), np.float32), "text": np.zeros((6, 2), np.float32)}
    folder = make_folder(toy_rows(4, 6), features=feats)
    assert load_dataset(folder).modalities == ["image", "text"]
    assert load_dataset(folder, ["text"]).modalities == ["text"]
    assert load_dataset(folder, []).modalities == []


def test_select_modalities(syn_dataset):
    assert syn_dataset.select_modalities(None) is syn_dataset
    only_text = syn_dataset.select_modalities(["text"])
    assert only_text.modalities == ["text"]
    assert only_text.features["text"] is syn_dataset.features["text"]
    assert syn_dataset.modalities == ["image", "text"]  # the original is untouched
    assert only_text.fingerprint != syn_dataset.fingerprint
    assert only_text.interactions_hash == syn_dataset.interactions_hash
    with pytest.raises(DataError, match="'audio' not found"):
        syn_dataset.select_modalities(["text", "audio"])


def test_item_titles(make_folder):
    titles = "itemID\tasin\ttext\n0\tB01\tFirst item\n2\tB03\tThird\titem\n\n5\tB06\t  Last  \n"
    ds = load_dataset(make_folder(toy_rows(4, 6), titles=titles))
    assert ds.title(0) == "First item"
    assert ds.title(2) == "item"  # last column is the text
    assert ds.title(5) == "Last"
    assert ds.title(1) is None
    assert ds.summary()["has_titles"] is True
    assert load_dataset(make_folder(toy_rows(4, 6))).title(0) is None


def test_item_titles_errors(make_folder):
    err = _raises_data_error(make_folder(toy_rows(4, 6), titles="0\ta\n9\tb\n"))
    assert err.path.endswith("item_text.tsv") and err.line == 2 and "outside" in str(err)
    err = _raises_data_error(make_folder(toy_rows(4, 6), titles="itemID\ttext\n0\ta\nzz\tb\n"))
    assert err.line == 3 and "'zz'" in str(err)


# ================================================================ splits
@pytest.mark.parametrize(
    ("n", "train", "valid", "test"),
    [(3, 1, 1, 1), (5, 3, 1, 1), (9, 7, 1, 1), (10, 8, 1, 1), (15, 12, 1, 2), (23, 19, 2, 2)],
)
def test_mmrec_split_counts(n, train, valid, test):
    users = np.repeat(np.arange(4), n)
    labels = split_mmrec(users, seed=7)
    for u in range(4):
        lab = labels[users == u]
        assert [(lab == TRAIN).sum(), (lab == VALID).sum(), (lab == TEST).sum()] == [train, valid, test]


def test_mmrec_split_formula_over_many_sizes():
    sizes = np.arange(1, 120)
    users = np.repeat(np.arange(sizes.size), sizes)
    rng = np.random.default_rng(0)
    users = users[rng.permutation(users.size)]  # interleaved users, not sorted
    labels = split_mmrec(users, seed=3)
    for u, n in enumerate(sizes):
        lab = labels[users == u]
        if n < 10:
            exp_test, exp_valid = min(n, 1), int(n >= 2)
        else:
            vt = n // 5  # floor(0.2 n)
            exp_valid = vt // 2
            exp_test = vt - exp_valid
        assert (lab == TEST).sum() == exp_test, n
        assert (lab == VALID).sum() == exp_valid, n
        assert (lab == TRAIN).sum() == n - exp_test - exp_valid, n


def test_mmrec_split_is_seeded():
    users = np.repeat(np.arange(30), 12)
    a, b, c = split_mmrec(users, 5), split_mmrec(users, 5), split_mmrec(users, 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(split_labels("mmrec", users, None, seed=5), a)


def test_loo_takes_latest_as_test_second_latest_as_valid():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(20), 6)
    perm = rng.permutation(users.size)
    users = users[perm]
    ts = rng.permutation(users.size).astype(float)
    labels = split_loo(users, ts)
    for u in range(20):
        m = users == u
        order = np.argsort(ts[m])
        lab = labels[m][order]
        assert lab[-1] == TEST and lab[-2] == VALID and (lab[:-2] == TRAIN).all()


def test_loo_small_users():
    users = np.array([0, 1, 1, 2, 2, 2])
    ts = np.array([5.0, 2.0, 1.0, 3.0, 1.0, 2.0])
    np.testing.assert_array_equal(split_loo(users, ts), [TRAIN, TEST, TRAIN, TEST, TRAIN, VALID])


def test_temporal_split_orders_splits_in_time():
    rng = np.random.default_rng(2)
    ts = rng.integers(0, 50, size=200).astype(float)  # many ties
    labels = split_temporal(ts)
    assert ts[labels == TRAIN].max() <= ts[labels == VALID].min()
    assert ts[labels == VALID].max() <= ts[labels == TEST].min()
    assert (labels == TRAIN).sum() == 160 and (labels == VALID).sum() == 20 and (labels == TEST).sum() == 20


def test_split_labels_errors():
    users = np.array([0, 0, 1])
    with pytest.raises(DataError, match="timestamp"):
        split_labels("loo", users, None)
    with pytest.raises(DataError, match="timestamp"):
        split_labels("temporal", users, None)
    with pytest.raises(DataError, match="unknown split protocol"):
        split_labels("random", users, np.zeros(3))


def test_resplit_dataset_writes_new_folder_and_never_touches_input(syn_dir, tmp_path):
    before = _bytes_of(syn_dir)
    out = resplit_dataset(syn_dir, "mmrec", 11, tmp_path / "re")
    assert _bytes_of(syn_dir) == before
    ds_old, ds_new = load_dataset(syn_dir), load_dataset(out)
    assert (ds_new.n_users, ds_new.n_items) == (ds_old.n_users, ds_old.n_items)
    assert ds_new.modalities == ds_old.modalities
    np.testing.assert_array_equal(ds_new.features["image"], ds_old.features["image"])
    assert len(ds_new.users) == len(ds_old.users)
    assert ds_new.title(3) == ds_old.title(3)
    assert not np.array_equal(ds_new.labels, ds_old.labels)  # another seed, another split
    # refuses an existing output, including the input folder itself
    marker = out / "marker"
    marker.write_text("x")
    with pytest.raises(DataError, match="already exists"):
        resplit_dataset(syn_dir, "mmrec", 1, out)
    assert marker.read_text() == "x"
    with pytest.raises(DataError, match="already exists"):
        resplit_dataset(syn_dir, "loo", 1, syn_dir)
    assert _bytes_of(syn_dir) == before


def test_resplit_temporal_and_loo_on_real_timestamps(syn_dir, tmp_path):
    out = resplit_dataset(syn_dir, "temporal", 0, tmp_path / "tmp")
    ds = load_dataset(out)
    t = ds.timestamps
    assert t[ds.labels == TRAIN].max() <= t[ds.labels == VALID].min()
    out = resplit_dataset(syn_dir, "loo", 0, tmp_path / "loo")
    ds = load_dataset(out)
    for u in range(0, ds.n_users, 17):
        m = ds.users == u
        assert ds.timestamps[m][ds.labels[m] == TEST].min() >= ds.timestamps[m][ds.labels[m] == TRAIN].max()


def test_resplit_deduplicates_repeats(make_folder, tmp_path):
    rows = toy_rows(4, 6) * 2
    out = resplit_dataset(make_folder(rows), "mmrec", 0, tmp_path / "dedup")
    ds = load_dataset(out)
    assert len(ds.users) == len(toy_rows(4, 6)) and ds.warnings == []


def test_loo_without_timestamp_column(make_folder, tmp_path):
    rows = [(u, i, 0) for u, i, _, _, _ in toy_rows()]
    src = make_folder(rows, header=("userID", "itemID", "x_label"))
    with pytest.raises(DataError) as info:
        resplit_dataset(src, "loo", 0, tmp_path / "out")
    assert info.value.path.endswith("toy.inter") and "timestamp" in str(info.value)
    assert not (tmp_path / "out").exists()
    # mmrec needs no timestamp
    ds = load_dataset(resplit_dataset(src, "mmrec", 0, tmp_path / "out2"))
    assert (ds.labels == TEST).sum() == 4


# ================================================================ synthetic generator
def test_synthetic_is_deterministic_for_a_seed():
    kw = {"n_users": 60, "n_items": 40, "modalities": {"image": 8, "text": 5}}
    a, b = generate_synthetic(seed=3, **kw), generate_synthetic(seed=3, **kw)
    for key in ("users", "items", "labels", "timestamps"):
        np.testing.assert_array_equal(a[key], b[key])
    for m in ("image", "text"):
        np.testing.assert_array_equal(a["features"][m], b["features"][m])
    c = generate_synthetic(seed=4, **kw)
    assert not np.array_equal(a["features"]["image"], c["features"]["image"])
    assert not (a["users"].size == c["users"].size and np.array_equal(a["items"], c["items"]))


def test_synthetic_folder_properties(syn_dir, syn_dataset):
    ds = syn_dataset
    assert (ds.n_users, ds.n_items) == (SYN_USERS, SYN_ITEMS)
    assert ds.warnings == []
    assert {m: x.shape[1] for m, x in ds.features.items()} == SYN_MODALITIES
    assert all(x.shape[0] == SYN_ITEMS and x.dtype == np.float32 for x in ds.features.values())
    per_user = np.bincount(ds.users, minlength=ds.n_users)
    assert per_user.min() >= 5
    assert np.array_equal(np.unique(ds.items), np.arange(SYN_ITEMS))
    # every user gets at least one valid and one test item under the mmrec rule
    assert np.unique(ds.split("valid")[0]).size == SYN_USERS
    assert np.unique(ds.split("test")[0]).size == SYN_USERS
    assert ds.title(0) is not None and "Synthetic" in ds.title(0)
    assert sorted(p.name for p in syn_dir.iterdir()) == [
        "image_feat.npy",
        "item_text.tsv",
        "synthetic.inter",
        "text_feat.npy",
    ]


def test_write_dataset_refuses_existing(syn_dir):
    from modalrec.data.synth import write_synthetic_dataset

    before = _bytes_of(syn_dir)
    with pytest.raises(DataError, match="already exists"):
        write_synthetic_dataset(syn_dir, n_users=20, n_items=20)
    assert _bytes_of(syn_dir) == before


# ================================================================ property: load never crashes
_BAD_CELLS = ["x", "", "1.5", " 3 ", "-1", "7", "3", "99999999999999999999", "1000000000000"]


@st.composite
def _tables(draw) -> list[list[str]]:
    """Small interaction tables: mostly valid (small ids, labels 0–2), sometimes with corrupted cells."""
    n_users, n_items = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    n_rows = draw(st.integers(0, 25))
    rows = [
        [
            str(draw(st.integers(0, n_users - 1))),
            str(draw(st.integers(0, n_items - 1))),
            draw(st.sampled_from(["0", "0", "0", "1", "2"])),
        ]
        for _ in range(n_rows)
    ]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2])) if rows else 0):
        row, col = draw(st.integers(0, n_rows - 1)), draw(st.integers(0, 2))
        rows[row][col] = draw(st.sampled_from(_BAD_CELLS))
    return rows


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_tables(), blank_every=st.integers(0, 5))
def test_load_dataset_succeeds_consistently_or_raises_data_error(rows, blank_every):
    lines = ["userID\titemID\tx_label"]
    for n, r in enumerate(rows):
        if blank_every and n % blank_every == 0:
            lines.append("")
        lines.append("\t".join(r))
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "d", text="\n".join(lines) + "\n")
        try:
            ds = load_dataset(folder)
        except DataError as err:
            assert re.match(r".*\.inter(:\d+)?: ", str(err)) or str(folder) in str(err)
            return
    parsed = [tuple(int(v) for v in r) for r in rows]
    assert ds.n_users == max(r[0] for r in parsed) + 1
    assert ds.n_items == max(r[1] for r in parsed) + 1
    assert len(ds.users) == len(ds.items) == len(ds.labels) <= len(parsed)
    pairs = set(zip(ds.users.tolist(), ds.items.tolist(), strict=True))
    assert len(pairs) == len(ds.users)  # no repeats survive
    assert pairs == {(u, i) for u, i, _ in parsed if (u, i) in pairs}
    train_users = set(ds.users[ds.labels == TRAIN].tolist())
    assert train_users and set(ds.users.tolist()) <= train_users
    # every pair whose user has a training row survives
    all_train_users = {u for u, _, x in parsed if x == TRAIN}
    assert {(u, i) for u, i, _ in parsed if u in all_train_users} == pairs
    assert sum(ds.summary()["per_split"].values()) == len(ds.users)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_tables(), blank_every=st.integers(0, 5), stamps=st.booleans())
def test_numeric_fast_reader_equals_the_line_by_line_reader_whenever_it_accepts_a_file(rows, blank_every, stamps):
    """The C reader of an all-numeric ``.inter`` file gives exactly the line-by-line reader's arrays; whatever it
    refuses (a bad cell, a blank line it cannot skip, an empty table) goes to the line-by-line reader."""
    from modalrec.data import files

    lines = ["userID\titemID\tx_label" + ("\ttimestamp" if stamps else "")]
    for n, r in enumerate(rows):
        if blank_every and n % blank_every == 0:
            lines.append("")
        lines.append("\t".join(r + ([f"{1_600_000_000 + n}.5"] if stamps else [])))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.inter"
        path.write_text("\n".join(lines) + "\n")
        try:
            fast = files._read_numeric_inter_file(path)
        except (DataError, ValueError, UserWarning):
            return
        slow = files._read_inter_file_by_line(path)
    assert fast.keys() == slow.keys()
    for key in fast:
        assert fast[key].dtype == slow[key].dtype and np.array_equal(fast[key], slow[key]), key


def test_an_all_numeric_inter_file_is_read_without_the_line_by_line_reader(make_folder, monkeypatch):
    from modalrec.data import files

    folder = make_folder(toy_rows(4, 6))
    expected = load_dataset(folder)
    monkeypatch.setattr(files, "_read_inter_file_by_line", lambda path: pytest.fail("line-by-line reader used"))
    ds = load_dataset(folder)
    assert np.array_equal(ds.users, expected.users) and np.array_equal(ds.items, expected.items)
    assert np.array_equal(ds.labels, expected.labels) and np.array_equal(ds.timestamps, expected.timestamps)


def test_synthetic_top_items_equal_the_first_columns_of_a_stable_descending_sort():
    from modalrec.data.synth import _top_items

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 500))
    for k in (1, 7, 499, 500, 600):
        expected = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        assert np.array_equal(_top_items(logits, k)[:, :k], expected)


def test_default_synthetic_dataset_is_the_one_the_reproduction_record_was_trained_on(tmp_path):
    """The built-in data are pinned by their content fingerprint (the record's synthetic runs name it):
    a faster generator must produce the same bytes."""
    from modalrec.data.dataset import load_dataset
    from modalrec.data.synth import write_synthetic_dataset

    folder = write_synthetic_dataset(tmp_path / "syn")
    assert load_dataset(folder).fingerprint == "7e60521b4179faf4bf9170dd"


def test_large_catalogue_generator_draws_from_candidate_pools_with_the_same_structure():
    """Above exact_limit user–item pairs each user draws from a pool (topics + popularity) instead of every
    item: deterministic, no repeated pair, about the asked interactions per user, and users still
    concentrate on their preferred topics as the exact generator makes them do."""
    from modalrec.data.synth import generate_synthetic

    kw = {"n_users": 400, "n_items": 3000, "n_topics": 40, "mean_interactions": 9.0, "seed": 5}
    pooled = generate_synthetic(**kw, exact_limit=0)
    again = generate_synthetic(**kw, exact_limit=0)
    exact = generate_synthetic(**kw)
    assert np.array_equal(pooled["users"], again["users"]) and np.array_equal(pooled["items"], again["items"])
    pairs = pooled["users"] * kw["n_items"] + pooled["items"]
    assert np.unique(pairs).size == pairs.size
    assert set(np.unique(pooled["items"])) == set(range(kw["n_items"]))  # every item occurs
    per_user = np.bincount(pooled["users"], minlength=kw["n_users"])
    assert per_user.min() >= 5 and 7 < per_user.mean() < 12

    def affinity(g: dict) -> float:  # mean z_u · z_j of the drawn pairs: the planted preference signal
        return float(np.mean(np.sum(g["z_users"][g["users"]] * g["z_items"][g["items"]], axis=1)))

    shuffled = {**pooled, "items": np.random.default_rng(0).permutation(pooled["items"])}
    assert affinity(pooled) > affinity(shuffled) + 0.2
    assert abs(affinity(pooled) - affinity(exact)) < 0.15
