"""The feature schema, its fitted plan, the raw-table encoder and the in-graph preprocessing against its numpy twin."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from exporter import features as F
from exporter.errors import ExporterError
from exporter.features import onnx_prep
from exporter.features.schema import read_column
from exporter.runtime import rules
from exporter.training import inputs as I
from exporter.training import quality_gate as Q


def run_prep(plan: F.FeaturePlan, raw: np.ndarray) -> np.ndarray:
    model = onnx_prep.prep_model(plan)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString()).run(None, {"features": raw})[0]


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [7, 7, 7, 3, 3, 9, 11, 7],  # 7 x4, 3 x2, 9 and 11 once
            "genre": ["rock", "jazz", "rock", None, "rock", "jazz", "folk", "rock"],
            "price": [1.0, 2.0, np.nan, 4.0, 10.0, 6.0, 7.0, 8.0],
            "flag": [True, False, True, True, False, True, True, True],
        }
    )


# --------------------------------------------------------------------------- schema: declared and inferred


def test_inference_rules():
    assert F.infer_kind(pd.Series(["a", "b"]), "shop") == F.CATEGORICAL
    assert F.infer_kind(pd.Series([True, False]), "is_new") == F.CATEGORICAL
    assert F.infer_kind(pd.Series(["x", "y"], dtype="category"), "c") == F.CATEGORICAL
    assert F.infer_kind(pd.Series([1, 2, 3]), "movieId") == F.CATEGORICAL
    assert F.infer_kind(pd.Series([1.0, np.nan, 3.0]), "user_id") == F.CATEGORICAL, (
        "IDs with empty cells read as floats"
    )
    assert F.infer_kind(pd.Series([1, 2, 3]), "age") == F.NUMERIC
    assert F.infer_kind(pd.Series([1.5, 2.0]), "score_id") == F.NUMERIC, "not integers: not an ID"
    # a numeric column with a stray bad cell stays numeric, so the encoder can name the cell
    assert F.infer_kind(pd.Series(["1.5"] * 19 + ["cheap"], dtype=object), "price") == F.NUMERIC


def test_schema_from_dict_list_and_file(tmp_path):
    schema = F.load_schema(
        {
            "label": "clicked",
            "features": [
                {"name": "user_id", "kind": "categorical", "min_count": 1},
                {"name": "price", "fill": 0, "optional": True},
            ],
        }
    )
    assert schema.label == "clicked" and schema.columns == ["user_id", "price"]
    assert schema.get("user_id").min_count == 1 and schema.get("price").fill == 0.0 and schema.get("price").optional
    as_object = F.load_schema({"user_id": {"kind": "categorical", "hash_buckets": 100}, "price": None})
    assert as_object.columns == ["user_id", "price"] and as_object.get("user_id").hash_buckets == 100
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"features": ["a", {"name": "b", "kind": "categorical", "tower": "item"}]}))
    from_file = F.load_schema(str(path))
    assert from_file.columns == ["a", "b"] and from_file.get("b").tower == "item" and from_file.label is None


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"features": [{"name": "a", "kind": "ordinal"}]}, "kind must be 'numeric', 'categorical' or 'history'"),
        ({"features": [{"name": "a", "colour": 1}]}, "unknown key(s) colour"),
        ({"features": [{"name": "a", "kind": "categorical", "fill": 1}]}, "'fill' is for numeric features"),
        ({"features": [{"name": "a", "min_count": 2}]}, "vocabulary policy of categorical"),
        (
            {"features": [{"name": "a", "kind": "categorical", "hash_buckets": 0}]},
            "hash_buckets must be an integer >= 1",
        ),
        (
            {"features": [{"name": "a", "kind": "categorical", "hash_buckets": 8, "max_size": 3}]},
            "hash_buckets replaces",
        ),
        ({"features": ["a", "a"]}, "listed twice: a"),
        ({"features": [{"name": "a", "tower": "left"}]}, "tower must be 'user', 'item'"),
        ({"label": 3, "features": []}, "label must be a column name"),
    ],
)
def test_bad_schema_says_what_is_wrong(schema, message):
    with pytest.raises(ExporterError) as info:
        F.load_schema(schema)
    assert message in str(info.value)


def test_missing_schema_file_is_named(tmp_path):
    with pytest.raises(ExporterError, match="schema file .*nope.json not found"):
        F.load_schema(str(tmp_path / "nope.json"))


# --------------------------------------------------------------------------- fitting and encoding


def test_vocabulary_is_frequency_ordered_with_min_count_and_max_size(frame):
    specs = [
        F.FeatureSpec("user_id", F.CATEGORICAL, min_count=1),
        F.FeatureSpec("genre", F.CATEGORICAL),
        F.FeatureSpec("price"),
        F.FeatureSpec("flag", F.CATEGORICAL, min_count=1),
    ]
    plan = F.fit(frame, specs)
    assert plan["user_id"].keys == [7, 3, 9, 11] and plan["user_id"].rows == 5  # ties (9, 11) by value
    assert plan["genre"].vocab == ["rock", "jazz"]  # "folk" seen once: below min_count 2, shares the OOV row
    assert plan["genre"].stats["missing_rate"] == pytest.approx(1 / 8)
    assert plan["price"].fill == 6.0 and plan["price"].stats["missing_rate"] == pytest.approx(1 / 8)
    assert plan["flag"].dtype == "bool" and plan["flag"].keys == [1, 0]
    capped = F.fit(frame, [F.FeatureSpec("user_id", F.CATEGORICAL, min_count=1, max_size=2)])
    assert capped["user_id"].keys == [7, 3]

    raw = plan.encode(
        pd.DataFrame({"user_id": [3, 12345], "genre": ["jazz", "folk"], "price": [np.nan, 5.0], "flag": [False, True]})
    )
    np.testing.assert_array_equal(raw[:, 0], [3, 12345])  # IDs as they are
    np.testing.assert_array_equal(raw[:, 1], [1, F.UNKNOWN_CODE])  # strings as their code; unknown -> -1
    assert np.isnan(raw[0, 2]) and raw[1, 2] == 5.0  # missing stays NaN for the graph
    np.testing.assert_array_equal(raw[:, 3], [0, 1])
    prepared = plan.prepare(raw)
    np.testing.assert_array_equal(prepared, [[2, 2, 6.0, 2], [0, 0, 5.0, 1]])


@pytest.mark.parametrize("dtype", ["boolean", object])
def test_a_boolean_column_with_missing_values_is_an_optional_category(dtype):
    """pandas reads a Parquet bool column with nulls as ``boolean`` (missing = pd.NA, whose truth value raises)."""
    flags = pd.Series([True, None, False, True, None, True], dtype=dtype)
    frame = pd.DataFrame({"flag": flags, "label": [1, 0, 0, 1, 0, 1]})
    plan = F.fit(frame, [F.FeatureSpec("flag", F.CATEGORICAL, min_count=1)])
    assert plan["flag"].dtype == "bool" and plan["flag"].keys == [1, 0]
    assert plan["flag"].stats["missing_rate"] == pytest.approx(2 / 6)
    raw = plan.encode(frame)
    np.testing.assert_array_equal(raw[:, 0], [1, np.nan, 0, 1, np.nan, 1])


def test_training_rows_only_decide_the_vocabulary(frame):
    plan = F.fit(frame, [F.FeatureSpec("user_id", F.CATEGORICAL, min_count=1)], train_rows=[0, 1, 3])
    assert plan["user_id"].keys == [7, 3]


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("price", np.inf, ["column 'price' row 3", "inf", "not a finite number"]),
        ("user_id", 2.5, ["column 'user_id' row 3", "2.5", "not an integer ID"]),
        ("user_id", 2.0**60, ["column 'user_id' row 3", "2^53"]),
    ],
)
def test_bad_cells_are_named_by_column_and_row(frame, column, value, message):
    bad = frame.copy()
    bad[column] = bad[column].astype(float)
    bad.loc[2, column] = value
    specs = [F.FeatureSpec("user_id", F.CATEGORICAL), F.FeatureSpec("price")]
    with pytest.raises(ExporterError) as info:
        F.fit(bad, specs, source="log.csv")
    for fragment in message + ["log.csv"]:
        assert fragment in str(info.value)


def test_an_all_empty_numeric_column_needs_a_declared_fill():
    empty = pd.DataFrame({"x": [np.nan, np.nan, np.nan]})
    with pytest.raises(ExporterError, match="'x' has no values in the training rows: give it a 'fill'"):
        F.fit(empty, [F.FeatureSpec("x")])
    assert F.fit(empty, [F.FeatureSpec("x", fill=-1.0)])["x"].fill == -1.0


def test_plan_round_trips_through_json(frame):
    plan = F.fit(
        frame,
        [
            F.FeatureSpec("user_id", F.CATEGORICAL),
            F.FeatureSpec("genre", F.CATEGORICAL, optional=True),
            F.FeatureSpec("price", fill=3.0),
            F.FeatureSpec("flag", F.CATEGORICAL, hash_buckets=4),
        ],
    )
    again = F.FeaturePlan.from_dict(json.loads(json.dumps(plan.to_dict())), source="test")
    raw = F.probe_rows(plan, plan.encode(frame))
    np.testing.assert_array_equal(again.prepare(raw), plan.prepare(raw))
    assert again["genre"].spec.optional and again["price"].fill == 3.0


# --------------------------------------------------------------------------- the graph and its numpy twin


def test_in_graph_lookup_sends_every_odd_value_to_the_oov_row():
    plan = F.FeaturePlan(
        [
            F.FittedFeature(F.FeatureSpec("id", F.CATEGORICAL), "int64", keys=[7, 3, 2**53]),
            F.FittedFeature(F.FeatureSpec("x"), "float64", fill=42.0),
        ]
    )
    raw = np.array(
        [
            [7, 1.0],
            [3, np.nan],
            [2**53, np.inf],
            [4, -np.inf],  # known, known, known at the limit, unseen
            [7.5, 2.0],
            [np.nan, 3.0],
            [-7, 4.0],
            [2.0**60, 5.0],
            [np.inf, 6.0],
            [-np.inf, 7.0],
            [1e300, 8.0],
        ]
    )
    want = np.array(
        [
            [1, 1.0],
            [2, 42.0],
            [3, 42.0],
            [0, 42.0],
            [0, 2.0],
            [0, 3.0],
            [0, 4.0],
            [0, 5.0],
            [0, 6.0],
            [0, 7.0],
            [0, 8.0],
        ]
    )
    np.testing.assert_array_equal(plan.prepare(raw), want)
    np.testing.assert_array_equal(run_prep(plan, raw), want)


def test_hash_buckets_rows_match_between_graph_and_twin():
    plan = F.FeaturePlan([F.FittedFeature(F.FeatureSpec("h", F.CATEGORICAL, hash_buckets=10), "int64")])
    raw = np.array([[0.0], [9.0], [10.0], [-1.0], [123456789.0], [np.nan], [0.5]])
    want = np.array([[1], [10], [1], [10], [10], [0], [0]], dtype=float)  # 1 + value mod 10 (Python's mod)
    np.testing.assert_array_equal(plan.prepare(raw), want)
    np.testing.assert_array_equal(run_prep(plan, raw), want)


def test_probe_rows_pass_identically_through_graph_and_twin(frame):
    plan = F.fit(
        frame,
        [
            F.FeatureSpec("price"),
            F.FeatureSpec("user_id", F.CATEGORICAL, min_count=1),
            F.FeatureSpec("genre", F.CATEGORICAL),
            F.FeatureSpec("flag", F.CATEGORICAL),
        ],
    )
    raw = np.concatenate([plan.encode(frame), F.probe_rows(plan, plan.encode(frame))])
    got = run_prep(plan, raw)
    np.testing.assert_array_equal(got, plan.prepare(raw))
    cat = got[:, 1:]
    assert np.isfinite(got).all() and (cat >= 0).all() and (cat == np.floor(cat)).all()
    assert (cat < np.array([f.rows for f in plan.features[1:]])).all(), "rows stay inside each embedding table"


# --------------------------------------------------------------------------- labels and quality


def test_binary_labels_accept_0_1_and_booleans_and_name_the_bad_row():
    frame = pd.DataFrame({"a": [0, 1, 1], "b": [True, False, True], "c": [0, 1, 2], "d": [0.0, np.nan, 1.0]})
    np.testing.assert_array_equal(I.binary_labels(frame, "a", source="t"), [0, 1, 1])
    np.testing.assert_array_equal(I.binary_labels(frame, "b", source="t"), [1, 0, 1])
    with pytest.raises(
        ExporterError, match=r"t: label column 'c' row 3: value 2 is not a binary label; expected 0 or 1"
    ):
        I.binary_labels(frame, "c", source="t")
    with pytest.raises(ExporterError, match=r"label column 'd' row 2: an empty cell is not a binary label"):
        I.binary_labels(frame, "d", source="t")


def test_quality_warns_near_chance_and_min_auc_refuses():
    labels = {"label": np.array([0, 1, 0, 1.0])}
    good = Q.assess({"auc": 0.8, "logloss": 0.5}, labels)
    assert "warning" not in good and good["value"] == 0.8 and good["baselines"]["chance_auc"] == 0.5
    assert good["baselines"]["base_rate_logloss"] == pytest.approx(np.log(2))
    bad = Q.assess({"auc": 0.51}, labels)
    assert "0.510 is below 0.55" in bad["warning"]
    Q.check_min_auc(good, 0.75, "deepfm")
    with pytest.raises(Q.QualityError, match="held-out auc 0.8000 is below --min-auc 0.9; nothing was written") as info:
        Q.check_min_auc(good, 0.9, "deepfm")
    assert info.value.exit_code == 4
    reg = Q.assess({"ctr_auc": 0.7, "gmv_rmse": 3.0, "gmv_rmse_baseline": 2.0}, labels)
    assert "gmv_rmse 3 is no better than predicting the mean" in reg["warning"]


def test_feature_facts_are_the_runtime_rules():
    """One owner: the features package, the repository and the handler share the runtime rules' values."""
    import hashlib

    from exporter.export.repository import VOCAB_FILE
    from exporter.runtime import columns

    assert F.hash_code is rules.hash_code and columns.hash_code is rules.hash_code
    assert (F.MAX_EXACT_INT, F.UNKNOWN_CODE, VOCAB_FILE) == (2**53, -1, "vocab.json")
    for text in ("", "rock", "ünïcode", "x" * 1000):  # docs/features.md: sha256 of the UTF-8 bytes, 6 bytes big-endian
        assert F.hash_code(text) == int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:6], "big") < 2**48


