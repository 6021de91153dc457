"""Cold items (issue 17): the cold-items split, per-model cold scoring, evaluation modes, serving.

The split never puts a cold item's interaction into train (and ``load_dataset`` refuses a folder
where one is); ID-only models are reported as unable (random cold scores, left out of
recommendations); every content model's cold scores depend on the cold item's features and not on
anything stored for that item (its ID rows, trainable feature copies…).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model_contract import model_overrides, quiet
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.data.dataset import COLD_ITEMS_FILE, TRAIN, Dataset, load_dataset
from modalrec.data.split import resplit_dataset
from modalrec.errors import ConfigError, DataError
from modalrec.evaluation import Evaluator
from modalrec.graphs import GraphStore
from modalrec.models import get_model_class, list_models
from modalrec.models.base import COLD_CONTENT, COLD_UNABLE, Recommender
from modalrec.run_load import load_run, recommend
from modalrec.runs import train_run
from modalrec.testing.checks import per_item_tensors

CONTENT_MODELS = [c.name for c in list_models() if c.cold_start == COLD_CONTENT]
ID_ONLY = [c.name for c in list_models() if c.cold_start == COLD_UNABLE]
ONE_EPOCH = {"epochs": 1, "learning_rate": 0.01, "train_batch_size": 512, "topk": [10, 20]}


@pytest.fixture(scope="module")
def cold_dir(syn_dir, tmp_path_factory):
    """The synthetic dataset re-split with 20 % cold items (seed 3)."""
    return resplit_dataset(syn_dir, "cold-items", 3, tmp_path_factory.mktemp("cold") / "cold", cold_ratio=0.2)


@pytest.fixture(scope="module")
def cold_ds(cold_dir):
    return load_dataset(cold_dir)


# ---------------------------------------------------------------------- the split
def test_cold_split_never_leaks_a_cold_item_into_train(syn_dataset, cold_ds):
    cold = cold_ds.cold_items
    present = np.unique(syn_dataset.items)
    assert cold.size == round(0.2 * present.size)
    train_items = cold_ds.split("train")[1]
    assert not np.isin(train_items, cold).any()
    valid_cold, test_cold = cold_ds.cold_items_of("valid"), cold_ds.cold_items_of("test")
    assert np.intersect1d(valid_cold, test_cold).size == 0
    assert valid_cold.size + test_cold.size == cold.size and valid_cold.size > 0 and test_cold.size > 0
    # a cold item's interactions are all in its own split; every other interaction is in train
    for split, items in (("valid", valid_cold), ("test", test_cold)):
        assert np.isin(cold_ds.split(split)[1], items).all()
    warm = ~np.isin(cold_ds.items, cold)
    assert (cold_ds.labels[warm] == TRAIN).all()
    # warm users keep their other interactions: the number of interactions is unchanged but for dropped cold users
    assert cold_ds.summary()["cold_items"] == {"valid": valid_cold.size, "test": test_cold.size}


def test_cold_split_by_time_holds_out_the_newest_items(syn_dir, tmp_path):
    out = resplit_dataset(syn_dir, "cold-items", 0, tmp_path / "t", cold_ratio=0.3, by="time")
    ds = load_dataset(out)
    first = {}
    for i, t in zip(ds.items.tolist(), ds.timestamps.tolist(), strict=True):
        first[i] = min(first.get(i, math.inf), t)
    cold = set(ds.cold_items.tolist())
    newest_warm = max(t for i, t in first.items() if i not in cold)
    assert min(first[i] for i in cold if i in first) >= newest_warm
    # the older half of the cold items is valid, the newest half test
    valid_first = [first[i] for i in ds.cold_items_of("valid") if i in first]
    test_first = [first[i] for i in ds.cold_items_of("test") if i in first]
    assert max(valid_first) <= min(test_first)


def test_split_is_seeded_and_the_seed_matters(syn_dir, tmp_path):
    a = load_dataset(resplit_dataset(syn_dir, "cold-items", 1, tmp_path / "a")).cold_items
    b = load_dataset(resplit_dataset(syn_dir, "cold-items", 1, tmp_path / "b")).cold_items
    c = load_dataset(resplit_dataset(syn_dir, "cold-items", 2, tmp_path / "c")).cold_items
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_cold_item_with_training_interactions_is_refused(cold_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cold_dir, bad)
    inter = next(bad.glob("*.inter"))
    lines = inter.read_text().splitlines()
    train_item = next(int(f[1]) for f in (line.split("\t") for line in lines[1:]) if f[-1] == "0")
    with open(bad / COLD_ITEMS_FILE, "a") as fh:
        fh.write(f"{train_item}\ttest\n")
    with pytest.raises(DataError, match=rf"cold_items.txt: item {train_item} is listed as cold but has"):
        load_dataset(bad)


@pytest.mark.parametrize(
    ("line", "message"),
    [("4\tlater", "split 'later' must be valid or test"), ("x\ttest", "item id 'x' is not an integer")],
)
def test_malformed_cold_items_file_names_file_and_line(make_folder, line, message):
    rows = [(u, i, 1, 0, 0) for u in range(3) for i in range(3)] + [(0, 3, 1, 0, 2), (1, 4, 1, 0, 2)]
    folder = make_folder(rows)
    (folder / COLD_ITEMS_FILE).write_text(f"itemID\tsplit\n3\ttest\n{line}\n")
    with pytest.raises(DataError, match=rf"cold_items.txt:3: {message}"):
        load_dataset(folder)


def test_cli_split_and_validate_show_the_cold_items(syn_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "c"
    res = runner.invoke(app, ["data", "split", str(syn_dir), "--protocol", "cold-items", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "cold items: valid 10, test 10" in res.output
    res = runner.invoke(app, ["data", "validate", str(out)])
    assert "cold items (cold_items.txt): 20" in res.output
    bad = runner.invoke(
        app, ["data", "split", str(syn_dir), "--protocol", "cold-items", "--cold-ratio", "1.5", "--out", str(out) + "2"]
    )
    assert bad.exit_code == 1 and "--cold-ratio 1.5 must be between 0 and 1" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------- evaluation modes
class ItemIdScorer(Recommender):
    """Scores item j with j (so the ranking is known): a stand-in model for the evaluator."""

    name = "ItemId"
    cold_start = COLD_CONTENT

    def __init__(self, dataset: Dataset) -> None:
        from modalrec.config import Config

        super().__init__(dataset, Config({"seed": 0}), GraphStore(dataset, cache_dir=False))
        self.w = torch.nn.Parameter(torch.zeros(1))

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.n_items, dtype=torch.float32).expand(len(users), -1).clone()


def test_eval_cold_ranks_only_the_splits_cold_items(cold_ds):
    model = ItemIdScorer(cold_ds)
    cold_test = set(cold_ds.cold_items_of("test").tolist())
    res = Evaluator(cold_ds, "test", [5], mode="cold").evaluate(model)
    assert res.mode == "cold"
    # with scores = item id, each user's top-5 are the 5 highest-id test-cold items
    top5 = sorted(cold_test)[-5:]
    u, i = cold_ds.split("test")
    for user, metric in zip(res.users, res.per_user["hit@5"], strict=True):
        assert metric == float(bool(set(i[u == user].tolist()) & set(top5)))
    all_res = Evaluator(cold_ds, "test", [5], mode="all").evaluate(model)
    assert all_res.mode == "all" and all_res.metrics["recall@5"] < res.metrics["recall@5"]


def test_eval_mode_defaults_and_refusals(cold_ds, syn_dataset):
    assert Evaluator(cold_ds, "valid").mode == "cold"
    assert Evaluator(syn_dataset, "valid").mode == "warm"
    with pytest.raises(ConfigError, match="declares no cold items"):
        Evaluator(syn_dataset, "valid", mode="cold")
    with pytest.raises(ConfigError, match="is a cold-items split"):
        Evaluator(cold_ds, "valid", mode="warm")
    with pytest.raises(ConfigError, match="choose from warm, cold, all"):
        Evaluator(cold_ds, "valid", mode="hot")


# ---------------------------------------------------------------------- ID-only models
@pytest.mark.parametrize("name", ID_ONLY)
def test_id_only_models_are_reported_as_unable(cold_ds, name):
    from modalrec.runs import prepare_model

    model, _, _ = prepare_model(name, cold_ds, {"seed": 1}, cache_dir=False)
    model.eval()
    users = torch.arange(10)
    cold = torch.from_numpy(cold_ds.cold_items)
    raw, ranked = model.full_scores(users), model.ranking_scores(users)
    warm = torch.ones(cold_ds.n_items, dtype=torch.bool)
    warm[cold] = False
    assert torch.equal(raw[:, warm], ranked[:, warm])
    assert not torch.allclose(raw[:, cold], ranked[:, cold])  # not the untrained ID rows' scores
    # the random cold scores do not come from the item's ID rows: perturbing them changes nothing
    with torch.no_grad():
        for p in model.parameters():
            if p.shape[0] == cold_ds.n_items:
                p[cold] += 1.0
    model.eval()
    assert torch.equal(model.ranking_scores(users)[:, cold], ranked[:, cold])


def test_id_only_run_records_unable_and_recommend_leaves_cold_items_out(cold_dir, tmp_path, capsys):
    run_dir, result = train_run(
        "BPR", cold_dir, overrides={**ONE_EPOCH}, out=tmp_path / "bpr", quiet=True, cache_dir=False
    )
    assert "BPR is ID only and cannot score the 20 cold items" in capsys.readouterr().err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval_mode"] == "cold" and metrics["cold_start"]["scoring"] == "unable"
    out = recommend(load_run(run_dir), user=0, k=100)
    cold = set(load_dataset(cold_dir).cold_items.tolist())
    assert out["items"] and not {e["item"] for e in out["items"]} & cold
    assert "cannot be scored" in out["note"]


# ---------------------------------------------------------------------- content models
def _trained(name: str, dataset: Dataset):
    from modalrec.runs import prepare_model
    from modalrec.training import fit

    overrides, preset = model_overrides(name, ONE_EPOCH)
    model, config, _ = prepare_model(name, dataset, overrides, preset=preset, cache_dir=False)
    fit(model, dataset, config, log=quiet)
    model.eval()
    return model, config


def test_cold_evaluation_scores_only_the_candidates_and_agrees_with_the_full_ranking(cold_ds, monkeypatch):
    model, _ = _trained("MAML", cold_ds)
    calls: list[int] = []
    full = type(model).full_scores
    monkeypatch.setattr(type(model), "full_scores", lambda self, u: calls.append(1) or full(self, u))
    fast = Evaluator(cold_ds, "test", [5, 20], mode="cold").evaluate(model)
    assert not calls, "a cold evaluation of MAML scored every item"
    # the generic path: slice the full ranking
    monkeypatch.setattr(model, "candidate_scores", lambda u, items: model.ranking_scores(u)[:, items])
    slow = Evaluator(cold_ds, "test", [5, 20], mode="cold").evaluate(model)
    assert calls
    assert fast.metrics == pytest.approx(slow.metrics, abs=1e-9)
    np.testing.assert_array_equal(fast.users, slow.users)


@pytest.mark.parametrize("name", CONTENT_MODELS)
def test_cold_scores_come_from_features_not_from_the_items_own_parameters(cold_ds, name):
    model, config = _trained(name, cold_ds)
    users = torch.arange(cold_ds.n_users)
    cold = torch.from_numpy(cold_ds.cold_items)
    before = model.ranking_scores(users)[:, cold].clone()
    assert torch.isfinite(before).all()
    # what a cold evaluation ranks by: the same columns, whether sliced or scored on their own (MAML)
    torch.testing.assert_close(model.candidate_scores(users, cold), before, rtol=1e-5, atol=1e-6)

    # (1) nothing stored for a cold item matters: perturb every per-item row of the cold items
    perturbed = []
    with torch.no_grad():
        for tname, t, offset in per_item_tensors(model):
            t[cold + offset] += torch.randn_like(t[cold + offset])
            perturbed.append(tname)
    assert perturbed, f"{name}: no per-item tensor found"
    model.eval()  # drops the cached representations
    after = model.ranking_scores(users)[:, cold]
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5, msg=f"{name}: cold scores moved ({perturbed})")

    # (2) the cold item's features matter: give one cold item other features, same weights
    item = int(cold_ds.cold_items_of("test")[0])
    rng = np.random.default_rng(7)
    feats = {m: x.copy() for m, x in cold_ds.features.items()}
    for x in feats.values():
        x[item] = rng.normal(size=x.shape[1]).astype(np.float32) * np.abs(x).mean() * 3
    changed = dataclasses.replace(cold_ds, features=feats)
    cls = get_model_class(name)
    other = cls(changed, config, GraphStore(changed, cache_dir=False))
    other.load_state_dict(model.state_dict())
    other.eval()
    pos = int(np.flatnonzero(cold_ds.cold_items == item)[0])
    moved = (other.ranking_scores(users)[:, cold][:, pos] - before[:, pos]).abs().max()
    assert moved > 1e-6, f"{name}: the cold item's score ignores its features"


@pytest.fixture(scope="module")
def larger_cold_dir(tmp_path_factory):
    """300 users x 300 items, 30 % cold: enough test cold items that a top-10 can miss."""
    from modalrec.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("cold-large")
    src = write_synthetic_dataset(root / "syn", n_users=300, n_items=300, modalities={"image": 32, "text": 16}, seed=5)
    return resplit_dataset(src, "cold-items", 0, root / "cold", cold_ratio=0.3)


@pytest.mark.parametrize("name", ["VBPR", "MARIO"])
def test_content_models_beat_random_on_cold_items(larger_cold_dir, name, tmp_path):
    """A sanity check on planted synthetic structure: content scoring ranks cold items better than chance."""
    overrides, preset = model_overrides(name, {**ONE_EPOCH, "epochs": 10, "stopping_step": 10})
    _, result = train_run(
        name, larger_cold_dir, overrides=overrides, preset=preset, out=tmp_path / name, quiet=True, cache_dir=False
    )
    n_cold_test = load_dataset(larger_cold_dir).cold_items_of("test").size
    chance = 10 / n_cold_test  # E[Recall@10] of a random order of the test cold items
    assert result.test.metrics["recall@10"] > chance + 0.05, (result.test.metrics["recall@10"], chance)


# ---------------------------------------------------------------------- benchmark
def test_benchmark_cold_items_protocol_adds_reference_rows_and_marks_id_only(syn_dir, tmp_path):
    from modalrec.experiments.benchmark import run_benchmark

    out = tmp_path / "bench"
    report = run_benchmark(
        ["BPR", "VBPR"], syn_dir, [1], out=out, overrides={"epochs": 1}, log=lambda s: None, protocol="cold-items"
    )
    assert report.table.rows == ["BPR", "VBPR", "Popularity", "Random"]
    split = load_dataset(out / "data" / "cold-items-r0.2-seed1")
    assert split.has_cold_items and not np.isin(split.split("train")[1], split.cold_items).any()
    summary = json.loads((out / "summary.json").read_text())
    kinds = {r["label"]: r["cold_start"] for r in summary["rows"]}
    assert kinds == {"BPR": "unable", "VBPR": "content", "Popularity": "reference", "Random": "reference"}
    assert "ID-only rows (BPR)" in (out / "table.md").read_text()
    assert set(report.significance) == {"BPR", "VBPR", "Popularity", "Random"} - {report.target}
    # every row was evaluated on the same users (the test users of the cold split)
    users = [np.load(Path(r["runs"][0]["run_dir"]) / "test_per_user.npz")["users"] for r in summary["rows"]]
    assert all(np.array_equal(u, users[0]) for u in users)
    # the same command again reuses every finished run
    again = run_benchmark(
        ["BPR", "VBPR"], syn_dir, [1], out=out, overrides={"epochs": 1}, log=lambda s: None, protocol="cold-items"
    )
    assert again.trained == 0 and again.reused == 4


def test_reference_rankers_are_seeded(cold_ds):
    from modalrec.experiments.rankers import FixedRanker

    users = torch.arange(5)
    pop = FixedRanker("Popularity", cold_ds, 1)
    assert torch.equal(pop.ranking_scores(users), FixedRanker("Popularity", cold_ds, 1).ranking_scores(users))
    assert not torch.equal(pop.ranking_scores(users), FixedRanker("Popularity", cold_ds, 2).ranking_scores(users))
    # popularity orders items by their training count; cold items (count 0) come last
    scores = pop.ranking_scores(users)[0]
    top = int(torch.argmax(scores))
    assert pop.degree[top] == pop.degree.max()
    assert scores[torch.from_numpy(cold_ds.cold_items)].max() < 0.5


# ---------------------------------------------------------------------- serving
@pytest.mark.parametrize("name", ["VBPR", "MeAIM"])
def test_serving_a_cold_split_run_recommends_its_cold_items(cold_dir, tmp_path, name):
    from modalrec.serve.engine import Engine

    run_dir, _ = train_run(name, cold_dir, overrides={**ONE_EPOCH}, out=tmp_path / name, quiet=True, cache_dir=False)
    engine = Engine.from_run_dir(run_dir)
    ds = engine.dataset
    cold = set(ds.cold_items.tolist())
    assert engine.info()["cold_items"]["scoring"] == "content"
    # the full list of a user holds every cold item, with a finite content score, marked cold
    body = engine.recommend(0, k=ds.n_items)
    served = {e["item"]: e for e in body["items"]}
    assert cold <= set(served)
    assert all(served[i]["cold"] and math.isfinite(served[i]["score"]) for i in cold)
    # and cold items do reach the top-10 of some users (they compete with warm items)
    tops = {e["item"] for u in range(0, ds.n_users, 5) for e in engine.recommend(u, k=10)["items"]}
    assert tops & cold
    # the served score is the model's evaluation score (content path), not the untrained ID row's
    with torch.no_grad():
        user_scores = engine.run.model.ranking_scores(torch.tensor([0]))[0]
    some = sorted(cold)[0]
    assert served[some]["score"] == pytest.approx(float(user_scores[some]), rel=1e-4, abs=1e-5)
    # a new user folded in from cold items only gets an answer too
    assert engine.recommend_new(sorted(cold)[:3], k=5)["items"]


def test_serving_an_id_only_run_leaves_cold_items_out(cold_dir, tmp_path):
    from modalrec.serve.engine import Engine

    run_dir, _ = train_run("LightGCN", cold_dir, overrides={**ONE_EPOCH}, out=tmp_path / "lg", quiet=True)
    engine = Engine.from_run_dir(run_dir)
    cold = set(engine.dataset.cold_items.tolist())
    body = engine.recommend(0, k=engine.dataset.n_items)
    assert body["items"] and not {e["item"] for e in body["items"]} & cold
    assert "cannot be scored" in body["note"]
    new = engine.recommend_new([int(engine.dataset.split("train")[1][0])], k=engine.dataset.n_items)
    assert not {e["item"] for e in new["items"]} & cold and "cannot be scored" in new["note"]
    assert engine.info()["cold_items"]["scoring"] == "unable"


@pytest.mark.parametrize("cls", list_models(), ids=lambda c: c.name)
def test_every_model_documents_its_cold_item_rule(cls):
    page = Path(__file__).resolve().parents[1] / "docs" / "models" / f"{cls.config_name}.md"
    text = page.read_text(encoding="utf-8")
    assert "## Cold items" in text
    section = text.split("## Cold items", 1)[1].split("\n## ", 1)[0]
    assert f'cold_start = "{cls.cold_start}"' in section
    assert cls.cold_rule  # the one-line rule shown in logs, metrics.json and /info


def test_cli_train_and_evaluate_take_an_eval_mode(cold_dir, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--model", "VBPR", "--data", str(cold_dir), "--epochs", "1", "--eval", "all", "--out", str(run)]
    res = runner.invoke(app, [*args, "-q"])
    assert res.exit_code == 0, res.output
    assert "eval all" in res.output
    assert json.loads((run / "metrics.json").read_text())["eval_mode"] == "all"
    res = runner.invoke(app, ["evaluate", str(run), "--eval", "cold", "--json"])
    out = json.loads(res.output)
    assert out["eval"] == "cold"
    default = json.loads(runner.invoke(app, ["evaluate", str(run), "--json"]).output)
    assert default["eval"] == "all"  # the run's own mode
    assert out["metrics"]["recall@10"] >= default["metrics"]["recall@10"]  # fewer competitors, never a worse rank
    bad = runner.invoke(app, ["evaluate", str(run), "--eval", "warm"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1 and "cold-items split" in bad.output
