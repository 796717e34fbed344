"""Histories of string IDs (``"item-42"``): plan, graph, metadata, builder, handler and ``score``.

A history shares the vocabulary of a string column (or fits its own over strings, or hashes them) and travels as
the items' codes, as a string categorical column does; requests and ``score`` take the strings themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter import features as F
from exporter.errors import ExporterError
from exporter.features.plan import PADDING_ROW, probe_rows
from exporter.handler import ModelHandler
from exporter.runtime.rules import UNKNOWN_CODE, hash_code

from ..conftest import run_cli
from .test_history import SCHEMA, history_log, run_prep

HIST = {"name": "hist_items", "kind": "history", "max_length": 4, "vocab_from": "item_id"}


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["b", "a", "c", "a", "a", "b", "c", "z"],
            "hist_items": [["a", "b"], ["c"], [], None, ["a", "b", "c", "a", "b", "q"], "", np.array(["b"]), "z|a"],
            "price": np.arange(8.0),
        }
    )


def plan_of(frame: pd.DataFrame, *specs: dict, item: dict | None = None) -> F.FeaturePlan:
    item = item or {"name": "item_id", "kind": "categorical", "min_count": 1}
    schema = F.load_schema({"features": [item, *specs, "price"]})
    assert schema is not None
    return F.fit(frame, list(schema.features))


def test_a_string_history_travels_as_the_codes_of_the_column_it_shares(frame):
    plan = plan_of(frame, HIST)
    item, first = plan["item_id"], plan["hist_items[0]"]
    assert item.vocab == ["a", "b", "c", "z"] and first.dtype == "string" and first.vocab == item.vocab
    raw = plan.encode(frame)
    code = {w: float(i) for i, w in enumerate(item.vocab)}
    nan = np.nan
    expected = [
        [code["a"], code["b"], nan, nan],
        [code["c"], nan, nan, nan],
        [nan] * 4,
        [nan] * 4,
        [code["c"], code["a"], code["b"], UNKNOWN_CODE],  # the last four; "q" is unknown
        [nan] * 4,
        [code["b"], nan, nan, nan],  # a numpy array of strings (Parquet list<string>)
        [code["z"], code["a"], nan, nan],  # delimited text (CSV)
    ]
    np.testing.assert_array_equal(raw[:, 1:5], np.array(expected))
    prepared = plan.prepare(raw)
    assert prepared[0, 1] == prepared[1, 0]  # "a": the same embedding row as in item_id
    assert prepared[4, 4] == 0 and prepared[2, 1] == PADDING_ROW  # unknown: the OOV row; no item: masked
    assert plan.histories()[0]["target"] == 0  # the candidate item: target attention, shared rows


def test_integers_in_a_data_files_string_history_are_read_as_text():
    frame = pd.DataFrame({"item_id": ["7", "x", "7"], "hist_items": [[7, "x"], ["7"], [7.0]], "price": [1.0] * 3})
    plan = plan_of(frame, HIST)
    raw = plan.encode(frame)[:, 1:3]
    seven, x = plan["item_id"].vocab.index("7"), plan["item_id"].vocab.index("x")
    np.testing.assert_array_equal(raw, [[seven, x], [seven, np.nan], [seven, np.nan]])


def test_an_own_vocabulary_of_strings_is_inferred_and_fitted_on_training_rows(frame):
    own = {"name": "hist_items", "kind": "history", "max_length": 4, "min_count": 2}
    plan = plan_of(frame, own)
    feat = plan["hist_items[0]"]
    assert feat.dtype == "string" and feat.vocab == ["a", "b", "c"]  # "q" and "z" once: below min_count
    assert plan.histories()[0]["target"] is None
    assert F.fit(frame, [feat.spec], train_rows=[0, 6])["hist_items[0]"].vocab == ["b"]  # training rows only
    digits = pd.DataFrame({"hist_items": [["12", "7"], "3|4"], "price": [1.0, 2.0]})
    assert F.fit(digits, [feat.spec])["hist_items[0]"].dtype == "int64"  # digits alone stay integer IDs


def test_a_hashed_string_history_hashes_like_its_column(frame):
    plan = plan_of(frame, HIST, item={"name": "item_id", "kind": "categorical", "hash_buckets": 8})
    raw = plan.encode(frame)
    assert raw[0, 1] == hash_code("a") and raw[1, 0] == hash_code("a")
    prepared = plan.prepare(raw)
    assert prepared[0, 1] == prepared[1, 0] and plan["hist_items[0]"].rows == 9


def test_a_string_that_cannot_be_hashed_is_named(frame):
    bad = frame.assign(hist_items=[["a"], ["b", "\ud800"], [], [], [], [], [], []])
    with pytest.raises(ExporterError, match="column 'hist_items' row 2: value is an item .* not valid Unicode"):
        plan_of(bad, HIST, item={"name": "item_id", "kind": "categorical", "hash_buckets": 8}).encode(bad)


@pytest.mark.parametrize(
    "value, message",
    [
        (["a", 2.5], "row 1 position 1: value is 2.5, not a string ID"),
        (["a", True], r"row 1 position 1: value is a boolean \(true\), not a string ID"),
        ("a||b", "row 1 position 1: value is empty, not a string ID"),
        ({"a": 1}, r"row 1: value is an object, expected a list of string IDs"),
    ],
)
def test_bad_string_history_cells_name_column_row_and_position(value, message):
    bad = pd.DataFrame({"item_id": ["a"], "hist_items": pd.Series([value], dtype=object), "price": [1.0]})
    with pytest.raises(ExporterError, match=f"column 'hist_items' {message}"):
        plan_of(bad, HIST)


@pytest.mark.parametrize("item", [None, {"name": "item_id", "kind": "categorical", "hash_buckets": 8}])
def test_graph_and_twin_agree_on_string_history_probes(frame, item):
    plan = plan_of(frame, HIST, item=item)
    probes = probe_rows(plan, plan.encode(frame), rows=16)
    np.testing.assert_array_equal(run_prep(plan, probes), plan.prepare(probes))


def test_the_vocabulary_is_written_once_and_read_back(frame, tmp_path):
    plan = plan_of(frame, HIST)
    assert plan.vocab_json() == {"item_id": ["a", "b", "c", "z"]}  # the history names the column's entry
    entry = plan.metadata("vocab.json", "x")[2]
    assert entry["dtype"] == "string" and entry["vocab"]["key"] == "item_id"
    assert entry["oov"]["unknown_code"] == UNKNOWN_CODE
    own = plan_of(frame, {"name": "hist_items", "kind": "history", "max_length": 4})
    assert set(own.vocab_json()) == {"item_id", "hist_items"}  # its own vocabulary, once, under its name
    again = F.FeaturePlan.from_dict(json.loads(json.dumps(own.to_dict())), source="t")
    assert again["hist_items[3]"].vocab == own["hist_items[0]"].vocab
    np.testing.assert_array_equal(again.encode(frame), own.encode(frame))
    assert "vocab" not in own.to_dict()["features"][2]  # position 1: one copy, at position 0


def test_the_builder_keeps_string_items():
    log = pd.DataFrame({"user": [1, 1, 2, 1], "item": ["x", "y", "x", None], "ts": [0, 1, 2, 3]})
    assert F.build_history(log, "user", "item", "ts").tolist() == [[], ["x"], [], ["x", "y"]]
    numbers = pd.DataFrame({"user": [1, 1], "item": [5, 6]})
    assert F.build_history(numbers, "user", "item").tolist() == [[6], [5]]  # integer IDs stay integers


# ------------------------------------------------------------------------------------------------ exports


def string_log(rows: int = 1500) -> pd.DataFrame:
    """The history tests' log with its item IDs as strings (``item-42``)."""
    frame = history_log(rows)
    frame["item_id"] = "item-" + frame["item_id"].astype(str)
    return frame