def test_metadata_features_must_describe_the_feature_columns():
    from exporter import contract as C

    base = {
        "name": "m",
        "model_file": "model.onnx",
        "sha256": "0" * 64,
        "prediction_format": "scalar",
        "feature_columns": ["a", "b"],
        "inputs": [{"name": "features"}],
        "outputs": [{"name": "predictions"}],
    }
    good = dict(base, features=[{"name": "a", "kind": "numeric"}, {"name": "b", "kind": "categorical"}])
    swapped = dict(base, features=[{"name": "b", "kind": "numeric"}, {"name": "a", "kind": "numeric"}])
    odd = dict(base, features=[{"name": "a", "kind": "numeric"}, {"name": "b", "kind": "ordinal"}])
    check = C.usability_problems
    assert check(good) == [] and check(base) == []
    assert check(swapped) == ['"features" must describe the feature_columns, one object each, in their order']
    assert check(odd) == ['"features[].kind" must be "numeric", "categorical" or "history"']


def test_an_artifacts_own_encoder_reproduces_the_training_encoding(tmp_path, frame):
    """Offline scoring: metadata.json + vocab.json give the same FP64 features as the plan training fitted."""
    from exporter.export.repository import VOCAB_FILE

    plan = F.fit(
        frame,
        [
            F.FeatureSpec("user_id", F.CATEGORICAL),
            F.FeatureSpec("genre", F.CATEGORICAL),
            F.FeatureSpec("price"),
            F.FeatureSpec("flag", F.CATEGORICAL),
        ],
    )
    vocab_bytes = json.dumps(plan.vocab_json()).encode()
    (tmp_path / VOCAB_FILE).write_bytes(vocab_bytes)
    import hashlib

    meta = {
        "name": "m",
        "model_file": "model.onnx",
        "sha256": "0" * 64,
        "prediction_format": "scalar",
        "inputs": [{"name": "features"}],
        "outputs": [{"name": "predictions"}],
        "feature_columns": plan.columns,
        "features": plan.metadata(VOCAB_FILE, hashlib.sha256(vocab_bytes).hexdigest()),
    }
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    encoder = F.FeaturePlan.from_artifact(tmp_path)
    new = pd.DataFrame({"user_id": [3, 555], "genre": ["jazz", "disco"], "price": [np.nan, 2.5], "flag": [True, False]})
    np.testing.assert_array_equal(encoder.encode(new), plan.encode(new))
    with pytest.raises(ExporterError, match="the mapping to embedding rows lives in the model's graph"):
        encoder.prepare(encoder.encode(new))
    (tmp_path / VOCAB_FILE).write_bytes(vocab_bytes.replace(b"jazz", b"jizz"))
    with pytest.raises(ExporterError, match="does not match the sha256"):
        F.FeaturePlan.from_artifact(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps(dict(meta, feature_columns=plan.columns[::-1])))
    with pytest.raises(ExporterError, match="metadata.json' is not usable.*must describe the feature_columns"):
        F.FeaturePlan.from_artifact(tmp_path)  # read and checked by the runtime rules, as the handler reads it


