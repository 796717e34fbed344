"""``export --engine spark``: the same artifact as a local export, trained on Spark, and its failures."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.errors import ExporterError
from exporter.export import pipeline
from exporter.export.spark_train import SparkOptions, run_spark
from exporter.models.two_tower import eval_inputs as E
from exporter.models.two_tower.spark_eval import from_spark
from exporter.tools.verify import verify
from exporter.training import split as S
from exporter.training import stream_scan as SR
from exporter.training.data import synthetic_dataset
from exporter.training.sources import resolve_inputs
from tests.conftest import run_cli

ROWS = 6000


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of three Parquet parts of the synthetic click log."""
    root = tmp_path_factory.mktemp("log")
    frame = synthetic_dataset(ROWS, 3)
    for i in range(3):
        part = frame.iloc[i * ROWS // 3 : (i + 1) * ROWS // 3]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), root / f"part-{i}.parquet")
    return root


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One local[2] session for the module (the engine reuses an active session and leaves it running)."""
    from exporter.training.spark_session import spark_session

    session, _ = spark_session("local[2]", {}, "exporter tests", 8192, tmp_path_factory.mktemp("spark"))
    yield session
    session.stop()


def _params(model: str, data: Path, artifacts: Path, **hparams: object) -> pipeline.ExportParams:
    return pipeline.ExportParams(
        model=model, data_path=str(data), artifacts=artifacts, seed=5, hparams=hparams, progress=False
    )


def _on_spark(model: str, data: Path, artifacts: Path, **hparams: object) -> tuple[Any, dict[str, Any]]:
    """``run_spark`` on local[2] with 2 workers; the result and the verified version's metadata."""
    result = run_spark(_params(model, data, artifacts, **hparams), SparkOptions("local[2]", 2))
    version = artifacts / model / "1"
    report = verify(version)
    assert report.ok, report.problems
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["training"]["engine"] == "spark"
    return result, meta


def _by_id(inputs: Any) -> tuple[dict, dict, dict, dict]:
    """Retrieval inputs by IDs: (item -> popularity, item -> price, user -> known items, user -> held-out items)."""
    items = inputs.catalogue["item_id"].to_numpy()
    users = inputs.users["user_id"].to_numpy()
    popularity = dict(zip(items.tolist(), inputs.popularity.tolist(), strict=True))
    price = dict(zip(items.tolist(), inputs.catalogue["item_price"].round(9).tolist(), strict=True))
    pairs: list[dict[int, set[int]]] = [{}, {}]
    held = inputs.held[inputs.held["positive"]]
    for side, frame in enumerate((inputs.known, held)):
        for u, i in zip(frame["user"], frame["item"], strict=True):
            pairs[side].setdefault(int(users[u]), set()).add(int(items[i]))
    return popularity, price, pairs[0], pairs[1]


def _split_counts(data: Path, seed: int) -> dict[str, int]:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(data.glob("*.parquet"))])
    codes = S.split_codes_arrow(table, seed=seed)
    return {
        "train_rows": int((codes == S.TRAIN).sum()),
        "validation_rows": int((codes == S.VALIDATION).sum()),
        "test_rows": int((codes == S.TEST).sum()),
    }


