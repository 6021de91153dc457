"""Approximate item–item kNN graphs (FAISS HNSW) past a size: recall against exact, determinism, the size rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalrec.ann import ANN_FROM_ITEMS, ann_knn_topk, ann_knn_topk_many, neighbour_recall, resolve_knn_method
from modalrec.errors import ConfigError
from modalrec.graphs import GraphStore, build_knn_graph, knn_block_rows, knn_topk

pytest.importorskip("faiss", reason="FAISS is in the scale extra (pip install -e '.[scale]'), which CI installs")


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Rows around 40 centres: features with structure, as real item features have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    return (centres[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def test_the_approximate_graph_finds_the_exact_neighbours_and_says_how_well():
    x = _clustered(3000, 24)
    idx, sims, info = ann_knn_topk(x, 10)
    exact_idx, _ = knn_topk(torch.from_numpy(x), 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx.numpy(), exact_idx.numpy(), strict=True)])
    assert overlap >= 0.95 and info.recall >= 0.95
    assert abs(info.recall - overlap) < 0.03  # the sampled recall estimates the whole graph's
    assert "neighbour recall@10" in info.describe("image features")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(sims.numpy(), np.take_along_axis(unit @ unit.T, idx.numpy(), axis=1), atol=1e-4)
    again, _, _ = ann_knn_topk(x, 10)
    assert torch.equal(idx, again)  # built on one thread: the same graph every time


def test_indices_built_side_by_side_are_the_ones_built_one_by_one():
    """MARIO's modalities' HNSW indices are built concurrently, one thread each: the graphs must not depend
    on that (nor on the threads torch has), or the same seed would not give the same run."""
    tables = [_clustered(2500, 24, seed=1), _clustered(2000, 16, seed=2), _clustered(2200, 24, seed=3)]
    alone = [ann_knn_topk(t, 10) for t in tables]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, threads))
        together = ann_knn_topk_many(tables, 10)
    finally:
        torch.set_num_threads(threads)
    assert len(together) == 3
    for (idx, sims, info), (idx1, sims1, info1) in zip(together, alone, strict=True):
        assert torch.equal(idx, idx1) and torch.equal(sims, sims1)
        assert info == info1 and info.recall >= 0.95


def test_recall_counts_misses():
    unit = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    exact_like = np.array([[0], [1], [2], [3], [4], [5]])  # each row's own index: similarity 1, the top
    assert neighbour_recall(unit, exact_like, 1)[0] == 1.0
    wrong = np.array([[1], [2], [3], [0], [1], [2]])
    assert neighbour_recall(unit, wrong, 1)[0] == 0.0


def test_the_size_rule_and_the_graph_store(syn_dataset):
    assert resolve_knn_method("auto", ANN_FROM_ITEMS - 1) == "exact"
    assert resolve_knn_method("auto", ANN_FROM_ITEMS) == "ann"
    with pytest.raises(ConfigError, match="knn_method"):
        resolve_knn_method("fast", 10)
    exact = GraphStore(syn_dataset, cache_dir=False).knn_matrix("image", 5)
    store = GraphStore(syn_dataset, cache_dir=False, knn_method="ann")
    approx = store.knn_matrix("image", 5)
    assert approx.shape == exact.shape and approx.nnz == exact.nnz
    assert len(store.notes) == 1 and "approximate kNN graph" in store.notes[0]
    same_rows = np.mean([set(approx[i].indices) == set(exact[i].indices) for i in range(exact.shape[0])])
    assert same_rows > 0.9


def test_the_exact_build_keeps_its_memory_flat():
    assert knn_block_rows(7_050) == 1024 and knn_block_rows(300_000) < 120
    x = _clustered(500, 8)
    a = build_knn_graph(x, 5, block_size=7)
    b = build_knn_graph(x, 5)
    assert (a != b).nnz == 0  # the block size changes nothing but memory


def test_marios_learned_graphs_follow_the_approximate_method_and_note_their_recall(syn_dir, tmp_path):
    """With knn_method ann, MARIO's learned graphs (rebuilt from C_m) come from the HNSW index too; every
    rebuild's recall goes into one note per modality in metrics.json, and the graphs match the exact ones."""
    import json

    from modalrec.runs import train_run

    overrides = {"epochs": 2, "train_batch_size": 512, "knn_method": "ann", "graph_refresh": "epoch"}
    run, _ = train_run("MARIO", syn_dir, overrides=overrides, out=tmp_path / "ann", quiet=True, cache_dir=False)
    notes = json.loads((run / "metrics.json").read_text())["graph_notes"]
    learned = [n for n in notes if n.startswith("MARIO learned graph")]
    assert len(learned) == 2 and {n.split("(")[1].split(")")[0] for n in learned} == {"image", "text"}
    assert all("neighbour recall@10" in n and "rebuild(s)" in n for n in learned)
    lowest = [float(n.split("lowest ")[1].split(" ")[0]) for n in learned]
    assert min(lowest) >= 0.9, learned
    exact_run, _ = train_run(
        "MARIO", syn_dir, overrides={**overrides, "knn_method": "exact"}, out=tmp_path / "exact", quiet=True,
        cache_dir=False,
    )  # fmt: skip
    assert not any(
        n.startswith("MARIO learned graph") for n in json.loads((exact_run / "metrics.json").read_text())["graph_notes"]
    )


