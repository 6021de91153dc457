"""Ranking metrics against hand arithmetic; the evaluator's masking, user selection and blocking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modalrec.config import Config
from modalrec.data.dataset import Dataset
from modalrec.evaluation import Evaluator, ranking_metrics, top_k_items
from modalrec.models.base import Recommender

LOG2_3 = math.log2(3)


def _metrics(hits: list[list[int]], n_targets: list[int], ks: list[int]) -> dict[str, np.ndarray]:
    out = ranking_metrics(torch.tensor(hits), torch.tensor(n_targets), ks)
    return {k: v.numpy() for k, v in out.items()}


# ================================================================ ranking_metrics
def test_metrics_two_hits_in_four():
    m = _metrics([[1, 0, 1, 0]], [2], [2, 4])
    # K = 4, |T| = 2, hits at ranks 1 and 3
    assert m["recall@4"][0] == pytest.approx(1.0)  # 2 / 2
    assert m["precision@4"][0] == pytest.approx(0.5)  # 2 / 4
    # DCG = 1/log2(2) + 1/log2(4) = 1 + 1/2 ; IDCG = 1/log2(2) + 1/log2(3) (min(|T|, K) = 2 ideal positions)
    assert m["ndcg@4"][0] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / LOG2_3), rel=1e-6)
    # MAP = (1/min(|T|,K)) * (P@1 + P@3) = (1/2)(1/1 + 2/3)
    assert m["map@4"][0] == pytest.approx(0.5 * (1 + 2 / 3), rel=1e-6)
    assert m["hit@4"][0] == 1.0
    # K = 2: one hit at rank 1
    assert m["recall@2"][0] == pytest.approx(0.5)  # 1 / 2
    assert m["precision@2"][0] == pytest.approx(0.5)  # 1 / 2
    assert m["ndcg@2"][0] == pytest.approx(1 / (1 + 1 / LOG2_3), rel=1e-6)  # 1 / (1 + 1/log2 3)
    assert m["map@2"][0] == pytest.approx(0.5)  # (1/2)(1/1)
    assert m["hit@2"][0] == 1.0


def test_metrics_more_targets_than_k():
    m = _metrics([[0, 1, 1]], [5], [3])
    # K = 3, |T| = 5, hits at ranks 2 and 3
    assert m["recall@3"][0] == pytest.approx(2 / 5)  # hits / |T|
    assert m["precision@3"][0] == pytest.approx(2 / 3)  # hits / K
    # DCG = 1/log2(3) + 1/log2(4); IDCG over min(5, 3) = 3 positions: 1 + 1/log2(3) + 1/log2(4)
    assert m["ndcg@3"][0] == pytest.approx((1 / LOG2_3 + 0.5) / (1 + 1 / LOG2_3 + 0.5), rel=1e-6)
    # MAP = (1/3)(P@2 + P@3) = (1/3)(1/2 + 2/3)
    assert m["map@3"][0] == pytest.approx((0.5 + 2 / 3) / 3, rel=1e-6)
    assert m["hit@3"][0] == 1.0


def test_metrics_no_hits_and_all_hits():
    m = _metrics([[0, 0, 0], [1, 1, 1]], [1, 3], [1, 3])
    for name in ("recall", "precision", "ndcg", "map", "hit"):
        assert m[f"{name}@3"][0] == 0.0 and m[f"{name}@1"][0] == 0.0
        assert m[f"{name}@3"][1] == pytest.approx(1.0)  # |T| = K = 3, all three hit
        if name != "recall":
            assert m[f"{name}@1"][1] == pytest.approx(1.0)
    assert m["recall@1"][1] == pytest.approx(1 / 3)  # 1 hit of |T| = 3
    assert m["recall@1"].shape == (2,)


def test_metrics_subset_and_first_hit_position():
    m = ranking_metrics(torch.tensor([[0, 0, 0, 1]]), torch.tensor([1]), [4], metrics=("ndcg",))
    assert list(m) == ["ndcg@4"]
    assert float(m["ndcg@4"][0]) == pytest.approx(1 / math.log2(5), rel=1e-6)  # single hit at rank 4


# ================================================================ a hand-built dataset and a fixed scorer
# users × items = 4 × 6
#   user 0: train {0, 1}   valid {2}   test {3}
#   user 1: train {0}      valid {4}   test {5, 2}
#   user 2: train {1, 2}   valid {3}   (no test)
#   user 3: train {3}                  test {0}
INTERACTIONS = [
    (0, 0, 0),
    (0, 1, 0),
    (0, 2, 1),
    (0, 3, 2),
    (1, 0, 0),
    (1, 4, 1),
    (1, 5, 2),
    (1, 2, 2),
    (2, 1, 0),
    (2, 2, 0),
    (2, 3, 1),
    (3, 3, 0),
    (3, 0, 2),
]
SCORES = torch.tensor(
    [
        [9.0, 8.0, 7.0, 1.0, 6.0, 5.0],  # masked train 0,1 -> 2, 4, 5, 3
        [9.0, 1.0, 3.0, 2.0, 8.0, 7.0],  # masked train 0   -> 4, 5, 2, 3, 1
        [0.0, 9.0, 9.0, 1.0, 5.0, 4.0],  # masked train 1,2 -> 4, 5, 3, 0
        [5.0, 0.0, 0.0, 9.0, 0.0, 0.0],  # masked train 3   -> 0, ...
    ]
)


def hand_dataset() -> Dataset:
    u, i, x = (np.array(c, dtype=np.int64) for c in zip(*INTERACTIONS, strict=True))
    return Dataset(name="hand", n_users=4, n_items=6, users=u, items=i, labels=x)


class FixedScores(Recommender):
    """A recommender whose full-ranking scores are a fixed matrix (one dummy parameter)."""

    name = "FixedScores"

    def __init__(self, dataset: Dataset, scores: torch.Tensor) -> None:
        super().__init__(dataset, Config({}), None)
        self.scores = scores
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[list[int]] = []

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        self.calls.append(users.tolist())
        return self.scores[users].clone()


@pytest.fixture
def hand():
    ds = hand_dataset()
    return ds, FixedScores(ds, SCORES)


def test_evaluator_masks_training_items_and_keeps_valid_items_rankable(hand):
    ds, model = hand
    res = Evaluator(ds, "test", ks=(2, 4)).evaluate(model)
    assert res.split == "test"
    np.testing.assert_array_equal(res.users, [0, 1, 3])  # user 2 has no test item
    # user 0: ranking 2, 4, 5, 3 -> test item 3 at rank 4 (valid item 2 is rankable and takes rank 1)
    # user 1: ranking 4, 5, 2, 3 -> test items 5, 2 at ranks 2, 3
    # user 3: ranking 0, ...     -> test item 0 at rank 1
    np.testing.assert_allclose(res.per_user["recall@2"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(res.per_user["recall@4"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(res.per_user["precision@4"], [0.25, 0.5, 0.25])
    ndcg4 = [1 / math.log2(5), (1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3), 1.0]
    np.testing.assert_allclose(res.per_user["ndcg@4"], ndcg4, rtol=1e-6)
    assert res.metrics["recall@2"] == pytest.approx(0.5)  # (0 + 0.5 + 1) / 3
    assert res.metrics["ndcg@4"] == pytest.approx(np.mean(ndcg4), rel=1e-6)
    assert set(res.per_user) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit") for k in (2, 4)}
    assert res.seconds >= 0


def test_evaluator_mask_valid_at_test(hand):
    ds, model = hand
    res = Evaluator(ds, "test", ks=(2, 4), mask_valid=True).evaluate(model)
    # user 0: mask 0, 1 and valid 2 -> ranking 4, 5, 3 -> test item at rank 3
    # user 1: mask 0 and valid 4   -> ranking 5, 2, ... -> both test items in the top 2
    np.testing.assert_allclose(res.per_user["recall@2"], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(res.per_user["ndcg@4"], [0.5, 1.0, 1.0], rtol=1e-6)  # 1/log2(4) for user 0
    assert res.metrics["recall@2"] == pytest.approx(2 / 3)


def test_evaluator_valid_split_masks_train_not_test(hand):
    ds, model = hand
    res = Evaluator(ds, "valid", ks=(1, 4), mask_valid=True).evaluate(model)  # mask_valid only acts at test
    np.testing.assert_array_equal(res.users, [0, 1, 2])
    # user 0: 2 first; user 1: 4 first; user 2: ranking 4, 5, 3 -> valid item 3 at rank 3
    np.testing.assert_allclose(res.per_user["hit@1"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(res.per_user["recall@4"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(res.per_user["ndcg@4"], [1.0, 1.0, 0.5], rtol=1e-6)


def test_evaluator_block_size_does_not_change_results(hand):
    ds, model = hand
    big = Evaluator(ds, "test", ks=(1, 2, 4), block_size=4096).evaluate(model)
    model.calls.clear()
    small = Evaluator(ds, "test", ks=(1, 2, 4), block_size=1).evaluate(model)
    assert model.calls == [[0], [1], [3]]  # one user per block, only evaluated users
    np.testing.assert_array_equal(small.users, big.users)
    assert small.metrics == big.metrics
    for k, v in big.per_user.items():
        np.testing.assert_array_equal(small.per_user[k], v)
    two = Evaluator(ds, "test", ks=(1, 2, 4), block_size=2).evaluate(model)
    assert two.metrics == big.metrics


def test_a_block_never_holds_more_scores_than_the_cap(hand, monkeypatch):
    """Past MAX_BLOCK_SCORES a block takes fewer users (here: 2 users × the 6 items), with the same results."""
    import modalrec.evaluation as evaluation

    ds, model = hand
    whole = Evaluator(ds, "test", ks=(1, 2, 4), block_size=4096).evaluate(model)
    assert Evaluator(ds, "test", block_size=4096).block_size == 4096  # below the cap: as asked
    monkeypatch.setattr(evaluation, "MAX_BLOCK_SCORES", 2 * ds.n_items + 1)
    capped = Evaluator(ds, "test", ks=(1, 2, 4), block_size=4096)
    assert capped.block_size == 2
    model.calls.clear()
    res = capped.evaluate(model)
    assert model.calls == [[0, 1], [3]]
    assert res.metrics == whole.metrics
    monkeypatch.setattr(evaluation, "MAX_BLOCK_SCORES", 1)  # less than one user's row: one user per block
    assert Evaluator(ds, "test", block_size=4096).block_size == 1


def test_evaluator_per_user_vectors_follow_users_order():
    ds = hand_dataset()
    perm = torch.tensor([3, 0, 2, 1])  # swap the scores of users so the result must move with them
    model = FixedScores(ds, SCORES[perm])
    res = Evaluator(ds, "test", ks=(4,)).evaluate(model)
    for pos, u in enumerate(res.users):
        single = hand_dataset()
        keep = single.users == u
        single.users, single.items, single.labels = single.users[keep], single.items[keep], single.labels[keep]
        one = Evaluator(single, "test", ks=(4,)).evaluate(FixedScores(single, SCORES[perm]))
        np.testing.assert_array_equal(one.users, [u])
        assert one.per_user["ndcg@4"][0] == res.per_user["ndcg@4"][pos]


def test_evaluator_restores_training_mode_and_rejects_unknown_metric(hand):
    ds, model = hand
    model.train()
    Evaluator(ds, "test", ks=(2,)).evaluate(model)
    assert model.training
    model.eval()
    Evaluator(ds, "test", ks=(2,)).evaluate(model)
    assert not model.training
    with pytest.raises(ValueError, match="unknown metric"):
        Evaluator(ds, "test", metrics=("recall", "auc"))


def test_evaluator_k_larger_than_item_count(hand):
    ds, model = hand
    res = Evaluator(ds, "test", ks=(10,)).evaluate(model)
    np.testing.assert_allclose(res.per_user["recall@10"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(res.per_user["precision@10"], [0.1, 0.2, 0.1])


def test_top_k_items_excludes_seen(hand):
    ds, model = hand
    users = torch.tensor([0, 1, 2, 3])
    idx, vals = top_k_items(model, users, 3, exclude=ds.train_matrix)
    train = ds.train_matrix.toarray()
    for row, u in enumerate(users.tolist()):
        assert not train[u, idx[row].numpy()].any()
    assert idx[0].tolist() == [2, 4, 5]
    assert idx[1].tolist() == [4, 5, 2]
    assert idx[2].tolist() == [4, 5, 3]
    assert idx[3, 0].item() == 0
    np.testing.assert_allclose(vals[0].numpy(), [7.0, 6.0, 5.0])
    idx_all, _ = top_k_items(model, users, 2)
    assert idx_all[0].tolist() == [0, 1]  # without exclusion the training items come first
    idx_sub, _ = top_k_items(model, torch.tensor([2]), 2, exclude=ds.train_matrix)
    assert idx_sub[0].tolist() == [4, 5]
