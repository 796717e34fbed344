"""``score`` refuses what would lose data or cannot work: an output on top of its input, an ``--overwrite`` of a
directory that is not a score output, out-of-range options, odd inputs; and reads what the handler reads
(boolean columns, IDs exact up to 2^53)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.errors import ExporterError
from exporter.scoring import ScoreOptions, score
from exporter.scoring.encode import ColumnRule, EncodingPlan, encode_batch
from tests.conftest import run_cli
from tests.scoring.test_score import make_rows


def options(artifacts: Path, inp: Path | str, out: Path | str, **kw) -> ScoreOptions:
    kw.setdefault("keep", ["row_id"])
    kw.setdefault("progress", False)
    return ScoreOptions(model="deepfm", input=str(inp), output=str(out), artifacts=str(artifacts), **kw)


@pytest.fixture()
def events(tmp_path: Path) -> Path:
    """A directory of two Parquet files (the input the tests must never lose)."""
    directory = tmp_path / "ev"
    directory.mkdir()
    table = make_rows(200, 5)
    pq.write_table(table.slice(0, 100), directory / "a.parquet")
    pq.write_table(table.slice(100), directory / "b.parquet")
    return directory


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- output vs input
def test_output_equal_to_the_input_is_refused_and_the_input_kept(exported_artifacts, events):
    before = snapshot(events)
    proc = run_cli(
        "score", "deepfm", "--artifacts", str(exported_artifacts), "--input", str(events), "--output", str(events),
        "--overwrite", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "is the input path" in proc.stderr
    assert snapshot(events) == before


@pytest.mark.parametrize(
    ("make_output", "make_input", "how"),
    [
        (lambda ev: ev.parent, lambda ev: ev, "contains the input path"),
        (lambda ev: ev / "scores", lambda ev: ev, "is inside the input path"),
        (lambda ev: ev, lambda ev: ev / "*.parquet", "contains the input path"),
        (lambda ev: ev.parent, lambda ev: ev / "a.parquet", "contains the input path"),
        (lambda ev: ev / "a.parquet", lambda ev: ev / "a.parquet", "is the input path"),
    ],
    ids=["parent-of-dir", "inside-dir", "glob", "parent-of-file", "the-file"],
)
def test_output_around_or_inside_the_input_is_refused(exported_artifacts, events, make_output, make_input, how):
    before = snapshot(events.parent)
    for overwrite in (False, True):
        with pytest.raises(ExporterError, match=how):
            score(options(exported_artifacts, make_input(events), make_output(events), overwrite=overwrite))
    assert snapshot(events.parent) == before


def test_output_through_a_symlink_to_the_input_is_refused(exported_artifacts, events, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(events, target_is_directory=True)
    before = snapshot(events)
    with pytest.raises(ExporterError, match="is the input path"):
        score(options(exported_artifacts, events, link, overwrite=True))
    with pytest.raises(ExporterError, match="is inside the input path"):
        score(options(exported_artifacts, link, events / "out"))
    assert snapshot(events) == before and link.is_symlink()


def test_overwrite_replaces_only_a_previous_score_output(exported_artifacts, events, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    (other / "_SUCCESS").write_text("")  # a Spark job's output: _SUCCESS alone is not ours
    with pytest.raises(ExporterError, match="is not a score output"):
        score(options(exported_artifacts, events, other, overwrite=True))
    assert (other / "precious.txt").read_text() == "keep me"
    (other / "_scoring.json").write_text(json.dumps({"note": "not a summary of this tool"}))
    with pytest.raises(ExporterError, match="is not a score output"):
        score(options(exported_artifacts, events, other, overwrite=True))
    assert (other / "precious.txt").read_text() == "keep me"

    out = tmp_path / "out"
    score(options(exported_artifacts, events, out))
    first = (out / "_scoring.json").read_text()
    score(options(exported_artifacts, events, out, overwrite=True))  # a previous score output: replaced
    assert (out / "_SUCCESS").is_file() and (out / "_scoring.json").read_text() != first


class _FakeHadoopFs:
    """The few Hadoop FileSystem calls HadoopStagedOutput.check makes, over a dict of file contents."""

    def __init__(self, files: dict[str, bytes], dirs: set[str]) -> None:
        self.files, self.dirs = files, dirs

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.dirs

    def isFile(self, path: str) -> bool:  # noqa: N802 (Hadoop's name)
        return path in self.files

    def open(self, path: str):
        data = self.files[path]

        class Stream:
            def readNBytes(self, n: int) -> bytes:  # noqa: N802
                return data[:n]

            def close(self) -> None:
                pass

        return Stream()


def test_spark_uri_output_overwrite_replaces_only_a_previous_score_output():
    from exporter.scoring.spark import HadoopStagedOutput

    def staged(fs: _FakeHadoopFs, overwrite: bool) -> HadoopStagedOutput:
        out = HadoopStagedOutput.__new__(HadoopStagedOutput)
        out.output, out.overwrite, out.fs, out._Path, out._target = "hdfs://nn/out", overwrite, fs, str, "hdfs://nn/out"
        return out

    summary = json.dumps({k: 1 for k in ("model", "version", "sha256", "engine")} | {"rows_read": 1}).encode()
    plain = _FakeHadoopFs({"hdfs://nn/out/_SUCCESS": b"", "hdfs://nn/out/data.csv": b"x"}, {"hdfs://nn/out"})
    with pytest.raises(ExporterError, match="already exists"):
        staged(plain, False).check()
    with pytest.raises(ExporterError, match="is not a score output"):
        staged(plain, True).check()
    partial = _FakeHadoopFs(dict(plain.files, **{"hdfs://nn/out/_scoring.json": summary}), plain.dirs)
    with pytest.raises(ExporterError, match="is not a score output"):  # a summary lacking the scorer's counts
        staged(partial, True).check()
    full = json.dumps(json.loads(summary) | {"rows_scored": 1, "rows_rejected": 0}).encode()
    ours = _FakeHadoopFs(dict(plain.files, **{"hdfs://nn/out/_scoring.json": full}), plain.dirs)
    staged(ours, True).check()
    staged(_FakeHadoopFs({}, set()), False).check()


def test_uri_inputs_and_outputs_that_overlap_are_refused(exported_artifacts, events):
    from exporter.scoring.outputs import uri_nesting

    assert uri_nesting("hdfs://nn/data/ev", "hdfs://nn/data/ev/") == "is"
    assert uri_nesting("hdfs://nn/data", "hdfs://nn/data/ev/day=*/part-*.parquet") == "contains"
    assert uri_nesting("hdfs://nn/data/ev/out", "hdfs://NN/data/ev") == "is inside"
    assert uri_nesting("hdfs://nn/data/ev2", "hdfs://nn/data/ev") is None
    assert uri_nesting("hdfs://other/data/ev", "hdfs://nn/data/ev") is None
    before = snapshot(events)
    with pytest.raises(ExporterError, match="is the input"):  # before Spark starts: no JVM needed
        score(options(exported_artifacts, events, f"file://{events}", engine="spark", overwrite=True))
    assert snapshot(events) == before


# ---------------------------------------------------------------------------------------------- boolean columns
@pytest.fixture(scope="module")
def bool_model(tmp_path_factory):
    """deepfm trained on a CSV with a boolean column (pandas writes True/False); the artifacts and the frame."""
    from tests.conftest import export_small

    root = tmp_path_factory.mktemp("bool-model")
    rng = np.random.default_rng(3)
    n = 1500
    promo = rng.random(n) < 0.4
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, 30, n),
            "item_id": rng.integers(1, 50, n),
            "price": rng.uniform(1.0, 40.0, n).round(2),
            "is_promo": promo,
            "clicked": (rng.random(n) < np.where(promo, 0.7, 0.2)).astype(int),
        }
    )
    frame.insert(0, "row_id", np.arange(n, dtype=np.int64))
    train = root / "log.csv"
    frame.drop(columns=["row_id"]).to_csv(train, index=False)
    export_small("deepfm", root / "artifacts", data_path=train, label="clicked")
    return root / "artifacts", frame


def test_a_boolean_column_is_scored_like_the_handler_reads_it(bool_model, tmp_path):
    from exporter.runtime.handler import ModelHandler

    artifacts, frame = bool_model
    handler = ModelHandler.load(artifacts / "deepfm")
    features = handler.metadata["features"]
    assert next(f for f in features if f["name"] == "is_promo")["dtype"] == "bool"
    rows = frame.head(300)
    expected = handler.predict({"data": rows[handler.feature_columns].to_dict("records")})["predictions"]

    words = np.where(rows["is_promo"], "TRUE", "false")
    words[::3] = np.where(rows["is_promo"].to_numpy()[::3], " tRuE", "False ")
    inputs = {
        "bool.parquet": pa.Table.from_pandas(rows, preserve_index=False),
        "words.csv": rows.assign(is_promo=words),
        "codes.csv": rows.assign(is_promo=rows["is_promo"].astype(int)),
    }
    for name, data in inputs.items():
        path = tmp_path / name
        if name.endswith(".parquet"):
            assert pa.types.is_boolean(data.schema.field("is_promo").type)
            pq.write_table(data, path)
        else:
            data.to_csv(path, index=False)
        out = tmp_path / f"out-{name}"
        result = score(options(artifacts, path, out))
        assert (result.rows_scored, result.rows_rejected) == (300, 0), name
        got = pq.read_table(out).to_pandas().astype({"row_id": int}).sort_values("row_id")["prediction"].tolist()
        assert got == expected, name

    bad = rows.head(3).assign(is_promo=["yes", "true", ""])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result = score(options(artifacts, tmp_path / "bad.csv", tmp_path / "out-bad", max_rejects=2))
    reasons = pq.read_table(tmp_path / "out-bad" / "_rejects").column("reason").to_pylist()
    assert result.rows_rejected == 2 and reasons == [
        '"is_promo" is a string ("yes"); expected true, false or an integer code within 2^53',
        '"is_promo" is null (a missing value); expected true, false or an integer code within 2^53',
    ]


def test_the_training_file_itself_scores_without_rejects(bool_model, tmp_path):
    artifacts, _ = bool_model
    result = score(options(artifacts, artifacts.parent / "log.csv", tmp_path / "out", keep=[]))
    assert result.rows_rejected == 0 and result.rows_scored == 1500


# ---------------------------------------------------------------------------------------------- IDs beyond 2^53
def test_ids_beyond_2_53_are_refused_exactly_not_rounded():
    plan = EncodingPlan((ColumnRule("item_id", kind="categorical"),))
    ids = [2**53, 2**53 + 1, -(2**53) - 1, 7]
    for column in (pa.array(ids, pa.int64()), pa.array([str(i) for i in ids]), pa.array(ids, pa.decimal128(20, 0))):
        encoded = encode_batch(pa.record_batch({"item_id": column}), plan)
        assert [r for r, _ in encoded.rejects] == [1, 2], column.type
        assert "(beyond 2^53); expected an integer ID within 2^53" in encoded.rejects[0][1]
        assert encoded.matrix[:, 0].tolist() == [2.0**53, 7.0]
    encoded = encode_batch(pa.record_batch({"item_id": ["9.007199254740993e15", "4503599627370496.5"]}), plan)
    assert [reason.split(";")[0] for _, reason in encoded.rejects] == [
        '"item_id" is "9.007199254740993e15" (beyond 2^53)',
        '"item_id" is "4503599627370496.5" (not an integer)',
    ]


def test_an_id_beyond_2_53_in_a_file_goes_to_the_rejects(exported_artifacts, tmp_path):
    table = make_rows(20, 6)
    ids = table.column("item_id").cast(pa.int64()).to_pylist()
    ids[4] = 2**53 + 1
    table = table.set_column(table.schema.get_field_index("item_id"), "item_id", pa.array(ids, pa.int64()))
    pq.write_table(table, tmp_path / "in.parquet")
    result = score(options(exported_artifacts, tmp_path / "in.parquet", tmp_path / "out", max_rejects=1))
    assert result.rows_rejected == 1
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert [(r["source_row"], r["reason"].split(";")[0]) for r in rejects] == [
        (4, f'"item_id" is {2**53 + 1} (beyond 2^53)')
    ]


# ---------------------------------------------------------------------------------------------- options and inputs
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--batch-rows", str(10**12)], "--batch-rows must be between 1 and 1,048,576"),
        (["--batch-rows", "0"], "--batch-rows must be between 1 and 1,048,576"),
        (["--index-queries", "-1"], "--index-queries must be between 1 and 100,000"),
        (["--index-queries", "0"], "--index-queries must be between 1 and 100,000"),
        (["--index-queries", str(10**9)], "--index-queries must be between 1 and 100,000"),
    ],
)
def test_out_of_range_options_are_exit_2_with_the_bounds(exported_artifacts, events, tmp_path, args, said):
    proc = run_cli(
        "score", "two_tower_item" if "--index-queries" in args else "deepfm", "--artifacts", str(exported_artifacts),
        "--input", str(events), "--output", str(tmp_path / "out"), "--quiet",
        *(["--index", "--keep", "item_id"] if "--index-queries" in args else []), *args,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and said in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_duplicated_csv_column_is_named_as_duplicated(exported_artifacts, tmp_path):
    table = make_rows(10, 7)
    path = tmp_path / "dup.csv"
    frame = table.to_pandas()
    header = ",".join([*frame.columns, "item_price"])
    lines = [",".join(map(str, [*row, row[frame.columns.get_loc("item_price")]])) for row in frame.itertuples(False)]
    path.write_text("\n".join([header, *lines]) + "\n")
    with pytest.raises(ExporterError, match=r'dup\.csv: column "item_price" appears more than once in the header'):
        score(options(exported_artifacts, path, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_input_that_is_not_a_regular_file_says_what_it_is(exported_artifacts, tmp_path):
    with pytest.raises(ExporterError, match="'/dev/zero' is a character device, not a regular file or directory"):
        score(options(exported_artifacts, "/dev/zero", tmp_path / "out"))
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(ExporterError, match=r"is a named pipe \(FIFO\), not a regular file or directory"):
        score(options(exported_artifacts, fifo, tmp_path / "out"))
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "part-0.csv")  # never opened: a directory's data files are its regular files
    with pytest.raises(ExporterError, match="holds no Parquet or CSV file"):
        score(options(exported_artifacts, data, tmp_path / "out"))
    with pytest.raises(ExporterError, match="does not exist"):
        score(options(exported_artifacts, tmp_path / "nothing.parquet", tmp_path / "out"))