@pytest.mark.slow
def test_xgb_on_spark_writes_the_same_kind_of_artifact(spark, parquet_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, meta = _on_spark("xgb", parquet_dir, tmp_path / "art", n_estimators=30)
    training = meta["training"]
    assert training["num_workers"] == 2
    assert training["spark_master"] == "local[2]"
    # Spark's SQL split and the local rule agree on every row of the same files
    for key, count in _split_counts(parquet_dir, 5).items():
        assert training[key] == count, key
    assert training["rows"] == ROWS
    assert meta["parity"]["passed"] is True
    # its model.ubj names the features as a local export does: load mode reads it back
    loaded = pipeline.run(
        pipeline.ExportParams(
            model="xgb", mode="load", checkpoint=str(tmp_path / "art" / "xgb" / "1" / "model.ubj"),
            artifacts=tmp_path / "loaded", progress=False,
        )
    )  # fmt: skip
    assert loaded.trained.feature_columns == result.trained.feature_columns
    local = pipeline.run(_params("xgb", parquet_dir / "part-0.parquet", tmp_path / "local", n_estimators=30))
    # a third of the rows, another split: only a loose agreement is expected here (the benchmark compares closely)
    assert abs(result.evaluation.metrics["auc"] - local.evaluation.metrics["auc"]) < 0.08


@pytest.mark.slow
def test_deepfm_on_spark_trains_with_torch_distributor(spark, parquet_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, meta = _on_spark("deepfm", parquet_dir, tmp_path / "art", epochs=2, batch_size=256)
    assert len(result.trained.history) == 2
    # the same early-stopping rule as one machine: the best of the two epochs kept, and said so
    stopping = meta["training"]["early_stopping"]
    assert stopping["monitor"] == "validation_loss" and stopping["epochs_run"] == 2
    losses = [h["validation_loss"] for h in result.trained.history]
    assert stopping["best_epoch"] == 1 + losses.index(min(losses))
    assert stopping["lr_schedule"] == "plateau" and stopping["batch_size"] == 256
    # weight_decay auto on the rows of every rank (each trains on as many as the fewest)
    assert stopping["weight_decay"] == pytest.approx(min(1e-3, 20.0 / meta["training"]["train_rows"]), rel=0.05)
    assert result.evaluation.metrics["auc"] > 0.65  # the synthetic log's signal is learned across two ranks


@pytest.mark.slow
def test_the_metrics_are_those_of_every_test_row_not_the_drivers_sample(  # type: ignore[no-untyped-def]
    spark, parquet_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver keeps 300 test rows here; the reported AUC, logloss and RMSE are those of all of them, scored
    by the executors with the native model (mmoe: binary and regression heads)."""
    from exporter.export import spark_train
    from exporter.models.mmoe import tasks as T
    from exporter.training import inputs as I

    monkeypatch.setattr(spark_train, "SAMPLE_ROWS", 300)
    result, meta = _on_spark("mmoe", parquet_dir, tmp_path / "art", epochs=1)
    prep = result.prepared
    assert len(prep.heldout) <= 300
    table = pa.concat_tables([pq.read_table(p) for p in sorted(parquet_dir.glob("*.parquet"))])
    test = table.to_pandas()[S.split_codes_arrow(table, seed=5) == S.TEST].reset_index(drop=True)
    x = prep.features.prepare(prep.features.encode(test, source="test"))
    kinds = {n.name: n.kind for n in prep.spec.label_needs(prep.hparams)}
    y = I.read_labels(test, prep.label_columns, source="test", kinds=kinds)
    tasks = T.from_hparams(prep.hparams)
    expected = T.task_metrics(tasks, result.trained.predict(x), {t.name: y[t.label] for t in tasks})
    reading = meta["training"]["data_reading"]["heldout_metrics"]
    assert reading["rows"] == len(test) > 300 and reading["by"] == "spark"
    metrics = result.evaluation.metrics
    assert {n for n in expected if n.endswith(("_auc", "_rmse"))} <= set(reading["names"])
    for name in reading["names"]:
        assert metrics[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name
    assert meta["quality"]["value"] == pytest.approx(metrics[meta["quality"]["metric"]])


@pytest.mark.slow
def test_two_tower_on_spark_counts_the_whole_logs_positives_and_trains(
    spark, parquet_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from exporter.export.spark_torch import _item_counts
    from exporter.models.two_tower import sampled_softmax as SS

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=3000), rng.zipf(1.5, 3000) % 60, rng.integers(0, 4, 3000)]).astype(float)
    y = (rng.random(3000) < 0.4).astype(float)
    rows = spark.createDataFrame(
        [(*map(float, r), float(v)) for r, v in zip(x, y, strict=True)], ["f0", "f1", "f2", "y_label"]
    )
    _item_counts(rows, {"item_idx": [1, 2]}, ["label"], tmp_path / "items.npz")
    table = np.load(tmp_path / "items.npz", allow_pickle=False)
    counts = SS.ItemCounts.from_arrays([1, 2], "label", table["items"], table["counts"])
    pos, _, whole = SS.positive_pairs(x, {"label": y}, "label", np.array([1, 2]))
    np.testing.assert_allclose(counts.log_q(pos), whole, rtol=0, atol=1e-12)

    result, meta = _on_spark("two_tower", parquet_dir, tmp_path / "art", epochs=1, batch_size=128)
    assert result.evaluation.metrics["recall@50"] > 0
    # the evaluation's catalogue (shipped as items.parquet), users and their pairs are those of the whole table,
    # as a streamed run on one machine gathers them
    log = pa.concat_tables([pq.read_table(p) for p in sorted(parquet_dir.glob("*.parquet"))]).to_pandas()
    catalogue = pq.read_table(tmp_path / "art" / "two_tower_item" / "1" / "items.parquet").to_pandas()
    assert sorted(catalogue["item_id"]) == sorted(log["item_id"].unique())
    user = [c for c in result.prepared.columns if c.startswith("user_")]
    item = [c for c in result.prepared.columns if not c.startswith("user_")]
    keys = ["item_id", "user_id"]
    reader = SR.StreamReader(resolve_inputs(str(parquet_dir), option="--data"), list(log.columns), 5, key=keys)
    args = (user, item, ["user_id"], ["item_id"])
    local = E.streamed(reader.batches(), *args, {"label": "label"}, {}, "label", 5)
    assert _by_id(result.prepared.evaluation_inputs) == _by_id(local)
    # a sample of users: the same users, chosen by the same seeded key hash
    df = spark.read.parquet(str(parquet_dir))
    split = S.spark_split_expression(keys, seed=5, validation=S.DEFAULT_VALIDATION, test=S.DEFAULT_TEST)
    df = df.selectExpr("*", f"CAST({split} AS TINYINT) AS split")
    few = from_spark(df, "split", *args, "label", 5, max_users=40)
    local_few = E.streamed(reader.batches(), *args, {"label": "label"}, {}, "label", 5, max_users=40)
    assert few.sampled and len(few.users) == 40 and _by_id(few) == _by_id(local_few)
    # batch_size counts positive pairs, as on one machine: the steps are those of the training positives
    table = pa.concat_tables([pq.read_table(p) for p in sorted(parquet_dir.glob("*.parquet"))])
    train = S.split_codes_arrow(table, seed=5) == S.TRAIN
    positives = int(((table["label"].to_numpy() == 1) & train).sum())
    steps = meta["training"]["early_stopping"]["optimiser_steps"]
    assert 0.8 * positives / 128 <= steps <= positives / 128, (steps, positives)


@pytest.mark.slow
def test_a_failing_worker_fails_the_job_with_its_message_and_writes_nothing(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A value only a later file holds (an ID beyond 2^53) fails on an executor; its message reaches the user."""
    data = tmp_path / "log"
    data.mkdir()
    frame = synthetic_dataset(3000, 1)
    pq.write_table(pa.Table.from_pandas(frame.iloc[:2000], preserve_index=False), data / "a.parquet")
    bad = frame.iloc[2000:].copy()
    bad["user_id"] = bad["user_id"].astype(np.int64)
    bad.iloc[5, bad.columns.get_loc("user_id")] = 2**60
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), data / "b.parquet")
    with pytest.raises(ExporterError, match=r"user_id' row \d+: ID 1152921504606846976 is beyond 2\^53"):
        run_spark(_params("xgb", data, tmp_path / "art", n_estimators=5), SparkOptions("local[2]", 2))
    assert not (tmp_path / "art" / "xgb").exists() or not any((tmp_path / "art" / "xgb").iterdir())


def test_a_master_that_does_not_answer_fails_fast(tmp_path: Path, parquet_dir: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ExporterError, match="does not answer"):
        run_spark(_params("xgb", parquet_dir, tmp_path / "art"), SparkOptions("spark://127.0.0.1:9", 2))
    assert time.monotonic() - start < 60
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/log"], "data path not found: /nonexistent/log"),
        (["--num-workers", "0"], "--num-workers must be an integer from 1 to 1024"),
        (["--mode", "load", "--checkpoint", "x.json"], "--engine spark trains"),
        (["--spark-conf", "novalue"], "--spark-conf expects KEY=VALUE"),
    ],
)
def test_bad_spark_options_exit_2(tmp_path: Path, parquet_dir: Path, args: list[str], message: str) -> None:
    base = ["export", "xgb", "--engine", "spark", "--artifacts", str(tmp_path / "art")]
    if "--data" not in args:
        base += ["--data", str(parquet_dir)]
    done = run_cli(*base, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_no_java_is_a_clear_error(tmp_path: Path, parquet_dir: Path) -> None:
    env_path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not (Path(p) / "java").exists()
    )
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=env_path, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "export", "xgb", "--engine", "spark", "--data", str(parquet_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "needs a Java runtime" in done.stderr


@pytest.mark.slow
def test_the_notebook_engine_parameter_trains_on_spark(spark, parquet_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What the notebooks' cells call with ``engine = "spark"``: prepare on Spark, fit, evaluate, export."""
    from exporter.tools import notebook_support as nbs

    prep = nbs.prepare(
        "xgb",
        data_path=str(parquet_dir),
        artifacts_dir=str(tmp_path / "art"),
        seed=5,
        hparams={"n_estimators": 20},
        progress=False,
        engine="spark",
        spark_master="local[2]",
        num_workers=2,
    )
    assert prep.fit_elsewhere is not None
    trained = pipeline.fit(prep)
    assert prep.fit_elsewhere is None  # trained once; the session it prepared is closed
    evaluation = pipeline.evaluate(prep, trained)
    exported = nbs.export(prep, trained, evaluation, tracking=False)
    assert [a.model_name for a in exported] == ["xgb"]
    meta = json.loads((tmp_path / "art" / "xgb" / "1" / "metadata.json").read_text())
    assert meta["training"]["engine"] == "spark" and meta["training"]["spark_master"] == "local[2]"
    assert meta["training"]["num_workers"] == 2 and meta["parity"]["passed"] is True
    for key, count in _split_counts(parquet_dir, 5).items():
        assert meta["training"][key] == count, key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine": "dask"}, 'engine must be "local" or "spark", got \'dask\''),
        ({"spark_master": "local[2]"}, 'spark_master and num_workers are for engine = "spark"'),
        ({"engine": "spark", "num_workers": 0}, "num_workers must be an integer from 1 to 1024, got 0"),
        ({"engine": "spark", "data_path": None}, 'engine = "spark" trains on data_path'),
        ({"engine": "spark", "mode": "load", "checkpoint_path": "m.json"}, 'engine = "spark" trains; load mode'),
    ],
)
def test_the_notebook_engine_parameters_are_checked_before_spark_starts(
    kwargs: dict[str, object], message: str, parquet_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.export import spark_train
    from exporter.tools import notebook_support as nbs

    def no_spark(*args: object, **kw: object) -> None:
        raise AssertionError("a JVM was started for a bad parameter")

    monkeypatch.setattr(spark_train, "spark_session", no_spark)
    args = {"data_path": str(parquet_dir), "artifacts_dir": str(tmp_path / "art"), **kwargs}
    with pytest.raises(nbs.ParameterError) as caught:
        nbs.prepare("xgb", **args)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert not (tmp_path / "art").exists()


@pytest.mark.slow
def test_training_shards_mix_the_input_files_and_keep_every_row(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two input files of different rows: every part, and its first rows alone, hold both in like shares."""
    from exporter.export.spark_torch import _write_shards

    rows = 4000
    for i in range(2):  # one file per source, the rows of each in order
        src = pa.table({"src": np.full(rows, i), "n": np.arange(i * rows, (i + 1) * rows)})
        pq.write_table(src, tmp_path / f"in-{i}.parquet")
    frame = spark.read.parquet(str(tmp_path / "in-*.parquet")).coalesce(1)  # as read: file after file
    firsts = []
    for run in ("a", "b"):
        _write_shards(frame, 2, 7, tmp_path / run)
        parts = [pq.read_table(p) for p in sorted((tmp_path / run).glob("*.parquet"))]
        assert len(parts) == 2
        assert sorted(np.concatenate([p["n"].to_numpy() for p in parts]).tolist()) == list(range(2 * rows))
        for part in parts:
            head = part["src"].to_numpy()[: len(part) // 10]
            assert 0.35 < head.mean() < 0.65, head.mean()  # the first tenth mixes both files
            assert not np.all(np.diff(part["n"].to_numpy()) > 0)  # not in the input's order
        firsts.append([p["n"].to_numpy().tolist() for p in parts])
    assert firsts[0] == firsts[1]  # seeded: the same rows in the same order


@pytest.mark.slow
def test_positive_class_and_excluded_columns_on_spark(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # none of the default column names: every column but the label is a feature, --exclude-columns drops some
    frame = synthetic_dataset(3000, 6).add_prefix("c_")
    frame["outcome"] = np.where(frame.pop("c_label") == 1, "yes", "no")
    frame["constant"], frame["empty"] = 7.0, np.nan
    data = tmp_path / "log"
    data.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / "part-0.parquet")
    params = pipeline.ExportParams(
        model="xgb", data_path=str(data), artifacts=tmp_path / "art", seed=5, hparams={"n_estimators": 30},
        progress=False, label="outcome", positive_class="yes", exclude_columns=["c_item_cvr", "c_watch_time", "c_gmv"],
    )  # fmt: skip
    result = run_spark(params, SparkOptions("local[2]", 2))
    meta = result.artifacts[0].metadata
    assert meta["training"]["engine"] == "spark" and meta["training"]["positive_class"] == "yes"
    # the split hashes the table's own values (the label as written, not as 0/1): the local rule's rows
    for key, count in _split_counts(data, 5).items():
        assert meta["training"][key] == count, key
    assert "c_item_cvr" not in meta["feature_columns"] and "c_item_ctr" in meta["feature_columns"]
    assert "constant" in meta["feature_columns"] and "empty" in meta["feature_columns"]
    assert result.evaluation.metrics["auc"] > 0.6  # 'yes' is 1: an inverted label would rank below 0.5
    # an all-empty column trains as an optional fill-0 column, and the columns that carry nothing are warned about
    found = {w["column"]: w["reason"] for w in meta["training"]["column_warnings"]}
    assert found == {"constant": "constant", "empty": "all_empty"}
    features = {f["name"]: f for f in meta["features"]}
    assert features["empty"]["optional"] is True and features["empty"]["fill"] == 0.0
    # a column with some empty training cells takes an empty value at serving; one without stays required
    assert features["c_item_price"]["optional"] is True and features["c_item_ctr"]["optional"] is False
    # a third value anywhere in the column is refused, naming the values with their counts
    frame.loc[frame.index[-1], "outcome"] = "maybe"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / "part-0.parquet")
    bad = dataclasses.replace(params, artifacts=tmp_path / "bad")
    with pytest.raises(ExporterError, match=r"label column 'outcome' holds 3 distinct values \(.*'maybe' \(1\)"):
        run_spark(bad, SparkOptions("local[2]", 2))
    assert not (tmp_path / "bad" / "xgb").exists()


def _history_on_spark_and_streamed(root: Path, tmp_path: Path) -> tuple[dict[str, Path], dict[str, list[Any]]]:
    """deepfm with the history column ``recent`` trained on Spark and streamed from the same files: each engine's
    version and the metadata entries of the history."""
    from exporter.training import inputs as I

    schema = {
        "label": "label",
        "features": [*(s.to_dict() for s in I.default_specs()), {"name": "recent", "kind": "history", "max_length": 5}],
    }
    versions = {}
    for engine in ("spark", "streaming"):
        params = dataclasses.replace(_params("deepfm", root, tmp_path / engine, epochs=1, refit=False), schema=schema)
        if engine == "spark":
            run_spark(params, SparkOptions("local[2]", 2))
        else:
            pipeline.run(dataclasses.replace(params, streaming="on"))
        versions[engine] = tmp_path / engine / "deepfm" / "1"
    entries = {
        engine: [e for e in json.loads((v / "metadata.json").read_text())["features"] if e["name"].startswith("recent")]
        for engine, v in versions.items()
    }
    return versions, entries


@pytest.mark.slow
def test_a_history_of_string_ids_trains_on_spark_with_the_plan_a_streamed_run_fits(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The executors count the history's items; the driver fits the same vocabulary and statistics a streamed
    run fits on the same Parquet files (which hold out the same rows), and the export passes its parity gate."""
    from exporter import features as F

    frame = synthetic_dataset(3000, 3)
    frame["ts"] = np.arange(len(frame))
    frame["item_id"] = "item-" + frame["item_id"].astype(str)
    frame["recent"] = F.build_history(frame, "user_id", "item_id", "ts", 5, positive="label")
    root = tmp_path / "log"
    root.mkdir()
    for i in range(2):
        part = frame.iloc[i * 1500 : (i + 1) * 1500]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), root / f"part-{i}.parquet")
    versions, entries = _history_on_spark_and_streamed(root, tmp_path)
    assert len(entries["spark"]) == 5 and entries["spark"] == entries["streaming"]
    assert entries["spark"][0]["dtype"] == "string" and entries["spark"][0]["stats"]["mean_length"] > 1
    vocab = {engine: json.loads((v / "vocab.json").read_text()) for engine, v in versions.items()}
    assert vocab["spark"] == vocab["streaming"] and len(vocab["spark"]["recent"]) > 5
    assert verify(versions["spark"]).ok
    meta = json.loads((versions["spark"] / "metadata.json").read_text())
    assert meta["training"]["engine"] == "spark" and meta["parity"]["passed"]


