"""Streamed training data: the files of a run, pass 1 over their record batches, and the readers of pass 2.

Nothing here holds the table: a record batch (:data:`BATCH_ROWS` rows) is read, used and dropped.

* :class:`StreamReader` reads the needed columns of every file, batch by batch, with each row's split code from
  :func:`exporter.training.split.split_codes_arrow`'s rule (computed on the Arrow batch, before pandas).
* :func:`scan` is pass 1: it validates every row (as the in-memory path does, errors name the file and its row),
  fits the feature plan on the **train** rows only (vocabularies with min_count / max_size / hashing through
  the same :mod:`exporter.features.plan` rules, numeric statistics with the median from a
  :class:`~exporter.training.sketch.QuantileSketch`), counts the rows of each split and keeps bounded uniform
  samples of the validation, test and train rows (:data:`VALIDATION_CAP`, :data:`TEST_CAP`,
  :data:`TRAIN_SAMPLE_CAP`).
* :meth:`StreamReader.train_chunks` is what pass 2 reads: the prepared matrix and labels of the train rows, in
  chunks of about :data:`BATCH_ROWS` rows, each mixed from up to :data:`MIX_UNITS` row groups read at once (in a
  seeded order), decoded in a prefetch thread.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from exporter import features as F
from exporter.errors import ExporterError
from exporter.features.plan import HistoryCounts, categorical_from_counts
from exporter.features.schema import read_column
from exporter.training import inputs as I
from exporter.training import split as S
from exporter.training.sketch import MEDIAN_RANK_ERROR, SKETCH_CAPACITY, NumericSummary, ValueCounter
from exporter.training.sources import InputFile, check_unique_columns, file_schema, short_error
from exporter.training.stream_fit import numeric_from_stats, with_histories

#: rows of one record batch read from a file
BATCH_ROWS = 65_536
#: reading units (Parquet row groups, CSV files) pass 2 reads at once, taking a slice of 1/:data:`MIX_SLICES` of a
#: batch (8,192 rows) of each in turn, so that a shuffle block (262,144 rows) holds rows of up to 32 row groups
#: and files rather than of the two or three read last: a log written file by file (a day, a region, a source
#: per file) would otherwise train on one or two of them at a time (two_tower's in-batch negatives would all
#: come from them)
MIX_UNITS = 32
MIX_SLICES = 8
#: what the units read at once may hold (their uncompressed size from the Parquet metadata; a CSV file counts
#: its reader's block): fewer units are mixed when row groups are large
MIX_BYTES = 512 << 20
#: what an open CSV reader is counted as holding (its 1 MiB block, parsed)
CSV_BLOCK_BYTES = 8 << 20
#: rows kept in memory per split: validation (loss, early stopping), test (metrics, parity gate, plots) and a
#: sample of the train rows (scalers and target statistics of the networks, two_tower's catalogue evaluation)
VALIDATION_CAP = 100_000
TEST_CAP = 250_000
TRAIN_SAMPLE_CAP = 250_000
SPLIT_NAMES = ("train", "validation", "test")

T = TypeVar("T")


@contextlib.contextmanager
def located(first: int) -> Iterator[None]:
    """Errors raised inside about one batch: their "row N" (1-based within the batch) becomes the file's row."""
    try:
        yield
    except ExporterError as exc:
        text = re.sub(r"\brow (\d+)", lambda m: f"row {int(m.group(1)) + first}", str(exc), count=1)
        raise type(exc)(text) from None


def check_files(files: Sequence[InputFile], columns: Sequence[str], *, where: str) -> None:
    """Every file has every column this run reads; a missing one names the file (exit 2 before any work)."""
    for f in files:
        names = file_schema(f).names
        check_unique_columns(f.path, names, f.format)
        missing = [c for c in columns if c not in names]
        if missing:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise ExporterError(
                f"{where}: file {f.path} has no column(s) {', '.join(missing)} (it has: {shown}); every file of "
                f"the data must hold the columns {', '.join(columns)}"
            )