BIG_ID = 2**64  # a CSV column holding it is read by pandas as objects, not int64


@pytest.mark.parametrize("big", [BIG_ID, str(BIG_ID), "-18446744073709551617", 2**53 + 1])
def test_integer_ids_beyond_2_53_are_refused_not_read_as_strings(big):
    ids = pd.Series([47, 3, big, np.nan, 47], dtype=object)
    frame = pd.DataFrame({"user_id": ids, "shop_id": ids, "price": [1.0, 2.0, 3.0, 4.0, 5.0]})
    rows = np.arange(5)
    for column in ("user_id", "shop_id"):  # a default column of the contract, and one inferred by its name
        with pytest.raises(ExporterError) as err:
            I.fit_plan(frame, [column, "price"], None, rows, source="data file x.csv")
        message = str(err.value)
        assert message.startswith(f"data file x.csv: column '{column}' row 3: ID {big} is beyond 2^53"), message
        assert '"kind": "categorical"' in message and "remap" in message
    declared = F.load_schema([{"name": "user_id", "kind": "categorical"}, "price"])
    plan, origins = I.fit_plan(frame, ["user_id", "price"], declared, rows, source="data file x.csv")
    assert origins["user_id"] == "declared" and plan.features[0].dtype == "string"
    small = pd.DataFrame({"user_id": pd.Series(["47", "3", "-5", None], dtype=object), "price": [1.0, 2, 3, 4]})
    plan, _ = I.fit_plan(small, ["user_id", "price"], None, np.arange(4), source="data file x.csv")
    assert plan.features[0].dtype == "string", "digit strings within 2^53 keep their kind"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # a uint64 / int64 ID is named as the file holds it, not as a rounded float
        (pd.Series([7, 2**53 + 1], dtype="uint64"), "row 2: ID 9007199254740993 is beyond 2^53"),
        (pd.Series([7, -(2**60)], dtype="int64"), "row 2: ID -1152921504606846976 is beyond 2^53"),
        (pd.Series([7, None, 2**53 + 1], dtype="UInt64"), "row 3: ID 9007199254740993 is beyond 2^53"),
        (pd.Series([7.0, 3.5]), "row 2: value 3.5 is not an integer ID; a categorical column of numbers"),
    ],
)
def test_a_categorical_number_that_is_no_exact_id_is_named_as_written(values, message):
    with pytest.raises(ExporterError, match=re.escape(f"data file t.parquet: column 'user_id' {message}")):
        read_column(values, F.FeatureSpec("user_id", F.CATEGORICAL), source="data file t.parquet")
