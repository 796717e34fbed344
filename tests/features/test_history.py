"""History features: a list of IDs per row through schema, plan, graph, models, handler, score and the builder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter import features as F
from exporter.errors import ExporterError
from exporter.features.onnx_prep import prep_model
from exporter.features.plan import PADDING_ROW, probe_rows
from exporter.handler import ModelHandler
from exporter.training import data as D
from exporter.training import inputs as I

from ..conftest import run_cli

HIST = {"name": "hist_items", "kind": "history", "max_length": 4, "vocab_from": "item_id"}


def run_prep(plan: F.FeaturePlan, raw: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(prep_model(plan).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": raw})[0]


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [1, 2, 3, 1, 2, 3, 1, 9],
            "hist_items": [[1, 2], [3], [], None, [1, 2, 3, 4, 5, 6], "", np.array([2, 2]), "7|1"],
            "price": np.arange(8.0),
        }
    )


def plan_of(frame: pd.DataFrame, *specs: dict) -> F.FeaturePlan:
    schema = F.load_schema({"features": [{"name": "item_id", "kind": "categorical"}, *specs, "price"]})
    assert schema is not None
    return F.fit(frame, list(schema.features))


# ------------------------------------------------------------------------------------------------ schema


def test_schema_declares_a_history_with_defaults():
    schema = F.load_schema({"features": [{"name": "h", "kind": "history"}]})
    assert schema is not None
    spec = schema.features[0]
    assert (spec.kind, spec.max_length, spec.delimiter, spec.vocab_from, spec.tower) == (
        "history",
        20,
        "|",
        None,
        "user",
    )
    built = F.load_schema(
        {"features": [{"name": "h", "kind": "history", "from": {"user": "u", "item": "i", "time": "t"}}]}
    )
    assert built is not None and built.features[0].vocab_from == "i" and built.features[0].build_from["time"] == "t"


@pytest.mark.parametrize(
    "feature, message",
    [
        ({"name": "h", "kind": "history", "max_length": 0}, "max_length must be an integer from 1 to 1000"),
        ({"name": "h", "kind": "history", "delimiter": "1"}, "delimiter must be a non-blank string"),
        ({"name": "h", "kind": "history", "from": {"user": "u"}}, "'from' must be an object with 'user' and 'item'"),
        ({"name": "h", "kind": "history", "vocab_from": "i", "min_count": 3}, "shares the vocabulary of 'i'"),
        ({"name": "h", "kind": "categorical", "max_length": 5}, "'max_length' is an option of history features"),
        ({"name": "h", "kind": "list"}, "kind must be 'numeric', 'categorical' or 'history'"),
    ],
)
def test_bad_history_options_are_named(feature, message):
    with pytest.raises(ExporterError, match=message):
        F.load_schema({"features": [feature]})


# ------------------------------------------------------------------------------------------------ plan


def test_a_history_is_max_length_tensor_columns_sharing_the_vocabulary(frame):
    plan = plan_of(frame, HIST)
    assert plan.columns == ["item_id", *(f"hist_items[{p}]" for p in range(4)), "price"]
    assert plan.histories() == [{"name": "hist_items", "columns": [1, 2, 3, 4], "rows": 4, "target": 0}]
    raw = plan.encode(frame)
    nan = np.nan
    expected = [
        [1, 2, nan, nan],  # a list
        [3, nan, nan, nan],
        [nan] * 4,  # empty list
        [nan] * 4,  # missing: an empty history
        [3, 4, 5, 6],  # longer than max_length: the last (most recent) four
        [nan] * 4,  # empty text
        [2, 2, nan, nan],  # a numpy array (Parquet)
        [7, 1, nan, nan],  # delimited text (CSV)
    ]
    np.testing.assert_array_equal(raw[:, 1:5], np.array(expected, dtype=float))
    prepared = plan.prepare(raw)
    assert prepared[2, 1] == PADDING_ROW and prepared[7, 1] == 0  # padding is masked, 7 is out of vocabulary
    assert prepared[0, 1] == prepared[3, 0]  # item 1 has the same row as in item_id: one vocabulary


def test_an_own_vocabulary_is_fitted_on_the_training_rows_items(frame):
    plan = plan_of(frame, {"name": "hist_items", "kind": "history", "max_length": 4, "min_count": 2})
    feat = plan["hist_items[0]"]
    assert feat.keys == [2, 1, 3] and plan.histories()[0]["target"] is None  # most frequent first
    only_two = F.fit(frame, [feat.spec], train_rows=[0, 6])  # [1, 2] and [2, 2]: only 2 is seen twice
    assert only_two["hist_items[0]"].keys == [2]


@pytest.mark.parametrize(
    "value, message",
    [
        ([1, "x"], 'row 1 position 1: value is the string "x", not an integer ID'),
        ([1, 2.5], "row 1 position 1: value is 2.5, not an integer ID"),
        ([1, None], "row 1 position 1: value is null or NaN (a missing item: send a shorter list instead)"),
        ([1, float("nan")], "row 1 position 1: value is null or NaN (a missing item: send a shorter list"),
        ([2**60], "row 1 position 0: value is 1152921504606846976, beyond 2^53"),
        ("1|a", 'row 1 position 1: value is the string "a", not an integer ID'),
        (
            "12,7,99",
            "row 1 position 0: value is the string \"12,7,99\", not an integer ID (IDs separated by ','? "
            'the schema\'s "delimiter" sets the separator of a history in text, e.g. "delimiter": ",")',
        ),
        ({"a": 1}, "row 1: value is an object, expected a list of integer IDs"),
    ],
)
def test_bad_history_cells_name_column_row_and_position(value, message):
    bad = pd.DataFrame({"item_id": [1], "hist_items": pd.Series([value], dtype=object), "price": [1.0]})
    with pytest.raises(ExporterError, match=re.escape(f"column 'hist_items' {message}")):
        plan_of(bad, HIST)


@pytest.mark.parametrize(
    "text, items",
    [
        ("[5, 6, 7]", [5, 6, 7]),  # DataFrame.to_csv of a column of lists; JSON too
        ("[7]", ["7"]),
        ("[]", []),
        (" [ ] ", []),
        ("['a', 'b']", ["a", "b"]),
        ('["a", "b"]', ["a", "b"]),
        ("[1 2 3]", ["1", "2", "3"]),  # numpy's array print
        ("[\n 1 2\n 3]", ["1", "2", "3"]),
        ("['a' 'b']", ["a", "b"]),  # not Python's implicit concatenation 'ab'
        ("[np.int64(4), np.int64(5)]", [4, 5]),  # numpy 2's scalars inside a printed list
        ("[np.str_('a'), np.str_('b')]", ["a", "b"]),
        ("12|7", ["12", "7"]),
        ("[a]|[b]", ["[a]", "[b]"]),  # brackets that do not make a list: the delimiter's items
        ("", []),
    ],
)
def test_a_printed_list_in_text_is_read_as_its_items(text, items):
    from exporter.runtime.history import text_items

    assert text_items(text, "|") == items


def test_a_csv_of_printed_lists_fits_the_history_its_lists_fit(frame, tmp_path):
    """A column of lists written with DataFrame.to_csv and read back: the same plan as the lists themselves."""
    lists = frame.assign(hist_items=[[1, 2], [3], [], [], [1, 2, 3, 4, 5, 6], [], [2, 2], [7, 1]])
    lists.to_csv(tmp_path / "lists.csv", index=False)
    printed = pd.read_csv(tmp_path / "lists.csv")
    assert printed["hist_items"][0] == "[1, 2]"
    spec = {"name": "hist_items", "kind": "history", "max_length": 4, "min_count": 1}
    a, b = plan_of(lists, spec), plan_of(printed, spec)
    assert a["hist_items[0]"].keys == b["hist_items[0]"].keys and b["hist_items[0]"].dtype == "int64"
    assert b["hist_items[0]"].stats == a["hist_items[0]"].stats and b["hist_items[0]"].stats["mean_length"] > 1
    np.testing.assert_array_equal(b.encode(printed), a.encode(lists))
    words = pd.DataFrame({"item_id": [1, 2], "hist_items": ["['x', 'y']", "['y']"], "price": [1.0, 2.0]})
    assert plan_of(words, spec)["hist_items[0]"].vocab == ["y", "x"]  # a history of strings, not of "['x', 'y']"
    with pytest.raises(ExporterError, match=r"row 1 position 1: value is a list, not an integer ID"):
        plan_of(pd.DataFrame({"item_id": [1], "hist_items": ["[1, [2]]"], "price": [1.0]}), spec)


def test_the_schema_shows_a_history_once_with_its_tensor_columns(frame):
    plan = plan_of(frame, HIST)
    text = F.format_schema([f.spec for f in plan.features], {"hist_items": "declared"})
    assert text.splitlines()[0] == "feature schema (3 features, 6 tensor columns):"
    assert text.count("hist_items") == 3  # its line: name, first and last tensor column
    assert "max_length 4: tensor columns hist_items[0] ... hist_items[3], vocab of item_id" in text


@pytest.mark.parametrize(
    "cells, reason, names",
    [
        ([[1, 2], [3], [2, 1], [1], [], [3, 2], [1], [2]], "unused_positions", "hist_items[2] ... hist_items[3]"),
        ([[], None, "", [], [], [], "", None], "all_empty", "it is empty in all 8 training rows"),
        ([[1, 2, 3, 1], [3], [], [1], [2], [3], [1], [2]], None, None),
    ],
)
def test_a_history_that_rows_never_fill_is_one_warning_not_one_per_column(frame, cells, reason, names):
    from exporter.training import column_checks as K

    table = frame.assign(hist_items=pd.Series(cells, dtype=object))
    plan = plan_of(table, {**HIST, "vocab_from": None})
    assert plan["hist_items[0]"].stats["longest"] == max(len(c or []) for c in cells)
    warnings = K.column_warnings(table, plan, plan.prepare(plan.encode(table)), np.arange(len(table)))
    about = [w for w in warnings if "hist_items" in w["column"]]
    if reason is None:
        assert about == []
        return
    assert [(w["column"], w["reason"]) for w in about] == [("hist_items", reason)]
    assert names in about[0]["message"]


def test_a_text_history_read_as_one_item_per_row_suggests_its_delimiter(frame):
    from exporter.training import column_checks as K

    table = frame.assign(hist_items=["a,b", "c", "a,c", "b", "", "c,a,b", "a", "b"])
    plan = plan_of(table, {**HIST, "vocab_from": None})
    warnings = K.column_warnings(table, plan, plan.prepare(plan.encode(table)), np.arange(len(table)))
    (about,) = [w for w in warnings if w["column"] == "hist_items"]
    assert about["reason"] == "unused_positions"
    assert "another separator than its delimiter '|', set the schema's \"delimiter\"" in about["message"]


@pytest.mark.parametrize(
    ("cells", "warned"),
    [
        (["i_3|i_9", "i_1|i_2|i_3", "i_4", "i_5|i_3", "i_7|i_8", "", "i_2|i_1", "i_9|i_4"], True),
        (["[12, 7]", "[3]", "[1, 2]", "[5, 6, 7]", "[8, 9]", "[4]", "[2, 3]", "[1, 9]"], True),
        (["rock", "jazz", "rock", "pop|rock", "jazz", "folk", "rock", "pop"], False),  # a category, one '|'
    ],
)
def test_a_text_column_of_id_lists_read_as_a_category_suggests_a_history(frame, cells, warned):
    """Undeclared, 'i_3|i_9' is a string category (each whole list one value, most seen once); the run says how to
    declare it a history instead."""
    from exporter.training import column_checks as K

    table = frame.assign(recent=cells)
    plan = F.fit(table, [F.FeatureSpec("recent", F.CATEGORICAL)])
    warnings = K.column_warnings(table, plan, plan.prepare(plan.encode(table)), np.arange(len(table)))
    about = [w for w in warnings if w["column"] == "recent"]
    if not warned:
        assert all(w["reason"] != "list_text" for w in about)
        return
    assert [w["reason"] for w in about] == ["list_text"]
    assert '{"name": "recent", "kind": "history"}' in about[0]["message"]


def test_graph_and_twin_agree_on_every_history_probe(frame):
    plan = plan_of(frame, HIST)
    probes = probe_rows(plan, plan.encode(frame), rows=16)
    hist = probes[:, 1:5]
    assert np.isnan(hist[0]).all() and not np.isnan(hist[7]).any()  # empty and full histories
    finite = hist[np.isfinite(hist)]
    assert np.isinf(hist).any() and (hist == 2**60).any() and (finite % 1 == 0.5).any()  # invalid IDs
    np.testing.assert_array_equal(run_prep(plan, probes), plan.prepare(probes))
    rows = plan.prepare(probes)[:, 1:5]
    assert set(np.unique(rows)) <= {PADDING_ROW, 0, 1, 2, 3}


def test_the_plan_and_metadata_describe_the_history(frame):
    plan = plan_of(frame, HIST)
    again = F.FeaturePlan.from_dict(json.loads(json.dumps(plan.to_dict())), source="t")
    assert again.columns == plan.columns and again.histories() == plan.histories()
    assert again["hist_items[3]"].keys == [1, 2, 3]
    entry = plan.metadata(None, None)[2]
    assert entry["name"] == "hist_items[1]" and entry["kind"] == "history" and entry["optional"] is True
    assert entry["history"] == {
        "column": "hist_items",
        "position": 1,
        "max_length": 4,
        "delimiter": "|",
        "vocab_from": "item_id",
    }
    assert plan.subset(["hist_items", "price"]).columns == [f"hist_items[{p}]" for p in range(4)] + ["price"]


# ------------------------------------------------------------------------------------------------ the builder


def log_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user": rng.integers(0, 12, n),
            "item": np.arange(n) + 1000,  # every interaction its own item: a history shows where it came from
            "ts": rng.integers(0, 60, n),  # ties on purpose
            "clicked": rng.random(n) < 0.6,
        }
    )


def test_a_timed_history_holds_only_earlier_training_interactions_of_the_user():
    log = log_frame()
    train = np.random.default_rng(1).random(len(log)) < 0.8
    hist = F.build_history(log, "user", "item", "ts", max_length=5, train_mask=train, positive="clicked")
    source = {int(i): r for r, i in enumerate(log["item"])}
    for r, items in enumerate(hist):
        assert len(items) <= 5
        for item in items:
            s = source[item]
            assert s != r and train[s] and log["clicked"][s]  # never itself, never a held-out row or an impression
            assert log["user"][s] == log["user"][r] and log["ts"][s] < log["ts"][r]  # strictly earlier
        earlier = log[(log["user"] == log["user"][r]) & (log["ts"] < log["ts"][r]) & train & log["clicked"]]
        assert len(items) == min(5, len(earlier))  # nothing allowed is left out
        if items:
            assert log["ts"][source[items[-1]]] == earlier["ts"].max()  # the most recent kept last


def test_an_untimed_history_is_the_users_other_training_interactions():
    log = log_frame()
    train = np.random.default_rng(2).random(len(log)) < 0.8
    hist = F.build_history(log, "user", "item", max_length=500, train_mask=train)
    for r, items in enumerate(hist):
        mine = log[(log["user"] == log["user"][r]) & train]
        assert items == [int(i) for i in mine["item"] if i != log["item"][r]]  # table order, itself excluded
    short = F.build_history(log, "user", "item", max_length=3, train_mask=train)
    assert all(s == h[-3:] for s, h in zip(short, hist, strict=True))  # truncation keeps the latest


def test_the_builder_refuses_bad_arguments():
    log = log_frame(10)
    with pytest.raises(ExporterError, match="column 'when' is not in the table"):
        F.build_history(log, "user", "item", "when")
    with pytest.raises(ExporterError, match="train_mask must hold one value per row"):
        F.build_history(log, "user", "item", train_mask=[True])


# ------------------------------------------------------------------------------------------------ exports


def history_log(rows: int = 1500) -> pd.DataFrame:
    frame = D.synthetic_dataset(rows, 3)
    frame["ts"] = np.arange(rows)
    return frame


SCHEMA = {
    "label": "label",
    "features": [
        *(spec.to_dict() for spec in I.default_specs()),
        {
            "name": "hist_items",
            "kind": "history",
            "max_length": 6,
            "from": {"user": "user_id", "item": "item_id", "time": "ts", "positive": "label"},
        },
    ],
}


@pytest.fixture(scope="module")
def history_exports(tmp_path_factory):
    """deepfm, mmoe and two_tower exported with a history built from the log (the data file has no history)."""
    from exporter.export import pipeline

    root = tmp_path_factory.mktemp("history")
    data = root / "log.parquet"
    history_log().to_parquet(data, index=False)
    runs = {}
    for model in ("deepfm", "mmoe", "two_tower"):
        params = pipeline.ExportParams(
            model=model, data_path=data, schema=SCHEMA, seed=1, hparams={"epochs": 1}, artifacts=root / "a"
        )
        params.progress = False
        runs[model] = pipeline.run(params)
    return root, runs


def handler_of(root: Path, model: str) -> ModelHandler:
    return ModelHandler.load(root / "a" / model)


@pytest.mark.slow
def test_every_torch_model_exports_a_history_with_parity_on_its_probes(history_exports):
    root, runs = history_exports
    for model in ("deepfm", "mmoe", "two_tower"):
        meta = json.loads((root / "a" / model / "1" / "metadata.json").read_text())
        assert meta["feature_columns"][-6:] == [f"hist_items[{p}]" for p in range(6)]
        assert meta["parity"]["passed"] and meta["parity"]["probe_rows"] == 64
        request = json.loads((root / "a" / model / "1" / "sample_request.json").read_text())
        assert isinstance(request["data"][0]["hist_items"], list)  # the TorchServe form sends the list
        assert handler_of(root, model).predict(request)["predictions"]
    item = json.loads((root / "a" / "two_tower_item" / "1" / "metadata.json").read_text())
    assert not any(c.startswith("hist_items") for c in item["feature_columns"])  # the user tower's
    net = runs["deepfm"].trained.model
    assert len(net.fields.pool.attention) == 1  # item_id is a feature: target attention
    assert len(runs["two_tower"].trained.model.user.fields.pool.attention) == 0  # the candidate is elsewhere


@pytest.mark.slow
def test_the_handler_takes_a_list_or_the_expanded_columns(history_exports):
    root, _ = history_exports
    handler = handler_of(root, "deepfm")
    row = json.loads((root / "a" / "deepfm" / "1" / "sample_request.json").read_text())["data"][0]
    row.pop("hist_items")

    def predict(**extra):
        return handler.predict({"data": [{**row, **extra}]})["predictions"][0]

    as_list = predict(hist_items=[3, 5, 8])
    expanded = predict(**{"hist_items[0]": 3, "hist_items[1]": 5, "hist_items[2]": 8})
    assert as_list == expanded
    assert predict(hist_items=[]) == predict() == predict(hist_items=None)  # empty = omitted = null
    assert predict(hist_items=list(range(100)) + [3, 5, 8]) == predict(
        hist_items=[94, 95, 96, 97, 98, 99, 3, 5, 8][-6:]
    )
    assert predict(hist_items=[10**9]) == predict(hist_items=[10**9 + 1])  # unknown items: the OOV row
    raw = F.FeaturePlan.from_artifact(root / "a" / "deepfm" / "1").encode(
        pd.DataFrame([{**row, "hist_items": [3, 5, 8]}])
    )
    assert np.isnan(raw[0, -3:]).all()  # padding travels as NaN in the tensor (Open Inference Protocol form)
    v2 = {"inputs": [{"name": "features", "shape": list(raw.shape), "datatype": "FP64", "data": raw.ravel().tolist()}]}
    assert handler.predict(v2)["outputs"][0]["data"] == [as_list]


@pytest.mark.slow
@pytest.mark.parametrize(
    "value, message",
    [
        ("3|5", 'data[0]["hist_items"] is a string ("3|5"), expected a list of integer IDs'),
        ([3, "5"], 'data[0]["hist_items"][1] is the string "5", not an integer ID'),
        ([3, 5.5], 'data[0]["hist_items"][1] is 5.5, not an integer ID'),
        ([3, None], 'data[0]["hist_items"][1] is null or NaN (a missing item: send a shorter list instead)'),
        ([2**60], 'data[0]["hist_items"][0] is 1152921504606846976, beyond 2^53'),
        ([True], 'data[0]["hist_items"][0] is a boolean (true), not an integer ID'),
    ],
)
def test_bad_history_requests_are_400s_naming_row_column_and_position(history_exports, value, message):
    root, _ = history_exports
    handler = handler_of(root, "deepfm")
    row = json.loads((root / "a" / "deepfm" / "1" / "sample_request.json").read_text())["data"][0]
    answer = handler.answer(payload={"data": [{**row, "hist_items": value}]})
    assert answer.status == 400
    assert message in json.loads(answer.body)["error"]


@pytest.mark.slow
def test_score_reads_a_parquet_list_column_and_delimited_csv_text(history_exports, tmp_path):
    root, _ = history_exports
    handler = handler_of(root, "deepfm")
    base = json.loads((root / "a" / "deepfm" / "1" / "sample_request.json").read_text())["data"][0]
    histories = [[3, 5, 8], [], list(range(40)), [10**9]]
    rows = [{**base, "hist_items": h} for h in histories]
    expected = handler.predict({"data": rows})["predictions"]
    frame = pd.DataFrame(rows)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    frame.assign(hist_items=["|".join(map(str, h)) for h in histories]).to_csv(tmp_path / "in.csv", index=False)
    for name in ("in.parquet", "in.csv"):
        out = tmp_path / f"out-{name}"
        done = run_cli("score", "deepfm", "--artifacts", str(root / "a"), "--input", str(tmp_path / name),
                       "--output", str(out), "--quiet")  # fmt: skip
        assert done.returncode == 0, done.stderr
        scored = pd.read_parquet(out)
        np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=0, atol=1e-12)
    frame.assign(hist_items=["3|x", "", "1", "2"]).to_csv(tmp_path / "bad.csv", index=False)
    done = run_cli("score", "deepfm", "--artifacts", str(root / "a"), "--input", str(tmp_path / "bad.csv"),
                   "--output", str(tmp_path / "bad-out"), "--quiet")  # fmt: skip
    assert done.returncode != 0
    assert '"hist_items"[1] is the string "x", not an integer ID' in done.stderr


def test_xgb_refuses_a_history_column(tmp_path):
    from exporter.export import pipeline

    data = tmp_path / "log.parquet"
    history_log(600).to_parquet(data, index=False)
    params = pipeline.ExportParams(
        model="xgb", data_path=data, schema=SCHEMA, hparams={"n_estimators": 2}, artifacts=tmp_path / "a"
    )
    params.progress = False
    with pytest.raises(ExporterError, match="xgb takes no history column \\(hist_items\\)"):
        pipeline.run(params)
    assert not (tmp_path / "a" / "xgb").exists() or not any((tmp_path / "a" / "xgb").iterdir())


def test_an_export_builds_its_history_from_training_rows_only(tmp_path):
    """The schema's ``from``: built after the split, so no held-out interaction reaches any history."""
    from exporter.export import pipeline

    rng = np.random.default_rng(5)
    n = 800
    log = pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, n),
            "item_id": np.arange(n) + 1,  # one item per interaction: a history shows which row fed it
            "ts": rng.permutation(n),
            "price": rng.random(n),
            "label": rng.integers(0, 2, n),
        }
    )
    data = tmp_path / "log.csv"
    log.to_csv(data, index=False)
    schema = {
        "label": "label",
        "features": [
            {"name": "user_id", "kind": "categorical"},
            {"name": "item_id", "kind": "categorical"},
            "price",
            {"name": "recent", "kind": "history", "max_length": 5, "from": {"user": "user_id", "item": "item_id"}},
        ],
    }
    params = pipeline.ExportParams(model="deepfm", data_path=data, schema=schema, artifacts=tmp_path / "a")
    prep = pipeline.prepare(params)
    assert prep.columns[-5:] == [f"recent[{p}]" for p in range(5)]
    trained_items = set(prep.train["item_id"])
    held_items = set(prep.heldout["item_id"])
    for part in (prep.train, prep.heldout):
        for item, items in zip(part["item_id"], part["recent"], strict=True):
            assert item not in items and set(items) <= trained_items and not set(items) & held_items
    assert prep.features["recent[0]"].spec.vocab_from == "item_id"  # `from` shares the item column's vocabulary
    bad = dict(
        schema,
        features=[
            *schema["features"][:3],
            {"name": "recent", "kind": "history", "from": {"user": "u", "item": "item_id"}},
        ],
    )
    with pytest.raises(ExporterError, match="history 'recent' is built from column\\(s\\) u, which the table lacks"):
        pipeline.prepare(pipeline.ExportParams(model="deepfm", data_path=data, schema=bad, artifacts=tmp_path / "a"))


def test_a_column_named_like_a_history_tensor_column_is_refused_before_training():
    """``a[0]`` beside a list column ``a``: two inputs under one name (the numeric one reached the history's
    embedding lookup unmasked and onnxruntime failed after training)."""
    frame = pd.DataFrame({"a": [[1, 2], [3], []], "a[0]": [0.5, 1.5, 2.5], "user_id": [1, 2, 3]})
    with pytest.raises(ExporterError, match=r"column 'a\[0\]' has the name of tensor column a\[0\] of history 'a'"):
        F.resolve_specs(frame, ["a", "a[0]", "user_id"], None)
    specs, _ = F.resolve_specs(frame, ["a", "user_id"], None)  # without it: fine
    assert [s.kind for s in specs] == [F.HISTORY, F.CATEGORICAL]