def test_lattices_learned_graphs_follow_the_approximate_method_and_note_their_recall(syn_dir, syn_dataset, tmp_path):
    """With knn_method ann, LATTICE's learned graphs take their neighbour sets from HNSW (recall noted per modality
    and rebuild), keep their values differentiable, and agree with the exact neighbour sets on most rows."""
    import json

    from modalrec.config import resolve_config
    from modalrec.models import get_model_class
    from modalrec.runs import train_run

    overrides = {"epochs": 2, "train_batch_size": 512, "knn_method": "ann"}
    run, _ = train_run("LATTICE", syn_dir, overrides=overrides, out=tmp_path / "ann", quiet=True, cache_dir=False)
    notes = json.loads((run / "metrics.json").read_text())["graph_notes"]
    learned = [n for n in notes if n.startswith("LATTICE learned graph")]
    assert {n.split("(")[1].split(")")[0] for n in learned} == {"image", "text"}
    assert all("rebuild(s)" in n for n in learned)
    assert min(float(n.split("lowest ")[1].split(" ")[0]) for n in learned) >= 0.9, learned

    cls = get_model_class("LATTICE")
    graphs = {}
    for method in ("exact", "ann"):
        torch.manual_seed(0)
        store = GraphStore(syn_dataset, cache_dir=False, knn_method=method)
        model = cls(syn_dataset, resolve_config(cls), store)
        rows, cols, vals = model.item_graph_coo()
        assert vals.requires_grad
        graphs[method] = {(int(r), int(c)) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)}
    shared = len(graphs["exact"] & graphs["ann"]) / len(graphs["exact"])
    assert shared >= 0.9, shared


def _denoised_edges(graphs) -> list[set[tuple[int, int]]]:
    return [{(int(r), int(c)) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)} for rows, cols, _ in graphs]


def test_the_approximate_denoised_graphs_are_the_exact_ones_when_the_candidates_hold_them():
    """DA-MRS's denoised graphs from HNSW candidates: on features whose modalities agree, every item's top
    candidates survive both thresholds, so the graphs are the exact rule's, values included, and recall is 1."""
    from modalrec.graphs import approximate_cross_modal_denoised_knn, cross_modal_denoised_knn

    image = _clustered(600, 16, seed=1)
    text = image[:, :12] + 0.05 * np.random.default_rng(2).normal(size=(600, 12)).astype(np.float32)
    exact = cross_modal_denoised_knn([image, text], 6)
    approx, infos = approximate_cross_modal_denoised_knn([image, text], 6)
    assert _denoised_edges(approx) == _denoised_edges(exact)
    for (_, _, v_exact), (_, _, v_approx) in zip(exact, approx, strict=True):
        assert torch.allclose(v_exact.sort().values, v_approx.sort().values)
    assert [i.recall for i in infos] == [1.0, 1.0] and all(i.sampled_rows == 600 for i in infos)
    assert "neighbour recall@6 1.000" in infos[0].describe("image denoised graph")


