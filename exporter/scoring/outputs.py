"""What ``score`` writes: prediction columns named by the contract, Parquet parts, rejects, and atomicity.

Layout of ``--output DIR`` (Spark's conventions, so Spark, pyarrow.dataset and pandas read it as a table;
names starting with ``_`` are not data to them)::

    DIR/part-00000.parquet ...   --keep columns, then the prediction columns
    DIR/_rejects/part-*.parquet  source_file, source_row, reason, --keep columns   (only when rows were refused)
    DIR/_index/                  the item index (``score two_tower_item --index``)
    DIR/_scoring.json            what ran: model, version, sha256, engine, inputs, counts, timings
    DIR/_SUCCESS                 written last, as Spark does

Prediction columns (contract section 1): ``prediction`` (FP64) for xgb/deepfm; one FP64 column per MMoE
task, named after it (metadata ``output_columns``); ``embedding`` (list of FP64) for the towers.

The whole directory is built in a hidden sibling (``.DIR.scoring-<host>-<pid>-<random>``) and renamed into
place when complete: a failed job removes it, a killed one leaves only that hidden sibling (removed by the
next run on the same output), never a half ``DIR``. An existing ``DIR`` is refused unless ``--overwrite``,
and ``--overwrite`` replaces only a previous score output (one holding both ``_SUCCESS`` and a ``_scoring.json``
summary of this tool). An output that is, contains or is inside an input path (symlinks resolved) is refused either
way: see :func:`check_output_apart`.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import socket
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from exporter.errors import ExporterError

__all__ = [
    "prediction_fields",
    "prediction_arrays",
    "output_schema",
    "rejects_schema",
    "REJECT_COLUMNS",
    "PartWriter",
    "StagedOutput",
    "check_keep_names",
    "check_output_apart",
    "is_score_output",
    "is_score_summary",
    "uri_nesting",
]

REJECT_COLUMNS = ("source_file", "source_row", "reason")


def reject_place(source_file: str, source_row: int) -> str:
    """A refused row as a message names it: rows counted from 1 as every training message counts them (the file's
    first data row is row 1), where ``source_row`` counts from 0 as Spark does."""
    return f"{source_file} row {int(source_row) + 1}"


PREDICTION = "prediction"
EMBEDDING = "embedding"
REJECTS_DIR = "_rejects"
INDEX_DIR = "_index"
SUMMARY_FILE = "_scoring.json"
SUCCESS_FILE = "_SUCCESS"
STAGING_MARK = ".scoring-"


def prediction_fields(metadata: Mapping[str, Any]) -> list[pa.Field]:
    """The prediction columns of a model's output table, per the contract."""
    fmt = metadata["prediction_format"]
    if fmt == "scalar":
        return [pa.field(PREDICTION, pa.float64())]
    if fmt == "named_columns":
        return [pa.field(str(c), pa.float64()) for c in metadata["output_columns"]]
    return [pa.field(EMBEDDING, pa.list_(pa.float64()))]


def prediction_arrays(out: np.ndarray, metadata: Mapping[str, Any]) -> list[pa.Array]:
    """Model output ``[rows]`` / ``[rows, k]`` -> Arrow columns matching :func:`prediction_fields`."""
    fmt = metadata["prediction_format"]
    if fmt == "scalar":
        return [pa.array(np.ascontiguousarray(out.reshape(-1)), pa.float64())]
    if fmt == "named_columns":
        return [pa.array(np.ascontiguousarray(out[:, j]), pa.float64()) for j in range(out.shape[1])]
    vectors = out.reshape(out.shape[0], -1)
    dim = vectors.shape[1]
    offsets = pa.array(np.arange(0, (vectors.shape[0] + 1) * dim, dim, dtype=np.int32), pa.int32())
    return [pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(vectors).reshape(-1), pa.float64()))]


def check_keep_names(keep: Sequence[str], metadata: Mapping[str, Any]) -> None:
    """``--keep`` names must not collide with prediction or reject columns, nor repeat."""
    taken = {f.name for f in prediction_fields(metadata)} | set(REJECT_COLUMNS)
    clash = [c for c in keep if c in taken]
    if clash:
        raise ExporterError(
            f"--keep column {json.dumps(clash[0])} has the name of an output column of the scorer "
            f"({', '.join(sorted(taken))}); rename it in the input"
        )
    if len(set(keep)) != len(keep):
        raise ExporterError(f"--keep names a column twice: {', '.join(keep)}")


