"""ANN retrieval (``modalrec index``, ``recommend --ann``, ``serve --ann``): the index's recall on a 100,000-item
table, deterministic builds, answers equal to exact ranking where the candidates cover the items, and one-line
refusals of non-dot-product models and of missing, stale or damaged indexes (docs/scale.md#ann-retrieval)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, free_port
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modalrec.ann import (
    INDEX_KINDS,
    RETRIEVAL_NEEDS,
    build_mips_index,
    faiss_module,
    index_kind,
    index_to_bytes,
    ivf_lists,
    mips_queries,
    mips_recall,
    mips_rows,
    search_effort_range,
    search_mips,
    tune_search_effort,
)
from modalrec.cli import app as cli_app
from modalrec.errors import ConfigError, ModalrecError
from modalrec.run_index import INDEX_FILE, INDEX_INFO, ItemIndex, open_item_index
from modalrec.run_load import load_run, recommend
from modalrec.runs import train_run
from modalrec.serve import create_app

pytest.importorskip("faiss", reason="FAISS is in the scale extra (pip install -e '.[scale]'), which CI installs")

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ann_retrieval.py"
USERS = (0, 3, 17, 42, 149)


def invoke(*args: object):
    return CliRunner().invoke(cli_app, [str(a) for a in args], env=ENV)


def clustered(n_items: int, n_queries: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items and queries around 100 Gaussian centres; item norms spread by e^N(0, 0.25) (the hard case for MIPS)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, dim)).astype(np.float32)
    items = centres[rng.integers(0, 100, n_items)] + 0.5 * rng.standard_normal((n_items, dim)).astype(np.float32)
    items *= rng.lognormal(0.0, 0.25, (n_items, 1)).astype(np.float32)
    queries = centres[rng.integers(0, 100, n_queries)] + 0.5 * rng.standard_normal((n_queries, dim))
    return items.astype(np.float32), queries.astype(np.float32)


# ================================================================ the index (modalrec.ann)
def test_the_mips_transform_turns_inner_product_into_l2():
    items, queries = clustered(500, 20, dim=8)
    rows, top = mips_rows(items)
    assert rows.shape == (500, 9) and top == pytest.approx(np.linalg.norm(items, axis=1).max(), rel=1e-6)
    assert np.allclose(np.linalg.norm(rows, axis=1), top, rtol=1e-5)  # every row on the sphere of radius M
    q = mips_queries(queries)
    l2 = ((q[:, None, :] - rows[None, :, :]) ** 2).sum(-1)
    dot = queries @ items.T
    assert (np.argsort(l2, axis=1)[:, :10] == np.argsort(-dot, axis=1)[:, :10]).all()


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_recall_at_10_on_100k_clustered_items(kind):
    """The search effort chosen by modalrec index's rule on 500 queries; recall@10 ≥ 0.95 on 1,500 other queries."""
    items, queries = clustered(100_000, 2000)
    index = build_mips_index(items, kind=kind)
    assert index.ntotal == 100_000 and index_kind(index) == kind
    tune, check = queries[:500], queries[500:]
    first, last = search_effort_range(index)
    ef, tried = tune_search_effort(
        lambda ef: mips_recall(tune, items, search_mips(index, tune, 10, ef), 10), start=first, limit=last
    )
    assert tried[ef] >= 0.95 and list(tried) == sorted(tried)
    recall = mips_recall(check, items, search_mips(index, check, 10, ef), 10)
    assert recall >= 0.95, (ef, tried, recall)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_building_twice_gives_the_same_index_and_answers(kind):
    items, queries = clustered(5000, 200, seed=1)
    torch_threads = torch.get_num_threads()
    a, b = build_mips_index(items, kind=kind), build_mips_index(items, kind=kind)
    assert index_to_bytes(a) == index_to_bytes(b)
    assert (search_mips(a, queries, 50, 8) == search_mips(b, queries, 50, 8)).all()
    assert torch.get_num_threads() == torch_threads
    ids = np.arange(5000, dtype=np.int64) * 3  # item ids other than the row numbers are answered
    assert set(search_mips(build_mips_index(items, ids, kind), queries[:5], 10).ravel()) <= set(ids.tolist())
    with pytest.raises(ConfigError, match="index kind 'flat': choose from hnsw, ivf"):
        build_mips_index(items, kind="flat")


def test_an_ivf_index_scanning_every_cell_is_exact():
    items, queries = clustered(4000, 50, dim=16, seed=3)
    index = build_mips_index(items, kind="ivf")
    assert index.nlist == ivf_lists(4000) == 63
    assert mips_recall(queries, items, search_mips(index, queries, 10, index.nlist), 10) == 1.0


