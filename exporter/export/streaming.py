"""Training from Parquet/CSV without holding the table: which path a run takes, and the streamed prepare and fit.

:func:`choose_reading` picks the path: ``--streaming off`` reads the table into one pandas frame (fastest for
small tables), ``on`` streams it, ``auto`` streams when the estimated cells (rows x columns) exceed
:data:`STREAMING_CELLS`. The choice and its reason are printed and recorded in metadata.

A streamed run (``docs/training.md``):

* pass 1 (:func:`prepare_streaming`): every record batch is validated, split by the row hash
  (:mod:`exporter.training.split`), and the feature plan is fitted on the train rows
  (:func:`exporter.training.stream_scan.scan`); bounded samples of the validation, test and train rows stay in
  memory and become the :class:`Prepared` matrices the evaluation, the parity gate and the notebook plots use;
* pass 2 and on (:func:`fit_streaming`): torch models read the train rows once per epoch through a seeded shuffle
  buffer (:mod:`exporter.models.torch_stream`), XGBoost through its data iterator
  (:mod:`exporter.models.xgb_stream`).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter import features as F
from exporter.errors import ExporterError
from exporter.export.params import ExportParams, Prepared
from exporter.models import ModelSpec, TrainData, Trained
from exporter.models import threads as T
from exporter.models.base import LabelNeed
from exporter.models.streamed import SHUFFLE_BUFFER_ROWS, Chunk, StreamTrainData
from exporter.models.torch_base import TorchModel
from exporter.training import column_checks as K
from exporter.training import data as D
from exporter.training import hparams as H
from exporter.training import inputs as I
from exporter.training import split as S
from exporter.training import stream_scan as SS
from exporter.training.sources import CsvTypeChange, InputFile, csv_types, is_list_type, resolve_inputs

#: ``--streaming auto`` streams a table of more cells (estimated rows x columns) than this: about 770,000 rows
#: of the 13-column click log, ~1.3 GB once read into pandas and prepared (1.75 KB per row measured)
STREAMING_CELLS = 10_000_000
STREAMING_MODES = ("auto", "on", "off")


@dataclass
class Reading:
    """Which path a run takes and why (printed, and recorded in metadata ``training.data_reading``)."""

    streaming: bool
    reason: str
    files: list[InputFile] = field(default_factory=list)
    estimated_rows: int | None = None


def threads_report(spec: ModelSpec, hparams: Mapping[str, Any], threads: int | None) -> dict[str, Any]:
    """The threads a streamed run trains on (metadata ``training.data_reading.threads``): torch's intra-op threads
    or xgboost's, as :mod:`exporter.models.threads` chooses them, beside the one thread that decodes ahead."""
    torch_threads = T.torch_threads(threads, int(hparams["batch_size"])) if spec.framework == "torch" else None
    xgboost_threads = T.xgboost_threads(hparams.get("n_jobs"), threads) if spec.framework == "xgboost" else None
    return {"torch": torch_threads, "decode_prefetch": 1, "xgboost": xgboost_threads, "cpus": os.cpu_count()}


def _glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def estimate_rows(files: Sequence[InputFile]) -> int:
    """Rows of the data: Parquet's own count; CSV from its size and the line length of its first MiB."""
    total = 0
    for f in files:
        if f.rows is not None:
            total += f.rows
            continue
        with open(f.path, "rb") as fh:
            head = fh.read(1 << 20)
        lines = max(1, head.count(b"\n"))
        ratio = 5 if f.path.lower().endswith(".gz") else 1
        total += int(f.size * ratio / max(1, len(head) / lines))
    return total


def choose_reading(params: ExportParams) -> Reading:
    """In memory or streamed, by ``params.streaming`` and the data's size; bad options fail here."""
    mode = params.streaming
    if mode not in STREAMING_MODES:
        raise ExporterError(f"--streaming must be one of {', '.join(STREAMING_MODES)}, got {mode!r}")
    if params.data_path is None:
        if mode == "on":
            raise ExporterError("--streaming on reads --data: the built-in synthetic data is generated in memory")
        return Reading(False, "the built-in synthetic data is generated in memory")
    path = str(params.data_path)
    if not _glob(path) and not Path(path).exists():
        raise ExporterError(f"data file not found: {path}")
    if params.mode != "train":
        if mode == "on":
            raise ExporterError("--streaming on trains from streamed data; load mode reads its data in memory")
        return Reading(False, "load mode reads its data in memory")
    try:
        files = resolve_inputs(path, option="--data")
    except ExporterError:
        if mode == "on" or not Path(path).is_file():
            raise
        return Reading(False, "a single file read in memory (its name tells no Parquet/CSV format)")
    rows = estimate_rows(files)
    columns = len(SS.file_schema(files[0]).names)
    cells = rows * columns
    if mode == "on":
        return Reading(True, "--streaming on", files, rows)
    if mode == "off":
        return Reading(False, "--streaming off", files, rows)
    size = f"about {rows:,} rows x {columns} columns = {cells:,} cells"
    if cells > STREAMING_CELLS:
        return Reading(True, f"--streaming auto: {size} > {STREAMING_CELLS:,}", files, rows)
    return Reading(False, f"--streaming auto: {size} <= {STREAMING_CELLS:,}, in memory is faster", files, rows)