def common_key(files: Sequence[InputFile]) -> list[str]:
    """The default split key of a streamed run: every hashable column that every file holds, sorted by name.

    The same for every model trained on the same files (so their held-out rows are the same), and untouched by
    a column only some files have."""
    schemas = [file_schema(f) for f in files]
    first = schemas[0]
    common = [n for n in first.names if all(n in s.names for s in schemas[1:])]
    return sorted(n for n in common if S.hashable(first.field(n).type))


#: a reading unit: a file and its row groups read together (``None``: a CSV file, read whole)
Unit = tuple[InputFile, "tuple[int, ...] | None"]


@dataclass
class StreamBatch:
    """One record batch of a file as pandas, with each row's split code and hash position ``u``."""

    path: str
    first_row: int
    frame: pd.DataFrame
    codes: np.ndarray
    u: np.ndarray


@dataclass
class StreamReader:
    """The files and columns of a streamed run and its split rule."""

    files: list[InputFile]
    columns: list[str]
    seed: int
    validation: float = S.DEFAULT_VALIDATION
    test: float = S.DEFAULT_TEST
    #: split key columns (``None``: every hashable column read, sorted by name)
    key: list[str] | None = None
    batch_rows: int = BATCH_ROWS
    types: dict[str, pa.DataType] | None = None

    def units(self) -> list[Unit]:
        """(file, row groups) reading units: a Parquet row group, or consecutive small ones together up to
        ``batch_rows`` rows (a writer that flushed every few rows leaves thousands of row groups, and each unit
        read costs a file open and a batch: one-row groups read 3,000 rows in two minutes); a CSV file whole."""
        out: list[Unit] = []
        for f in self.files:
            if f.format != "parquet":
                out.append((f, None))
                continue
            meta = pq.ParquetFile(f.path).metadata
            run: list[int] = []
            rows = 0
            for g in range(meta.num_row_groups):
                if run and rows + meta.row_group(g).num_rows > self.batch_rows:
                    out.append((f, tuple(run)))
                    run, rows = [], 0
                run.append(g)
                rows += meta.row_group(g).num_rows
            if run:
                out.append((f, tuple(run)))
        return out

    def batches(self, order: Sequence[Unit] | None = None) -> Iterator[StreamBatch]:
        """Every batch of the reading units (in file order, or ``order``), with split codes."""
        for f, group in order if order is not None else self.units():
            for first, batch in self._read(f, group):
                u = S.row_uniform(batch, seed=self.seed, columns=self.key)
                codes = np.full(len(u), S.TRAIN, dtype=np.int8)
                codes[u < self.test + self.validation] = S.VALIDATION
                codes[u < self.test] = S.TEST
                yield StreamBatch(f.path, first, batch.to_pandas(), codes, u)

    def _read(self, f: InputFile, group: tuple[int, ...] | None) -> Iterator[tuple[int, pa.RecordBatch]]:
        wanted = list(dict.fromkeys(self.columns))
        first = 0
        try:
            if f.format == "parquet":
                pf = pq.ParquetFile(f.path, pre_buffer=False)
                if group is not None:
                    first = sum(pf.metadata.row_group(g).num_rows for g in range(group[0]))
                groups = list(group) if group is not None else None
                for batch in pf.iter_batches(batch_size=self.batch_rows, columns=wanted, row_groups=groups):
                    yield first, batch
                    first += batch.num_rows
                return
            from exporter.training.sources import iter_batches

            for sb in iter_batches([f], wanted, self.batch_rows, csv_types=self.types):
                yield sb.first_row, sb.batch
        except (pa.ArrowException, OSError) as exc:
            raise ExporterError(f"{f.path}: reading failed after {first} rows ({short_error(exc)})") from None

    def train_chunks(
        self,
        plan: F.FeaturePlan,
        labels: Mapping[str, str],
        kinds: Mapping[str, str],
        epoch_seed: int,
        positive: Any = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Pass 2: (prepared matrix, labels) of the train rows in chunks of about :data:`BATCH_ROWS` rows, each
        gathered from the units read at once (:meth:`mixed`, unit order seeded by ``epoch_seed``), decoded in a
        prefetch thread (pyarrow and pandas release the GIL for most of it); ``positive``: ``--positive-class``."""
        units = self.units()
        order = [units[i] for i in np.random.default_rng([self.seed, epoch_seed]).permutation(len(units))]

        def decode() -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
            xs: list[np.ndarray] = []
            ys: list[dict[str, np.ndarray]] = []
            held = 0
            for b in self.mixed(order):
                keep = b.codes == S.TRAIN
                if not keep.any():
                    continue
                frame = b.frame[keep].reset_index(drop=True)
                where = f"data file {b.path}"
                xs.append(plan.prepare(plan.encode(frame, source=where)))
                y = I.read_labels(frame, labels, source=where, kinds=kinds, positive=positive, partial=True)
                ys.append({k: np.array(v, dtype=np.float64) for k, v in y.items()})
                held += len(frame)
                if held >= self.batch_rows:
                    yield _joined(xs, ys)
                    xs, ys, held = [], [], 0
            if held:
                yield _joined(xs, ys)

        return prefetch(decode())

    def mixed(self, order: Sequence[Unit]) -> Iterator[StreamBatch]:
        """Slices (``batch_rows`` / :data:`MIX_SLICES` rows) of the units in ``order``, :meth:`mix_width` units
        open at once and taken in turn (a finished unit is replaced by the next in ``order``); deterministic for
        one order."""
        small = replace(self, batch_rows=max(1, self.batch_rows // MIX_SLICES))
        width = self.mix_width(order)
        pending = iter(order)
        active: list[Iterator[StreamBatch]] = []
        while True:
            while len(active) < width:
                unit = next(pending, None)
                if unit is None:
                    break
                active.append(small.batches([unit]))
            if not active:
                return
            for it in list(active):
                b = next(it, None)
                if b is None:
                    active.remove(it)
                else:
                    yield b

    def mix_width(self, order: Sequence[Unit]) -> int:
        """How many units :meth:`mixed` reads at once: :data:`MIX_UNITS`, fewer when the largest units would
        hold more than :data:`MIX_BYTES` together."""
        footers: dict[str, Any] = {}  # each Parquet file's footer read once, not once per row group
        sizes = sorted((_unit_bytes(f, g, footers) for f, g in order), reverse=True)[:MIX_UNITS]
        width, total = 0, 0
        for size in sizes:
            total += size
            if width and total > MIX_BYTES:
                break
            width += 1
        return max(1, width)


def _unit_bytes(f: InputFile, group: tuple[int, ...] | None, footers: dict[str, Any]) -> int:
    """The uncompressed size of a unit's Parquet row groups (``footers``: the files' metadata read so far); a
    CSV file's reader block (or the file if smaller)."""
    if group is not None:
        if f.path not in footers:
            footers[f.path] = pq.ParquetFile(f.path).metadata
        return sum(int(footers[f.path].row_group(g).total_byte_size) for g in group)
    with contextlib.suppress(OSError):
        return min(os.path.getsize(f.path), CSV_BLOCK_BYTES)
    return CSV_BLOCK_BYTES