def test_missing_faiss_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    want = r"--ann \(modalrec index\) need FAISS: pip install 'modalrec\[scale\]'.*without --ann"
    with pytest.raises(ConfigError, match=want) as exc:
        faiss_module(*RETRIEVAL_NEEDS)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_retrieve_searches_leaves_out_the_excluded_and_scores_exactly(kind):
    """Past the candidates' count the index is searched: the excluded items are dropped after the search (and
    counted into it), the scores are the exact dot products, best first, and the lists match exact ranking's."""
    items, queries = clustered(3000, 40, dim=16, seed=2)
    ids = np.flatnonzero(np.arange(3000) % 10 != 0)  # every 10th item left out of the index (unscorable)
    indexed = np.zeros(3000, dtype=bool)
    indexed[ids] = True
    table = torch.from_numpy(items)
    effort = 16 if kind == "ivf" else 128
    idx = ItemIndex(build_mips_index(items[ids], ids, kind), torch.from_numpy(queries), table, indexed, {}, effort)
    found = 0
    for user in range(40):
        exact_scores = table @ torch.from_numpy(queries[user])
        seen = torch.topk(exact_scores, 25).indices[::2]  # some of the user's best items are "seen"
        exclude = torch.cat([seen, torch.from_numpy(np.flatnonzero(~indexed))])
        got, scores, how = idx.retrieve(user, 10, exclude)
        assert how == {"method": "ann", "candidates": 100 + int(indexed[seen.numpy()].sum())}
        assert not set(got) & set(exclude.tolist()) and len(got) == 10
        assert scores == pytest.approx(exact_scores[got].tolist(), rel=1e-5) and scores == sorted(scores, reverse=True)
        ranked = exact_scores.clone()
        ranked[exclude] = -torch.inf
        found += len(set(got) & set(torch.topk(ranked, 10).indices.tolist()))
    assert found / 400 >= 0.95


