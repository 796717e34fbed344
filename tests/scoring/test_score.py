"""``python -m exporter score``: both engines agree with the handler, refuse bad rows per row, and are atomic.

Expected predictions always come from :meth:`ModelHandler.predict` on the same rows (the serving path), and
are compared bit for bit with what the Parquet output holds. Spark tests share one ``local[2]`` session.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from exporter.errors import ExporterError
from exporter.runtime.handler import ModelHandler
from exporter.scoring import ScoreOptions, score
from exporter.scoring.encode import OOV_CODE, ColumnRule, EncodingPlan, encode_batch, plan_from_metadata
from exporter.training.data import synthetic_dataset
from tests.conftest import REPO, run_cli


# ---------------------------------------------------------------------------------------------- helpers
def make_rows(n: int, seed: int) -> pa.Table:
    """Synthetic feature rows with an ``row_id`` column to join outputs back to inputs."""
    # complete rows (the synthetic log has a few empty cells; those are rejects here, as in the handler)
    df = synthetic_dataset(2 * n + 20, seed).drop(columns=["label", "watch_time", "gmv"]).dropna().head(n)
    df = df.reset_index(drop=True)
    df.insert(0, "row_id", np.arange(n, dtype=np.int64) + 1000 * seed)
    return pa.Table.from_pandas(df, preserve_index=False)


def write_parts(table: pa.Table, directory: Path, parts: int, fmt: str = "parquet") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    step = math.ceil(table.num_rows / parts)
    for i in range(parts):
        part = table.slice(i * step, step)
        if fmt == "parquet":
            pq.write_table(part, directory / f"part-{i}.parquet", row_group_size=700)
        else:
            pacsv.write_csv(part, directory / f"part-{i}.csv")
    return directory


def handler_predictions(handler: ModelHandler, table: pa.Table) -> list:
    """What the server answers for these rows (TorchServe form), one entry per row."""
    rows = table.select(handler.feature_columns).to_pylist()
    out: list = []
    for i in range(0, len(rows), 1000):
        answer = handler.predict({"data": rows[i : i + 1000]})["predictions"]
        out.extend(answer if len(rows[i : i + 1000]) > 1 else [answer])
    return out


def read_output(directory: Path) -> pa.Table:
    return pads.dataset(str(directory), format="parquet").to_table().sort_by("row_id")


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    actual = np.ascontiguousarray(actual, dtype=np.float64)
    expected = np.ascontiguousarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    differ = np.flatnonzero(actual.view(np.int64).ravel() != expected.view(np.int64).ravel())
    assert differ.size == 0, (
        f"{differ.size} values differ, first at {differ[0]}: "
        f"{actual.ravel()[differ[0]]!r} vs {expected.ravel()[differ[0]]!r}"
    )


def assert_matches_handler(output: pa.Table, handler: ModelHandler, inputs: pa.Table) -> None:
    """Every input row scored once, with the handler's exact numbers, in the contract's columns."""
    inputs = inputs.sort_by("row_id")
    assert output.column("row_id").to_pylist() == inputs.column("row_id").to_pylist()
    expected = handler_predictions(handler, inputs)
    fmt = handler.prediction_format
    if fmt == "scalar":
        assert output.column_names == ["row_id", "prediction"]
        assert_same_bits(output.column("prediction").to_numpy(), np.array(expected))
    elif fmt == "named_columns":
        assert output.column_names == ["row_id", *handler.output_columns]
        for name in handler.output_columns:
            assert_same_bits(output.column(name).to_numpy(), np.array([row[name] for row in expected]))
    else:
        assert output.column_names == ["row_id", "embedding"]
        assert pa.types.is_list(output.schema.field("embedding").type)
        got = np.array(output.column("embedding").to_pylist())
        assert_same_bits(got, np.array(expected))


def options(artifacts: Path, model: str, inp: Path, out: Path, **kw) -> ScoreOptions:
    kw.setdefault("keep", ["row_id"])
    kw.setdefault("progress", False)
    return ScoreOptions(model=model, input=str(inp), output=str(out), artifacts=str(artifacts), **kw)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Small inputs: 2,500 rows in 3 Parquet files, and 1,200 rows in 2 CSV files."""
    root = tmp_path_factory.mktemp("score-inputs")
    parquet_rows = make_rows(2500, 1)
    csv_rows = make_rows(1200, 2)
    return {
        "parquet": (write_parts(parquet_rows, root / "parquet", 3), parquet_rows),
        "csv": (write_parts(csv_rows, root / "csv", 2, "csv"), csv_rows),
    }


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory):
    """Parquet rows with refused cells at known places (file b.parquet), and the reasons expected."""
    root = tmp_path_factory.mktemp("score-bad")
    table = make_rows(600, 3)
    good = table.slice(0, 300)
    bad = table.slice(300)
    ctr = bad.column("item_ctr").to_pylist()
    price = bad.column("item_price").to_pylist()
    cvr = bad.column("item_cvr").to_pylist()
    ctr[5], ctr[17], price[40], price[41], ctr[299] = float("nan"), None, float("inf"), float("-inf"), float("nan")
    cvr[299] = None  # item_cvr has no empty cell in training: required (item_price, with some, is optional)
    bad = bad.set_column(bad.schema.get_field_index("item_ctr"), "item_ctr", pa.array(ctr, pa.float64()))
    bad = bad.set_column(bad.schema.get_field_index("item_cvr"), "item_cvr", pa.array(cvr, pa.float64()))
    bad = bad.set_column(bad.schema.get_field_index("item_price"), "item_price", pa.array(price, pa.float64()))
    pq.write_table(good, root / "a.parquet")
    pq.write_table(bad, root / "b.parquet", row_group_size=100)
    expected = {
        5: '"item_ctr" is NaN; expected a finite number',
        17: '"item_ctr" is null (a missing value); expected a finite number',
        40: '"item_price" is Infinity; expected a finite number',
        41: '"item_price" is -Infinity; expected a finite number',
        299: '"item_ctr" is NaN; expected a finite number (and 1 more column)',
    }
    return root, table, {("b.parquet", row): reason for row, reason in expected.items()}


