"""Streamed and distributed two_tower fits take each item's sampling probability from the whole log's counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exporter.models import get_spec
from exporter.models.two_tower import sampled_softmax as S

ITEMS = [1, 2]


def _log(rows: int = 6000, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(size=rows), rng.zipf(1.6, rows) % 40, rng.integers(0, 3, rows)]).astype(float)
    return x, {"label": (rng.random(rows) < 0.5).astype(float)}


def test_counts_over_blocks_give_the_whole_tables_sampling_probabilities():
    x, y = _log()
    counts = S.ItemCounts(ITEMS, "label")
    for start in range(0, len(x), 700):
        counts.add(x[start : start + 700], {"label": y["label"][start : start + 700]})
    pos, _, whole = S.positive_pairs(x, y, "label", np.array(ITEMS))
    assert counts.total == len(pos)
    np.testing.assert_allclose(counts.log_q(pos), whole, rtol=0, atol=1e-12)
    # a block's own counts differ from the whole log's for its rare items: what the counts are for
    block_pos, _, block_q = S.positive_pairs(x[:700], {"label": y["label"][:700]}, "label", np.array(ITEMS))
    assert np.abs(counts.log_q(block_pos) - block_q).max() > 0.5


def test_counts_made_elsewhere_read_the_same_and_an_unseen_item_counts_once():
    x, y = _log()
    pos, _, whole = S.positive_pairs(x, y, "label", np.array(ITEMS))
    items, n = np.unique(pos[:, ITEMS], axis=0, return_counts=True)
    spark_like = S.ItemCounts.from_arrays(ITEMS, "label", items, n)
    np.testing.assert_allclose(spark_like.log_q(pos), whole, rtol=0, atol=1e-12)
    unseen = np.array([[0.0, 999.0, 0.0]])
    assert spark_like.log_q(unseen)[0] == pytest.approx(math.log(1 / len(pos)))
    assert spark_like.log_q(np.zeros((0, 3))).shape == (0,)


def test_without_a_label_every_row_is_a_positive():
    x, _ = _log(500)
    counts = S.ItemCounts(ITEMS, "label")
    counts.add(x, {})
    assert counts.total == 500


def test_two_tower_blocks_use_the_counts_and_other_settings_need_none():
    spec = get_spec("two_tower")
    config = {"loss": "softmax", "logq_correction": True, "item_idx": ITEMS}
    x, y = _log()
    counter = spec.log_counter(config)
    assert isinstance(counter, S.ItemCounts)
    counter.add(x, y)
    block = spec.block_tensors(config, x[:700], {"label": y["label"][:700]}, counter)
    pos, _, whole = S.positive_pairs(x, y, "label", np.array(ITEMS))
    keep = y["label"][:700] == 1
    np.testing.assert_allclose(block[2].numpy(), whole[: int(keep.sum())], rtol=0, atol=1e-12)
    assert spec.log_counter({**config, "logq_correction": False}) is None
    assert spec.log_counter({**config, "loss": "bce"}) is None
    assert get_spec("deepfm").log_counter({}) is None