# ================================================================ a run's index
@pytest.fixture(scope="module")
def bpr_run(syn_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ann") / "bpr"
    overrides = {"epochs": 2, "train_batch_size": 256, "learning_rate": 0.01}
    run, _ = train_run("BPR", syn_dir, overrides=overrides, out=out, quiet=True, cache_dir=False)
    res = invoke("index", run)
    assert res.exit_code == 0, res.output
    assert "recall@10 1.000" in res.stdout and INDEX_FILE in res.stdout
    return run


@pytest.fixture(scope="module")
def mario_run(syn_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ann") / "mario"
    overrides = {"epochs": 1, "train_batch_size": 256}
    run, _ = train_run("MARIO", syn_dir, overrides=overrides, out=out, quiet=True, cache_dir=False)
    return run


def test_index_writes_its_two_files_and_nothing_else(bpr_run, tmp_path):
    info = json.loads((bpr_run / INDEX_INFO).read_text())
    assert info["items"] == info["n_items"] == 100 and info["dim"] == 64 and info["left_out"] == 0
    assert info["kind"] == "ivf" and info["ivf"]["nlist"] == 2 and info["build_seconds"] >= 0
    assert info["search_effort"]["name"] == "nprobe" and info["search_effort"]["value"] == 1
    assert info["recall"]["recall"] == 1.0 and info["recall"]["users"] > 0
    assert info["model_file"]["sha256"] and info["model"]["model"] == "BPR"
    before = {p.name: p.read_bytes() for p in bpr_run.iterdir()}
    res = invoke("index", bpr_run)  # a rebuild replaces the derived files; the same weights, the same index
    assert res.exit_code == 0, res.output
    after = {p.name: p.read_bytes() for p in bpr_run.iterdir()}
    assert set(after) == set(before)
    assert {n for n in after if after[n] != before[n]} <= {INDEX_INFO}  # only its "created" time may differ


def test_an_hnsw_index_is_built_and_served_on_request(bpr_run, tmp_path):
    run = tmp_path / "hnsw"
    shutil.copytree(bpr_run, run)
    res = invoke("index", run, "--kind", "hnsw", "--effort", 64)
    assert res.exit_code == 0 and "efSearch 64: recall@10 1.000" in res.stdout, res.output
    info = json.loads((run / INDEX_INFO).read_text())
    assert info["kind"] == "hnsw" and info["hnsw"] == {"M": 32, "ef_construction": 80}
    assert info["search_effort"] == {"name": "efSearch", "value": 64, "rule": "given (--effort)"}
    served = TestClient(create_app(run, ann=True)).get("/info").json()["retrieval"]
    assert served["kind"] == "hnsw" and served["ef_search"] == 64 and served["nprobe"] is None
    e = json.loads(invoke("recommend", run, "--user", 3, "-k", 5).stdout)
    a = json.loads(invoke("recommend", run, "--user", 3, "-k", 5, "--ann").stdout)
    assert [x["item"] for x in a["items"]] == [x["item"] for x in e["items"]]
    assert_one_line_error(invoke("index", run, "--kind", "flat"), "index kind 'flat': choose from hnsw, ivf")


def test_index_warns_when_it_cannot_serve_well():
    from modalrec.run_index import index_warning

    def info(kind: str, recall: float, effort: int, nlist: int = 100) -> dict:
        name = "nprobe" if kind == "ivf" else "efSearch"
        return {"kind": kind, "ivf": {"nlist": nlist}, "recall": {"k": 10, "recall": recall},
                "search_effort": {"name": name, "value": effort}}  # fmt: skip

    assert index_warning(info("ivf", 0.99, 8)) is None and index_warning(info("hnsw", 0.96, 512)) is None
    assert "scans 64 of its 100 cells" in index_warning(info("ivf", 0.97, 64))
    assert "below 0.95 even at efSearch 4096" in index_warning(info("hnsw", 0.36, 4096))


def test_without_ann_or_exact_the_index_is_used_from_a_size_and_when_it_serves_well(bpr_run, tmp_path, monkeypatch):
    import modalrec.run_index as run_index

    run = tmp_path / "auto"
    shutil.copytree(bpr_run, run)  # its index: ivf, 2 cells, nprobe 1 (half the cells: no better than exact)
    assert invoke("index", run, "--kind", "hnsw").exit_code == 0  # recall 1.0, no warning

    def ask(*flags: str) -> tuple[dict, str]:
        res = invoke("recommend", run, "--user", 3, "-k", 5, *flags)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout), res.stderr

    exact, note = ask()  # 100 items < 100,000: exact, nothing said
    assert "retrieval" not in exact and note == ""
    monkeypatch.setattr(run_index, "ANN_AUTO_FROM_ITEMS", 50)
    auto, note = ask()
    assert auto["retrieval"]["method"] == "ann" and "ranking through the run's hnsw item index" in note
    assert [x["item"] for x in auto["items"]] == [x["item"] for x in exact["items"]]
    assert "retrieval" not in ask("--exact")[0] and ask("--ann")[0]["retrieval"]["method"] == "ann"
    served = TestClient(create_app(run)).get("/info").json()["retrieval"]
    assert served["method"] == "ann" and served["kind"] == "hnsw"
    assert TestClient(create_app(run, ann=False)).get("/info").json()["retrieval"]["method"] == "exact"

    assert invoke("index", run).exit_code == 0  # ivf scanning half its cells: exact, and said why
    out, note = ask()
    assert "retrieval" not in out and "ranking exactly: the index scans 1 of its 2 cells" in note
    assert ask("--ann")[0]["retrieval"]["method"] == "ann"  # asked for: used all the same

    ckpt = torch.load(run / "model.pt", weights_only=True)
    key = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01
    torch.save(ckpt, run / "model.pt")
    out, note = ask()  # a stale index is noted and not used; --ann refuses it
    assert "retrieval" not in out and "ranking exactly" in note and "stale" in note
    assert_one_line_error(invoke("recommend", run, "--user", 3, "--ann"), "item index is stale")


def test_recommend_ann_equals_exact_with_the_retrieval_field(bpr_run):
    run = load_run(bpr_run)
    for user in USERS:
        for seen in ("", "--include-seen"):
            args = ["recommend", bpr_run, "--user", user, "-k", 10, *([seen] if seen else [])]
            exact, ann = invoke(*args), invoke(*args, "--ann")
            assert exact.exit_code == 0 and ann.exit_code == 0, exact.output + ann.output
            e, a = json.loads(exact.stdout), json.loads(ann.stdout)
            assert "retrieval" not in e and a["retrieval"] == {"method": "ann", "candidates": 100}
            assert [x["item"] for x in a["items"]] == [x["item"] for x in e["items"]]
            assert [x["score"] for x in a["items"]] == pytest.approx([x["score"] for x in e["items"]], abs=1e-5)
            assert {k: v for k, v in a.items() if k not in ("retrieval", "items")} == {
                k: v for k, v in e.items() if k != "items"
            }
            if not seen:
                assert not set(run.dataset.train_matrix[user].indices.tolist()) & {x["item"] for x in a["items"]}


def test_exact_recommend_is_unchanged_by_the_retrieve_hook(bpr_run):
    run = load_run(bpr_run)
    assert recommend(run, 3, 10) == recommend(run, 3, 10, retrieve=None)
    idx = open_item_index(run)
    assert [x["item"] for x in recommend(run, 3, 10, retrieve=idx.retrieve)["items"]] == [
        x["item"] for x in recommend(run, 3, 10)["items"]
    ]


def test_serving_answers_through_the_index(bpr_run):
    exact, ann = TestClient(create_app(bpr_run)), TestClient(create_app(bpr_run, ann=True))
    assert exact.get("/info").json()["retrieval"]["method"] == "exact"
    info = ann.get("/info").json()["retrieval"]
    assert info["method"] == "ann" and info["items"] == 100 and info["recall_at_10"] == 1.0
    assert info["kind"] == "ivf" and info["nprobe"] == 1 and info["ef_search"] is None
    for user in USERS:
        e = exact.get(f"/users/{user}/recommendations?k=7").json()
        a = ann.get(f"/users/{user}/recommendations?k=7").json()
        assert e["retrieval"] is None and a["retrieval"] == {"method": "ann", "candidates": 100}
        assert [x["item"] for x in a["items"]] == [x["item"] for x in e["items"]]


def test_a_model_that_is_not_a_dot_product_is_refused(mario_run):
    want = "MARIO ranks with its own full_scores, not a dot product"
    assert_one_line_error(invoke("index", mario_run), want, "exact ranking is used without --ann")
    assert_one_line_error(invoke("recommend", mario_run, "--user", 3, "--ann"), want)
    assert not (mario_run / INDEX_FILE).exists() and not (mario_run / INDEX_INFO).exists()
    with pytest.raises(ModalrecError, match=want):
        create_app(mario_run, ann=True)
    assert invoke("recommend", mario_run, "--user", 3).exit_code == 0  # exact stays available


def test_missing_stale_or_damaged_index_is_refused(bpr_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(bpr_run, run)
    good = invoke("recommend", run, "--user", 3, "--ann")
    assert good.exit_code == 0, good.output
    (run / "model.pt").touch()  # a new mtime, the same bytes: still fresh (checked by its hash)
    assert invoke("recommend", run, "--user", 3, "--ann").exit_code == 0

    ckpt = torch.load(run / "model.pt", weights_only=True)
    key = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01
    torch.save(ckpt, run / "model.pt")
    stale = invoke("recommend", run, "--user", 3, "--ann")
    assert_one_line_error(stale, "item index is stale (model.pt changed", f"modalrec index {run}")
    with pytest.raises(ModalrecError, match="stale"):
        create_app(run, ann=True)
    assert invoke("recommend", run, "--user", 3).exit_code == 0  # without --ann nothing changes

    assert invoke("index", run).exit_code == 0  # rebuilt: fresh again
    assert invoke("recommend", run, "--user", 3, "--ann").exit_code == 0
    data = (run / INDEX_FILE).read_bytes()
    (run / INDEX_FILE).write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("recommend", run, "--user", 3, "--ann"), "does not match", "modalrec index")
    (run / INDEX_INFO).write_text("{not json")
    assert_one_line_error(invoke("recommend", run, "--user", 3, "--ann"), "not a modalrec item index")
    (run / INDEX_FILE).unlink()
    assert_one_line_error(invoke("recommend", run, "--user", 3, "--ann"), "no item index", f"modalrec index {run}")
    assert_one_line_error(invoke("serve", run, "--ann", "--port", free_port()), "no item index")


# ================================================================ the measurement script
def test_the_benchmark_script_measures_a_tiny_table(tmp_path):
    out = tmp_path / "ann.json"
    cmd = [sys.executable, str(SCRIPT), "--items", "2000", "--queries", "100", "--latency-queries", "20"]
    cmd += ["--clusters", "200,0", "--kinds", "ivf,hnsw"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"machine", "versions", "settings", "results"} <= set(result) and result["versions"]["faiss"]
    rows = result["results"]
    assert [(r["clusters"], r["kind"]) for r in rows] == [(200, "ivf"), (200, "hnsw"), (0, "ivf"), (0, "hnsw")]
    for row in rows:
        assert row["items"] == row["ntotal"] == 2000 and row["index_bytes"] > 0 and row["build_seconds"] >= 0
        assert row["recall_at_10"] >= 0.9 and row["exact_latency"]["p50_ms"] > 0 and row["ann_latency"]["p99_ms"] > 0
    assert rows[0]["nlist"] == 45 and rows[0]["search_effort"]["name"] == "nprobe"
