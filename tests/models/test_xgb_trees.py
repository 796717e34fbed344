"""The tree-ensemble node read from the model's JSON is onnxmltools' node, byte for byte, and scores as XGBoost does.

onnxmltools is the reference: it is an independent converter, and the pinned seeded export
(tests/export/test_seeded_export.py) was taken with it.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import xgboost as xgb

from exporter.models import xgb as X
from exporter.models import xgb_trees as T


def _booster(seed: int, rounds: int = 30, **params: object) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 6))
    x[:, 4] = rng.integers(0, 5, 600)  # integer-valued splits, as ID codes give
    y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(0, 0.5, 600)) > 0).astype(int)
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values send rows down the learned default direction
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "seed": seed, **params},
        xgb.DMatrix(x, label=y),
        num_boost_round=rounds,
    )
    return booster, x


def _reference(booster: xgb.Booster, n_features: int, monkeypatch: pytest.MonkeyPatch) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(T, "tree_ensemble_node", lambda _booster: None)  # onnxmltools' path
        return X.booster_to_onnx(booster, n_features).SerializeToString()


@pytest.mark.parametrize(
    "params",
    [{}, {"base_score": 0.5}, {"max_depth": 8, "min_child_weight": 5, "reg_lambda": 10}, {"base_score": 0.2}],
    ids=["default", "base-0.5", "deep", "base-0.2"],
)
def test_same_bytes_as_onnxmltools(params: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    booster, x = _booster(1, **params)
    ours = X.booster_to_onnx(booster, x.shape[1])
    assert T.tree_ensemble_node(booster) is not None  # the JSON path really ran
    assert ours.SerializeToString() == _reference(booster, x.shape[1], monkeypatch)


def test_every_tree_of_an_early_stopped_booster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A booster that remembers a best iteration still scores with every tree (``Booster.predict``'s default), and
    so does its graph; the exporter slices the booster to the best trees before converting it."""
    rng = np.random.default_rng(3)
    _, x = _booster(2, rounds=1)
    noise = (rng.random(len(x)) < 0.5).astype(int)  # labels unrelated to the training ones: validation loss turns
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "eta": 0.5},
        xgb.DMatrix(x, label=(rng.random(len(x)) < 0.5).astype(int)),
        num_boost_round=200,
        evals=[(xgb.DMatrix(x, label=noise), "v")],
        early_stopping_rounds=3,
        verbose_eval=False,
    )
    assert int(booster.attr("best_iteration")) + 1 < booster.num_boosted_rounds()
    node = T.tree_ensemble_node(booster)
    assert node is not None
    trees = {a.name: a for a in node.attribute}["nodes_treeids"].ints
    assert max(trees) + 1 == booster.num_boosted_rounds()
    assert X.booster_to_onnx(booster, x.shape[1]).SerializeToString() == _reference(booster, x.shape[1], monkeypatch)


def test_scores_as_xgboost_on_missing_values() -> None:
    booster, x = _booster(4, rounds=40)
    model = X.booster_to_onnx(booster, x.shape[1])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    native = booster.predict(xgb.DMatrix(x))
    assert np.isnan(x).any(axis=1).sum() > 100
    np.testing.assert_allclose(got, native, atol=1e-6)


def test_other_shapes_go_through_onnxmltools() -> None:
    """Another objective, several targets, categorical splits: no node from the JSON path (onnxmltools has them)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    regression = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, label=x[:, 0]), num_boost_round=3)
    assert T.tree_ensemble_node(regression) is None
    two_labels = np.stack([x[:, 0] > 0, x[:, 1] > 0], axis=1).astype(int)
    multi_label = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, label=two_labels), num_boost_round=3)
    assert T.tree_ensemble_node(multi_label) is None
    frame_codes = rng.integers(0, 4, 200)
    import pandas as pd

    frame = pd.DataFrame({"c": pd.Categorical(frame_codes), "n": x[:, 0]})
    categorical = xgb.train(
        {"objective": "binary:logistic", "max_cat_to_onehot": 1},
        xgb.DMatrix(frame, label=(frame_codes == 2).astype(int), enable_categorical=True),
        num_boost_round=3,
    )
    assert T.tree_ensemble_node(categorical) is None