@pytest.mark.slow
def test_a_history_with_text_ids_beyond_the_drivers_sample_trains_as_a_string_history(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The driver's sample (the table's first rows) holds integer items only; an executor's batch with text IDs
    makes it a history of string IDs, as the streamed run on the same files fits it."""
    from exporter import features as F
    from exporter.export import spark_train

    frame = synthetic_dataset(3000, 4)
    frame["ts"] = np.arange(len(frame))
    built = F.build_history(frame, "user_id", "item_id", "ts", 5, positive="label")
    late = frame.index >= 2500  # beyond the first rows of either file
    built[late] = [[f"sku-{v}" if v % 3 == 0 else v for v in h] for h in built[late]]
    frame["recent"] = ["|".join(map(str, h)) for h in built]
    root = tmp_path / "log"
    root.mkdir()
    for i in range(2):
        part = frame.iloc[i * 1500 : (i + 1) * 1500]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), root / f"part-{i}.parquet")
    monkeypatch.setattr(spark_train, "SCHEMA_ROWS", 200)
    guessed: list[bool] = []

    def guess(*args: Any, **kwargs: Any) -> bool:
        guessed.append(holds_strings(*args, **kwargs))
        return guessed[-1]

    holds_strings = F.history_holds_strings
    monkeypatch.setattr(F, "history_holds_strings", guess)
    versions, entries = _history_on_spark_and_streamed(root, tmp_path)
    assert guessed == [False]  # the driver's sample: integer items
    assert entries["spark"] == entries["streaming"] and entries["spark"][0]["dtype"] == "string"
    vocab = {engine: json.loads((v / "vocab.json").read_text())["recent"] for engine, v in versions.items()}
    assert vocab["spark"] == vocab["streaming"]
    assert any(v.startswith("sku-") for v in vocab["spark"]) and any(v.isdigit() for v in vocab["spark"])
    assert json.loads((versions["spark"] / "metadata.json").read_text())["parity"]["passed"]


@pytest.mark.slow
def test_spark_evaluation_collects_a_users_history_once_from_its_latest_rows(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A history column (an array per row) reaches the driver once per evaluated user, the array of one of the
    user's rows in its latest split part, as first_rows takes the latest row's."""
    frame = synthetic_dataset(2000, 3)
    frame["recent"] = [list(range(i % 7)) + [i] for i in range(len(frame))]  # each row's array names its row
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "log.parquet")
    keys = ["item_id", "user_id"]
    df = spark.read.parquet(str(tmp_path / "log.parquet"))
    split = S.spark_split_expression(keys, seed=5, validation=S.DEFAULT_VALIDATION, test=S.DEFAULT_TEST)
    df = df.selectExpr("*", f"CAST({split} AS TINYINT) AS split")
    inputs = from_spark(
        df, "split", ["user_id", "user_age", "recent"], ["item_id"], ["user_id"], ["item_id"], "label", 5
    )
    codes = df.select("split").toPandas()["split"].to_numpy()
    assert len(inputs.users) > 10
    for _, user in inputs.users.iterrows():
        row = int(list(user["recent"])[-1])  # the row the array came from
        mine = np.flatnonzero(frame["user_id"].to_numpy() == user["user_id"])
        assert row in mine and codes[row] == codes[mine].max()
        assert list(user["recent"]) == frame["recent"][row]


@pytest.mark.slow
def test_per_row_columns_in_the_item_tower_are_warned_about_on_spark(spark, parquet_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """From the driver's sample of training rows, as in memory: user_age left to the item tower (user_columns
    names the others) differs between the rows of one item."""
    from exporter.export.spark_train import prepare_spark

    params = _params("two_tower", parquet_dir, parquet_dir.parent / "unused", user_columns=["user_id", "user_gender"])
    prep, run = prepare_spark(params, SparkOptions("local[2]", 2))
    run.close()
    assert [(w["column"], w["reason"]) for w in prep.column_warnings] == [("user_age", "varies_within_item")]