def output_schema(keep: pa.Schema, metadata: Mapping[str, Any]) -> pa.Schema:
    return pa.schema(list(keep) + prediction_fields(metadata))


def rejects_schema(keep: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field("source_file", pa.string()), pa.field("source_row", pa.int64()), pa.field("reason", pa.string())]
        + list(keep)
    )


class PartWriter:
    """Parquet part files ``part-00000.parquet``... in one directory, a new file every ``rows_per_file`` rows."""

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        rows_per_file: int,
        compression: str = "snappy",
        dictionary_columns: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.schema = schema
        self.rows_per_file = max(1, int(rows_per_file))
        self.compression = compression
        # Dictionary encoding only where values repeat (IDs, file names, reasons): on predictions, which
        # never repeat, trying it first costs twice the writing time for nothing (measured).
        self.dictionary_columns = [c for c in dictionary_columns if c in schema.names]
        self.files: list[Path] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        offset = 0
        n = table.num_rows
        while offset < n:
            writer = self._writer
            if writer is None or self._in_file >= self.rows_per_file:
                writer = self._open()
            take = min(n - offset, self.rows_per_file - self._in_file)
            part = table.slice(offset, take)
            if isinstance(part, pa.RecordBatch):
                writer.write_batch(part)
            else:
                writer.write_table(part)
            self._in_file += take
            self.rows += take
            offset += take

    def ensure_file(self) -> None:
        """Write at least one (possibly empty) part file, so that an output is always a readable table."""
        if not self.files:
            self._open()

    def _open(self) -> pq.ParquetWriter:
        """Start the next part file; its writer."""
        self._close_current()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"part-{len(self.files):05d}.parquet"
        writer = pq.ParquetWriter(
            path, self.schema, compression=self.compression, use_dictionary=self.dictionary_columns or False
        )
        self._writer = writer
        self.files.append(path)
        self._in_file = 0
        return writer

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._close_current()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: keys every ``_scoring.json`` this tool writes holds (how ``--overwrite`` recognises its own output)
SUMMARY_KEYS = ("model", "version", "sha256", "engine", "rows_read", "rows_scored", "rows_rejected")


def is_score_summary(data: Any) -> bool:
    """Whether decoded ``_scoring.json`` content is a summary this tool wrote."""
    return isinstance(data, dict) and all(key in data for key in SUMMARY_KEYS)


