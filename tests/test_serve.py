"""Serving: every endpoint and error case through FastAPI's test client, the CLI's refusal to start
on a bad run, the OpenAPI schema, and a schemathesis fuzz of the API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import schemathesis
import torch
from conftest import assert_one_line_error
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from typer.testing import CliRunner

from modalrec.cli import app as cli_app
from modalrec.data.dataset import load_dataset, write_dataset
from modalrec.data.synth import generate_synthetic
from modalrec.models import list_models
from modalrec.run_load import LoadedRun, load_run, recommend
from modalrec.runs import prepare_model, train_run
from modalrec.serve import Engine, create_app

COLD = 7  # item with no training interaction in the test dataset
FOLD_IN_METHODS = {"mean-item-vector", "mean-item-vector-attention", "user-neighbours", "item-representation"}
TRAIN_OVERRIDES = {"epochs": 2, "train_batch_size": 256, "learning_rate": 0.01}


# ================================================================ fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """120 users, 80 items, image 16-d + text 8-d, titles; item COLD has no training interaction."""
    g = generate_synthetic(n_users=120, n_items=80, modalities={"image": 16, "text": 8}, seed=3)
    labels = g["labels"].copy()
    labels[(g["items"] == COLD) & (labels == 0)] = 2
    return write_dataset(
        tmp_path_factory.mktemp("serve") / "data",
        "servetoy",
        g["users"],
        g["items"],
        labels,
        g["timestamps"],
        None,
        g["features"],
        g["titles"],
    )


def _train(model: str, data_dir: Path, tmp_path_factory, **extra) -> Path:
    out = tmp_path_factory.mktemp("runs") / model
    run, _ = train_run(model, data_dir, overrides={**TRAIN_OVERRIDES, **extra}, out=out, quiet=True, cache_dir=False)
    return run


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> dict[str, Path]:
    return {m: _train(m, data_dir, tmp_path_factory) for m in ("MARIO", "LightGCN", "MeAIM")}


@pytest.fixture(scope="module")
def clients(runs) -> dict[str, TestClient]:
    return {m: TestClient(create_app(run)) for m, run in runs.items()}


@pytest.fixture(scope="module")
def mario(clients) -> TestClient:
    return clients["MARIO"]


def engine_of(client: TestClient) -> Engine:
    return client.app.state.engine


def assert_error(res, status: int, *fragments: str) -> None:
    assert res.status_code == status, res.text
    body = res.json()
    assert body["status"] == status and isinstance(body["message"], str) and "\n" not in body["message"]
    for f in fragments:
        assert f in body["message"], (f, body["message"])


# ================================================================ service
def test_health_and_info(clients, runs, data_dir):
    ds = load_dataset(data_dir)
    parts = {"MARIO": ["image", "text", "interaction"], "LightGCN": [], "MeAIM": ["id", "image", "text"]}
    folds = {"MARIO": "mean-item-vector-attention", "LightGCN": "mean-item-vector", "MeAIM": "user-neighbours"}
    for name, client in clients.items():
        assert client.get("/health").json() == {"status": "ok"}
        info = client.get("/info").json()
        assert info["model"] == name and info["dataset"] == "servetoy"
        assert info["users"] == ds.n_users and info["items"] == ds.n_items
        assert info["train_interactions"] == ds.train_matrix.nnz
        assert info["modalities"] == {"image": 16, "text": 8} and info["has_titles"] is True
        assert info["explanation"]["parts"] == parts[name]
        assert info["fold_in"] == folds[name]
        assert info["similar_by"] == ["model", "image", "text"]
        metrics = load_run(runs[name]).metrics
        assert info["metrics"]["test"] == pytest.approx(metrics["test"]) and info["best_epoch"] == metrics["best_epoch"]


def test_history_lists_training_items_with_titles(mario, data_dir):
    ds = load_dataset(data_dir)
    r = ds.train_matrix
    for user in (0, 5, ds.n_users - 1):
        body = mario.get(f"/users/{user}/history").json()
        assert [e["item"] for e in body["items"]] == r.indices[r.indptr[user] : r.indptr[user + 1]].tolist()
        assert all(e["title"] == ds.title(e["item"]) and e["title"] for e in body["items"])
    assert_error(mario.get("/users/120/history"), 404, "unknown user 120")


# ================================================================ recommendations
@pytest.mark.parametrize("name", ["MARIO", "LightGCN", "MeAIM"])
def test_recommendations_match_the_library(clients, runs, name):
    client = clients[name]
    run = load_run(runs[name])
    for user, k, seen in ((0, 10, True), (17, 5, False), (119, 1, True)):
        body = client.get(f"/users/{user}/recommendations", params={"k": k, "exclude_seen": seen}).json()
        ref = recommend(run, user, k, exclude_seen=seen)
        assert body["user"] == user and body["k"] == k and body["exclude_seen"] is seen and body["model"] == name
        assert [e["item"] for e in body["items"]] == [e["item"] for e in ref["items"]]
        assert [e["score"] for e in body["items"]] == pytest.approx([e["score"] for e in ref["items"]], abs=1e-5)
        assert [e["rank"] for e in body["items"]] == list(range(1, k + 1))
        assert body["explanation"] is None and all(e["weights"] is None for e in body["items"])
        if seen:
            train = set(run.dataset.train_matrix[user].indices.tolist())
            assert not train & {e["item"] for e in body["items"]}


def test_explanations_per_model(clients):
    body = clients["MARIO"].get("/users/3/recommendations?k=4&explain=true").json()
    assert body["explanation"] == {"kind": "attention", "parts": ["image", "text", "interaction"], "note": None}
    for e in body["items"]:
        assert list(e["weights"]) == ["image", "text", "interaction"]
        assert sum(e["weights"].values()) == pytest.approx(1.0, abs=1e-3)
        assert e["title"].startswith("Synthetic item")
    body = clients["MeAIM"].get("/users/3/recommendations?k=4&explain=true").json()
    assert body["explanation"]["kind"] == "meta-weights"
    for e in body["items"]:
        assert sum(e["weights"].values()) == pytest.approx(1.0, abs=1e-3)
        assert set(e["pair_weights"]) == {"id", "image", "text"}
        for row in e["pair_weights"].values():
            assert sum(row.values()) == pytest.approx(1.0, abs=1e-3)
    body = clients["LightGCN"].get("/users/3/recommendations?k=4&explain=true").json()
    assert body["explanation"]["kind"] is None and "no per-modality explanation" in body["explanation"]["note"]
    assert all(e["weights"] is None for e in body["items"])


def test_k_larger_than_the_rankable_items(mario):
    body = mario.get("/users/0/recommendations?k=1000").json()
    n_seen = len(mario.get("/users/0/history").json()["items"])
    assert len(body["items"]) == 80 - n_seen
    assert len(mario.get("/users/0/recommendations?k=1000&exclude_seen=false").json()["items"]) == 80


def test_recommendation_errors(mario):
    for user in (120, 10**12, -1):
        assert_error(mario.get(f"/users/{user}/recommendations"), 404, f"unknown user {user}")
    for k in (0, 1001, -5):
        assert_error(mario.get(f"/users/0/recommendations?k={k}"), 422, "k")
    assert_error(mario.get("/users/0/recommendations?k=ten"), 422, "k")
    assert_error(mario.get("/users/0/recommendations?explain=maybe"), 422, "explain")
    assert_error(mario.get("/users/abc/recommendations"), 422, "user")
    assert_error(mario.get("/nowhere"), 404)


# ================================================================ fold-in
@pytest.mark.parametrize("name", ["MARIO", "LightGCN", "MeAIM"])
def test_fold_in_serves_a_new_user(clients, name):
    history = [1, 2, 3, 40, 2]
    body = clients[name].post("/recommendations", json={"items": history, "k": 5, "explain": True}).json()
    assert body["history"] == [1, 2, 3, 40] and body["k"] == 5 and body["model"] == name
    items = [e["item"] for e in body["items"]]
    assert len(items) == 5 and not set(items) & set(history)
    scores = [e["score"] for e in body["items"]]
    assert scores == sorted(scores, reverse=True)
    expected = {"MARIO": "mean-item-vector-attention", "LightGCN": "mean-item-vector", "MeAIM": "user-neighbours"}
    assert body["fold_in"]["method"] == expected[name]
    if name == "LightGCN":
        assert body["explanation"]["kind"] is None
    else:
        assert all(sum(e["weights"].values()) == pytest.approx(1.0, abs=1e-3) for e in body["items"])
    if name == "MeAIM":
        assert body["fold_in"]["neighbours"] >= 1 and "pair_weights" in body["items"][0]
    kept = clients[name].post("/recommendations", json={"items": history, "k": 80, "exclude_seen": False}).json()
    assert len(kept["items"]) == 80


def test_mean_item_vector_fold_in_is_one_gemv(clients):
    eng = engine_of(clients["LightGCN"])
    hist = [4, 9, 33]
    body = clients["LightGCN"].post("/recommendations", json={"items": hist, "k": 10}).json()
    v = eng.item_table
    scores = v @ v[hist].mean(dim=0)
    scores[hist] = -torch.inf
    assert [e["item"] for e in body["items"]] == torch.topk(scores, 10).indices.tolist()


def test_fold_in_of_cold_items_only(clients):
    # No training user shares COLD, so the neighbour fold-in falls back to the item representation.
    body = clients["MeAIM"].post("/recommendations", json={"items": [COLD], "k": 3}).json()
    assert body["fold_in"]["method"] == "item-representation" and len(body["items"]) == 3
    for name in ("MARIO", "LightGCN"):
        assert len(clients[name].post("/recommendations", json={"items": [COLD], "k": 3}).json()["items"]) == 3


def test_fold_in_errors(mario):
    assert_error(mario.post("/recommendations", json={"items": [1, 80]}), 404, "unknown item 80")
    assert_error(mario.post("/recommendations", json={"items": [-1]}), 404, "unknown item -1")
    assert_error(mario.post("/recommendations", json={"items": []}), 422, "items")
    assert_error(mario.post("/recommendations", json={"items": ["a"]}), 422, "items")
    assert_error(mario.post("/recommendations", json={"items": [1], "k": 0}), 422, "k")
    assert_error(mario.post("/recommendations", json={"items": [1], "k": 1001}), 422, "k")
    assert_error(mario.post("/recommendations", json={"items": [1], "colour": "red"}), 422, "colour")
    assert_error(mario.post("/recommendations", json=[1, 2]), 422)
    assert_error(mario.post("/recommendations", json={}), 422, "items")
    bad = mario.post("/recommendations", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(bad, 422)
    binary = mario.post("/recommendations", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert_error(binary, 422, "body")


# ================================================================ similar items
def test_similar_items_by_model_and_by_modality(mario, data_dir):
    ds = load_dataset(data_dir)
    for by in ("model", "image", "text"):
        body = mario.get(f"/items/5/similar?k=6&by={by}").json()
        assert body["query"]["item"] == 5 and body["by"] == by and body["query"]["title"] == ds.title(5)
        sims = [e["similarity"] for e in body["items"]]
        assert len(sims) == 6 and sims == sorted(sims, reverse=True) and max(sims) <= 1.0 + 1e-6
        assert 5 not in [e["item"] for e in body["items"]]
    x = ds.features["image"] / np.linalg.norm(ds.features["image"], axis=1, keepdims=True)
    cos = x @ x[5]
    cos[5] = -np.inf
    body = mario.get("/items/5/similar?k=6&by=image").json()
    assert [e["item"] for e in body["items"]] == np.argsort(-cos, kind="stable")[:6].tolist()
    assert mario.get("/items/5/similar").json()["by"] == "model"


def test_similar_items_of_an_item_nobody_trained_on(mario):
    body = mario.get(f"/items/{COLD}/similar?k=4").json()
    assert body["query"]["interactions"] == 0 and len(body["items"]) == 4
    assert len(mario.get(f"/items/{COLD}/similar?k=4&by=text").json()["items"]) == 4
    assert len(mario.get(f"/items/{COLD}/similar?k=1000").json()["items"]) == 79


def test_similar_errors(mario):
    assert_error(mario.get("/items/80/similar"), 404, "unknown item 80")
    assert_error(mario.get("/items/-3/similar"), 404, "unknown item -3")
    assert_error(mario.get("/items/1/similar?by=audio"), 422, "by")
    assert_error(mario.get("/items/1/similar?k=0"), 422, "k")
    assert_error(mario.get("/items/1/similar?k=1001"), 422, "k")


# ================================================================ every registered model
@pytest.mark.parametrize("name", [cls.name for cls in list_models()])
def test_every_registered_model_can_be_served(name, data_dir):
    """Untrained (freshly initialised) models: serving needs only the Recommender interface."""
    ds = load_dataset(data_dir)
    model, config, _ = prepare_model(name, ds, cache_dir=False)
    eng = Engine(LoadedRun(data_dir, model, ds, config, {}))
    body = eng.recommend(3, 5, explain=True)
    assert len(body["items"]) == 5 and body["explanation"] is not None
    new = eng.recommend_new([1, 2, 3], 5, explain=True)
    assert len(new["items"]) == 5 and not {1, 2, 3} & {e["item"] for e in new["items"]}
    assert new["fold_in"]["method"] in FOLD_IN_METHODS
    assert len(eng.similar(COLD, 5)["items"]) == 5


# ================================================================ precomputation
def test_requests_never_recompute_representations(clients, monkeypatch):
    for name, client in clients.items():
        model = engine_of(client).model

        def boom(name=name):
            raise AssertionError(f"{name}: representations recomputed during a request")

        monkeypatch.setattr(model, "compute_representations", boom)
        assert client.get("/users/2/recommendations?explain=true").status_code == 200
        assert client.post("/recommendations", json={"items": [1, 2], "explain": True}).status_code == 200
        assert client.get("/items/2/similar").status_code == 200
        assert model._cache is not None and not model.training


# ================================================================ page, schema
def test_page_and_static_files(mario):
    page = mario.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text and "/static/style.css" in page.text
    for name in ("app.js", "style.css"):
        assert mario.get(f"/static/{name}").status_code == 200


def test_openapi_schema_is_complete(mario):
    spec = mario.get("/openapi.json").json()
    expected = {
        ("/health", "get"): "Health",
        ("/info", "get"): "Info",
        ("/users/{user}/history", "get"): "History",
        ("/users/{user}/recommendations", "get"): "Recommendations",
        ("/recommendations", "post"): "NewUserRecommendations",
        ("/items/{item}/similar", "get"): "SimilarItems",
    }
    assert {(p, m) for p, ops in spec["paths"].items() for m in ops} == set(expected)
    for (path, method), model in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{model}")
        for code in set(responses) - {"200"}:
            assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    by = spec["paths"]["/items/{item}/similar"]["get"]["parameters"][2]["schema"]
    assert spec["components"]["schemas"][by["$ref"].split("/")[-1]]["enum"] == ["model", "image", "text"]


# ================================================================ refusing to start
def test_serve_refuses_a_missing_or_corrupt_run(tmp_path, runs):
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    invoke = CliRunner().invoke
    assert_one_line_error(invoke(cli_app, ["serve", str(tmp_path / "nope")], env=env), "no such run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(invoke(cli_app, ["serve", str(empty)], env=env), "no model.pt")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(invoke(cli_app, ["serve", str(corrupt)], env=env), "cannot read checkpoint")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes((runs["LightGCN"] / "model.pt").read_bytes())
    (broken / "metrics.json").write_text("{truncated")
    assert_one_line_error(invoke(cli_app, ["serve", str(broken)], env=env), "cannot load the run")
    bad_port = invoke(cli_app, ["serve", str(runs["LightGCN"]), "--port", "70000"], env=env)
    assert bad_port.exit_code == 2


# ================================================================ fuzz
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/info"),
    ("GET", "/users/{user}/history"),
    ("GET", "/users/{user}/recommendations"),
    ("POST", "/recommendations"),
    ("GET", "/items/{item}/similar"),
]


@pytest.fixture(scope="module")
def api_schema(clients):
    return schemathesis.openapi.from_asgi("/openapi.json", clients["MeAIM"].app)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_fuzz(api_schema, method, path):
    """Generated requests (valid, and invalid where there are inputs) get conforming responses, no server error."""
    operation = api_schema[path][method]
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if "{" in path or method == "POST" else [])

    @given(case=st.one_of(*(operation.as_strategy(mode) for mode in modes)))
    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate()

    run()