def test_items_short_of_surviving_candidates_are_computed_exactly(monkeypatch):
    """With two candidates per kept neighbour and unrelated modalities, about half the candidates fail the other
    modality's threshold, so many items hold fewer than k survivors: those are computed exactly, the graphs are the
    exact rule's, and the info says how many items that took."""
    import modalrec.knn_graphs as knn

    monkeypatch.setattr(knn, "DENOISED_CANDIDATES_PER_NEIGHBOUR", 2)
    rng = np.random.default_rng(4)
    feats = [rng.normal(size=(500, 10)).astype(np.float32), rng.normal(size=(500, 8)).astype(np.float32)]
    exact = knn.cross_modal_denoised_knn(feats, 8)
    approx, infos = knn.approximate_cross_modal_denoised_knn(feats, 8)
    assert _denoised_edges(approx) == _denoised_edges(exact)
    assert [i.recall for i in infos] == [1.0, 1.0]
    assert 0 < infos[0].exact_rows == infos[1].exact_rows < 500, infos[0].exact_rows
    assert f"{infos[0].exact_rows:,} items short of candidates computed exactly" in infos[0].describe("image")


def test_the_approximate_denoised_graphs_report_what_the_index_misses(monkeypatch):
    """Candidates that are not an item's nearest (an index stand-in returning random items) give wrong neighbours
    wherever enough of them survive; the reported recall is then the share of exact edges found, counted here
    over every item (all are sampled), and well below 1."""
    import modalrec.knn_graphs as knn

    real = knn.ann_knn_topk_many

    def random_candidates(tables, k, seed=0):
        out = real(tables, k, seed=seed)
        gen = torch.Generator().manual_seed(9)
        return [(torch.stack([torch.randperm(t.shape[0], generator=gen)[:k] for _ in range(t.shape[0])]), s, i)
                for t, (_, s, i) in zip(tables, out, strict=True)]  # fmt: skip

    monkeypatch.setattr(knn, "ann_knn_topk_many", random_candidates)
    image = _clustered(400, 12, seed=5)
    feats = [image, image[:, :10] + 0.1 * np.random.default_rng(6).normal(size=(400, 10)).astype(np.float32)]
    exact = knn.cross_modal_denoised_knn(feats, 5)
    approx, infos = knn.approximate_cross_modal_denoised_knn(feats, 5)
    for e, a, info in zip(_denoised_edges(exact), _denoised_edges(approx), infos, strict=True):
        share = len(e & a) / len(e)
        assert share < 0.8 and abs(info.recall - share) < 1e-9, (share, info.recall)


def test_damrs_builds_its_denoised_graphs_approximately_under_the_ann_rule(syn_dataset, tmp_path):
    """knn_method ann (auto: from 200,000 items) gives DA-MRS approximate denoised graphs with their recall in the
    graph notes; a second build reads them from the graph cache and says so."""
    from modalrec.config import resolve_config
    from modalrec.models import get_model_class

    cls = get_model_class("DA-MRS")
    exact = cls(syn_dataset, resolve_config(cls), GraphStore(syn_dataset, cache_dir=False, knn_method="exact"))
    store = GraphStore(syn_dataset, cache_dir=tmp_path, knn_method="ann")
    model = cls(syn_dataset, resolve_config(cls), store)
    notes = [n for n in store.notes if "denoised graph" in n]
    assert [n.split(" ")[0] for n in notes] == list(syn_dataset.features) and all("recall@10" in n for n in notes)
    again = GraphStore(syn_dataset, cache_dir=tmp_path, knn_method="ann")
    cls(syn_dataset, resolve_config(cls), again)
    assert not any("recall@" in n for n in again.notes)  # nothing built again
    assert any("denoised graphs: approximate" in n and "graph cache" in n for n in again.notes), again.notes
    for m in syn_dataset.features:
        a, e = model.item_graphs[m].to_scipy(), exact.item_graphs[m].to_scipy()
        shared = (a.multiply(e) != 0).sum() / e.nnz
        assert shared >= 0.9, (m, shared)