def is_score_output(directory: Path) -> bool:
    """Whether ``directory`` carries this tool's completion marker: ``_SUCCESS`` and its ``_scoring.json``."""
    summary = directory / SUMMARY_FILE
    if not ((directory / SUCCESS_FILE).is_file() and summary.is_file()):
        return False
    try:
        return is_score_summary(json.loads(summary.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _not_ours(output: str) -> ExporterError:
    return ExporterError(
        f"--output {output!r} exists and is not a score output (no {SUCCESS_FILE} and {SUMMARY_FILE} of a finished "
        "score run in it); --overwrite replaces only a previous score output: choose a new directory"
    )


def _nesting(out: PurePath, root: PurePath) -> str | None:
    """How ``out`` relates to ``root`` (both absolute and normalised): "is", "contains", "is inside" or None."""
    if out == root:
        return "is"
    if root.is_relative_to(out):
        return "contains"
    if out.is_relative_to(root):
        return "is inside"
    return None


def check_output_apart(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an ``--output`` that is, contains or is inside one of the ``inputs`` (files or directories).

    Symlinks are resolved on both sides, so a link to the input is the input. Scoring into such a place would
    replace (``--overwrite``) or mix with the data being read.
    """
    out = Path(output).resolve()
    for item in inputs:
        root = Path(item).resolve()
        how = _nesting(out, root)
        if how is not None:
            raise ExporterError(
                f"--output {str(output)!r} {how} the input path {str(root)!r}"
                + (f" (resolved: {str(out)!r})" if str(out) != str(Path(output).absolute()) else "")
                + "; the output must be a directory outside every input"
            )


def uri_nesting(output: str, input_uri: str) -> str | None:
    """:func:`check_output_apart` for URIs (``hdfs://nn/a``): how ``output`` relates to the input, or None.

    Same scheme and authority, then path components compared; a glob input counts from its directory part
    before the first wildcard.
    """

    def split(uri: str) -> tuple[str, str, PurePosixPath]:
        scheme, _, rest = uri.partition("://")
        authority, _, path = rest.partition("/")
        cut = min((i for i, ch in enumerate(path) if ch in "*?[{"), default=-1)
        if cut >= 0:
            path = path[:cut].rsplit("/", 1)[0] if "/" in path[:cut] else ""
        return scheme.lower(), authority.lower(), PurePosixPath(posixpath.normpath("/" + path))

    out, inp = split(output), split(input_uri)
    if out[:2] != inp[:2]:
        return None
    return _nesting(out[2], inp[2])


class StagedOutput:
    """The output directory, built in a hidden sibling and renamed into place by :meth:`commit`.

    Use as a context manager; leaving it with an exception (or without commit) removes the staging directory.
    """

    def __init__(self, output: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.output = Path(output).absolute()
        self.overwrite = overwrite
        self.staging: Path | None = None

    def check(self) -> None:
        """Refuse an existing output (unless overwrite) and an unusable parent, before any work."""
        out = self.output
        if out.exists() or out.is_symlink():
            if not self.overwrite:
                raise ExporterError(
                    f"--output {str(out)!r} already exists; choose a new directory or pass --overwrite to replace it "
                    "(it is replaced only once the new output is complete)"
                )
            if not out.is_dir():
                raise ExporterError(f"--output {str(out)!r} exists and is not a directory; refusing to replace it")
            if not is_score_output(out):
                raise _not_ours(str(out))
        parent = out.parent
        if parent.exists() and not parent.is_dir():
            raise ExporterError(f"--output {str(out)!r}: {str(parent)!r} is not a directory")

    def __enter__(self) -> StagedOutput:
        self.check()
        parent = self.output.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExporterError(f"--output {str(self.output)!r}: cannot create {str(parent)!r} ({exc})") from None
        self._remove_stale()
        tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staging = parent / f".{self.output.name}{STAGING_MARK}{tag}"
        try:
            self.staging.mkdir()
        except OSError as exc:
            raise ExporterError(f"--output {str(self.output)!r}: cannot write in {str(parent)!r} ({exc})") from None
        running = self._others_running()
        if running:  # checked after our own staging exists: of two jobs started together, never both go on
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
            raise ExporterError(
                f"--output {str(self.output)!r}: another score job (pid {running[0]}) is writing it now; wait for "
                "it to finish or choose another --output (one of two jobs would silently replace the other's output)"
            )
        return self

    def _others_running(self) -> list[int]:
        """The pids of live jobs on this host staging the same output, besides this one."""
        return [pid for path, pid in self._siblings() if path != self.staging and _pid_alive(pid)]

    def _remove_stale(self) -> None:
        """Staging directories of killed runs on this host for the same output (their pid is gone)."""
        for path, pid in self._siblings():
            if not _pid_alive(pid):
                print(f"note: removing {path.name}, the partial output of an interrupted run", file=sys.stderr)
                shutil.rmtree(path, ignore_errors=True)

    def _siblings(self) -> list[tuple[Path, int]]:
        """The staging directories of this output made on this host, with their process ids (a name whose pid is
        not ASCII digits is not ours and is left out)."""
        prefix = f".{self.output.name}{STAGING_MARK}{socket.gethostname()}-"
        found = []
        for path in self.output.parent.glob(f".{self.output.name}{STAGING_MARK}*"):
            pid = path.name[len(prefix) :].split("-", 1)[0] if path.name.startswith(prefix) else ""
            if pid.isascii() and pid.isdigit():
                found.append((path, int(pid)))
        return found

    @property
    def path(self) -> Path:
        assert self.staging is not None, "use StagedOutput as a context manager"
        return self.staging

    @property
    def uri(self) -> str:
        """The staging directory as a ``file://`` URI for Spark (not percent-encoded: Hadoop's Path escapes it)."""
        return "file://" + str(self.path)

    def write_bytes(self, name: str, data: bytes) -> None:
        (self.path / name).write_bytes(data)

    def commit(self) -> Path:
        """Move the complete output into place (replacing an old one only now, with ``--overwrite``)."""
        staging = self.path
        old = None
        if self.output.exists():
            if not self.overwrite:  # appeared while we were working
                raise ExporterError(f"--output {str(self.output)!r} appeared while scoring; not replacing it")
            if not is_score_output(self.output):  # replaced by something else while we were working
                raise _not_ours(str(self.output))
            old = self.output.with_name(f".{self.output.name}.replaced-{uuid.uuid4().hex[:8]}")
            os.rename(self.output, old)
        try:
            os.rename(staging, self.output)
        except OSError as exc:
            if old is not None:
                os.rename(old, self.output)
            raise ExporterError(f"cannot move the finished output into place at {str(self.output)!r}: {exc}") from None
        self.staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.output

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
