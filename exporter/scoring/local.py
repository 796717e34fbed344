"""``score --engine local``: stream record batches through onnxruntime on every core, in constant memory.

Three stages overlap: a reader thread decodes Parquet/CSV into record batches (Arrow releases the GIL),
``threads`` workers encode and score batches concurrently (numpy, Arrow and onnxruntime all release the
GIL; one intra-op thread per session call, so workers never oversubscribe the cores), and the calling thread
writes the results in input order. Queues between the stages are bounded, so at most a few batches are
in memory whatever the size of the input.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from exporter.errors import ExporterError
from exporter.scoring.core import score_batch
from exporter.scoring.encode import EncodingPlan
from exporter.scoring.inputs import InputFile, SourceBatch, iter_batches, total_rows
from exporter.scoring.outputs import REJECTS_DIR, PartWriter, reject_place
from exporter.scoring.progress import Progress

__all__ = ["LocalCounts", "score_local", "default_threads"]

_END = object()


def default_threads() -> int:
    """Every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class LocalCounts:
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    part_files: list[str] = field(default_factory=list)
    reject_files: list[str] = field(default_factory=list)
    first_reject: str | None = None


def _prefetch(source: Iterator[SourceBatch], depth: int) -> Generator[SourceBatch, None, None]:
    """Run ``source`` in a reader thread, at most ``depth`` batches ahead."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            q.put(exc)

    thread = threading.Thread(target=reader, name="score-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def score_local(
    files: Sequence[InputFile],
    plan: EncodingPlan,
    metadata: Mapping[str, Any],
    run: Callable[[np.ndarray], np.ndarray],
    keep: Sequence[str],
    output_schema: pa.Schema,
    rejects_schema: pa.Schema,
    directory: Path,
    *,
    max_rejects: int,
    batch_rows: int,
    rows_per_file: int,
    threads: int,
    progress: Progress,
) -> LocalCounts:
    """Score every file into ``directory`` (part files, and ``_rejects/`` when rows are refused)."""
    counts = LocalCounts()
    total = total_rows(files)
    total_bytes = sum(f.size for f in files)
    done_bytes = 0  # CSV progress: bytes of finished files plus the current file's position
    writer = PartWriter(directory, output_schema, rows_per_file, dictionary_columns=keep)
    rejects_writer = PartWriter(
        directory / REJECTS_DIR, rejects_schema, rows_per_file, dictionary_columns=["source_file", "reason", *keep]
    )
    columns = list(plan.names) + [c for c in keep if c not in plan.names]

    def work(sb: SourceBatch) -> tuple[SourceBatch, pa.RecordBatch | None, pa.RecordBatch | None]:
        rows = np.arange(sb.first_row, sb.first_row + sb.batch.num_rows, dtype=np.int64)
        scored, rejects = score_batch(
            sb.batch, plan, metadata, run, keep, output_schema, rejects_schema, files[sb.file_index].path, rows
        )
        return sb, scored, rejects

    inflight: deque[Future[Any]] = deque()
    depth = threads + 2
    last_file = 0
    try:
        writer.ensure_file()  # even when every row is refused, the output is a readable (empty) table
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score-worker") as pool:
            source = _prefetch(iter_batches(files, columns, batch_rows), depth)

            def drain_one() -> None:
                nonlocal done_bytes, last_file
                sb, scored, rejects = inflight.popleft().result()
                counts.rows_read += sb.batch.num_rows
                if scored is not None:
                    writer.write(scored)
                    counts.rows_scored += scored.num_rows
                if rejects is not None:
                    if counts.first_reject is None:
                        counts.first_reject = (
                            f"{reject_place(rejects.column(0)[0].as_py(), rejects.column(1)[0].as_py())}: "
                            f"{rejects.column(2)[0].as_py()}"
                        )
                    counts.rows_rejected += rejects.num_rows
                    if counts.rows_rejected > max_rejects:
                        raise ExporterError(
                            f"{counts.rows_rejected:,} rows refused so far, more than --max-rejects {max_rejects}; "
                            f"first: {counts.first_reject}; nothing was written (raise --max-rejects to write the "
                            "good rows and list the bad ones in _rejects/)"
                        )
                    rejects_writer.write(rejects)
                fraction: float | None
                if total:
                    fraction = counts.rows_read / total
                else:
                    if sb.file_index != last_file:
                        done_bytes += sum(f.size for f in files[last_file : sb.file_index])
                        last_file = sb.file_index
                    fraction = (done_bytes + sb.bytes_read) / total_bytes if total_bytes else None
                progress.update(counts.rows_read, fraction, counts.rows_rejected)

            try:
                for sb in source:
                    inflight.append(pool.submit(work, sb))
                    if len(inflight) >= depth:
                        drain_one()
                while inflight:
                    drain_one()
            finally:
                for f in inflight:
                    f.cancel()
                source.close()
    finally:
        writer.close()
        rejects_writer.close()
    progress.update(counts.rows_read, 1.0 if counts.rows_read else None, counts.rows_rejected, force=True)
    progress.close()
    counts.part_files = [p.name for p in writer.files]
    counts.reject_files = [p.name for p in rejects_writer.files]
    return counts