@pytest.fixture(scope="module")
def string_exports(tmp_path_factory):
    """deepfm and two_tower exported from a log of string item IDs, the history built from it."""
    from exporter.export import pipeline

    root = tmp_path_factory.mktemp("string-history")
    data = root / "log.parquet"
    string_log().to_parquet(data, index=False)
    for model in ("deepfm", "two_tower"):
        params = pipeline.ExportParams(
            model=model, data_path=data, schema=SCHEMA, seed=1, hparams={"epochs": 1}, artifacts=root / "a"
        )
        params.progress = False
        pipeline.run(params)
    return root


def sample_row(root: Path, model: str) -> dict:
    return json.loads((root / "a" / model / "1" / "sample_request.json").read_text())["data"][0]


@pytest.mark.slow
def test_exports_of_string_histories_pass_parity_and_name_their_vocabulary(string_exports):
    root = string_exports
    for model, key in (("deepfm", "item_id"), ("two_tower", "hist_items")):  # the user tower has no item_id
        version = root / "a" / model / "1"
        meta = json.loads((version / "metadata.json").read_text())
        assert meta["parity"]["passed"]
        entry = next(e for e in meta["features"] if e["name"] == "hist_items[0]")
        assert entry["dtype"] == "string" and entry["vocab"]["key"] == key
        assert key in json.loads((version / "vocab.json").read_text())
        histories = [r["hist_items"] for r in json.loads((version / "sample_request.json").read_text())["data"]]
        assert any(h for h in histories) and all(isinstance(i, str) for h in histories for i in h)


