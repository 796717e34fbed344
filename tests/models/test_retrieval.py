"""exporter.models.two_tower.retrieval: recall@K / NDCG@K over the whole catalogue.

On cases small enough to rank by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from exporter.errors import ExporterError
from exporter.models.two_tower import retrieval as R
from exporter.training import data as D

# 5 items in 2 dimensions and 3 users: the scores u . v are read off directly.
ITEMS = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
USERS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
# user 0 scores [1, 0, 2, 0, 1]; user 1 [0, 1, 0, 2, 1]; user 2 [1, 1, 2, 2, 2]
TRAIN = R.UserItems.from_lists([[2], [3], [0]])
HELDOUT = R.UserItems.from_lists([[4], [1, 2], []])


def test_hand_ranked_embeddings_with_exclusion_ties_and_a_user_without_heldout():
    # user 0, item 2 excluded: items 0 and 4 tie at 1 -> 0 before 4 (lower index), then 1, 3 -> [0, 4, 1, 3]
    #   held-out {4} at rank 2
    # user 1, item 3 excluded: 1 and 4 tie at 1 -> [1, 4, 0, 2]; held-out {1, 2} at ranks 1 and 4
    # user 2 has no held-out item: not scored
    res = R.evaluate_embeddings(USERS, ITEMS, TRAIN, HELDOUT, ks=(1, 2, 4))
    d2, d3, d4, d5 = (1 / math.log2(r + 1) for r in (1, 2, 3, 4))  # d2: discount of rank 1, ...
    assert res.users_evaluated == 2 and res.users_without_heldout == 1 and res.n_items == 5
    expected = {
        "recall@1": (0 + 1 / 2) / 2,
        "recall@2": (1 + 1 / 2) / 2,
        "recall@4": (1 + 1) / 2,
        "ndcg@1": (0 + 1) / 2,
        "ndcg@2": (d3 / d2 + d2 / (d2 + d3)) / 2,
        "ndcg@4": (d3 / d2 + (d2 + d5) / (d2 + d3)) / 2,
    }
    assert res.metrics == pytest.approx(expected, abs=1e-12)


def test_a_heldout_item_that_is_also_a_training_item_is_not_counted():
    # user 0's held-out set {2, 4}: 2 is a training item, so only {4} counts (same answer as above)
    with_overlap = R.evaluate_embeddings(USERS, ITEMS, TRAIN, R.UserItems.from_lists([[2, 4], [1, 2], []]), ks=(2,))
    assert with_overlap.metrics["recall@2"] == pytest.approx((1 + 1 / 2) / 2)
    # and a user whose only held-out item is a training item is not scored at all
    only_overlap = R.evaluate_embeddings(USERS, ITEMS, TRAIN, R.UserItems.from_lists([[2], [1, 2], []]), ks=(2,))
    assert only_overlap.users_evaluated == 1 and only_overlap.metrics["recall@2"] == pytest.approx(1 / 2)


def test_excluded_items_never_take_a_top_place():
    # user 2 scores [1, 1, 2, 2, 2]; excluding 2, 3, 4 leaves 0 and 1: held-out {1} is at rank 2, not 5
    res = R.evaluate_embeddings(
        USERS[2:], ITEMS, R.UserItems.from_lists([[2, 3, 4]]), R.UserItems.from_lists([[1]]), ks=(2,)
    )
    assert res.metrics["recall@2"] == 1.0


def test_k_beyond_the_catalogue_ranks_everything():
    res = R.evaluate_embeddings(USERS, ITEMS, TRAIN, HELDOUT, ks=(50,))
    assert res.metrics["recall@50"] == 1.0


def test_popularity_by_hand():
    train = R.UserItems.from_lists([[0, 1], [1, 2], [1, 3]])  # counts per item: [1, 3, 1, 1, 0]
    heldout = R.UserItems.from_lists([[3], [4], []])
    np.testing.assert_array_equal(R.popularity_counts(train, 5), [1, 3, 1, 1, 0])
    # user 0 (0, 1 excluded): items 2 and 3 tie at 1 -> [2, 3, 4], held-out 3 at rank 2
    # user 1 (1, 2 excluded): [0, 3, 4], held-out 4 at rank 3
    res = R.evaluate_popularity(train, heldout, 5, ks=(1, 2, 3))
    assert res.users_evaluated == 2
    assert res.metrics["recall@1"] == 0.0
    assert res.metrics["recall@2"] == pytest.approx(0.5)
    assert res.metrics["recall@3"] == pytest.approx(1.0)
    assert res.metrics["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)


def test_top_k_breaks_ties_by_lower_index():
    s = np.array([[1.0, 3.0, 3.0, 3.0, 0.0], [-np.inf, 0.0, 0.0, -np.inf, 5.0]])
    np.testing.assert_array_equal(R.top_k(s, 2), [[1, 2], [4, 1]])
    np.testing.assert_array_equal(R.top_k(s, 4), [[1, 2, 3, 0], [4, 1, 2, 0]])
    np.testing.assert_array_equal(R.top_k(s, 9), [[1, 2, 3, 0, 4], [4, 1, 2, 0, 3]])


def test_top_k_matches_a_full_sort_on_heavily_tied_scores():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(50, 30)).astype(float)
    full = np.array([np.lexsort((np.arange(30), -row)) for row in s])  # by score desc, then index
    for k in (1, 7, 30):
        np.testing.assert_array_equal(R.top_k(s, k), full[:, :k])


def _brute_force(u, v, train, heldout, k):
    """One user at a time with Python sorting: the definition, written plainly."""
    recalls, ndcgs = [], []
    for a in range(len(u)):
        seen = set(train.row(a).tolist())
        rel = set(heldout.row(a).tolist()) - seen
        if not rel:
            continue
        candidates = [i for i in range(len(v)) if i not in seen]
        ranked = sorted(candidates, key=lambda i: (-float(u[a] @ v[i]), i))[:k]
        hits = [1 if i in rel else 0 for i in ranked]
        recalls.append(sum(hits) / len(rel))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        ndcgs.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(k, len(rel)))))
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def test_chunked_evaluation_agrees_with_the_definition():
    rng = np.random.default_rng(1)
    u = rng.integers(-2, 3, size=(40, 3)).astype(float)  # small integers: many exact ties
    v = rng.integers(-2, 3, size=(60, 3)).astype(float)
    users = np.repeat(np.arange(40), 8)
    train = R.UserItems.from_pairs(users, rng.integers(0, 60, users.size), 40)
    heldout = R.UserItems.from_pairs(users[:200], rng.integers(0, 60, 200), 40)
    for chunk_bytes in (1, 4000, R.DEFAULT_CHUNK_BYTES):  # one user per chunk, a few, all at once
        res = R.evaluate_embeddings(u, v, train, heldout, ks=(10, 50), max_chunk_bytes=chunk_bytes)
        for k in (10, 50):
            recall, ndcg = _brute_force(u, v, train, heldout, k)
            assert res.metrics[f"recall@{k}"] == pytest.approx(recall, abs=1e-12)
            assert res.metrics[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-12)


def test_bad_inputs_are_refused_with_what_was_wrong():
    with pytest.raises(ExporterError, match="same width"):
        R.evaluate_embeddings(USERS, ITEMS[:, :1], TRAIN, HELDOUT)
    with pytest.raises(ExporterError, match="item embedding row 3 is not finite"):
        R.evaluate_embeddings(USERS, np.where(np.arange(5)[:, None] == 3, np.nan, ITEMS), TRAIN, HELDOUT)
    with pytest.raises(ExporterError, match="cover 2 users, the scores 3"):
        R.evaluate_embeddings(USERS, ITEMS, R.UserItems.from_lists([[0], [1]]), HELDOUT)
    with pytest.raises(ExporterError, match="item row 7, beyond the catalogue of 5"):
        R.evaluate_embeddings(USERS, ITEMS, TRAIN, R.UserItems.from_lists([[7], [], []]))
    with pytest.raises(ExporterError, match="NaN"):
        R.evaluate_scores(lambda a, b: np.full((b - a, 5), np.nan), 3, 5, TRAIN, HELDOUT)


def test_split_pairs_equals_the_exporter_split_when_pairs_are_unique():
    frame = pd.DataFrame({"user_id": np.repeat(np.arange(10), 3), "item_id": np.tile(np.arange(3), 10)})
    train, held = R.split_pairs(frame, seed=0)
    want_train, want_held = D.split_indices(len(frame), seed=0)
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(held, want_held)
    assert not np.array_equal(R.split_pairs(frame, seed=1)[1], held)


def test_split_pairs_keeps_every_row_of_a_pair_on_one_side():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"user_id": rng.integers(0, 5, 200), "item_id": rng.integers(0, 6, 200)})
    train, held = R.split_pairs(frame, seed=0)
    assert len(train) + len(held) == 200 and not set(train) & set(held)

    def pairs(rows: np.ndarray) -> set[tuple[int, ...]]:
        return set(map(tuple, frame.iloc[rows][["user_id", "item_id"]].to_numpy().tolist()))

    assert pairs(held) and not pairs(train) & pairs(held)


def test_eval_sets_take_heldout_positives_and_exclude_all_training_interactions():
    train = pd.DataFrame({"user_id": [7, 7, 9], "item_id": ["b", "c", "a"], "liked": [0, 1, 1]})
    held = pd.DataFrame({"user_id": [7, 9, 9, 8], "item_id": ["a", "b", "c", "a"], "liked": [1, 0, 1, 0]})
    sets = R.eval_sets(train, held, users=[7, 8, 9], items=["a", "b", "c"], positive="liked")
    assert [sets.train.row(u).tolist() for u in range(3)] == [[1, 2], [], [0]]
    assert [sets.heldout.row(u).tolist() for u in range(3)] == [[0], [], [2]]
    with pytest.raises(ExporterError, match="item 'z' is not in the catalogue of 3 items"):
        R.eval_sets(train, held.assign(item_id=["a", "z", "c", "a"]), users=[7, 8, 9], items=["a", "b", "c"])
