"""What runs on Spark executors: the ``mapInArrow`` functions and the once-per-worker artifact cache.

A :class:`BatchTask` is pickled by the driver (by reference to this module, which reaches the executors in
the zip that the driver ships with ``addPyFile``) and called by Spark once per partition with an iterator of
Arrow record batches. It loads the artifact the first time a Python worker needs it, through
:meth:`exporter.runtime.handler.ModelHandler.load`, so the sha256 of the model file is verified on the executor
before any session exists, and keeps it for every later partition that worker runs (Spark reuses Python
workers). Each batch goes through :func:`exporter.scoring.core.score_batch`, the same code as the local
engine: Python never loops over rows, except to word the reasons of refused rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["BatchTask", "FILE_COLUMN", "ROW_COLUMN", "local_path"]

#: Helper columns the driver adds to the input: the source file (``_metadata.file_path``) and, for
#: Parquet, the row within it (``_metadata.row_index``).
FILE_COLUMN = "__exporter_source_file"
ROW_COLUMN = "__exporter_source_row"

_handlers: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def load_once(artifact_name: str, sha256: str, threads: int, loads: Any = None) -> Any:
    """The model of this job in this Python worker: loaded (sha256 verified) on first use, then reused.

    ``loads`` (a Spark accumulator) counts actual loads, so the driver can report them.
    """
    key = (artifact_name, sha256)
    with _lock:
        handler = _handlers.get(key)
        if handler is None:
            from pyspark import SparkFiles

            from exporter.runtime.handler import ArtifactError, ModelHandler

            handler = ModelHandler.load(Path(SparkFiles.get(artifact_name)), threads=threads)
            if handler.metadata["sha256"] != sha256:
                raise ArtifactError(
                    f"the artifact shipped to this executor records sha256 {handler.metadata['sha256']}, "
                    f"but the driver checked {sha256}; refusing to score with a different model"
                )
            _handlers[key] = handler
            if loads is not None:
                loads.add(1)
        return handler


def local_path(uri: str) -> str:
    """``file:/tmp/a%20b.parquet`` -> ``/tmp/a b.parquet`` (reject files name local files as the local engine does)."""
    if uri.startswith("file:"):
        return unquote(urlparse(uri).path)
    return uri


@dataclass
class BatchTask:
    """The ``mapInArrow`` function of one pass: ``score=True`` yields scored rows (and counts refused ones),
    ``False`` yields the refused rows with their reasons."""

    artifact_name: str
    sha256: str
    metadata: dict[str, Any]
    keep: list[str]
    score: bool
    csv: bool
    output_schema: pa.Schema
    rejects_schema: pa.Schema
    threads: int = 1
    rows_accumulator: Any = None
    loads_accumulator: Any = None
    refused_accumulator: Any = None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from exporter.scoring.core import score_batch
        from exporter.scoring.encode import plan_from_metadata, vocabulary_files

        run = None
        directory = None
        if self.score:
            handler = load_once(self.artifact_name, self.sha256, self.threads, self.loads_accumulator)
            run, directory = handler.run, handler.directory
        elif vocabulary_files(self.metadata):
            from pyspark import SparkFiles

            directory = Path(SparkFiles.get(self.artifact_name))
        plan = plan_from_metadata(self.metadata, directory)
        csv_rows: dict[str, int] = {}
        paths: dict[str, str] = {}
        for batch in batches:
            if batch.num_rows == 0:
                continue
            files = batch.column(FILE_COLUMN)
            rows = self._rows(batch, files, csv_rows)
            scored, rejects = score_batch(
                batch,
                plan,
                self.metadata,
                run,
                self.keep,
                self.output_schema if self.score else None,
                self.rejects_schema,
                files,
                rows,
            )
            if self.rows_accumulator is not None:
                self.rows_accumulator.add(batch.num_rows)
            if self.score:
                if rejects is not None and self.refused_accumulator is not None:
                    self.refused_accumulator.add(rejects.num_rows)
                if scored is not None:
                    yield scored
            elif rejects is not None:
                names = [paths.setdefault(p, local_path(p)) for p in rejects.column(0).to_pylist()]
                yield rejects.set_column(0, rejects.schema.field(0), pa.array(names, pa.string()))

    def _rows(self, batch: pa.RecordBatch, files: pa.Array, counters: dict[str, int]) -> np.ndarray:
        """Row number within its file of every row of the batch."""
        if not self.csv:
            return batch.column(ROW_COLUMN).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        # CSV has no row index in Spark: files are read whole by one task (multiLine, not split) and in
        # order, so a running count per file within the partition is the row number.
        rows = np.empty(batch.num_rows, dtype=np.int64)
        encoded = pc.dictionary_encode(files)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        # runs of the same file, in order
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], len(codes)]
        names = encoded.dictionary.to_pylist()
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            name = names[codes[s]]
            first = counters.get(name, 0)
            rows[s:e] = np.arange(first, first + (e - s))
            counters[name] = first + (e - s)
        return rows
