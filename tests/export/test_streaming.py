"""Streamed training through the command line: a directory of Parquet files, reproducible artifacts that pass
``verify``, clear errors, and a kill half-way that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.errors import ExporterError
from exporter.export import streaming as ST
from exporter.export.params import ExportParams
from exporter.models import threads
from exporter.tools.verify import verify
from exporter.training import data as D
from exporter.training import split as S
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A click log as a Spark job writes it: several Parquet parts, an empty part, a part with an extra column,
    a _SUCCESS marker."""
    d = tmp_path_factory.mktemp("log") / "clicks"
    d.mkdir()
    frame = D.synthetic_dataset(12_000, seed=11)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for k in range(4):
        pq.write_table(table.slice(k * 2500, 2500), d / f"part-{k:05d}.parquet", row_group_size=1000)
    extra = table.slice(10_000).append_column("session_id", pa.array(np.arange(2000)))
    pq.write_table(extra, d / "part-00004.parquet")
    pq.write_table(table.slice(0, 0), d / "part-00005.parquet")
    (d / "_SUCCESS").write_text("")
    return d


def _metadata(artifacts: Path, model: str, version: int = 1) -> dict:
    return json.loads((artifacts / model / str(version) / "metadata.json").read_text())


def test_auto_reads_small_data_in_memory_and_large_data_streamed(log_dir: Path, monkeypatch) -> None:
    small = ST.choose_reading(ExportParams("xgb", data_path=log_dir))
    assert not small.streaming and "in memory is faster" in small.reason and small.estimated_rows == 12_000
    monkeypatch.setattr(ST, "STREAMING_CELLS", 1000)
    assert ST.choose_reading(ExportParams("xgb", data_path=log_dir)).streaming
    assert ST.choose_reading(ExportParams("xgb", data_path=str(log_dir / "part-*.parquet"))).streaming
    assert not ST.choose_reading(ExportParams("xgb", data_path=log_dir, streaming="off")).streaming


def test_streaming_on_without_data_is_refused() -> None:
    from exporter.errors import ExporterError

    with pytest.raises(ExporterError, match="--streaming on reads --data"):
        ST.choose_reading(ExportParams("xgb", streaming="on"))