def log(params: ExportParams, text: str) -> None:
    (params.log or (lambda t: print(t, flush=True)))(text)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def record_phase(prep: Prepared, name: str, seconds: float) -> None:
    """Wall time and peak RSS after one phase, in ``prep.reading`` (metadata and the summary show them)."""
    prep.reading.setdefault("phases", {})[name] = {"seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb()}


@dataclass
class StreamState:
    """What the streamed fit re-reads: the reader, the fitted plan's labels, and the validation sample."""

    reader: SS.StreamReader
    labels: dict[str, str]
    kinds: dict[str, str]
    train_rows: int
    x_validation: np.ndarray
    y_validation: dict[str, np.ndarray]
    #: ``--positive-class`` (or the schema's): the label value read as 1, None for a 0/1 label
    positive: Any = None

    def chunks(self, plan: F.FeaturePlan, epoch: int) -> Iterator[Chunk]:
        return self.reader.train_chunks(plan, self.labels, self.kinds, epoch, self.positive)


def _head(reader: SS.StreamReader, files: Sequence[InputFile]) -> pd.DataFrame:
    """The first record batch of the first file with rows, every column: what column choice and kind inference
    look at (the in-memory path looks at the whole table)."""
    for f in files:
        schema = SS.file_schema(f)
        names = schema.names
        sub = SS.StreamReader([f], names, reader.seed, batch_rows=reader.batch_rows, types=csv_types([f], names))
        for batch in sub.batches():
            frame = batch.frame
            for column in schema:  # a list column whose first rows are all null is still a list column (a history)
                if is_list_type(column.type) and column.name in frame.columns:
                    frame[column.name] = frame[column.name].map(lambda v: [] if v is None else v)
            return frame
    raise ExporterError(f"data {', '.join(f.path for f in files[:3])}: every file is empty (no rows to train on)")


def _check_classes(classes: Mapping[str, Mapping[str, list[int]]], labels: Mapping[str, str], where: str) -> None:
    for name, per_split in classes.items():
        for split, part in (("train", "training"), ("test", "held-out")):
            zeros, ones = per_split[split]
            if zeros and ones:
                continue
            value = "none" if not zeros + ones else ("1" if ones else "0")
            raise ExporterError(
                f"{where}: the {part} labels '{labels[name]}' hold one class (all {value}, {zeros + ones} rows): a "
                f"click model needs clicks (1) and non-clicks (0) to {'learn' if split == 'train' else 'be evaluated'}"
                "; use more rows or data with both classes"
            )


def prepare_streaming(
    params: ExportParams,
    spec: ModelSpec,
    hparams: dict[str, Any],
    schema: F.Schema | None,
    columns: list[str] | None,
    labels: dict[str, str],
    needs: Sequence[LabelNeed],
    reading: Reading,
) -> Prepared:
    """Pass 1 over the data: columns, labels, split, the feature plan, the bounded samples."""
    start = time.perf_counter()
    files, where = reading.files, f"data {params.data_path}"
    log(params, f"data: streaming ({reading.reason}); {len(files)} file(s)")
    probe = SS.StreamReader(files, [], params.seed)
    head = _head(probe, files)
    F.check_no_built_history(schema, f"streamed ({reading.reason})")
    columns, note, positive = I.choose_features(
        head, spec.default_features, columns, schema, labels, needs,
        positive_class=params.positive_class, exclude_columns=params.exclude_columns, source=where,
    )  # fmt: skip
    D.check_columns(head, columns, what="feature", source=where)
    clash = sorted(set(columns) & set(labels.values()))
    if clash:
        raise ExporterError(f"column(s) {', '.join(clash)} cannot be both a feature and a label")
    I.check_labels(head, needs, labels, source=where)
    optional = {n.name for n in needs if not n.required}
    labels = {n: c for n, c in labels.items() if n not in optional or c in head.columns}
    kinds = {n.name: n.kind for n in needs if n.name in labels}
    specs, origins = F.resolve_specs(head, columns, schema, I.default_specs())
    towers = {s.name: s.tower for s in specs}
    histories = [s for s in specs if s.kind == F.HISTORY]
    spec.check_histories([s.name for s in histories])
    shared = [s.vocab_from for s in histories if s.vocab_from]  # a history's vocabulary column is read too
    read = list(dict.fromkeys([*columns, *labels.values(), *shared]))
    SS.check_files(files, read, where=where)
    key = spec.split_keys(columns, hparams, towers) or SS.common_key(files)
    read = list(dict.fromkeys([*read, *key]))
    from exporter.training.progress_bar import progress_bar

    limit = min(spec.max_abs_feature or 1e20, 1e20)
    total = reading.estimated_rows or 0
    text = [s.name for s in histories]
    # an ID column whose first rows are numbers and later ones text (12 ... sku-7) is read as text, as a CSV
    # read whole would; pass 1 starts again (once per such column) with the types pass 2 reads with too
    ids = {s.name for s in specs if s.kind == F.CATEGORICAL} | set(shared)
    while True:
        reader = SS.StreamReader(files, read, params.seed, key=key, types=csv_types(files, read, text=text))
        try:
            with progress_bar(total, "pass 1: scan and fit the features", enabled=params.progress, unit="row") as bar:
                scanned = SS.scan(
                    reader,
                    specs,
                    origins,
                    labels,
                    kinds,
                    limit=limit,
                    framework=spec.framework,
                    progress=bar,
                    positive=positive,
                )
            break
        except CsvTypeChange as change:
            if change.column not in ids or change.column in text:
                raise
            text.append(change.column)
            log(
                params,
                f"pass 1: {change.path}: categorical column '{change.column}' holds text IDs ({change.value!r}) "
                "after numbers in its first rows: reading it as text (string IDs); pass 1 starts again",
            )
    if scanned.split_rows["train"] == 0:
        raise ExporterError(f"{where}: no training rows ({scanned.rows_read} rows read, all held out)")
    _check_classes(
        {n: c for n, c in scanned.classes.items() if n in {x.name for x in needs if x.required}}, labels, where
    )
    plan = scanned.plan
    matrices = {}
    for name, frame in scanned.samples.items():
        raw = plan.encode(frame, source=where)
        y = I.read_labels(frame, labels, source=where, kinds=kinds, positive=positive, partial=True) if labels else {}
        matrices[name] = (raw, plan.prepare(raw), {k: np.array(v, dtype=np.float64) for k, v in y.items()})
    H.check_memory(spec.name, hparams, plan.cardinalities, len(scanned.samples["train"]))
    report: dict[str, Any] = {
        "path": "streaming",
        "reason": reading.reason,
        "files": len(files),
        "rows_read": scanned.rows_read,
        "rows": dict(scanned.split_rows),
        "rows_in_memory": {k: len(v) for k, v in scanned.samples.items()},
        "sample_caps": {"train": SS.TRAIN_SAMPLE_CAP, "validation": SS.VALIDATION_CAP, "test": SS.TEST_CAP},
        "split": S.describe(params.seed, key, S.DEFAULT_VALIDATION, S.DEFAULT_TEST),
        "batch_rows": SS.BATCH_ROWS,
        "shuffle_buffer_rows": SHUFFLE_BUFFER_ROWS if spec.framework == "torch" else None,
        "median": scanned.median,
        "threads": threads_report(spec, hparams, params.threads),
        "passes": 1,
    }
    state = StreamState(
        reader,
        labels,
        kinds,
        scanned.split_rows["train"],
        matrices["validation"][1],
        matrices["validation"][2],
        positive,
    )
    raw_tr, x_tr, y_tr = matrices["train"]
    raw_te, x_te, y_te = matrices["test"]
    prep = Prepared(
        spec,
        params,
        plan.columns,  # a history column is max_length tensor columns
        hparams,
        str(params.data_path),
        scanned.samples["train"],
        scanned.samples["test"],
        x_tr,
        x_te,
        y_tr,
        y_te,
        plan,
        None,
        raw_tr,
        raw_te,
        labels,
        origins,
        note,
        stream=state,
        reading=report,
        positive_class=positive,
    )
    if params.mode == "train":  # features that carry nothing (the whole scan's statistics, the sample's values) or
        # that the model would misuse (two_tower: an item-tower column that differs within one item's rows)
        prep.column_warnings = K.column_warnings(
            scanned.samples["train"], plan, x_tr, np.arange(scanned.split_rows["train"])
        ) + spec.column_warnings(scanned.samples["train"], None, plan, hparams)
    record_phase(prep, "pass1_scan", time.perf_counter() - start)
    rows = scanned.split_rows
    log(
        params,
        f"pass 1 done: {scanned.rows_read:,} rows read in {time.perf_counter() - start:.1f}s (train {rows['train']:,}, "
        f"validation {rows['validation']:,}, test {rows['test']:,}); peak RSS {peak_rss_mb():,.0f} MB",
    )
    return prep


class _PassBars:
    """One progress bar per pass over the train rows (rows/s), opened as the previous pass completes."""

    def __init__(self, rows: int, name: str, enabled: bool) -> None:
        self.rows, self.name, self.enabled = rows, name, enabled
        self.passes = 0
        self._bar: Any = None
        self._cm: Any = None
        self._done = 0

    def start(self) -> None:
        from exporter.training.progress_bar import progress_bar

        self.close()
        self.passes += 1
        self._cm = progress_bar(self.rows, f"pass {self.passes + 1}: {self.name}", enabled=self.enabled, unit="row")
        self._bar = self._cm.__enter__()
        self._done = 0

    def update(self, n: int = 1) -> None:
        if self._bar is None or self._done >= self.rows:
            self.start()
        self._done += n
        self._bar.update(n)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(ordered_dict, refresh=refresh, **kwargs)

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self._bar = None


def _counted(chunks: Iterator[Chunk], bars: _PassBars) -> Iterator[Chunk]:
    bars.start()
    for x, y in chunks:
        yield x, y
        bars._done += len(x)
        if bars._bar is not None:
            bars._bar.update(len(x))


def fit_streaming(prep: Prepared) -> Trained:
    """Pass 2 and on: the model trains on every streamed train row (torch: epochs; xgb: its iterator)."""
    from exporter.models import torch_stream, xgb_stream
    from exporter.models.xgb import XGBoostModel

    start = time.perf_counter()
    state: StreamState = prep.stream
    spec, plan = prep.spec, prep.features
    log(prep.params, f"pass 2: training {spec.name} on {state.train_rows:,} streamed train rows")
    bars = _PassBars(state.train_rows, f"train {spec.name}", prep.params.progress)
    data = TrainData(
        x_train=prep.x_train,
        y_train=prep.y_train,
        x_valid=state.x_validation,
        y_valid=state.y_validation,
        columns=prep.columns,
        hparams=prep.hparams,
        seed=prep.params.seed,
        features=plan,
        threads=prep.params.threads,
        progress=bars if isinstance(spec, TorchModel) else None,
        on_epoch=prep.on_epoch,
    )
    try:
        if isinstance(spec, TorchModel):
            stream = StreamTrainData(data, lambda epoch: state.chunks(plan, epoch), state.train_rows)
            trained = torch_stream.train_stream(spec, stream)
        elif isinstance(spec, XGBoostModel):
            from exporter.training.progress_bar import progress_bar

            stream = StreamTrainData(data, lambda epoch: _counted(state.chunks(plan, epoch), bars), state.train_rows)
            total = spec.progress_total(prep.hparams, state.train_rows)
            with progress_bar(total, f"boost {spec.name}", enabled=prep.params.progress) as rounds:
                data_bar = TrainData(**{**data.__dict__, "progress": rounds})
                trained = xgb_stream.train_stream(spec, StreamTrainData(data_bar, stream.chunks, state.train_rows))
        else:
            raise ExporterError(f"{spec.name} cannot train from streamed data: use --streaming off")
    finally:
        bars.close()
    prep.reading["passes"] = 1 + bars.passes
    record_phase(prep, "train", time.perf_counter() - start)
    return trained


def in_memory_report(reading: Reading) -> dict[str, Any]:
    return {"path": "in memory", "reason": reading.reason, "passes": 1}


__all__ = [
    "STREAMING_CELLS",
    "STREAMING_MODES",
    "Reading",
    "StreamState",
    "choose_reading",
    "prepare_streaming",
    "fit_streaming",
    "record_phase",
    "in_memory_report",
    "peak_rss_mb",
    "log",
]