@pytest.mark.slow
def test_the_handler_takes_strings_codes_or_expanded_columns(string_exports):
    root = string_exports
    handler = ModelHandler.load(root / "a" / "deepfm")
    vocab = json.loads((root / "a" / "deepfm" / "1" / "vocab.json").read_text())["item_id"]
    row = {k: v for k, v in sample_row(root, "deepfm").items() if k != "hist_items"}

    def predict(**extra):
        return handler.predict({"data": [{**row, **extra}]})["predictions"][0]

    strings = predict(hist_items=vocab[:3])
    assert strings == predict(hist_items=[0, 1, 2])  # an integer is the string's code
    assert strings == predict(**{f"hist_items[{p}]": vocab[p] for p in range(3)})
    assert strings != predict(hist_items=vocab[3:6])
    assert predict(hist_items=["never-seen"]) == predict(hist_items=["also-unseen"]) == predict(hist_items=[-1])
    for bad, message in (
        ([vocab[0], 5.5], 'data[0]["hist_items"][1] is 5.5, not a string ID'),
        ([None], 'data[0]["hist_items"][0] is null, not a string ID'),
        ("a|b", 'data[0]["hist_items"] is a string ("a|b"), expected a list of string IDs'),
    ):
        answer = handler.answer(payload={"data": [{**row, "hist_items": bad}]})
        assert answer.status == 400 and message in json.loads(answer.body)["error"]
    user = ModelHandler.load(root / "a" / "two_tower")
    user_row = {k: v for k, v in sample_row(root, "two_tower").items() if k != "hist_items"}
    own = json.loads((root / "a" / "two_tower" / "1" / "vocab.json").read_text())["hist_items"]
    embedded = user.predict({"data": [{**user_row, "hist_items": own[:2]}, user_row]})["predictions"]
    assert embedded[0] != embedded[1]


@pytest.mark.slow
def test_score_reads_lists_of_strings_and_delimited_text(string_exports, tmp_path):
    root = string_exports
    handler = ModelHandler.load(root / "a" / "deepfm")
    vocab = json.loads((root / "a" / "deepfm" / "1" / "vocab.json").read_text())["item_id"]
    base = sample_row(root, "deepfm")
    histories = [vocab[:3], [], vocab[:40], ["never-seen"]]
    rows = [{**base, "hist_items": h} for h in histories]
    expected = handler.predict({"data": rows})["predictions"]
    frame = pd.DataFrame(rows)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    frame.assign(hist_items=["|".join(h) for h in histories]).to_csv(tmp_path / "in.csv", index=False)
    for name in ("in.parquet", "in.csv"):
        out = tmp_path / f"out-{name}"
        done = run_cli("score", "deepfm", "--artifacts", str(root / "a"), "--input", str(tmp_path / name),
                       "--output", str(out), "--quiet")  # fmt: skip
        assert done.returncode == 0, done.stderr
        np.testing.assert_allclose(pd.read_parquet(out)["prediction"].to_numpy(), expected, rtol=0, atol=1e-12)
    frame.assign(hist_items=["a||b", "", "c", "d"]).to_csv(tmp_path / "bad.csv", index=False)
    done = run_cli("score", "deepfm", "--artifacts", str(root / "a"), "--input", str(tmp_path / "bad.csv"),
                   "--output", str(tmp_path / "bad-out"), "--quiet")  # fmt: skip
    assert done.returncode == 2 and '"hist_items"[1] is empty, not a string ID' in done.stderr
    assert not (tmp_path / "bad-out").exists()