@pytest.mark.slow
def test_streamed_and_in_memory_xgb_agree_and_pass_verify(log_dir: Path, tmp_path: Path) -> None:
    aucs = {}
    for mode in ("on", "off"):
        artifacts = tmp_path / mode
        result = run_cli(
            "export", "xgb", "--data", str(log_dir), "--streaming", mode, "--artifacts", str(artifacts),
            "--param", "n_estimators=40", "--quiet",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert ("data: streaming (--streaming on)" if mode == "on" else "data: in memory (--streaming off)") in (
            result.stdout
        )
        report = verify(artifacts)
        assert report.ok, report.problems
        meta = _metadata(artifacts, "xgb")
        reading = meta["training"]["data_reading"]
        assert meta["training"]["rows"] == 12_000 and reading["rows_read"] == 12_000
        aucs[mode] = meta["training"]["metrics"]["auc"]
    streamed = _metadata(tmp_path / "on", "xgb")["training"]
    rows = streamed["data_reading"]["rows"]
    assert sum(rows.values()) == 12_000 and streamed["train_rows"] == rows["train"]
    assert streamed["data_reading"]["passes"] >= 2 and "pass1_scan" in streamed["data_reading"]["phases"]
    cores = threads.available_cores()
    expected = {"torch": None, "decode_prefetch": 1, "xgboost": cores, "cpus": os.cpu_count()}
    assert streamed["data_reading"]["threads"] == expected
    assert streamed["threads"] == cores
    assert abs(aucs["on"] - aucs["off"]) < 0.05, aucs  # a small table: a loose bound


@pytest.mark.slow
def test_the_same_seed_gives_the_same_streamed_model(log_dir: Path, tmp_path: Path) -> None:
    digests = []
    for run in range(2):
        artifacts = tmp_path / str(run)
        result = run_cli(
            "export", "deepfm", "--data", str(log_dir), "--streaming", "on", "--artifacts", str(artifacts),
            "--param", "epochs=2", "--seed", "3", "--quiet",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        digests.append(_metadata(artifacts, "deepfm")["sha256"])
    assert digests[0] == digests[1]


def test_a_streamed_fit_resolves_auto_weight_decay_on_every_train_row(
    log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.export import pipeline
    from exporter.models.deepfm import DeepFMModel

    monkeypatch.setattr(DeepFMModel, "weight_decay_scale", 1.0)  # 1 / ~8,400 rows: under the cap
    params = ExportParams(
        "deepfm", data_path=log_dir, streaming="on", artifacts=tmp_path, progress=False, hparams={"max_epochs": 1}
    )
    training = pipeline.run(params).artifacts[0].metadata["training"]
    # every train row of the log (not the in-memory sample's) sets the penalty
    assert training["train_rows"] > 8_000
    assert training["early_stopping"]["weight_decay"] == pytest.approx(1.0 / training["train_rows"])
    # the default batch trains on one intra-op thread, and the reading report says the same as training does
    assert training["threads"] == 1 and training["data_reading"]["threads"]["torch"] == 1


def test_a_file_missing_a_column_fails_with_exit_2_naming_it(log_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for part in sorted(log_dir.glob("part-0000[0-1].parquet")):
        (broken / part.name).write_bytes(part.read_bytes())
    table = pq.read_table(log_dir / "part-00002.parquet").drop_columns(["item_cvr"])
    pq.write_table(table, broken / "part-00002.parquet")
    artifacts = tmp_path / "artifacts"
    result = run_cli("export", "xgb", "--data", str(broken), "--streaming", "on", "--artifacts", str(artifacts))
    assert result.returncode == 2, result.stderr
    assert "part-00002.parquet has no column(s) item_cvr" in result.stderr and "Traceback" not in result.stderr
    assert not (artifacts / "xgb").exists()


@pytest.mark.slow
def test_a_streamed_export_killed_in_pass_2_leaves_no_version_and_the_next_one_succeeds(
    log_dir: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    args = ["export", "deepfm", "--data", str(log_dir), "--streaming", "on", "--artifacts", str(artifacts)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args, "--param", "epochs=200", "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    seen = []
    deadline = time.monotonic() + 240
    for line in child.stdout:
        seen.append(line)
        if line.startswith("pass 2:") or time.monotonic() > deadline:
            break
    time.sleep(1.0)  # inside the epoch loop
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert any(line.startswith("pass 2:") for line in seen), seen
    versions = (
        [p for p in (artifacts / "deepfm").iterdir() if p.name.isdigit()] if (artifacts / "deepfm").exists() else []
    )
    assert versions == []
    result = run_cli(*args, "--param", "epochs=1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (artifacts / "deepfm" / "1" / "model.onnx").is_file()
    assert verify(artifacts).ok


@pytest.mark.slow
def test_a_notebook_trains_on_a_directory_of_parquet_files(log_dir: Path, tmp_path: Path) -> None:
    from tests.tools.test_notebooks import execute

    artifacts = tmp_path / "artifacts"
    execute("xgb", tmp_path, artifacts, data_path=str(log_dir), n_estimators=20)
    assert verify(artifacts).ok
    meta = _metadata(artifacts, "xgb")
    assert meta["training"]["rows"] == 12_000 and meta["training"]["data_reading"]["path"] == "in memory"


@pytest.mark.slow
def test_a_streamed_two_tower_ships_every_item_and_ranks_against_them_all(
    log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The samples hold 40 rows here, as they hold a few percent of a big log: the catalogue shipped
    beside the item tower and the known items of each evaluated user still come from every row."""
    from exporter.export import pipeline
    from exporter.training import stream_scan as SS

    for cap in ("TRAIN_SAMPLE_CAP", "TEST_CAP", "VALIDATION_CAP"):
        monkeypatch.setattr(SS, cap, 40)
    params = ExportParams(
        "two_tower", data_path=log_dir, streaming="on", artifacts=tmp_path, progress=False, hparams={"epochs": 1}
    )
    result = pipeline.run(params)
    frames = [pq.read_table(p).to_pandas() for p in sorted(log_dir.glob("*.parquet"))]
    log = pd.concat(frames, ignore_index=True)
    catalogue = pq.read_table(tmp_path / "two_tower_item" / "1" / "items.parquet").to_pandas()
    assert len(catalogue) == log["item_id"].nunique() and set(catalogue["item_id"]) == set(log["item_id"])
    assert len(result.prepared.train) == 40  # the sample really was smaller than the log
    codes = S.split_codes_arrow(pa.Table.from_pandas(log), seed=0, key_columns=["item_id", "user_id"])
    held_users = log.loc[(codes == S.TEST) & (log["label"] == 1), "user_id"].nunique()
    metrics = result.evaluation.metrics
    assert metrics["users_evaluated"] == held_users and metrics["catalogue_items"] == len(catalogue)
    retrieval = _metadata(tmp_path, "two_tower")["quality"]
    assert retrieval["retrieval"]["recall@50"] == pytest.approx(metrics["recall@50"])


@pytest.mark.parametrize("streaming", ["on", "off"])
def test_both_loops_average_every_optimiser_step_and_export_the_average(
    log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streaming: str
) -> None:
    """The streamed and the in-memory loop feed the weight average after each step and keep the averaged weights:
    with early stopping off, the exported weights are the average, not the last step's."""
    import torch

    from exporter.export import pipeline
    from exporter.models import weight_average as wa

    updates: list[int] = []
    loaded: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []  # (live, averaged) weights
    real_update, real_load = wa.WeightAverage.update, wa.WeightAverage.load

    def update(self: wa.WeightAverage) -> None:
        updates.append(1)
        real_update(self)

    def load(self: wa.WeightAverage) -> None:
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        real_load(self)
        loaded.append((live, {k: v.detach().clone() for k, v in self.model.state_dict().items()}))

    monkeypatch.setattr(wa.WeightAverage, "update", update)
    monkeypatch.setattr(wa.WeightAverage, "load", load)
    params = ExportParams(
        "deepfm",
        data_path=log_dir,
        streaming=streaming,
        artifacts=tmp_path,
        progress=False,
        hparams={"max_epochs": 2, "patience": 0, "ema_decay": 0.9, "refit": False},  # one loop
    )
    result = pipeline.run(params)
    stopping = result.artifacts[0].metadata["training"]["early_stopping"]
    assert stopping["ema_decay"] == 0.9 and len(updates) == stopping["optimiser_steps"] > 0
    ((live, final),) = loaded
    assert any(not torch.equal(live[k], v) for k, v in final.items()), "the average is not the last step's weights"
    state = torch.load(Path(result.artifacts[0].path) / "checkpoint.pt", weights_only=True)["state_dict"]
    for name, tensor in final.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)


@pytest.fixture(scope="module")
def yes_no_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The click log with its label as 'yes' / 'no' in a column 'outcome', in three parts: the first holds only
    'no' rows, so a streamed chunk there has one of the two values."""
    d = tmp_path_factory.mktemp("yes-no") / "log"
    d.mkdir()
    frame = D.synthetic_dataset(6_000, seed=4)
    frame["outcome"] = np.where(frame.pop("label") == 1, "yes", "no")
    frame = frame.drop(columns=["watch_time", "gmv"])
    no_rows = frame[frame["outcome"] == "no"]
    parts = [no_rows.iloc[:1500], frame.drop(no_rows.index[:1500])]
    parts = [parts[0], parts[1].iloc[:2000], parts[1].iloc[2000:]]
    for k, part in enumerate(parts):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), d / f"part-{k}.parquet")
    return d


def test_positive_class_and_excluded_columns_work_streamed_as_in_memory(yes_no_dir: Path, tmp_path: Path) -> None:
    from exporter.export import pipeline

    runs = {}
    for mode in ("on", "off"):
        params = ExportParams(
            "xgb", data_path=yes_no_dir, streaming=mode, artifacts=tmp_path / mode, progress=False, label="outcome",
            positive_class="yes", exclude_columns="item_cvr,user_id", hparams={"n_estimators": 30},
        )  # fmt: skip
        runs[mode] = pipeline.run(params).artifacts[0].metadata
    for mode, meta in runs.items():
        assert meta["training"]["data_reading"]["path"] == ("streaming" if mode == "on" else "in memory"), mode
        assert meta["training"]["positive_class"] == "yes", mode
        assert "item_cvr" not in meta["feature_columns"] and "user_id" not in meta["feature_columns"], mode
        assert "item_ctr" in meta["feature_columns"], mode
        assert meta["training"]["metrics"]["auc"] > 0.6, mode  # 'yes' is 1: an inverted label would rank below 0.5
    # the same labels, split and columns (the trees differ in the order they see the rows: a loose bound)
    assert runs["on"]["feature_columns"] == runs["off"]["feature_columns"]
    assert abs(runs["on"]["training"]["metrics"]["auc"] - runs["off"]["training"]["metrics"]["auc"]) < 0.03


@pytest.mark.parametrize(
    ("third", "message"),
    [
        ("maybe", "label column 'outcome' holds 3 distinct values ("),
        (None, "--positive-class 'cp' is not a value of label column 'outcome'; it holds 'yes' (3,144), 'no' (2,856)"),
    ],
)
def test_a_streamed_positive_class_is_checked_over_the_whole_column(
    yes_no_dir: Path, tmp_path: Path, third: str | None, message: str
) -> None:
    data = tmp_path / "log"
    data.mkdir()
    for part in sorted(yes_no_dir.glob("*.parquet")):
        (data / part.name).write_bytes(part.read_bytes())
    positive = "yes"
    if third is None:
        positive = "cp"
    else:  # one row of the last part holds a third value: only the whole column shows it
        table = pq.read_table(data / "part-2.parquet").to_pandas()
        table.loc[table.index[-1], "outcome"] = third
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), data / "part-2.parquet")
    artifacts = tmp_path / "artifacts"
    result = run_cli(
        "export", "xgb", "--data", str(data), "--streaming", "on", "--artifacts", str(artifacts),
        "--label", "outcome", "--positive-class", positive, "--no-tracking",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    if third is not None:
        assert "'maybe' (1)" in result.stderr
    assert not (artifacts / "xgb").exists()


def test_a_streamed_two_tower_reads_the_positive_class_as_a_0_1_label(yes_no_dir: Path, tmp_path: Path) -> None:
    """The same log with 'yes' / 'no' and with 1 / 0: the same positives, so the same towers and metrics."""
    from exporter.export import pipeline

    ones = tmp_path / "ones"
    ones.mkdir()
    for part in sorted(yes_no_dir.glob("*.parquet")):
        table = pq.read_table(part).to_pandas()
        table["outcome"] = (table["outcome"] == "yes").astype(np.int64)
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), ones / part.name)
    metas = []
    for data, positive in ((yes_no_dir, "yes"), (ones, None)):
        params = ExportParams(
            "two_tower", data_path=data, streaming="on", artifacts=tmp_path / str(positive), progress=False,
            label="outcome", positive_class=positive, hparams={"max_epochs": 1},
        )  # fmt: skip
        metas.append(pipeline.run(params).artifacts[0].metadata)
    named, plain = (m["training"] for m in metas)
    assert named["positive_class"] == "yes" and "positive_class" not in plain
    assert named["metrics"] == plain["metrics"] and named["metrics"]["recall@50"] > 0
    assert metas[0]["sha256"] == metas[1]["sha256"]


def test_columns_that_carry_nothing_are_warned_about_streamed_as_in_memory(tmp_path: Path) -> None:
    """An all-empty column trains as an optional fill-0 column (not an error), and the same warnings come out."""
    from exporter.export import pipeline

    frame = D.synthetic_dataset(3000, seed=8).drop(columns=["watch_time", "gmv"])
    frame["visitor_name"] = [f"visitor {i}" for i in range(len(frame))]
    frame["constant"] = 7.0
    frame["empty"] = np.nan
    frame["no_city"] = pd.Series([None] * len(frame), dtype=object)
    columns = ["item_ctr", "item_price", "user_age", "visitor_name", "constant", "empty", "no_city"]
    data = tmp_path / "log"
    data.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / "part-0.parquet")
    found = {}
    for mode in ("on", "off"):
        params = ExportParams(
            "xgb", data_path=data, streaming=mode, artifacts=tmp_path / mode, progress=False,
            hparams={"n_estimators": 10}, feature_columns=[*columns, "item_id"],
        )  # fmt: skip
        meta = pipeline.run(params).artifacts[0].metadata
        found[mode] = {w["column"]: w["reason"] for w in meta["training"]["column_warnings"]}
        features = {f["name"]: f for f in meta["features"]}
        assert features["empty"]["optional"] is True and features["empty"]["fill"] == 0.0, mode
        assert features["no_city"]["optional"] is True, mode
        assert features["item_ctr"]["optional"] is False, mode
    expected = {"visitor_name": "unique_per_row", "constant": "constant", "empty": "all_empty", "no_city": "all_empty"}
    assert found["on"] == found["off"] == expected


def test_a_history_built_from_the_log_is_refused_streamed_and_on_spark(log_dir: Path, tmp_path: Path) -> None:
    """Building a history needs each user's rows in time order, the whole table at once: a clear refusal, before
    any pass over the data, instead of a missing column."""
    from exporter.export.spark_train import SparkOptions, run_spark

    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {"features": {"user_id": {"kind": "categorical"}, "item_id": {"kind": "categorical"},
                          "recent": {"kind": "history", "from": {"user": "user_id", "item": "item_id"}}}}
        )
    )  # fmt: skip
    artifacts = tmp_path / "artifacts"
    result = run_cli(
        "export", "deepfm", "--data", str(log_dir), "--streaming", "on", "--schema", str(schema),
        "--artifacts", str(artifacts), "--no-tracking",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "history column(s) recent are built from the log" in result.stderr and "--streaming off" in result.stderr
    assert "Traceback" not in result.stderr and not artifacts.exists()
    params = ExportParams("deepfm", data_path=log_dir, schema=str(schema), artifacts=artifacts, progress=False)
    with pytest.raises(ExporterError, match=r"recent are built from the log .* reads it on Spark"):
        run_spark(params, SparkOptions("local[1]", 1))


def _csv_with_late_text(tmp_path: Path, column: str, value: str) -> Path:
    """A CSV whose first block (the rows that type its columns) holds numbers in ``column``, and ``value`` later."""
    frame = D.synthetic_dataset(30_000, seed=9).drop(columns=["watch_time", "gmv"])
    frame["note"] = "x" * 200  # wide rows: the first 4 MB block ends long before the text
    frame[column] = frame[column].astype(object)
    late = frame.index >= 25_000
    frame.loc[late, column] = [value.format(v) for v in frame.loc[late, column]]
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    return path


def _xgb_features_on_both_paths(path: Path, tmp_path: Path, columns: list[str], **extra: Any) -> dict[str, dict]:
    """A small xgb export of ``columns`` from ``path``, streamed and in memory: each path's metadata ``features`` by
    name (the export's parity gate passed, or it would have raised)."""
    from exporter.export import pipeline

    found = {}
    for mode in ("on", "off"):
        params = ExportParams(
            "xgb", data_path=path, streaming=mode, artifacts=tmp_path / mode, progress=False,
            hparams={"n_estimators": 5, "refit": False}, feature_columns=columns, **extra,
        )  # fmt: skip
        meta = pipeline.run(params).artifacts[0].metadata
        assert meta["parity"]["passed"], mode
        found[mode] = {f["name"]: f for f in meta["features"]}
    return found


def test_an_id_column_whose_later_rows_hold_text_is_read_as_string_ids_streamed_as_in_memory(tmp_path: Path) -> None:
    """item_id holds numbers in the rows that type the CSV's columns and SKUs later: the streamed run reads it as
    text (pass 1 again), as the in-memory run reads the whole file, instead of stopping at the first SKU."""
    path = _csv_with_late_text(tmp_path, "item_id", "sku-{}")
    lines: list[str] = []
    found = _xgb_features_on_both_paths(
        path, tmp_path, ["item_ctr", "item_price", "user_id", "item_id"], log=lines.append
    )
    assert found["on"]["item_id"]["dtype"] == found["off"]["item_id"]["dtype"] == "string"
    assert found["on"]["item_id"]["vocab_size"] > 100
    assert any("categorical column 'item_id' holds text IDs ('sku-" in line for line in lines)


def test_a_numeric_column_whose_later_rows_hold_text_is_an_error_naming_column_and_value(tmp_path: Path) -> None:
    path = _csv_with_late_text(tmp_path, "item_price", "price {}")
    done = run_cli("export", "xgb", "--data", str(path), "--streaming", "on", "--artifacts", str(tmp_path / "a"),
                   "--feature-columns", "item_ctr,item_price,user_id", "--param", "n_estimators=5")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "column 'item_price' holds the value 'price " in done.stderr
    assert "where the first rows, which typed the column, hold double values" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "a" / "xgb").exists()


def test_csv_missing_markers_are_missing_values_streamed_as_in_memory(tmp_path: Path) -> None:
    """NA, null, n/a, None ... (pandas.read_csv's markers, an R export's NA) are missing values in a streamed
    run as in the in-memory one: the same statistics, not an error or a category named "NA"."""
    from exporter.training.sources import CSV_MISSING

    frame = D.synthetic_dataset(3000, seed=12).drop(columns=["watch_time", "gmv"])
    markers = ["NA", "null", "n/a", "None", "NaN", "#N/A"]
    assert set(markers) <= set(CSV_MISSING)
    frame["item_price"] = frame["item_price"].astype(object)
    frame["item_category"] = frame["item_category"].astype(object)
    for k, marker in enumerate(markers):
        frame.loc[frame.index % 50 == k, "item_price"] = marker
        frame.loc[frame.index % 40 == k, "item_category"] = marker
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    found = _xgb_features_on_both_paths(path, tmp_path, ["item_ctr", "item_price", "item_category"])
    for column, share in (("item_price", 6 / 50), ("item_category", 6 / 40)):
        on, off = found["on"][column], found["off"][column]
        assert on["stats"]["missing_rate"] == off["stats"]["missing_rate"] == pytest.approx(share, abs=0.02)
    assert found["on"]["item_category"]["vocab_size"] == found["off"]["item_category"]["vocab_size"]
    scored = run_cli("score", "xgb", "--artifacts", str(tmp_path / "on"), "--input", str(path),
                     "--output", str(tmp_path / "scored"), "--json")  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert pq.read_table(tmp_path / "scored").num_rows == len(frame)


def test_a_csv_column_of_dates_is_text_streamed_as_in_memory(tmp_path: Path) -> None:
    """pyarrow would type ``2026-01-01 08:30:00`` cells as timestamps (refused as a feature); pandas reads them as
    text in memory: the streamed run reads them as text too, so both runs fit the same string column."""

    frame = D.synthetic_dataset(2000, seed=13).drop(columns=["watch_time", "gmv"])
    frame["day"] = (pd.Timestamp("2026-01-01 08:30") + pd.to_timedelta(frame.index % 7, unit="D")).astype(str)
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    found = _xgb_features_on_both_paths(path, tmp_path, ["item_ctr", "day"])
    assert found["on"]["day"]["dtype"] == found["off"]["day"]["dtype"] == "string"
    assert found["on"]["day"]["vocab_size"] == found["off"]["day"]["vocab_size"] == 7


@pytest.mark.parametrize("sep, named", [(";", "';'"), ("\t", "a tab")])
def test_a_csv_separated_by_another_character_is_named_so_in_memory_streamed_and_scored(
    tmp_path: Path, sep: str, named: str
) -> None:
    path = tmp_path / "log.csv"
    D.synthetic_dataset(300, seed=3).to_csv(path, index=False, sep=sep)
    for mode in ("on", "off"):
        done = run_cli("export", "xgb", "--data", str(path), "--streaming", mode, "--artifacts", str(tmp_path / mode))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"the header row is one column, 'item_ctr{sep}item_cvr" in done.stderr.replace("\\t", "\t")
        assert f"the file is separated by {named}, and CSV data here is comma-separated" in done.stderr
    from exporter.scoring.inputs import file_schema, resolve_inputs  # what score reads a file's columns with

    with pytest.raises(ExporterError, match=f"separated by {named}"):
        file_schema(resolve_inputs(str(path))[0])


def test_a_csv_header_naming_a_column_twice_is_refused_in_memory_and_streamed(tmp_path: Path) -> None:
    """pandas renames the second item_ctr to item_ctr.1 and pyarrow keeps both (a KeyError deep in pass 1 before):
    both paths refuse the file naming the column; a real column named like pandas' renaming is left alone."""
    frame = D.synthetic_dataset(300, seed=4)
    frame.insert(1, "item_ctr.1", frame["item_ctr"])
    frame.to_csv(tmp_path / "fine.csv", index=False)
    (tmp_path / "twice.csv").write_text((tmp_path / "fine.csv").read_text().replace("item_ctr.1", "item_ctr", 1))
    for mode in ("on", "off"):
        done = run_cli("export", "xgb", "--data", str(tmp_path / "twice.csv"), "--streaming", mode,
                       "--artifacts", str(tmp_path / mode))  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert 'column "item_ctr" appears more than once in the header; expected each column once' in done.stderr
    assert list(D.read_table(tmp_path / "fine.csv").columns[:2]) == ["item_ctr", "item_ctr.1"]


def test_a_parquet_text_column_of_digit_codes_is_categorical_and_its_own_file_scores(tmp_path: Path) -> None:
    """Codes stored as text ("10", "01234"): the file typed them as text, so they are categories (leading zeros
    kept), in memory and streamed, and the training file scores without a refused row."""
    from exporter.scoring import ScoreOptions, score

    rng = np.random.default_rng(4)
    n = 1200
    frame = D.synthetic_dataset(n, 4)[["item_ctr", "item_price", "label"]]
    frame["shelf"] = np.array(["10", "11", "12", "01234"])[rng.integers(0, 4, n)]
    frame.to_parquet(tmp_path / "codes.parquet")
    found = _xgb_features_on_both_paths(tmp_path / "codes.parquet", tmp_path, ["item_ctr", "item_price", "shelf"])
    for mode in ("on", "off"):
        assert found[mode]["shelf"]["kind"] == "categorical" and found[mode]["shelf"]["dtype"] == "string", mode
    result = score(ScoreOptions(model="xgb", input=str(tmp_path / "codes.parquet"), output=str(tmp_path / "scored"),
                                artifacts=str(tmp_path / "off"), progress=False))  # fmt: skip
    assert (result.rows_scored, result.rows_rejected) == (n, 0)


def test_a_list_column_whose_first_rows_are_all_null_is_inferred_a_history_streamed(tmp_path: Path) -> None:
    """The rows that type a streamed table's columns hold only nulls in a Parquet list column: it is a history
    (its Arrow type says so), as in memory, not a categorical (which trained, then failed at the export)."""
    from exporter.training.sources import resolve_inputs
    from exporter.training.stream_scan import StreamReader

    rng = np.random.default_rng(6)
    frame = D.synthetic_dataset(1200, 6)[["item_ctr", "label"]]
    items = [list(rng.integers(1, 50, rng.integers(1, 5))) for _ in range(1200)]
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        "recent", pa.array([None if i < 600 else v for i, v in enumerate(items)], type=pa.list_(pa.int64()))
    )
    pq.write_table(table, tmp_path / "log.parquet", row_group_size=600)
    files = resolve_inputs(str(tmp_path / "log.parquet"), option="--data")
    head = ST._head(StreamReader(files, ["item_ctr", "recent", "label"], 0, batch_rows=500), files)
    assert len(head) == 500 and head["recent"].map(len).sum() == 0  # every row of the head is empty
    from exporter import features as F

    specs, _ = F.resolve_specs(head, ["item_ctr", "recent"], None)
    assert [s.kind for s in specs] == ["numeric", "history"]


def test_a_streamed_table_too_small_for_validation_rows_exports_with_a_null_validation_loss(tmp_path: Path) -> None:
    """Twelve rows streamed leave no validation row: the loss there is NaN, which JSON cannot hold (the export
    failed writing metadata.json after training); it is null."""
    from exporter.export import pipeline

    rng = np.random.default_rng(0)
    pd.DataFrame(
        {"user_id": rng.integers(0, 5, 12), "item_id": rng.integers(0, 6, 12), "label": rng.integers(0, 2, 12)}
    ).to_parquet(tmp_path / "twelve.parquet")
    params = ExportParams(
        "two_tower", data_path=tmp_path / "twelve.parquet", streaming="on", artifacts=tmp_path / "a", progress=False,
        hparams={"max_epochs": 2},
    )  # fmt: skip
    meta = pipeline.run(params).artifacts[0].metadata
    assert meta["training"]["validation_rows"] == 0
    assert meta["training"]["final_loss"]["validation_loss"] is None
    json.loads((tmp_path / "a" / "two_tower" / "1" / "metadata.json").read_text(), parse_constant=pytest.fail)


def test_parquet_files_that_type_a_column_differently_are_refused_in_memory_as_streamed(tmp_path: Path) -> None:
    """user_id as integers in one file and text in another: read in memory the IDs became strings, and scoring the
    first file with that model read its integers as vocabulary codes (97 % of predictions wrong, none refused)."""
    directory = tmp_path / "d"
    directory.mkdir()
    frame = D.synthetic_dataset(600, 8)
    frame.iloc[:300].to_parquet(directory / "a.parquet")
    frame.iloc[300:].assign(user_id=frame["user_id"].iloc[300:].astype(str)).to_parquet(directory / "b.parquet")
    for mode in ("off", "on"):
        done = run_cli("export", "xgb", "--data", str(directory), "--streaming", mode, "--artifacts",
                       str(tmp_path / mode), "--no-tracking", "--quiet")  # fmt: skip
        assert done.returncode == 2, (mode, done.stderr)
        assert "b.parquet: column 'user_id' holds" in done.stderr and "expected one type in every file" in done.stderr
        assert not (tmp_path / mode / "xgb").exists()
