"""History columns on the streamed path (``--streaming on``): pass 1 fits the same history as in memory, pass 2
trains on it; xgb refuses a history before reading the table. (Spark: tests/export/test_spark_train.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from exporter import features as F
from exporter.handler import ModelHandler
from exporter.training import inputs as I

from ..conftest import run_cli
from .test_string_history import string_log

DEFAULTS = [spec.to_dict() for spec in I.default_specs()]


def log_file(tmp_path: Path, fmt: str, strings: bool) -> Path:
    log = string_log(1200)
    if not strings:
        log["item_id"] = log["item_id"].str.removeprefix("item-").astype(int)
    log["hist_items"] = F.build_history(log, "user_id", "item_id", "ts", 5, positive="label")
    path = tmp_path / f"log.{fmt}"
    if fmt == "csv":
        log.assign(hist_items=["|".join(map(str, h)) for h in log["hist_items"]]).to_csv(path, index=False)
    else:
        log.to_parquet(path, index=False)
    return path


def export(tmp_path: Path, data: Path, schema: dict, streaming: str, model: str = "deepfm"):
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    artifacts = tmp_path / f"a-{streaming}"
    short = ["--param", "epochs=1"] if model != "xgb" else ["--param", "n_estimators=5"]
    done = run_cli("export", model, "--data", str(data), "--schema", str(tmp_path / "schema.json"),
                   "--artifacts", str(artifacts), "--streaming", streaming, *short,
                   "--param", "refit=false", "--quiet")  # fmt: skip
    return done, artifacts / model / "1"


def export_both(tmp_path: Path, data: Path, schema: dict) -> dict[str, Path]:
    """The deepfm version exported streamed (``on``) and in memory (``off``) from the same data."""
    runs = {}
    for streaming in ("on", "off"):
        done, version = export(tmp_path, data, schema, streaming)
        assert done.returncode == 0, done.stderr
        runs[streaming] = version
    return runs


def history_entries(version: Path) -> list[dict]:
    meta = json.loads((version / "metadata.json").read_text())
    return [e for e in meta["features"] if e["name"].startswith("hist_items[")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, strings, history, features",
    [
        ("parquet", False, {"vocab_from": "item_id"}, DEFAULTS),
        ("parquet", True, {"vocab_from": "item_id"}, DEFAULTS),
        # its own vocabulary of strings, from CSV text
        ("csv", True, {}, DEFAULTS),
        # the shared column is not a feature: pass 1 counts it for the history
        ("csv", True, {"vocab_from": "item_id"}, [f for f in DEFAULTS if f["name"] != "item_id"]),
    ],
)
def test_a_streamed_run_fits_the_history_an_in_memory_run_fits(tmp_path, fmt, strings, history, features):
    data = log_file(tmp_path, fmt, strings)
    schema = {"label": "label", "features": [*features, {"name": "hist_items", "kind": "history", "max_length": 5,
                                                         **history}]}  # fmt: skip
    runs = export_both(tmp_path, data, schema)
    streamed, in_memory = history_entries(runs["on"]), history_entries(runs["off"])
    assert len(streamed) == 5 and streamed == in_memory  # dtype, vocabulary size, statistics, vocabulary file key
    assert streamed[0]["dtype"] == ("string" if strings else "int64") and streamed[0]["stats"]["mean_length"] > 1
    if strings:
        vocab = [json.loads((v / "vocab.json").read_text()) for v in runs.values()]
        assert vocab[0] == vocab[1]
    meta = json.loads((runs["on"] / "metadata.json").read_text())
    assert meta["training"]["data_reading"]["path"] == "streaming" and meta["parity"]["passed"]
    request = json.loads((runs["on"] / "sample_request.json").read_text())
    assert ModelHandler.load(runs["on"].parent).predict(request)["predictions"]


def test_xgb_refuses_a_history_before_reading_the_table(tmp_path):
    data = log_file(tmp_path, "parquet", True)
    schema = {"label": "label", "features": [*DEFAULTS, {"name": "hist_items", "kind": "history"}]}
    done, version = export(tmp_path, data, schema, "on", model="xgb")
    assert done.returncode == 2 and "xgb takes no history column (hist_items)" in done.stderr
    assert "pass 1" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert not version.exists()


def test_a_csv_history_column_is_read_as_text_whatever_its_first_block_holds(tmp_path):
    """A CSV whose first block holds single IDs (``12``) or nothing would type the column as numbers, and a later
    ``12|7`` would not parse: pass 1 reads a history column as text."""
    from exporter.training.sources import InputFile, csv_types

    path = tmp_path / "log.csv"
    pd.DataFrame({"hist_items": [12, None, 7], "empty": [None] * 3}).to_csv(path, index=False)
    files = [InputFile(str(path), "csv", path.stat().st_size)]
    assert csv_types(files, ["hist_items", "empty"]) == {"hist_items": pa.float64(), "empty": pa.float64()}
    assert csv_types(files, ["hist_items", "empty"], text=["hist_items", "empty"]) == {
        "hist_items": pa.string(),
        "empty": pa.string(),
    }


@pytest.mark.slow
def test_a_history_whose_first_part_holds_integer_ids_and_a_later_one_text_is_a_string_history(tmp_path):
    """Pass 1 guesses integer items from the first part it reads; a later part holding text IDs makes it a history
    of string IDs, the items counted so far as their text: the history an in-memory run fits on the whole table."""
    log = string_log(1200)
    log["item_id"] = log["item_id"].str.removeprefix("item-").astype(int)
    built = F.build_history(log, "user_id", "item_id", "ts", 5, positive="label")
    late = log.index >= 600
    built[late] = [[f"sku-{v}" if v % 3 == 0 else v for v in h] for h in built[late]]  # text IDs from row 601
    log["hist_items"] = ["|".join(map(str, h)) for h in built]
    data = tmp_path / "log"
    data.mkdir()
    log.iloc[:600].to_parquet(data / "part-0.parquet", index=False)
    log.iloc[600:].to_parquet(data / "part-1.parquet", index=False)
    assert not F.holds_strings(log.iloc[:600], F.FeatureSpec("hist_items", F.HISTORY))
    schema = {"label": "label", "features": [*DEFAULTS, {"name": "hist_items", "kind": "history", "max_length": 5}]}
    runs = export_both(tmp_path, data, schema)
    streamed, in_memory = history_entries(runs["on"]), history_entries(runs["off"])
    assert streamed == in_memory and streamed[0]["dtype"] == "string"
    vocab = [json.loads((v / "vocab.json").read_text())["hist_items"] for v in runs.values()]
    assert vocab[0] == vocab[1]
    assert any(v.startswith("sku-") for v in vocab[0]) and any(v.isdigit() for v in vocab[0])