def _joined(xs: list[np.ndarray], ys: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = {k: np.concatenate([part[k] for part in ys]) if len(ys) > 1 else ys[0][k] for k in ys[0]}
    return x, y


def prefetch(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """``items`` produced by a background thread, at most ``depth`` ahead; its errors are raised here."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(("error", exc))

    thread = threading.Thread(target=work, name="exporter-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


class Sample:
    """A bounded uniform sample of one split's rows: the ``cap`` rows with the smallest hash position ``u``.

    ``u`` is uniform within a split, so these rows are a uniform sample, and the same whatever the file order."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._frames: list[pd.DataFrame] = []
        self._u: list[np.ndarray] = []
        self._held = 0

    def add(self, frame: pd.DataFrame, u: np.ndarray) -> None:
        if not len(frame):
            return
        self._frames.append(frame)
        self._u.append(u)
        self._held += len(frame)
        if self._held > 2 * self.cap:
            self._shrink()

    def _shrink(self) -> None:
        if not self._frames:
            return
        frame = pd.concat(self._frames, ignore_index=True) if len(self._frames) > 1 else self._frames[0]
        u = np.concatenate(self._u)
        order = np.argsort(u, kind="stable")[: self.cap]
        self._frames, self._u, self._held = [frame.iloc[order].reset_index(drop=True)], [u[order]], len(order)

    def frame(self, columns: Sequence[str]) -> pd.DataFrame:
        self._shrink()
        return self._frames[0] if self._frames else pd.DataFrame({c: [] for c in columns})


@dataclass
class ScanResult:
    """What pass 1 learned: the fitted plan, the rows of each split and the bounded samples."""

    plan: F.FeaturePlan
    rows_read: int
    split_rows: dict[str, int]
    samples: dict[str, pd.DataFrame]
    #: per binary label and split: [non-clicks, clicks] over every row of the split
    classes: dict[str, dict[str, list[int]]]
    seconds: float
    median: dict[str, Any] = field(default_factory=dict)


def scan(
    reader: StreamReader,
    specs: Sequence[F.FeatureSpec],
    origins: Mapping[str, str],
    labels: Mapping[str, str],
    kinds: Mapping[str, str],
    *,
    limit: float,
    framework: str,
    progress: Any = None,
    positive: Any = None,
) -> ScanResult:
    """Pass 1: validate every row, fit the plan on the train rows, count splits, keep bounded samples; with
    ``positive`` (``--positive-class``) the label column's values are checked over the whole table."""
    start = time.perf_counter()
    numeric = {s.name: NumericSummary(reader.seed + j) for j, s in enumerate(specs) if s.kind == F.NUMERIC}
    counters = {s.name: ValueCounter() for s in specs if s.kind == F.CATEGORICAL}
    histories = [s for s in specs if s.kind == F.HISTORY]
    shared = {s.vocab_from: F.FeatureSpec(s.vocab_from, F.CATEGORICAL) for s in histories if s.vocab_from}
    shared = {n: v for n, v in shared.items() if n not in counters}  # a column the history names, not a feature
    counters.update({n: ValueCounter() for n in shared})
    history_counts: dict[str, HistoryCounts] = {}
    dtypes: dict[str, str] = {}
    samples = {"train": Sample(TRAIN_SAMPLE_CAP), "validation": Sample(VALIDATION_CAP), "test": Sample(TEST_CAP)}
    split_rows = dict.fromkeys(SPLIT_NAMES, 0)
    binary = [n for n, k in kinds.items() if k == "binary" and n in labels]
    classes = {n: {s: [0, 0] for s in SPLIT_NAMES} for n in binary}
    target = I.positive_target(labels, kinds) if positive is not None else None
    named = I.PositiveClasses(labels[target], positive) if target is not None else None
    rows = 0
    for b in reader.batches():
        where = f"data file {b.path}"
        frame, train = b.frame, b.codes == S.TRAIN
        rows += len(frame)
        for code, name in enumerate(SPLIT_NAMES):
            chosen = b.codes == code
            split_rows[name] += int(chosen.sum())
            samples[name].add(frame[chosen].reset_index(drop=True), b.u[chosen])
        with located(b.first_row):
            F.check_id_range(frame, specs, origins, source=where)
        for spec in [*(s for s in specs if s.kind != F.HISTORY), *shared.values()]:
            with located(b.first_row):
                column = read_column(frame[spec.name], spec, source=where)
            dtypes[spec.name] = _merge_dtype(dtypes.get(spec.name), column.dtype, spec.name, where)
            if spec.name in counters:
                if column.strings is not None:
                    counters[spec.name].add_strings([column.strings[i] for i in np.flatnonzero(train)])
                else:
                    assert column.numbers is not None
                    counters[spec.name].add_numbers(column.numbers[train])
                continue
            assert column.numbers is not None
            _check_limit(column.numbers, spec.name, limit, framework, b.path, b.first_row)
            numeric[spec.name].add(column.numbers[train])
        for spec in histories:
            with located(b.first_row):
                if spec.name not in history_counts:  # integer or string items: the first batch's, until text
                    like = dtypes.get(spec.vocab_from or "")
                    strings = like == "string" if like is not None else F.holds_strings(frame, spec)
                    history_counts[spec.name] = HistoryCounts(spec, strings)
                history_counts[spec.name].add_part(frame, train, source=where)
        if labels:
            with located(b.first_row):
                y = I.read_labels(frame, labels, source=where, kinds=kinds, positive=positive, partial=True)
            if named is not None:
                named.add(frame[named.column])
            for n in binary:
                for code, name in enumerate(SPLIT_NAMES):
                    values = y[n][b.codes == code]
                    ones = int(np.sum(values == 1))
                    classes[n][name][0] += len(values) - ones
                    classes[n][name][1] += ones
        if progress is not None:
            progress.update(len(frame))
    where = "data " + ", ".join(f.path for f in reader.files[:3]) + (", ..." if len(reader.files) > 3 else "")
    if named is not None:
        named.check(where)
    fitted = []
    for spec in specs:
        if spec.kind == F.HISTORY:
            continue
        dtype = dtypes.get(spec.name, "float64")
        if spec.name in counters:
            c = counters[spec.name]
            spec = I.spec_for_missing(spec, origins, 1.0 - c.present / c.rows if c.rows else 1.0)
            fitted.append(categorical_from_counts(spec, dtype, c.counts(), rows=c.rows, present=c.present))
        else:
            summary = numeric[spec.name]
            spec = I.spec_for_missing(spec, origins, summary.stats()["missing_rate"])
            if not summary.finite:
                raise ExporterError(
                    f"{where}: column '{spec.name}' makes the mean or standard deviation of its training rows "
                    "overflow; expected numbers of a sane magnitude (rescale the column)"
                )
            fitted.append(numeric_from_stats(spec, dtype, summary.stats(), source=where))
    fitted = with_histories(fitted, specs, history_counts, counters, dtypes, where)
    exact = all(s.sketch.exact for s in numeric.values())
    median = {
        "method": "seeded uniform reservoir sample (exact below the capacity)",
        "capacity": SKETCH_CAPACITY,
        "exact": exact,
        "max_rank_error": 0.0 if exact else MEDIAN_RANK_ERROR,
    }
    return ScanResult(
        F.FeaturePlan(fitted),
        rows,
        split_rows,
        {name: s.frame(reader.columns) for name, s in samples.items()},
        classes,
        time.perf_counter() - start,
        median,
    )


def _merge_dtype(seen: str | None, dtype: str, name: str, where: str) -> str:
    """A column's dtype over every batch: integers and floats make float64; strings never mix with numbers."""
    if seen is None or seen == dtype:
        return dtype
    if {seen, dtype} <= {"int64", "float64"}:
        return "float64"
    raise ExporterError(
        f"{where}: column '{name}' holds {dtype} values here but {seen} values in earlier rows; "
        "expected one type in every file"
    )


def _check_limit(values: np.ndarray, name: str, limit: float, framework: str, path: str, first: int) -> None:
    """A value the model's framework cannot represent fails here, naming the file and row."""
    with np.errstate(invalid="ignore"):
        beyond = np.abs(values) > limit
    if beyond.any():
        i = int(np.flatnonzero(beyond)[0])
        raise ExporterError(
            f"data file {path}: column '{name}' row {first + i + 1}: value {values[i]:.6g} is beyond what "
            f"{framework} can represent (|value| <= {limit:.4g}); rescale the column or drop the row"
        )
