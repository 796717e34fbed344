"""A scoring job from start to end: resolve the model and inputs, check them, run an engine, commit.

Order matters for the guarantees: every check that can fail on user input (unknown model, bad artifact,
missing column, existing output) runs before any row is scored, and the output directory appears only
once everything, index included, is written.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.scoring.artifact import encoding_plan, load_handler, resolve_artifact, resolve_version
from exporter.scoring.index import build_index, check_index_options
from exporter.scoring.inputs import InputFile, check_inputs, resolve_inputs
from exporter.scoring.outputs import (
    INDEX_DIR,
    REJECTS_DIR,
    SUCCESS_FILE,
    SUMMARY_FILE,
    StagedOutput,
    check_keep_names,
    check_output_apart,
    output_schema,
    rejects_schema,
    uri_nesting,
)
from exporter.scoring.progress import Progress

__all__ = ["ScoreOptions", "ScoreResult", "score", "resolve_artifact", "load_handler", "encoding_plan"]

ENGINES = ("local", "spark")
#: ``--batch-rows`` bounds: a batch is read, encoded and scored in memory (rows x columns x 8 bytes per thread,
#: plus the CSV read block of 64 bytes per row)
MAX_BATCH_ROWS = 1_048_576
#: ``--index-queries`` bounds: each query is searched exactly and in the index to measure recall
MAX_INDEX_QUERIES = 100_000


@dataclass
class ScoreOptions:
    """Everything ``python -m exporter score`` takes (see :mod:`exporter.commands.score`)."""

    model: str
    input: str
    output: str
    artifacts: str = "artifacts"
    engine: str = "local"
    keep: list[str] = field(default_factory=list)
    max_rejects: int = 0
    overwrite: bool = False
    input_format: str | None = None
    batch_rows: int = 65536
    rows_per_file: int = 2_000_000
    threads: int | None = None
    master: str | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    index: bool = False
    index_id: str | None = None
    index_users: str | None = None
    index_queries: int = 1000
    index_recall: float = 0.95


@dataclass
class ScoreResult:
    """What a job did; also written to ``<output>/_scoring.json``."""

    model: str
    version: str
    sha256: str
    engine: str
    input: str
    files: int
    output: str
    rows_read: int
    rows_scored: int
    rows_rejected: int
    seconds: float
    rows_per_second: float
    engine_seconds: float
    part_files: int
    rejects: str | None
    threads: int | None = None
    master: str | None = None
    index: dict[str, Any] | None = None
    spark: dict[str, int] | None = None  # partitions (tasks per pass) and how often executors loaded the model
    created_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(options: ScoreOptions) -> ScoreResult:
    """Run one scoring job; raises :class:`ExporterError` (exit 2) for anything the user can fix."""
    if options.engine not in ENGINES:
        raise ExporterError(f"--engine must be one of {', '.join(ENGINES)}, got {options.engine!r}")
    if options.max_rejects < 0:
        raise ExporterError(f"--max-rejects must be >= 0, got {options.max_rejects}")
    if not 1 <= options.batch_rows <= MAX_BATCH_ROWS:
        raise ExporterError(f"--batch-rows must be between 1 and {MAX_BATCH_ROWS:,}, got {options.batch_rows:,}")
    if options.rows_per_file < 1:
        raise ExporterError(f"--rows-per-file must be >= 1, got {options.rows_per_file}")
    if not 1 <= options.index_queries <= MAX_INDEX_QUERIES:
        raise ExporterError(
            f"--index-queries must be between 1 and {MAX_INDEX_QUERIES:,} (the recall check needs queries), "
            f"got {options.index_queries:,}"
        )
    if options.threads is not None and options.threads < 1:
        raise ExporterError(f"--threads must be >= 1, got {options.threads}")
    if options.master and options.engine != "spark":
        raise ExporterError("--master applies to --engine spark only")
    if options.threads and options.engine != "local":
        raise ExporterError(
            "--threads applies to --engine local only (on Spark, spark.task.cpus sets the threads per task)"
        )
    start = time.perf_counter()

    handler = load_handler(resolve_version(options.model, options.artifacts).path)
    metadata = handler.metadata
    plan = encoding_plan(handler)
    keep = list(options.keep)
    check_keep_names(keep, metadata)
    if options.index:
        options = replace(options, index_id=check_index_options(metadata, keep, options.index_id, options.index_users))

    remote_input = _is_uri(options.input)
    remote_output = _is_uri(options.output)
    if (remote_input or remote_output) and options.engine != "spark":
        raise ExporterError(
            "URIs (hdfs://, s3a://, file://) for --input/--output need --engine spark; "
            "the local engine reads and writes local paths"
        )
    if remote_output and options.index:
        raise ExporterError("--index writes the index next to the vectors on this machine: give a local --output")
    files: list[InputFile] = [] if remote_input else resolve_inputs(options.input, options.input_format)
    _check_output_apart(options, files)
    keep_schema = None if remote_input else check_inputs(files, plan, keep)
    label = f"{handler.model_name}/{handler.version}"
    progress = Progress(f"score {label}", enabled=options.progress)

    if options.engine == "local":
        from exporter.scoring.local import default_threads, score_local

        assert keep_schema is not None
        staged = StagedOutput(options.output, options.overwrite)
        threads = options.threads or default_threads()
        with staged:
            engine_start = time.perf_counter()
            counts = score_local(
                files,
                plan,
                metadata,
                handler.run,
                keep,
                output_schema(keep_schema, metadata),
                rejects_schema(keep_schema),
                staged.path,
                max_rejects=options.max_rejects,
                batch_rows=options.batch_rows,
                rows_per_file=options.rows_per_file,
                threads=threads,
                progress=progress,
            )
            return _finish(options, handler, files, staged, counts, start, engine_start, threads=threads)

    from exporter.scoring import spark as spark_engine

    spark_engine.check_spark_inputs(options, files)
    if not remote_output:
        StagedOutput(options.output, options.overwrite).check()  # before the JVM starts
    with spark_engine.SparkJobSession(options, f"exporter score {label}") as spark:
        engine_start = time.perf_counter()
        master = spark.sparkContext.master
        output: StagedOutput | spark_engine.HadoopStagedOutput
        if remote_output:
            output = spark_engine.HadoopStagedOutput(spark, options.output, options.overwrite)
        else:
            if not master.startswith("local"):
                print(
                    f"note: --output {options.output} is a local path and the master is {master}: executors "
                    "write it on their own disks unless it is a shared mount; prefer a hdfs:// or s3a:// URI",
                    file=sys.stderr,
                )
            output = StagedOutput(options.output, options.overwrite)
        with output:
            spark_counts = spark_engine.score_spark(spark, options, handler, plan, files, output.uri, progress)
            return _finish(options, handler, files, output, spark_counts, start, engine_start, master=master)


def _finish(
    options: ScoreOptions,
    handler: Any,
    files: list[InputFile],
    staged: Any,
    counts: Any,
    start: float,
    engine_start: float,
    threads: int | None = None,
    master: str | None = None,
) -> ScoreResult:
    """Index (when asked), summary, ``_SUCCESS``, then the rename that makes the output appear."""
    index_info = None
    if options.index:
        index_info = build_index(staged.path, staged.path / INDEX_DIR, handler, options)
    now = time.perf_counter()
    seconds = now - start
    result = ScoreResult(
        model=handler.model_name,
        version=handler.version,
        sha256=handler.metadata["sha256"],
        engine=options.engine,
        input=options.input,
        files=len(files),
        output=str(staged.output),
        rows_read=counts.rows_read,
        rows_scored=counts.rows_scored,
        rows_rejected=counts.rows_rejected,
        seconds=round(seconds, 3),
        rows_per_second=round(counts.rows_read / seconds, 1) if seconds > 0 else 0.0,
        engine_seconds=round(now - engine_start, 3),
        part_files=len(counts.part_files),
        rejects=f"{staged.output}/{REJECTS_DIR}" if counts.rows_rejected else None,
        threads=threads,
        master=master,
        index=index_info,
        spark={"partitions": counts.partitions, "artifact_loads": counts.artifact_loads} if master else None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    summary = {**result.as_dict(), "input_files": [f.path for f in files][:1000]}
    staged.write_bytes(SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    staged.write_bytes(SUCCESS_FILE, b"")
    staged.commit()
    return result


def _input_paths(spec: str, files: list[InputFile]) -> list[str]:
    """The paths an ``--input`` reads: the file or directory named, and every data file found (a glob: those)."""
    named = [] if any(ch in spec for ch in "*?[") else [spec]
    return named + [f.path for f in files]


def _check_output_apart(options: ScoreOptions, files: list[InputFile]) -> None:
    """Refuse an output that is, contains or is inside an input (``--input``, ``--index-users``)."""
    sources = [(options.input, files)]
    if options.index_users:
        users = [] if _is_uri(options.index_users) else resolve_inputs(options.index_users)
        sources.append((options.index_users, users))
    for spec, found in sources:
        if not _is_uri(spec) and not _is_uri(options.output):
            check_output_apart(options.output, _input_paths(spec, found))
            continue
        output = options.output if _is_uri(options.output) else f"file://{Path(options.output).resolve()}"
        for item in [spec] if _is_uri(spec) else _input_paths(spec, found):
            uri = item if _is_uri(item) else f"file://{Path(item).resolve()}"
            how = uri_nesting(output, uri)
            if how is not None:
                raise ExporterError(
                    f"--output {options.output!r} {how} the input {item!r}; the output must be a directory "
                    "outside every input"
                )


def _is_uri(path: str) -> bool:
    head, sep, _ = path.partition("://")
    return bool(sep) and head.replace("+", "").isalnum() and head[:1].isalpha()


def format_result(result: ScoreResult) -> str:
    """The summary lines printed by the command."""
    lines = [
        f"scored {result.model}/{result.version} ({result.engine}"
        + (f", {result.threads} threads" if result.threads else "")
        + (f", {result.master}" if result.master else "")
        + f"): {result.rows_read:,} rows from {result.files} file(s) in {result.seconds:.1f}s "
        f"({result.rows_per_second:,.0f} rows/s)",
        f"  {result.rows_scored:,} predictions -> {result.output} ({result.part_files} part file(s))",
    ]
    if result.spark:
        lines.append(
            f"  spark: {result.spark['partitions']} partitions per pass; the model was loaded "
            f"{result.spark['artifact_loads']} time(s) on the executors (once per Python worker)"
        )
    if result.rows_rejected:
        lines.append(f"  {result.rows_rejected:,} rows refused -> {result.rejects} (row numbers and reasons)")
    else:
        lines.append("  0 rows refused")
    if result.index:
        info = result.index
        lines.append(
            f"  index: {info['type']} over {info['items']:,} items -> {result.output}/{INDEX_DIR}/ "
            f"recall@{info['k']} {info['recall']:.4f} vs exact search on {info['queries']:,} {info['query_source']} "
            f"({info['search_param']}={info['search_value']}, built in {info['build_seconds']:.1f}s)"
        )
    return "\n".join(lines)


def result_json(result: ScoreResult) -> str:
    return json.dumps(result.as_dict(), indent=2)
