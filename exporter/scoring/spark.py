"""``score --engine spark``: the same checks and predictions as the local engine, on a Spark cluster.

Driver side. The job runs one or two ``mapInArrow`` passes over the input (see
:mod:`exporter.scoring.spark_worker` for the executor side):

1. scoring: the accepted rows, their ``--keep`` columns and the predictions are written as Parquet parts;
   refused rows are counted (an accumulator);
2. only when rows were refused: a validation-only pass (no model) writes them with their file, row number
   and reason to ``_rejects/`` and counts them exactly; more than ``--max-rejects`` fails the job.

Clean input, the common case, is read once. Executors get the code as a zip (``addPyFile``) and the
artifact (metadata.json, the model file, the vocabulary) with ``addFile``; each Python worker loads and
sha256-checks it once. Row numbers: Parquet's ``_metadata.row_index``; CSV files are read whole per task
(``multiLine``), in order, and numbered there.

``--master`` picks the cluster (default ``local[*]``; under ``spark-submit`` the submitted master is used).
Local masters bind the driver to 127.0.0.1 and run without the web UI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from exporter.errors import ExporterError
from exporter.scoring.encode import EncodingPlan, vocabulary_files
from exporter.scoring.inputs import InputFile, file_schema
from exporter.scoring.outputs import (
    REJECT_COLUMNS,
    REJECTS_DIR,
    STAGING_MARK,
    SUCCESS_FILE,
    SUMMARY_FILE,
    is_score_summary,
    prediction_fields,
    reject_place,
)
from exporter.scoring.progress import Progress
from exporter.scoring.spark_worker import FILE_COLUMN, ROW_COLUMN, BatchTask
from exporter.training.spark_session import spark_session

__all__ = ["score_spark", "spark_session", "SparkCounts", "SparkJobSession", "HadoopStagedOutput"]


@dataclass
class SparkCounts:
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    part_files: list[str] = field(default_factory=list)
    partitions: int = 0
    artifact_loads: int = 0


class SparkJobSession:
    """``with SparkJobSession(options, name) as spark:`` a session for one job, stopped at the end if we made it."""

    def __init__(self, options: Any, app_name: str) -> None:
        self.options = options
        self.app_name = app_name
        self.spark: Any = None
        self.created = False

    def __enter__(self) -> Any:
        self.workdir = Path(tempfile.mkdtemp(prefix="exporter-spark-session-"))
        try:
            self.spark, self.created = spark_session(
                self.options.master, self.options.spark_conf, self.app_name, self.options.batch_rows, self.workdir
            )
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        return self.spark

    def __exit__(self, *exc: object) -> None:
        try:
            if self.created and self.spark is not None:
                self.spark.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


class HadoopStagedOutput:
    """:class:`exporter.scoring.outputs.StagedOutput` for a URI output (``hdfs://``, ``s3a://``, ``file://``):
    staged in a hidden sibling and renamed with the Hadoop FileSystem API (atomic on HDFS and local disks;
    object stores emulate rename by copying, which Spark users know from their committers)."""

    def __init__(self, spark: Any, uri: str, overwrite: bool) -> None:
        self.spark = spark
        self.output = uri.rstrip("/")
        self.overwrite = overwrite
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self._target = self._Path(self.output)
        self.fs = self._target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        self.staging: str | None = None

    def check(self) -> None:
        """Refuse an existing output unless ``--overwrite`` and it is a previous score output."""
        if not self.fs.exists(self._target):
            return
        if not self.overwrite:
            raise ExporterError(
                f"--output {self.output!r} already exists; choose a new directory or pass --overwrite to replace it "
                "(it is replaced only once the new output is complete)"
            )
        if not self.is_score_output():
            raise ExporterError(
                f"--output {self.output!r} exists and is not a score output (no {SUCCESS_FILE} and {SUMMARY_FILE} "
                "of a finished score run in it); --overwrite replaces only a previous score output: choose a new "
                "directory"
            )

    def is_score_output(self) -> bool:
        """The target holds ``_SUCCESS`` and a ``_scoring.json`` summary of this tool (read through Hadoop)."""
        success = self._Path(_join(self.output, SUCCESS_FILE))
        summary = self._Path(_join(self.output, SUMMARY_FILE))
        if not (self.fs.isFile(success) and self.fs.isFile(summary)):
            return False
        stream = self.fs.open(summary)
        try:
            data = bytes(stream.readNBytes(1 << 20))  # java.io.InputStream: a byte[] comes back as bytes
        finally:
            stream.close()
        try:
            return is_score_summary(json.loads(data))
        except ValueError:
            return False

    def __enter__(self) -> HadoopStagedOutput:
        self.check()
        parent = self._target.getParent()
        name = self._target.getName()
        self.staging = (
            f"{parent.toString()}/.{name}{STAGING_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.fs.mkdirs(self._Path(self.staging))
        return self

    @property
    def uri(self) -> str:
        assert self.staging is not None
        return self.staging

    def write_bytes(self, name: str, data: bytes) -> None:
        stream = self.fs.create(self._Path(_join(self.uri, name)), True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def commit(self) -> str:
        old = None
        if self.fs.exists(self._target):
            if not self.overwrite:
                raise ExporterError(f"--output {self.output!r} appeared while scoring; not replacing it")
            self.check()  # replaced by something else while we were working
            old = self._Path(
                f"{self._target.getParent().toString()}/.{self._target.getName()}.replaced-{uuid.uuid4().hex[:8]}"
            )
            self.fs.rename(self._target, old)
        if not self.fs.rename(self._Path(self.uri), self._target):
            if old is not None:
                self.fs.rename(old, self._target)
            raise ExporterError(f"cannot move the finished output into place at {self.output!r}")
        self.staging = None
        if old is not None:
            self.fs.delete(old, True)
        return self.output

    def __exit__(self, *exc: object) -> None:
        if self.staging is not None:
            self.fs.delete(self._Path(self.staging), True)
            self.staging = None


def _package_zip(directory: Path) -> Path:
    """The ``exporter`` package as a zip for ``addPyFile`` (sources only)."""
    package = Path(__file__).resolve().parents[1]
    target = directory / f"exporter-{uuid.uuid4().hex[:8]}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*")):
            if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
                continue
            zf.write(path, Path("exporter") / path.relative_to(package))
    return target


def _artifact_copy(handler: Any, directory: Path) -> Path:
    """The files an executor needs (metadata.json, the model, a vocabulary) in a uniquely named directory."""
    meta = handler.metadata
    target = directory / f"artifact-{handler.model_name}-{handler.version}-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    names = ["metadata.json", meta["model_file"], *vocabulary_files(meta)]
    for name in names:
        shutil.copy2(handler.directory / name, target / name)
    return target


def _spark_read(spark: Any, files: Sequence[InputFile], uri: str | None, fmt: str) -> Any:
    reader = spark.read
    if fmt == "csv":
        # every column as text (no inference) like the local engine; whole files per task for row numbers
        reader = (
            reader.option("header", True)
            .option("multiLine", True)
            .option("inferSchema", False)
            .option("enforceSchema", False)
            .option("mode", "PERMISSIVE")
        )
        return reader.csv([f"file://{f.path}" for f in files] if files else uri)
    return reader.parquet(*([f"file://{f.path}" for f in files] if files else [uri]))  # not percent-encoded: see uri


def _check_csv_headers(files: Sequence[InputFile]) -> None:
    """Spark maps CSV columns by position from one header: every file must have the same header."""
    first = None
    for f in files:
        names = file_schema(f).names
        if first is None:
            first = (f.path, names)
        elif names != first[1]:
            raise ExporterError(
                f"--engine spark reads CSV columns by position: {f.path} has the header {', '.join(names[:10])} "
                f"but {first[0]} has {', '.join(first[1][:10])}; give every file the same header (or use Parquet)"
            )


def score_spark(
    spark: Any,
    options: Any,
    handler: Any,
    plan: EncodingPlan,
    files: Sequence[InputFile],
    output: str,
    progress: Progress,
) -> SparkCounts:
    """Run the job; ``output`` is the staging directory URI (``file://...``, ``hdfs://...``) the caller commits.

    ``files`` are the checked local input files, or empty for a URI ``--input`` (read by Spark as it is).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType

    fmt = input_format(options, files)
    sc = spark.sparkContext
    workdir = Path(tempfile.mkdtemp(prefix="exporter-spark-"))
    stop_progress = threading.Event()
    try:
        sc.addPyFile(str(_package_zip(workdir)))
        artifact = _artifact_copy(handler, workdir)
        sc.addFile(str(artifact), recursive=True)

        df = _spark_read(spark, files, None if files else options.input, fmt)
        keep = list(options.keep)
        missing = [c for c in plan.names + keep if c not in df.columns]
        if missing:
            raise ExporterError(
                f"--input {options.input!r}: missing column(s) {', '.join(missing)} "
                f"(it has: {', '.join(df.columns[:20])})"
            )
        columns = list(dict.fromkeys(plan.names + keep))
        helpers = [F.col("_metadata.file_path").alias(FILE_COLUMN)]
        if fmt != "csv":
            helpers.append(F.col("_metadata.row_index").alias(ROW_COLUMN))
        df = df.select(*[F.col(f"`{c}`") for c in columns], *helpers)

        keep_spark = [df.schema[c] for c in keep]
        keep_arrow = to_arrow_schema(StructType(keep_spark)) if keep else pa.schema([])
        rejects_arrow = pa.schema(
            [pa.field("source_file", pa.string()), pa.field("source_row", pa.int64()), pa.field("reason", pa.string())]
            + list(keep_arrow)
        )
        out_arrow = pa.schema(list(keep_arrow) + prediction_fields(handler.metadata))
        rejects_spark = StructType(
            [
                StructField(REJECT_COLUMNS[0], StringType()),
                StructField(REJECT_COLUMNS[1], LongType()),
                StructField(REJECT_COLUMNS[2], StringType()),
            ]
            + keep_spark
        )
        out_spark = StructType(
            keep_spark
            + [
                StructField(f.name, ArrayType(DoubleType()) if pa.types.is_list(f.type) else DoubleType())
                for f in prediction_fields(handler.metadata)
            ]
        )

        rows_acc = sc.accumulator(0)
        loads_acc = sc.accumulator(0)
        refused_acc = sc.accumulator(0)
        common = dict(
            artifact_name=artifact.name,
            sha256=handler.metadata["sha256"],
            metadata=handler.metadata,
            keep=keep,
            csv=fmt == "csv",
            output_schema=out_arrow,
            rejects_schema=rejects_arrow,
            threads=int(spark.conf.get("spark.task.cpus", "1")),
            rows_accumulator=rows_acc,
            loads_accumulator=loads_acc,
            refused_accumulator=refused_acc,
        )
        rejects_dir = _join(output, REJECTS_DIR)
        counts = SparkCounts()

        watcher = threading.Thread(target=_watch, args=(sc, progress, rows_acc, stop_progress), daemon=True)
        watcher.start()
        # pass 1: score the accepted rows; refused rows are only counted (exactly zero when there are none)
        progress.label = f"score {handler.model_name}/{handler.version} [spark: scoring]"
        _map(df, BatchTask(score=True, **common), out_spark).write.mode("append").parquet(output)
        scored = spark.read.parquet(output)
        counts.rows_scored = scored.count()
        counts.part_files = sorted({p.rsplit("/", 1)[-1] for p in scored.inputFiles()})
        if refused_acc.value > 0:
            # pass 2, only when rows were refused: write them with their reasons (no model needed) and count
            # them exactly (an accumulator may count a retried task twice)
            rows_acc.value = 0
            progress.label = f"score {handler.model_name}/{handler.version} [spark: writing rejects]"
            _map(df, BatchTask(score=False, **common), rejects_spark).write.mode("errorifexists").parquet(rejects_dir)
            counts.rows_rejected = spark.read.parquet(rejects_dir).count()
            if counts.rows_rejected > options.max_rejects:
                first = spark.read.parquet(rejects_dir).orderBy("source_file", "source_row").first()
                raise ExporterError(
                    f"{counts.rows_rejected:,} rows refused, more than --max-rejects {options.max_rejects}; first: "
                    f"{reject_place(first['source_file'], first['source_row'])}: {first['reason']}; nothing was "
                    "written (raise --max-rejects to write the good rows and list the bad ones in _rejects/)"
                )
        counts.rows_read = counts.rows_scored + counts.rows_rejected
        counts.partitions = df.rdd.getNumPartitions()
        counts.artifact_loads = int(loads_acc.value)
        stop_progress.set()
        watcher.join(timeout=2)
        progress.update(counts.rows_read, 1.0, counts.rows_rejected, force=True)
        progress.close()
        return counts
    except ExporterError:
        raise
    except Exception as exc:
        raise ExporterError(_spark_error(exc)) from None
    finally:
        stop_progress.set()
        shutil.rmtree(workdir, ignore_errors=True)


def input_format(options: Any, files: Sequence[InputFile]) -> str:
    if files:
        return files[0].format
    return options.input_format or ("csv" if ".csv" in options.input.lower() else "parquet")


def check_spark_inputs(options: Any, files: Sequence[InputFile]) -> None:
    """Checks that only the Spark engine needs, before its session starts."""
    if files and input_format(options, files) == "csv":
        _check_csv_headers(files)


def _map(df: Any, task: BatchTask, schema: Any) -> Any:
    """``df.mapInArrow(task, schema)`` without pyspark's pandas-version FutureWarning (no pandas is used)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        return df.mapInArrow(task, schema)


def _spark_error(exc: BaseException) -> str:
    """One line out of a Spark/py4j failure (the Python worker's own message when there is one)."""
    text = str(exc)
    for marker in ("ExporterError: ", "ArtifactError: ", "HandlerError: ", "SchemaProblem: "):
        if marker in text:
            return "spark job failed: " + text.split(marker, 1)[1].splitlines()[0][:400]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"spark job failed: {first[:400]}"


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _watch(sc: Any, progress: Progress, rows_acc: Any, stop: threading.Event) -> None:
    """Progress from the status tracker: rows of finished tasks, tasks done/total, ETA by tasks."""
    tracker = sc.statusTracker()
    while not stop.wait(0.5):
        try:
            done = total = 0
            for stage_id in tracker.getActiveStageIds():
                info = tracker.getStageInfo(stage_id)
                if info is not None:
                    done += info.numCompletedTasks
                    total += info.numTasks
            if total:
                progress.update(int(rows_acc.value), done / total if done else None, extra=f"tasks {done}/{total}")
        except Exception:  # the context may be stopping; progress is best effort
            return