def read_rejects(output: Path) -> dict:
    rejects = pads.dataset(str(output / "_rejects"), format="parquet").to_table()
    assert rejects.column_names == ["source_file", "source_row", "reason", "row_id"]
    return {
        (Path(f).name, r): reason
        for f, r, reason in zip(
            rejects.column("source_file").to_pylist(),
            rejects.column("source_row").to_pylist(),
            rejects.column("reason").to_pylist(),
            strict=True,
        )
    }


# ---------------------------------------------------------------------------------------------- local engine
@pytest.mark.parametrize("model", ["deepfm", "mmoe", "two_tower_item", "xgb"])
def test_local_engine_matches_the_handler_bit_for_bit(exported_artifacts, inputs, tmp_path, model):
    directory, table = inputs["parquet"]
    out = tmp_path / "out"
    # small batches and part files: several batches per file, several output files, threads interleaving
    result = score(options(exported_artifacts, model, directory, out, batch_rows=300, rows_per_file=1000, threads=2))
    handler = ModelHandler.load(exported_artifacts / model)
    assert_matches_handler(read_output(out), handler, table)
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (2500, 2500, 0)
    assert result.part_files == 3 and not (out / "_rejects").exists() and (out / "_SUCCESS").exists()
    summary = json.loads((out / "_scoring.json").read_text())
    assert summary["sha256"] == handler.metadata["sha256"] and summary["rows_scored"] == 2500


def test_local_engine_reads_csv_text_like_parquet_numbers(exported_artifacts, inputs, tmp_path):
    directory, table = inputs["csv"]
    out = tmp_path / "out"
    score(options(exported_artifacts, "deepfm", directory, out, batch_rows=256))
    output = read_output(out).cast(pa.schema([("row_id", pa.int64()), ("prediction", pa.float64())]))
    assert_matches_handler(output, ModelHandler.load(exported_artifacts / "deepfm"), table)


def test_bad_rows_go_to_rejects_with_file_row_and_reason(exported_artifacts, bad_input, tmp_path):
    directory, table, expected = bad_input
    out = tmp_path / "out"
    result = score(options(exported_artifacts, "deepfm", directory, out, max_rejects=5, batch_rows=64))
    assert read_rejects(out) == expected
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (600, 595, 5)
    bad_ids = {table.column("row_id")[300 + row].as_py() for _, row in expected}
    good = table.filter(pa.array([i not in bad_ids for i in table.column("row_id").to_pylist()]))
    assert_matches_handler(read_output(out), ModelHandler.load(exported_artifacts / "deepfm"), good)


