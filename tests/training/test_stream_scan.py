"""Pass 1 of streamed training: the sketch, the counters, and a plan equal to the in-memory one on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter import features as F
from exporter.errors import ExporterError
from exporter.training import data as D
from exporter.training import inputs as I
from exporter.training import split as S
from exporter.training import stream_scan as SS
from exporter.training.sketch import NumericSummary, QuantileSketch, ValueCounter
from exporter.training.sources import csv_types, resolve_inputs


def test_sketch_is_exact_below_its_capacity_and_close_beyond() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(size=5000)
    sketch = QuantileSketch(seed=1, capacity=8192)
    for part in np.array_split(values, 7):
        sketch.add(part)
    assert sketch.exact and sketch.quantile(0.5) == pytest.approx(float(np.median(values)))
    many = rng.normal(size=200_000)
    small = QuantileSketch(seed=1, capacity=4096)
    for part in np.array_split(many, 50):
        small.add(part)
    rank = float(np.mean(many < small.quantile(0.5)))
    assert not small.exact and abs(rank - 0.5) < 3.3 * 0.5 / np.sqrt(4096)


def test_sketch_is_seeded() -> None:
    values = np.random.default_rng(0).normal(size=50_000)
    a, b = QuantileSketch(seed=5, capacity=1000), QuantileSketch(seed=5, capacity=1000)
    for part in np.array_split(values, 9):
        a.add(part)
        b.add(part)
    assert np.array_equal(a.sample(), b.sample())


def test_numeric_summary_matches_numpy_over_batches() -> None:
    values = np.random.default_rng(1).normal(50.0, 7.0, size=10_000)
    values[::13] = np.nan
    summary = NumericSummary(seed=0)
    for part in np.array_split(values, 11):
        summary.add(part)
    present = values[~np.isnan(values)]
    stats = summary.stats()
    assert stats["mean"] == pytest.approx(present.mean()) and stats["std"] == pytest.approx(present.std())
    assert (stats["min"], stats["max"]) == (present.min(), present.max())
    assert stats["median"] == pytest.approx(np.median(present))
    assert stats["missing_rate"] == pytest.approx(np.isnan(values).mean())


def test_value_counter_merges_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ValueCounter, "MERGE_AT", 5)
    ids = np.random.default_rng(2).integers(0, 40, size=3000).astype(np.float64)
    ids[::17] = np.nan
    counter = ValueCounter()
    for part in np.array_split(ids, 13):
        counter.add_numbers(part)
    expected = pd.Series(ids[~np.isnan(ids)].astype(np.int64)).value_counts().to_dict()
    assert counter.counts() == expected and counter.present == sum(expected.values())
    words = ValueCounter()
    words.add_strings(["a", None, "b", "a"])
    words.add_strings(["b", "b"])
    assert words.counts() == {"a": 2, "b": 3} and words.rows == 6 and words.present == 5


def _write_parts(frame: pd.DataFrame, directory: Path, parts: int) -> None:
    directory.mkdir()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    step = -(-len(frame) // parts)
    for k in range(parts):
        pq.write_table(table.slice(k * step, step), directory / f"part-{k}.parquet", row_group_size=700)


def _reader(directory: Path, columns: list[str], seed: int = 0) -> SS.StreamReader:
    files = resolve_inputs(str(directory), option="--data")
    return SS.StreamReader(files, columns, seed, batch_rows=500)


def test_streamed_plan_equals_the_in_memory_plan_on_the_same_train_rows(tmp_path: Path) -> None:
    frame = D.synthetic_dataset(6000, seed=4)
    _write_parts(frame, tmp_path / "d", 3)
    columns = list(D.DEFAULT_FEATURES)
    read = [*columns, D.LABEL]
    specs = I.default_specs()
    origins = dict.fromkeys(columns, "default")
    result = SS.scan(
        _reader(tmp_path / "d", read),
        specs,
        origins,
        {"label": "label"},
        {"label": "binary"},
        limit=1e20,
        framework="t",
    )
    table = pa.Table.from_pandas(frame[read], preserve_index=False)
    codes = S.split_codes_arrow(table, seed=0)
    train = np.flatnonzero(codes == S.TRAIN)
    assert result.rows_read == 6000
    assert result.split_rows == {n: int(np.sum(codes == c)) for c, n in enumerate(SS.SPLIT_NAMES)}
    expected = F.fit(frame, specs, train)
    for got, want in zip(result.plan.features, expected.features, strict=True):
        assert (got.name, got.dtype, got.keys, got.vocab) == (want.name, want.dtype, want.keys, want.vocab)
        if want.fill is not None:
            assert got.fill == pytest.approx(want.fill)  # exact median: fewer values than the sketch holds
            assert got.stats["std"] == pytest.approx(want.stats["std"])
        else:
            assert got.stats == want.stats
    assert sum(len(s) for s in result.samples.values()) == 6000
    assert result.median["exact"] is True


def test_samples_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SS, "TEST_CAP", 100)
    monkeypatch.setattr(SS, "TRAIN_SAMPLE_CAP", 150)
    frame = D.synthetic_dataset(5000, seed=1)
    _write_parts(frame, tmp_path / "d", 2)
    read = [*D.DEFAULT_FEATURES, D.LABEL]
    result = SS.scan(_reader(tmp_path / "d", read), I.default_specs(), {}, {}, {}, limit=1e20, framework="t")
    assert len(result.samples["test"]) == 100 and len(result.samples["train"]) == 150
    assert result.split_rows["test"] > 100


def test_a_missing_column_names_the_file(tmp_path: Path) -> None:
    frame = D.synthetic_dataset(400, seed=2)
    (tmp_path / "d").mkdir()
    frame.to_parquet(tmp_path / "d" / "a.parquet", index=False)
    frame.drop(columns=["item_cvr"]).to_parquet(tmp_path / "d" / "b.parquet", index=False)
    files = resolve_inputs(str(tmp_path / "d"), option="--data")
    with pytest.raises(ExporterError, match=r"b\.parquet has no column\(s\) item_cvr"):
        SS.check_files(files, ["item_ctr", "item_cvr"], where="data d")


def test_a_bad_value_names_the_file_and_its_row(tmp_path: Path) -> None:
    frame = D.synthetic_dataset(1200, seed=3)
    frame["item_price"] = frame["item_price"].astype(object)
    frame.loc[1100, "item_price"] = "cheap"
    (tmp_path / "d").mkdir()
    frame.iloc[:600].to_csv(tmp_path / "d" / "a.csv", index=False)
    frame.iloc[600:].to_csv(tmp_path / "d" / "b.csv", index=False)
    read = ["item_price", D.LABEL]
    files = resolve_inputs(str(tmp_path / "d"), option="--data")
    reader = SS.StreamReader(files, read, 0, batch_rows=128, types={"item_price": pa.string(), "label": pa.float64()})
    with pytest.raises(ExporterError, match=r"b\.csv: column 'item_price' row 501: value 'cheap' is not a number"):
        SS.scan(reader, [F.FeatureSpec("item_price")], {}, {}, {}, limit=1e20, framework="t")


def test_csv_files_stream_like_the_same_rows_in_parquet(tmp_path: Path) -> None:
    frame = D.synthetic_dataset(3000, seed=6)
    _write_parts(frame, tmp_path / "pq", 2)
    (tmp_path / "csv").mkdir()
    frame.iloc[:1700].to_csv(tmp_path / "csv" / "a.csv", index=False)
    frame.iloc[1700:].to_csv(tmp_path / "csv" / "b.csv", index=False)
    read = [*D.DEFAULT_FEATURES, D.LABEL]
    results = []
    for name in ("pq", "csv"):
        files = resolve_inputs(str(tmp_path / name), option="--data")
        reader = SS.StreamReader(files, read, 0, batch_rows=400, types=csv_types(files, read))
        results.append(
            SS.scan(reader, I.default_specs(), {}, {"label": "label"}, {"label": "binary"}, limit=1e20, framework="t")
        )
    parquet, csv = results
    assert parquet.split_rows == csv.split_rows
    for a, b in zip(parquet.plan.features, csv.plan.features, strict=True):
        assert (a.dtype, a.keys, a.vocab) == (b.dtype, b.keys, b.vocab)
        assert a.fill == pytest.approx(b.fill) if a.fill is not None else b.fill is None


def _train_rows_by_file(tmp_path: Path, files: int, groups: int, rows: int) -> tuple[SS.StreamReader, F.FeaturePlan]:
    """``files`` Parquet files of ``groups`` row groups each; ``item_price`` = file number, ``user_age`` = row."""
    directory = tmp_path / "d"
    directory.mkdir()
    for k in range(files):
        frame = D.synthetic_dataset(rows, seed=k)
        frame["item_price"] = float(k)
        frame["user_age"] = np.arange(rows, dtype=np.float64) + k * rows
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False),
            directory / f"part-{k}.parquet",
            row_group_size=rows // groups,
        )
    read = ["item_price", "user_age", D.LABEL]
    specs = [F.FeatureSpec("item_price"), F.FeatureSpec("user_age")]
    reader = SS.StreamReader(resolve_inputs(str(directory), option="--data"), read, 0, batch_rows=800)
    result = SS.scan(reader, specs, {}, {"label": "label"}, {"label": "binary"}, limit=1e20, framework="t")
    return reader, result.plan


def test_training_chunks_mix_many_files_and_read_each_train_row_once(tmp_path: Path) -> None:
    reader, plan = _train_rows_by_file(tmp_path, files=6, groups=2, rows=2000)
    chunks = list(reader.train_chunks(plan, {"label": "label"}, {"label": "binary"}, 1))
    # a chunk of 800 rows gathers slices of 100 rows from up to 12 row groups read at once: all six files
    assert len(np.unique(chunks[0][0][:, 0])) == 6
    rows = np.concatenate([x[:, 1] for x, _ in chunks])
    assert len(rows) == len(np.unique(rows)) == _train_rows(reader)
    again = list(reader.train_chunks(plan, {"label": "label"}, {"label": "binary"}, 1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(chunks, again, strict=True))
    other = np.concatenate([x[:, 1] for x, _ in reader.train_chunks(plan, {"label": "label"}, {"label": "binary"}, 2)])
    assert not np.array_equal(rows, other) and np.array_equal(np.sort(rows), np.sort(other))


def _train_rows(reader: SS.StreamReader) -> int:
    return sum(int(np.sum(b.codes == S.TRAIN)) for b in reader.batches())


def test_fewer_units_are_mixed_when_they_would_hold_too_much(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader, _ = _train_rows_by_file(tmp_path, files=3, groups=4, rows=2000)
    units = reader.units()
    assert reader.mix_width(units) == 12
    size = SS._unit_bytes(*units[0], {})
    monkeypatch.setattr(SS, "MIX_BYTES", int(size * 2.5))
    assert reader.mix_width(units) == 2
    monkeypatch.setattr(SS, "MIX_BYTES", 1)
    assert reader.mix_width(units) == 1


def test_small_row_groups_are_read_together_and_rows_keep_their_numbers(tmp_path: Path) -> None:
    """A writer that flushed every few rows leaves a row group per few rows: consecutive ones form one reading unit
    of up to ``batch_rows`` rows (one-row groups read 3,000 rows in two minutes, one unit at a time)."""
    directory = tmp_path / "d"
    directory.mkdir()
    frame = D.synthetic_dataset(2100, seed=3)
    frame["user_age"] = np.arange(2100, dtype=np.float64)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.slice(0, 1500), directory / "a.parquet", row_group_size=300)
    pq.write_table(table.slice(1500), directory / "b.parquet", row_group_size=1)
    reader = SS.StreamReader(resolve_inputs(str(directory), option="--data"), ["user_age", D.LABEL], 0, batch_rows=800)
    units = reader.units()
    assert [(Path(f.path).name, groups) for f, groups in units] == [
        ("a.parquet", (0, 1)), ("a.parquet", (2, 3)), ("a.parquet", (4,)), ("b.parquet", tuple(range(600))),
    ]  # fmt: skip
    for unit in units:
        for b in reader.batches([unit]):  # each batch's first row is its row number in its file
            offset = 0 if Path(b.path).name == "a.parquet" else 1500
            assert b.frame["user_age"].iloc[0] == b.first_row + offset
    ages = np.concatenate([b.frame["user_age"].to_numpy() for b in reader.batches()])
    np.testing.assert_array_equal(np.sort(ages), np.arange(2100))
