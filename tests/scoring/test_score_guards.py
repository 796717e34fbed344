"""``score`` refuses what would lose data or cannot work: an output on top of its input, an ``--overwrite`` of a
directory that is not a score output, out-of-range options, odd inputs; and reads what the handler reads
(boolean columns, IDs exact up to 2^53)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from exporter.errors import ExporterError
from exporter.scoring import ScoreOptions, score
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
