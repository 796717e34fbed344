"""The row split: Spark-compatible XXH64, deterministic, order-free, and the same codes Spark computes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.errors import ExporterError
from exporter.training import split as S


def test_xxh64_matches_published_vectors() -> None:
    # reference values of the XXH64 specification (xxhash's own test vectors)
    assert S.hash_bytes(b"", 0) == 0xEF46DB3751D8E999
    assert S.hash_bytes(b"a", 0) == 0xD24EC4F1A98C6E5B
    assert S.hash_bytes(b"abc", 0) == 0x44BC2CF5AD770999
    long = b"Nobody inspects the spammish repetition"
    assert S.hash_bytes(long, 0) == 0xFBCEA83C8A378BF1


def _table(n: int = 3000) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, 500, n), pa.int64()),
            "price": pa.array([None if k % 13 == 0 else float(v) for k, v in enumerate(rng.normal(size=n))]),
            "category": pa.array([None if k % 11 == 0 else f"c{k % 37}é" for k in range(n)]),
            "flag": pa.array([bool(k % 3) for k in range(n)]),
            "label": pa.array(rng.integers(0, 2, n).astype(np.int32)),
            "tags": pa.array([[1, 2]] * n),  # a list column: not part of the default key
        }
    )


def test_codes_follow_the_fractions_and_the_seed() -> None:
    table = _table(20000)
    codes = S.split_codes_arrow(table, seed=1)
    shares = np.bincount(codes, minlength=3) / len(codes)
    assert abs(shares[S.TEST] - 0.2) < 0.02 and abs(shares[S.VALIDATION] - 0.1) < 0.02
    assert np.array_equal(codes, S.split_codes_arrow(table, seed=1))
    assert not np.array_equal(codes, S.split_codes_arrow(table, seed=2))
    no_validation = S.split_codes_arrow(table, seed=1, validation=0.0)
    assert not (no_validation == S.VALIDATION).any()
    assert np.array_equal(no_validation == S.TEST, codes == S.TEST)  # the test rows do not move


def test_codes_do_not_depend_on_row_order_or_batching() -> None:
    table = _table()
    codes = S.split_codes_arrow(table, seed=3)
    order = np.random.default_rng(5).permutation(table.num_rows)
    shuffled = S.split_codes_arrow(table.take(pa.array(order)), seed=3)
    assert np.array_equal(shuffled, codes[order])
    batches = table.to_batches(max_chunksize=777)
    assert np.array_equal(np.concatenate([S.split_codes_arrow(b, seed=3) for b in batches]), codes)


def test_duplicate_rows_and_split_by_groups_land_on_one_side() -> None:
    table = _table()
    doubled = pa.concat_tables([table, table])
    codes = S.split_codes_arrow(doubled, seed=0)
    assert np.array_equal(codes[: table.num_rows], codes[table.num_rows :])
    by_user = S.split_codes_arrow(table, seed=0, key_columns=["user_id"])
    users = table.column("user_id").to_numpy()
    sides = pd.Series(by_user).groupby(users).nunique()
    assert (sides == 1).all() and len(set(by_user)) == 3


def test_pandas_frames_split_like_their_arrow_table() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3, 4] * 50, "b": ["x", "y", None, "z"] * 50, "c": np.linspace(0, 1, 200)})
    expected = S.split_codes_arrow(pa.Table.from_pandas(frame, preserve_index=False), seed=4)
    assert np.array_equal(S.split_codes(frame, seed=4), expected)
    train, valid, test = S.three_way(expected)
    assert sorted(np.concatenate([train, valid, test]).tolist()) == list(range(200))


@pytest.mark.parametrize(("validation", "test"), [(-0.1, 0.2), (0.1, 1.0), (0.5, 0.5), (True, 0.2), ("0.1", 0.2)])
def test_bad_fractions_are_refused(validation: object, test: object) -> None:
    with pytest.raises(ExporterError, match="share|no training rows"):
        S.split_codes_arrow(_table(50), seed=0, validation=validation, test=test)  # type: ignore[arg-type]


def test_bad_split_columns_name_the_problem() -> None:
    with pytest.raises(ExporterError, match="split column\\(s\\) nope not in the data"):
        S.split_codes_arrow(_table(50), seed=0, key_columns=["nope"])
    with pytest.raises(ExporterError, match="cannot split by tags"):
        S.split_codes_arrow(_table(50), seed=0, key_columns=["tags"])


@pytest.mark.slow
def test_spark_computes_the_same_codes(tmp_path: Path) -> None:
    """The SQL of spark_split_expression, run by a real local Spark on the same Parquet file."""
    n = 2000
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "i64": pa.array([None if k % 17 == 0 else int(v) for k, v in enumerate(rng.integers(-(2**62), 2**62, n))]),
            "i32": pa.array(rng.integers(-(2**31), 2**31 - 1, n).astype(np.int32)),
            "f64": pa.array(
                [
                    None if k % 13 == 0 else (float("nan") if k % 29 == 0 else -0.0 if k % 31 == 0 else float(v))
                    for k, v in enumerate(rng.normal(size=n))
                ]
            ),
            "f32": pa.array(rng.normal(size=n).astype(np.float32)),
            "b": pa.array([None if k % 7 == 0 else bool(k % 3) for k in range(n)]),
            "s": pa.array([None if k % 11 == 0 else "x" * (k % 70) + "é" + str(k) for k in range(n)]),
            "d": pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=k) for k in range(n)]),
            "ts": pa.array(
                [dt.datetime(2020, 1, 1) + dt.timedelta(seconds=37 * k) for k in range(n)], pa.timestamp("us")
            ),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    from pyspark.sql import SparkSession  # noqa: PLC0415

    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        expr = S.spark_split_expression(S.key_columns(table.schema), seed=7, validation=0.1, test=0.2)
        got = np.array([r[0] for r in spark.read.parquet(str(path)).selectExpr(f"{expr} AS code").collect()])
    finally:
        spark.stop()
    assert np.array_equal(got, S.split_codes_arrow(table, seed=7))