def test_more_rejects_than_allowed_fails_and_writes_nothing(exported_artifacts, bad_input, tmp_path):
    directory, _, _ = bad_input
    out = tmp_path / "out"
    with pytest.raises(
        ExporterError, match=r"more than --max-rejects 4; first: .*b\.parquet row 6: \"item_ctr\" is NaN"
    ):
        score(options(exported_artifacts, "deepfm", directory, out, max_rejects=4))
    assert not out.exists() and os.listdir(tmp_path) == []


def test_missing_column_is_exit_2_before_any_work(exported_artifacts, inputs, tmp_path):
    directory, table = inputs["parquet"]
    partial = tmp_path / "partial.parquet"
    pq.write_table(table.drop_columns(["item_cvr"]), partial)
    out = tmp_path / "out"
    proc = run_cli(
        "score",
        "deepfm",
        "--artifacts",
        str(exported_artifacts),
        "--input",
        str(partial),
        "--output",
        str(out),
        "--keep",
        "row_id",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert 'missing feature column "item_cvr"' in proc.stderr and "partial.parquet" in proc.stderr
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["partial.parquet"]
    proc = run_cli(
        "score",
        "deepfm",
        "--artifacts",
        str(exported_artifacts),
        "--input",
        str(directory),
        "--output",
        str(out),
        "--keep",
        "user_id_typo",
    )
    assert proc.returncode == 2 and 'missing --keep column "user_id_typo"' in proc.stderr


def test_existing_output_is_refused_unless_overwrite(exported_artifacts, inputs, tmp_path):
    directory, table = inputs["parquet"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ExporterError, match="already exists"):
        score(options(exported_artifacts, "deepfm", directory, out))
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(ExporterError, match="is not a score output"):  # --overwrite replaces only our own output
        score(options(exported_artifacts, "deepfm", directory, out, overwrite=True))
    assert (out / "precious.txt").read_text() == "keep me"
    (out / "precious.txt").unlink()
    out.rmdir()
    score(options(exported_artifacts, "deepfm", directory, out))
    (out / "stale.txt").write_text("from the previous run")
    score(options(exported_artifacts, "deepfm", directory, out, overwrite=True))
    assert not (out / "stale.txt").exists() and read_output(out).num_rows == table.num_rows
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or replaced directory left behind


def test_index_option_checks_come_before_any_work(exported_artifacts, inputs, tmp_path):
    directory, _ = inputs["parquet"]
    with pytest.raises(ExporterError, match="not vectors"):
        score(options(exported_artifacts, "deepfm", directory, tmp_path / "o", index=True))
    with pytest.raises(ExporterError, match="--keep"):
        score(options(exported_artifacts, "two_tower_item", directory, tmp_path / "o", keep=[], index=True))
    with pytest.raises(ExporterError, match="name of an output column"):
        score(options(exported_artifacts, "deepfm", directory, tmp_path / "o", keep=["prediction"]))
    assert list(tmp_path.iterdir()) == []


def test_sigkill_mid_job_leaves_no_output_and_the_next_run_cleans_up(exported_artifacts, tmp_path):
    big = tmp_path / "big.parquet"
    pq.write_table(make_rows(1_500_000, 4), big, row_group_size=50_000)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        sys.executable,
        "-m",
        "exporter",
        "score",
        "deepfm",
        "--artifacts",
        str(exported_artifacts),
        "--input",
        str(big),
        "--output",
        str(out),
        "--keep",
        "row_id",
        "--batch-rows",
        "8192",
        "--rows-per-file",
        "50000",
        "--threads",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    staged = []
    while time.monotonic() < deadline and proc.poll() is None:
        staged = [p for p in tmp_path.glob(".out.scoring-*") if len(list(p.glob("part-*.parquet"))) >= 2]
        if staged:
            break
        time.sleep(0.01)
    assert staged, (
        f"the job never got mid-way (exit {proc.poll()}): "
        f"{proc.stderr.read().decode() if proc.poll() is not None else ''}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed job must not leave a (half) output directory"
    assert staged[0].exists()  # only its hidden staging sibling, which the next run removes
    small = tmp_path / "small.parquet"
    pq.write_table(make_rows(100, 5), small)
    done = run_cli(
        "score",
        "deepfm",
        "--artifacts",
        str(exported_artifacts),
        "--input",
        str(small),
        "--output",
        str(out),
        "--keep",
        "row_id",
    )
    assert done.returncode == 0, done.stderr
    assert "removing .out.scoring-" in done.stderr and not staged[0].exists()
    assert read_output(out).num_rows == 100


def test_cli_summary_and_json(exported_artifacts, inputs, tmp_path):
    directory, _ = inputs["parquet"]
    proc = run_cli(
        "score",
        "mmoe",
        "--artifacts",
        str(exported_artifacts),
        "--input",
        f"{directory}/part-*.parquet",
        "--output",
        str(tmp_path / "out"),
        "--keep",
        "row_id",
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["files"], summary["rows_scored"], summary["rows_rejected"]) == (3, 2500, 0)
    assert proc.stderr == ""


# ---------------------------------------------------------------------------------------------- index
def test_item_index_recall_against_exact_search(exported_artifacts, tmp_path):
    faiss = pytest.importorskip("faiss")
    from exporter.features import FeaturePlan

    item_dir, user_dir = exported_artifacts / "two_tower_item" / "1", exported_artifacts / "two_tower" / "1"
    item_cols = json.loads((item_dir / "metadata.json").read_text())["feature_columns"]
    user_cols = json.loads((user_dir / "metadata.json").read_text())["feature_columns"]
    n_items = 20_000
    items_df = synthetic_dataset(2 * n_items, 11).dropna(subset=item_cols).head(n_items).reset_index(drop=True)
    items_df["item_id"] = np.arange(n_items) * 7 + 3  # one row per item, IDs the model has mostly never seen
    pq.write_table(pa.Table.from_pandas(items_df[item_cols], preserve_index=False), tmp_path / "items.parquet")
    users_df = synthetic_dataset(10_000, 12).dropna(subset=user_cols).head(5000).reset_index(drop=True)
    pq.write_table(pa.Table.from_pandas(users_df[user_cols], preserve_index=False), tmp_path / "users.parquet")
    out = tmp_path / "out"
    result = score(
        options(
            exported_artifacts,
            "two_tower_item",
            tmp_path / "items.parquet",
            out,
            keep=["item_id"],
            index=True,
            index_users=str(tmp_path / "users.parquet"),
            index_queries=300,
        )
    )
    info = json.loads((out / "_index" / "index.json").read_text())
    assert info["recall"] >= 0.95 and result.index["recall"] == info["recall"] and info["items"] == n_items

    # independent check: brute force in numpy over the vectors as the towers compute them
    index = faiss.read_index(str(out / "_index" / "items.faiss"))
    ids = pq.read_table(out / "_index" / "ids.parquet").column("id").to_numpy()
    item_vectors = np.array(
        ModelHandler.load(item_dir).run(FeaturePlan.from_artifact(item_dir).encode(items_df[item_cols]))
    )
    user_rows = FeaturePlan.from_artifact(user_dir).encode(users_df[user_cols])
    rng = np.random.default_rng(99)
    users = ModelHandler.load(user_dir).run(user_rows[rng.choice(len(user_rows), 200, replace=False)])
    scores = users @ item_vectors.T
    kth = -np.sort(-scores, axis=1)[:, 49]  # the 50th best exact score per user
    _, found = index.search(users.astype(np.float32), 50)
    rows = (ids[found] - 3) // 7  # item_id -> row of items_df
    # a returned item is a hit when it is as good as the exact 50th (ties: many unseen IDs share one row)
    hits = (np.take_along_axis(scores, rows, axis=1) >= kth[:, None] - 1e-5).sum()
    assert hits / found.size >= 0.95


# ---------------------------------------------------------------------------------------------- encoder rules
def test_encoder_categorical_and_optional_rules():
    plan = EncodingPlan(
        (
            ColumnRule("price"),
            ColumnRule("age", optional=True),
            ColumnRule("item_id", kind="categorical"),
            ColumnRule("category", kind="categorical", vocabulary={"bags": 0, "shoes": 1}),
        )
    )
    batch = pa.record_batch(
        {
            "price": [1.5, 2.0, 3.0, 4.0, 5.0, 6.0],
            "age": [30.0, None, float("nan"), 40.0, 41.0, 42.0],
            "item_id": [7, 8, 9, 2**53 + 2, 10, 11],
            "category": ["shoes", "hats", None, "bags", "1", "bags"],
        }
    )
    encoded = encode_batch(batch, plan)
    assert encoded.rejects == [
        (2, '"category" is null (a missing value); expected a category string or its code'),
        (3, f'"item_id" is {2**53 + 2} (beyond 2^53); expected an integer ID within 2^53'),
    ]
    m = encoded.matrix
    assert m.shape == (4, 4)
    # shoes, unknown -> OOV, the text "1" -> OOV too (a category written in digits, an unseen store code, is not
    # the vocabulary's entry 1: a request's JSON "1" is the category "1" as well), bags
    assert m[:, 3].tolist() == [1.0, OOV_CODE, OOV_CODE, 0.0]
    assert np.isnan(m[1, 1]) and m[:, 2].tolist() == [7.0, 8.0, 10.0, 11.0]
    text_ids = encode_batch(
        pa.record_batch(
            {
                "price": ["1", "2", "3"],
                "age": ["", "nan", "x"],
                "item_id": ["5", "5.5", "6.0"],
                "category": ["bags"] * 3,
            }
        ),
        plan,
    )
    assert [r for r, _ in text_ids.rejects] == [1, 2]
    assert "not an integer" in text_ids.rejects[0][1] and '"age" is a string ("x")' in text_ids.rejects[1][1]


def test_encoder_parses_decimal_text_and_refuses_the_rest():
    plan = EncodingPlan((ColumnRule("x"),))
    cells = ["+1.5", ".5", "5.", " 7 ", "1E3", "-2e-3", "1_000", "0x10", "inf", "1e999", "NaN", "", "true", "abc"]
    for text_type in (pa.string(), pa.large_string()):
        encoded = encode_batch(pa.record_batch({"x": pa.array(cells, text_type)}), plan)
        assert encoded.matrix[:, 0].tolist() == [1.5, 0.5, 5.0, 7.0, 1000.0, -0.002]
        assert [reason.split("; ")[0] for _, reason in encoded.rejects] == [
            '"x" is a string ("1_000")',
            '"x" is a string ("0x10")',
            '"x" is Infinity (text "inf")',
            '"x" is Infinity (text "1e999")',
            '"x" is NaN (text "NaN")',
            '"x" is empty (a missing value)',
            '"x" is a string ("true")',
            '"x" is a string ("abc")',
        ]
    booleans = encode_batch(pa.record_batch({"x": [True, None]}), plan)
    assert [r for _, r in booleans.rejects] == [
        '"x" is a boolean (true); expected a finite number',
        '"x" is null (a missing value); expected a finite number',
    ]


def test_plan_reads_features_and_a_checked_vocabulary_file(tmp_path):
    vocab = json.dumps({"item_category": ["bags", "shoes"]}).encode()
    (tmp_path / "vocab.json").write_bytes(vocab)
    import hashlib

    # the metadata format of docs/features.md: a string column names its vocabulary file, key and sha256
    meta = {
        "feature_columns": ["x", "item_category", "item_id"],
        "features": [
            {"name": "x", "kind": "numeric", "optional": True},
            {
                "name": "item_category",
                "kind": "categorical",
                "dtype": "string",
                "vocab": {"file": "vocab.json", "sha256": hashlib.sha256(vocab).hexdigest(), "key": "item_category"},
            },
            {"name": "item_id", "kind": "categorical", "dtype": "int64"},
        ],
    }
    plan = plan_from_metadata(meta, tmp_path)
    assert plan.columns[0].optional and plan.columns[1].vocabulary == {"bags": 0, "shoes": 1}
    assert plan.columns[2].is_id and not plan.columns[1].is_id
    (tmp_path / "vocab.json").write_bytes(vocab.replace(b"shoes", b"boots"))
    with pytest.raises(ValueError, match="sha256"):
        plan_from_metadata(meta, tmp_path)


# ---------------------------------------------------------------------------------------------- spark engine
@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    pytest.importorskip("pyspark")
    from exporter.scoring.spark import spark_session

    session, created = spark_session("local[2]", {}, "exporter tests", 65536, tmp_path_factory.mktemp("spark"))
    yield session
    if created:
        session.stop()


@pytest.mark.slow
def test_spark_engine_matches_the_handler_bit_for_bit(exported_artifacts, inputs, spark, tmp_path):
    directory, table = inputs["parquet"]
    for model in ("deepfm", "mmoe", "two_tower_item"):
        out = tmp_path / model
        if model == "deepfm":  # one file per partition: more tasks than Python workers
            spark.conf.set("spark.sql.files.maxPartitionBytes", "40000")
        try:
            result = score(options(exported_artifacts, model, directory, out, engine="spark", batch_rows=500))
        finally:
            spark.conf.unset("spark.sql.files.maxPartitionBytes")
        assert (result.rows_read, result.rows_scored, result.rows_rejected) == (2500, 2500, 0)
        assert_matches_handler(read_output(out), ModelHandler.load(exported_artifacts / model), table)
        if model == "deepfm":  # the artifact is loaded once per Python worker (local[2]: at most 2), not per task
            assert result.spark["partitions"] >= 3 and 1 <= result.spark["artifact_loads"] <= 2, result.spark
    csv_dir, csv_table = inputs["csv"]
    out = tmp_path / "csv"
    score(options(exported_artifacts, "deepfm", csv_dir, out, engine="spark"))
    output = read_output(out).cast(pa.schema([("row_id", pa.int64()), ("prediction", pa.float64())]))
    assert_matches_handler(output, ModelHandler.load(exported_artifacts / "deepfm"), csv_table)


@pytest.mark.slow
def test_spark_engine_rejects_like_the_local_engine(exported_artifacts, bad_input, spark, tmp_path):
    directory, table, expected = bad_input
    out = tmp_path / "out"
    result = score(options(exported_artifacts, "deepfm", directory, out, engine="spark", max_rejects=5))
    assert read_rejects(out) == expected
    assert (result.rows_scored, result.rows_rejected) == (595, 5)
    with pytest.raises(ExporterError, match=r"more than --max-rejects 4; first: .*b\.parquet row 6"):
        score(options(exported_artifacts, "deepfm", directory, tmp_path / "fail", engine="spark", max_rejects=4))
    assert not (tmp_path / "fail").exists() and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.slow
def test_spark_engine_stages_uri_outputs_through_hadoop_filesystem(exported_artifacts, inputs, spark, tmp_path):
    directory, table = inputs["parquet"]
    out = tmp_path / "out"
    score(options(exported_artifacts, "deepfm", directory, f"file://{out}", engine="spark"))
    assert_matches_handler(read_output(out), ModelHandler.load(exported_artifacts / "deepfm"), table)
    assert json.loads((out / "_scoring.json").read_text())["output"] == f"file://{out}"
    with pytest.raises(ExporterError, match="already exists"):
        score(options(exported_artifacts, "deepfm", directory, f"file://{out}", engine="spark"))
    first = (out / "_scoring.json").read_text()
    # --overwrite: the summary is read back through Hadoop and recognised as a previous score output
    score(options(exported_artifacts, "deepfm", directory, f"file://{out}", engine="spark", overwrite=True))
    assert (out / "_scoring.json").read_text() != first
    other = tmp_path / "other"
    other.mkdir()
    (other / "_SUCCESS").write_text("")
    with pytest.raises(ExporterError, match="is not a score output"):
        score(options(exported_artifacts, "deepfm", directory, f"file://{other}", engine="spark", overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"] and os.listdir(other) == ["_SUCCESS"]


def test_a_staging_name_with_a_non_ascii_pid_is_left_alone(tmp_path: Path) -> None:
    """A directory that looks like a killed run's staging but whose pid is not ASCII digits ('²' passes
    str.isdigit, int() refuses it) is neither a crash nor removed: only our own staging names are."""
    import socket

    from exporter.scoring.outputs import STAGING_MARK, StagedOutput

    out = tmp_path / "scored"
    odd = tmp_path / f".scored{STAGING_MARK}{socket.gethostname()}-²-deadbeef"
    odd.mkdir()
    (odd / "keep.txt").write_text("user data")
    with StagedOutput(out) as staged:
        assert staged.path.is_dir()
    assert (odd / "keep.txt").read_text() == "user data"


def test_a_second_job_into_an_output_being_written_is_refused(tmp_path: Path) -> None:
    """Two jobs into one output (with --overwrite) both reported success while one's output replaced the other's:
    the second is refused while the first runs, and goes ahead once it has finished."""
    from exporter.scoring.outputs import StagedOutput

    out = tmp_path / "scored"
    with StagedOutput(out, overwrite=True) as first:
        with pytest.raises(ExporterError, match=r"another score job \(pid \d+\) is writing it now"):
            with StagedOutput(out, overwrite=True):
                pass
        assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name]  # the refused one left nothing
        first.commit()
    shutil.rmtree(out)
    with StagedOutput(out) as again:  # the first one done: a new job goes ahead
        assert again.path.is_dir()
