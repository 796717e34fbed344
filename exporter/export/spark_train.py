"""``export --engine spark``: fit the features and train on a Spark cluster, then export on the driver exactly as a
local run does (same plan, same in-graph preprocessing, same parity gate, same atomic versions).

Why this module is long: it is the driver of one job with four steps that share the session and the run's
temporary directory: read and split, fit the feature plan with Spark aggregations, encode on the executors,
train (xgboost.spark or TorchDistributor); each step is a function below.

What the driver holds does not grow with the table: the feature plan (vocabularies are bounded by
``max_size``), and bounded samples of the train and test rows (:data:`SAMPLE_ROWS`) for the scalers, the
evaluation, the parity gate and the plots. The split is :mod:`exporter.training.split`'s rule computed in
Spark SQL, so a local run on the same file holds out the same rows.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from exporter import contract as C
from exporter import features as F
from exporter.errors import ExporterError
from exporter.export.params import ExportParams, Prepared
from exporter.export.spark_history import fit_histories_spark
from exporter.export.spark_metrics import heldout_metrics
from exporter.features.schema import read_column
from exporter.models import Trained, get_spec
from exporter.models.base import BINARY
from exporter.models.xgb import keep_best_round
from exporter.training import column_checks as K
from exporter.training import data as D
from exporter.training import hparams as H
from exporter.training import inputs as I
from exporter.training import refit as RF
from exporter.training import split as S
from exporter.training.spark_session import check_master, spark_session

#: rows of each split the driver keeps (uniform sample): scalers, evaluation, parity rows and plots use them
SAMPLE_ROWS = 200_000
#: rows read to resolve the columns' kinds when the schema does not declare them
SCHEMA_ROWS = 20_000
#: ``percentile_approx`` accuracy for the numeric fill (the median): rank error at most 1/accuracy of the rows
QUANTILE_ACCURACY = 10_000
SPLIT_COLUMN = "__split"
_SUPPORTED = ("xgb", "deepfm", "mmoe", "two_tower")


@dataclass
class SparkOptions:
    """Where and how wide to train: the master URL (default ``local[*]``) and the number of training workers."""

    master: str | None = None
    num_workers: int = 2
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class SparkRun:
    """What the training step needs besides :class:`Prepared`: the session, the encoded rows and the counts."""

    spark: Any
    created: bool
    workdir: Path
    encoded: Any  # DataFrame: f0..fn, labels, split code
    feature_cols: list[str]
    label_cols: dict[str, str]
    counts: dict[str, int]
    options: SparkOptions
    x_valid: np.ndarray
    y_valid: dict[str, np.ndarray]

    def close(self) -> None:
        if self.created:
            try:
                self.spark.stop()
            except Exception:  # noqa: BLE001 - stopping a broken session must not hide the job's own error
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


def check_options(options: SparkOptions, params: ExportParams) -> None:
    """Everything the Spark engine refuses, before a JVM starts."""
    n = options.num_workers
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        raise ExporterError(f"--num-workers must be an integer from 1 to 1024, got {n!r}")
    if params.mode != "train":
        raise ExporterError("--engine spark trains; load mode reads its model on one machine (drop --engine spark)")
    if params.data_path is None:
        raise ExporterError("--engine spark trains on --data PATH (a Parquet/CSV file, a directory or a glob)")
    if params.model not in _SUPPORTED:
        raise ExporterError(f"--engine spark trains {', '.join(_SUPPORTED)}; got {params.model!r}")
    path = str(params.data_path)
    if "://" not in path and not glob.glob(path):
        raise ExporterError(f"data path not found: {path} (expected a Parquet/CSV file, a directory or a glob)")
    check_master(options.master)


def _data_format(path: str) -> str:
    """``parquet`` or ``csv`` from the path's suffix, or the files a directory/glob holds."""
    candidates = [path]
    if "://" not in path:
        found = sorted(glob.glob(path))
        expanded = []
        for p in found:
            if os.path.isdir(p):
                expanded += sorted(
                    str(q) for q in Path(p).rglob("*") if q.is_file() and not q.name.startswith((".", "_"))
                )
            else:
                expanded.append(p)
        candidates = expanded or candidates
    suffixes = {Path(c).suffix.lower() for c in candidates}
    if suffixes <= {".parquet", ".pq"}:
        return "parquet"
    if suffixes <= {".csv", ".txt", ".gz"}:
        return "csv"
    raise ExporterError(
        f"--engine spark reads Parquet or CSV: {path} holds {', '.join(sorted(s or '(no suffix)' for s in suffixes))}"
    )


def read_data(spark: Any, path: str) -> Any:
    fmt = _data_format(path)
    try:
        if fmt == "parquet":
            return spark.read.parquet(path)
        return spark.read.option("header", True).option("inferSchema", True).csv(path)
    except Exception as exc:  # AnalysisException and friends
        raise ExporterError(f"cannot read {path} with Spark: {spark_error(exc)}") from None


def spark_error(exc: BaseException) -> str:
    """The useful line of a Spark/py4j failure: a worker's ExporterError message when there is one."""
    text = str(exc)
    for marker in ("ExporterError: ", "RuntimeError: ", "ValueError: "):
        if marker in text:
            return text.split(marker, 1)[1].strip().splitlines()[0][:400]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]


# --------------------------------------------------------------------------- the feature plan, fitted by Spark


def _hashable_spark_columns(df: Any) -> list[str]:
    """The split's default key in Spark terms: number, boolean, string, date and timestamp columns, sorted."""
    from pyspark.sql import types as T

    ok = (T.NumericType, T.BooleanType, T.StringType, T.DateType, T.TimestampType, T.TimestampNTZType)
    return sorted(f.name for f in df.schema.fields if isinstance(f.dataType, ok) and f.name != SPLIT_COLUMN)


def fit_plan_spark(
    train: Any,
    specs: Sequence[F.FeatureSpec],
    dtypes: Mapping[str, str],
    *,
    source: str,
    origins: Mapping[str, str] | None = None,
    sample: pd.DataFrame | None = None,
) -> Any:
    """The same :class:`~exporter.features.FeaturePlan` a local fit gives on these training rows, from Spark
    aggregations: exact vocabulary counts; numeric statistics with the median from ``percentile_approx``. A column
    without a value in them is, unless ``origins`` says it was declared, optional (numeric: fill 0), as locally.
    History columns need ``sample`` (rows of the table: whether their items are strings) and are counted on the
    executors (:mod:`exporter.export.spark_history`)."""
    from dataclasses import replace

    from pyspark.sql import functions as Fn

    numeric = [s for s in specs if s.kind == F.NUMERIC]
    n_rows = int(train.count())
    if n_rows == 0:
        raise ExporterError(f"{source}: no training rows left after holding out validation and test rows")
    stats: dict[str, dict[str, Any]] = {}
    if numeric:
        aggs = []
        for s in numeric:
            c = Fn.col(f"`{s.name}`").cast("double")
            ok = c.isNotNull() & ~Fn.isnan(c)
            v = Fn.when(ok, c)
            aggs += [
                Fn.count(v).alias(f"n|{s.name}"),
                Fn.mean(v).alias(f"mean|{s.name}"),
                Fn.stddev_pop(v).alias(f"std|{s.name}"),
                Fn.min(v).alias(f"min|{s.name}"),
                Fn.max(v).alias(f"max|{s.name}"),
                Fn.percentile_approx(v, 0.5, QUANTILE_ACCURACY).alias(f"median|{s.name}"),
                Fn.sum(Fn.when(Fn.col(f"`{s.name}`").isNotNull() & c.isNull(), 1).otherwise(0)).alias(f"bad|{s.name}"),
                Fn.sum(Fn.when(Fn.abs(c) == float("inf"), 1).otherwise(0)).alias(f"inf|{s.name}"),
            ]
        row = train.agg(*aggs).collect()[0].asDict()
        for s in numeric:
            if row[f"bad|{s.name}"]:
                raise ExporterError(
                    f"{source}: column '{s.name}' has {row[f'bad|{s.name}']} training value(s) that are not numbers"
                )
            if row[f"inf|{s.name}"]:
                raise ExporterError(
                    f"{source}: column '{s.name}' has {row[f'inf|{s.name}']} infinite training value(s): expected "
                    "finite numbers (an empty cell or NaN is a missing value)"
                )
            stats[s.name] = {k: row[f"{k}|{s.name}"] for k in ("n", "mean", "std", "min", "max", "median")}
    fitted = []
    for s in specs:
        if s.kind == F.HISTORY:
            continue
        if s.kind == F.CATEGORICAL:
            feature = _fit_categorical_spark(train, s, dtypes[s.name], n_rows)
            fitted.append(replace(feature, spec=I.spec_for_missing(s, origins or {}, feature.stats["missing_rate"])))
            continue
        st = stats[s.name]
        present = int(st["n"])
        s = I.spec_for_missing(s, origins or {}, 1.0 - present / n_rows)
        if present == 0:
            if s.fill is None:
                raise ExporterError(
                    f"{source}: column '{s.name}' has no values in the training rows: give it a 'fill' in the "
                    "schema or leave it out of the features"
                )
            fill = float(s.fill)
            record: dict[str, Any] = dict.fromkeys(("mean", "std", "min", "max", "median"))
            record["missing_rate"] = 1.0
        else:
            median = float(st["median"])
            fill = float(s.fill) if s.fill is not None else median
            record = {k: float(st[k]) for k in ("mean", "std", "min", "max")}
            record["median"] = median
            record["missing_rate"] = float((n_rows - present) / n_rows)
            record["median_rank_error"] = 1.0 / QUANTILE_ACCURACY
        fitted.append(F.FittedFeature(s, dtypes[s.name], fill, [], None, record))
    if not any(s.kind == F.HISTORY for s in specs):
        return F.FeaturePlan(fitted)
    if sample is None:
        raise ExporterError(f"{source}: fitting a history column on Spark needs a sample of the table's rows")
    by_name = {f.name: f for f in fitted}
    histories = fit_histories_spark(
        train, specs, by_name, sample, lambda s, dtype: _fit_categorical_spark(train, s, dtype, n_rows), source=source
    )
    return F.FeaturePlan([f for s in specs for f in (histories[s.name] if s.kind == F.HISTORY else [by_name[s.name]])])


def _fit_categorical_spark(train: Any, spec: F.FeatureSpec, dtype: str, n_rows: int) -> Any:
    from pyspark.sql import functions as Fn

    col = Fn.col(f"`{spec.name}`")
    if dtype == "string":
        value = col.cast("string")
    elif dtype == "bool":
        value = col.cast("boolean").cast("long")
    else:
        value = col.cast("double").cast("long")
    grouped = train.select(value.alias("v")).where(Fn.col("v").isNotNull()).groupBy("v").count()
    totals = grouped.agg(Fn.count("*").alias("distinct"), Fn.sum("count").alias("present")).collect()[0]
    distinct, present = int(totals["distinct"]), int(totals["present"] or 0)
    ordered = grouped.orderBy(Fn.desc("count"), Fn.asc("v"))
    top = [(r["v"], int(r["count"])) for r in ordered.limit(F.TOP_VALUES).collect()]
    keys: list[int] = []
    vocab: list[str] | None = None
    if spec.hash_buckets is None:
        kept_df = ordered.where(Fn.col("count") >= spec.min_count)
        if spec.max_size is not None:
            kept_df = kept_df.limit(int(spec.max_size))
        kept = [(r["v"], int(r["count"])) for r in kept_df.collect()]
        if dtype == "string":
            vocab = [str(v) for v, _ in kept]
            keys = list(range(len(vocab)))
        else:
            keys = [int(v) for v, _ in kept]
        covered = sum(c for _, c in kept)
    else:
        covered = present
    stats = {
        "missing_rate": float((n_rows - present) / n_rows) if n_rows else 0.0,
        "distinct": distinct,
        "coverage": float(covered / present) if present else 0.0,
        "top_values": [{"value": v if isinstance(v, str) else int(v), "count": c} for v, c in top],
    }
    return F.FittedFeature(spec, dtype, None, keys, vocab, stats)


# --------------------------------------------------------------------------- encoding on the executors


def _encoder(plan_json: str, labels: Mapping[str, str], kinds: Mapping[str, str], source: str) -> Callable[..., Any]:
    """A ``mapInArrow`` function: raw record batches -> prepared features ``f0..``, labels and the split code."""

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        plan = F.FeaturePlan.from_dict(json.loads(plan_json), source="feature plan")
        for batch in batches:
            if batch.num_rows == 0:
                continue
            frame = batch.to_pandas()
            raw = plan.encode(frame, source=f"{source} (row numbers count within one Spark batch)")
            x = plan.prepare(raw)
            arrays = [pa.array(x[:, j]) for j in range(x.shape[1])]
            names = [f"f{j}" for j in range(x.shape[1])]
            if labels:
                y = I.read_labels(frame, labels, source=source, kinds=kinds)
                for name in labels:
                    arrays.append(pa.array(np.asarray(y[name], dtype=np.float64)))
                    names.append(f"y_{name}")
            arrays.append(pa.array(frame[SPLIT_COLUMN].to_numpy(dtype=np.int8)))
            names.append(SPLIT_COLUMN)
            yield pa.RecordBatch.from_arrays(arrays, names=names)

    return encode


def positive_class_label(df: Any, column: str, positive: Any, where: str) -> Any:
    """``df`` with ``column`` as 0/1 (``--positive-class`` ``positive`` is 1, an empty cell stays empty), after
    checking on its grouped values that it holds ``positive`` and one other value (the errors of a table read
    whole: :class:`exporter.training.inputs.PositiveClasses`). Two values are one class as there: ``2``, ``2.0``
    and ``"2"``; ``true`` and ``"True"``; text with its surrounding blanks stripped."""
    from pyspark.sql import functions as SF

    col = SF.col(f"`{column}`")
    seen = I.PositiveClasses(column, positive)
    for r in df.where(col.isNotNull()).groupBy(col.alias("value")).count().limit(POSITIVE_CLASS_VALUES).collect():
        seen.add_value(r["value"], int(r["count"]))
    seen.check(where)
    kind, value = I.class_key(positive)
    if kind == "number":
        is_positive = col.cast("double") == float(value)
    elif kind == "bool":
        is_positive = SF.lower(SF.trim(col.cast("string"))) == ("true" if value else "false")
    else:
        is_positive = SF.trim(col.cast("string")) == value
    return df.withColumn(column, SF.when(col.isNull(), SF.lit(None)).otherwise(is_positive.cast("double")))


#: the distinct values of a ``--positive-class`` label a Spark run brings to the driver to check (two are allowed;
#: the rest only make the error's list of values)
POSITIVE_CLASS_VALUES = 1000


def _encoded_schema(n_features: int, labels: Sequence[str]) -> str:
    cols = [f"f{j} double" for j in range(n_features)] + [f"y_{n} double" for n in labels]
    return ", ".join([*cols, f"{SPLIT_COLUMN} tinyint"])


def _sample(df: Any, code: int, total: int, seed: int) -> Any:
    part = df.where(df[SPLIT_COLUMN] == code)
    if total > SAMPLE_ROWS:
        part = part.sample(False, min(1.0, 1.2 * SAMPLE_ROWS / total), seed).limit(SAMPLE_ROWS)
    return part


def _to_pandas(df: Any) -> pd.DataFrame:
    return df.toArrow().to_pandas()


# --------------------------------------------------------------------------- prepare


def prepare_spark(params: ExportParams, options: SparkOptions) -> tuple[Prepared, SparkRun]:
    """Checks, split, feature plan and bounded samples: a :class:`Prepared` the shared export step takes."""
    from exporter.export.streaming import record_phase

    started = time.perf_counter()
    check_options(options, params)
    spec = get_spec(params.model)
    if isinstance(params.seed, bool) or not isinstance(params.seed, int) or not 0 <= params.seed <= 2**32 - 1:
        raise ExporterError(f"--seed must be an integer from 0 to {2**32 - 1}, got {params.seed!r}")
    if params.version is not None and C.version_problem(params.version):
        raise ExporterError(str(C.version_problem(params.version)))
    hparams = H.resolve_hparams(spec, params.hparams)
    RF.require_in_memory(hparams, "a Spark run")
    schema = F.load_schema(params.schema, source="schema")
    F.check_no_built_history(schema, "on Spark (--engine spark)")
    label_name = params.label or (schema.label if schema is not None else None)
    needs = spec.label_needs(hparams)
    labels = I.label_map([n.name for n in needs], label_name)
    from exporter.export import repository as repo
    from exporter.export.write import renamed_model_names

    repo.check_target(Path(params.artifacts), renamed_model_names(spec.model_names, params.model_name), params.version)
    columns: list[str] | None = None
    if params.feature_columns is not None:
        columns = D.validate_feature_columns(params.feature_columns, source="feature_columns")

    workdir = Path(tempfile.mkdtemp(prefix="exporter-spark-train-"))
    spark, created = spark_session(options.master, dict(options.conf), f"exporter export {params.model}", 8192, workdir)
    run: SparkRun | None = None
    try:
        path = str(params.data_path)
        where = f"data {path}"
        df = read_data(spark, path)
        sample = _to_pandas(df.limit(SCHEMA_ROWS))
        columns, note, positive = I.choose_features(
            sample, spec.default_features, columns, schema, labels, needs,
            positive_class=params.positive_class, exclude_columns=params.exclude_columns, source=where,
        )  # fmt: skip
        D.check_columns(sample, columns, what="feature", source=where)
        clash = sorted(set(columns) & set(labels.values()))
        if clash:
            raise ExporterError(f"column(s) {', '.join(clash)} cannot be both a feature and a label")
        I.check_labels(sample, needs, labels, source=where)
        optional = {n.name for n in needs if not n.required}
        labels = {n: c for n, c in labels.items() if n not in optional or c in sample.columns}
        specs, origins = F.resolve_specs(sample, columns, schema, I.default_specs())
        spec.check_histories([s.name for s in specs if s.kind == F.HISTORY])
        F.check_id_range(sample, specs, origins, source=where)
        dtypes = {s.name: read_column(sample[s.name], s, source=where).dtype for s in specs if s.kind != F.HISTORY}

        keys = spec.split_keys(columns, hparams, {s.name: s.tower for s in specs}) or _hashable_spark_columns(df)
        expr = S.spark_split_expression(keys, seed=params.seed, validation=S.DEFAULT_VALIDATION, test=S.DEFAULT_TEST)
        df = df.selectExpr("*", f"CAST({expr} AS TINYINT) AS {SPLIT_COLUMN}")
        # the label as 0/1 after the split, which hashes the table's own values as the local split does
        kinds = {n.name: n.kind for n in needs}
        target = I.positive_target(labels, kinds) if positive is not None else None
        if target is not None:
            df = positive_class_label(df, labels[target], positive, where)
        counted = {int(r[SPLIT_COLUMN]): int(r["count"]) for r in df.groupBy(SPLIT_COLUMN).count().collect()}
        counts = {
            "train_rows": counted.get(S.TRAIN, 0),
            "validation_rows": counted.get(S.VALIDATION, 0),
            "test_rows": counted.get(S.TEST, 0),
        }
        counts["rows"] = sum(counts.values())
        if counts["train_rows"] == 0 or counts["test_rows"] == 0:
            raise ExporterError(f"{where}: {counts['rows']} rows leave no training or no test rows; need more data")
        train_rows = df.where(df[SPLIT_COLUMN] == S.TRAIN)
        plan = fit_plan_spark(train_rows, specs, dtypes, source=where, origins=origins, sample=sample)
        needed = [*columns, *labels.values(), SPLIT_COLUMN]
        encoder = _encoder(json.dumps(plan.to_dict()), labels, kinds, where)
        width = len(plan.columns)  # a history column is max_length tensor columns
        encoded = df.select(*[f"`{c}`" for c in needed]).mapInArrow(encoder, _encoded_schema(width, list(labels)))
        encoded = encoded.persist()
        feature_cols = [f"f{j}" for j in range(width)]

        def arrays(part: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            x = part[feature_cols].to_numpy(dtype=np.float64) if len(part) else np.zeros((0, width))
            y = {n: part[f"y_{n}"].to_numpy(dtype=np.float64) for n in labels}
            for need in needs:
                if need.name in y and need.kind == BINARY:
                    y[need.name] = y[need.name].astype(np.float64)
            return x, y

        raw_train_df = _sample(df, S.TRAIN, counts["train_rows"], params.seed)
        raw_test_df = _sample(df, S.TEST, counts["test_rows"], params.seed + 1)
        train_frame = _to_pandas(raw_train_df.select(*[f"`{c}`" for c in needed]))
        test_frame = _to_pandas(raw_test_df.select(*[f"`{c}`" for c in needed]))
        raw_train = plan.encode(train_frame, source=where)
        raw_test = plan.encode(test_frame, source=where)
        x_train, x_test = plan.prepare(raw_train), plan.prepare(raw_test)
        y_train = I.read_labels(train_frame, labels, source=where, kinds=kinds)
        y_test = I.read_labels(test_frame, labels, source=where, kinds=kinds)
        valid = _to_pandas(_sample(encoded, S.VALIDATION, counts["validation_rows"], params.seed + 2))
        x_valid, y_valid = arrays(valid)
        for need in needs:
            if need.kind == BINARY and need.required and need.name in y_train:
                for part, y in (("training", y_train), ("test", y_test)):
                    if len(np.unique(y[need.name])) < 2:
                        raise ExporterError(
                            f"{where}: the {part} labels '{labels[need.name]}' hold one class (in a sample of "
                            f"{len(y[need.name])} rows): a click label needs both 0 and 1"
                        )
        H.check_memory(spec.name, hparams, plan.cardinalities, min(counts["train_rows"], SAMPLE_ROWS))
        prep = Prepared(
            spec,
            params,
            list(plan.columns),
            hparams,
            path,
            train_frame.drop(columns=[SPLIT_COLUMN]),
            test_frame.drop(columns=[SPLIT_COLUMN]),
            x_train,
            x_test,
            y_train,
            y_test,
            plan,
            None,
            raw_train,
            raw_test,
            labels,
            origins,
            note,
            positive_class=positive,
        )
        # features that carry nothing or that the model misuses: the Spark aggregations' statistics, the driver's
        # sample of training rows
        prep.column_warnings = K.column_warnings(
            train_frame, plan, x_train, np.arange(counts["train_rows"])
        ) + spec.column_warnings(train_frame, None, plan, hparams)
        prep.evaluation_inputs = spec.spark_evaluation_inputs(
            df, SPLIT_COLUMN, columns, hparams, {s.name: s.tower for s in specs}, labels, params.seed
        )
        run = SparkRun(spark, created, workdir, encoded, feature_cols, labels, counts, options, x_valid, y_valid)
        prep.training_record = engine_record(run, params.seed, keys)
        prep.reading = {
            "path": "spark",
            "reason": f"--engine spark on {spark.sparkContext.master}, {options.num_workers} training workers",
            "rows_read": counts["rows"],
            "rows": {k.removesuffix("_rows"): counts[k] for k in ("train_rows", "validation_rows", "test_rows")},
            "rows_in_memory": {"train": len(train_frame), "validation": len(x_valid), "test": len(test_frame)},
        }
        record_phase(prep, "prepare", time.perf_counter() - started)  # with the session's start-up
        return prep, run
    except BaseException as exc:
        if run is None:
            SparkRun(spark, created, workdir, None, [], {}, {}, options, np.zeros((0, 0)), {}).close()
        if isinstance(exc, ExporterError) or not _is_spark_failure(exc):
            raise
        raise ExporterError(f"Spark job failed: {spark_error(exc)}") from None


def _is_spark_failure(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("py4j", "pyspark"))


def engine_record(run: SparkRun, seed: int, keys: Sequence[str]) -> dict[str, Any]:
    """The training record's engine entries: where it ran, how wide, and the rows of each split."""
    sc = run.spark.sparkContext
    return {
        "engine": "spark",
        "spark_master": sc.master,
        "num_workers": run.options.num_workers,
        "spark_version": sc.version,
        **run.counts,
        "sample_rows": SAMPLE_ROWS,
        "split": S.describe(seed, keys, S.DEFAULT_VALIDATION, S.DEFAULT_TEST),
    }


# --------------------------------------------------------------------------- training


def fit_spark(prep: Prepared, run: SparkRun) -> Trained:
    """Train on the cluster; the model comes back to the driver as the framework's own object (the phase's wall
    time and the driver's peak RSS recorded as the streamed path records them)."""
    from exporter.export.streaming import record_phase

    started = time.perf_counter()
    try:
        if prep.spec.name == "xgb":
            trained = _fit_xgb(prep, run)
        else:
            from exporter.export.spark_torch import fit_torch

            train = run.encoded.where(run.encoded[SPLIT_COLUMN] == S.TRAIN).drop(SPLIT_COLUMN)
            trained = fit_torch(prep, run, train)
        record_phase(prep, "train", time.perf_counter() - started)
        started = time.perf_counter()
        test = run.encoded.where(run.encoded[SPLIT_COLUMN] == S.TEST)
        metrics, rows = heldout_metrics(test, trained, prep.spec, list(run.label_cols))
        prep.heldout_metrics = metrics
        prep.reading["heldout_metrics"] = {"rows": rows, "names": sorted(metrics), "by": "spark"}
        record_phase(prep, "heldout_metrics", time.perf_counter() - started)
        return trained
    except ExporterError:
        raise
    except Exception as exc:
        if not _is_spark_failure(exc) and not type(exc).__module__.startswith("xgboost"):
            raise
        raise ExporterError(f"Spark training failed: {spark_error(exc)}") from None


def _fit_xgb(prep: Prepared, run: SparkRun) -> Trained:
    import logging

    from pyspark.sql import functions as Fn
    from xgboost.spark import SparkXGBClassifier

    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)

    hp = prep.hparams
    data = run.encoded.where(run.encoded[SPLIT_COLUMN] != S.TEST).withColumn(
        "__valid", Fn.col(SPLIT_COLUMN) == Fn.lit(S.VALIDATION)
    )
    has_valid = run.counts["validation_rows"] > 0
    stopping: dict[str, Any] = {}
    if has_valid:  # the validation rows are xgboost's evaluation set; early stopping watches them
        stopping["validation_indicator_col"] = "__valid"
        if hp.get("early_stopping_rounds"):
            stopping["early_stopping_rounds"] = int(hp["early_stopping_rounds"])
    classifier = SparkXGBClassifier(
        features_col=run.feature_cols,
        label_col="y_label",
        num_workers=run.options.num_workers,
        n_estimators=int(hp["n_estimators"]),
        max_depth=int(hp["max_depth"]),
        learning_rate=float(hp["learning_rate"]),
        subsample=float(hp["subsample"]),
        colsample_bytree=float(hp["colsample_bytree"]),
        min_child_weight=float(hp["min_child_weight"]),
        reg_lambda=float(hp["reg_lambda"]),
        random_state=int(prep.params.seed),
        eval_metric="logloss",
        tree_method="hist",
        verbose=False,
        **stopping,
    )
    model = classifier.fit(data)
    booster = model.get_booster()
    budget, rounds = int(hp["n_estimators"]), booster.num_boosted_rounds()
    summary = getattr(model, "training_summary", None)
    train_hist = list((getattr(summary, "train_objective_history", None) or {}).get("logloss", []))
    valid_hist = list((getattr(summary, "validation_objective_history", None) or {}).get("logloss", []))
    history = [
        {
            "step": i + 1,
            "train_loss": float(t),
            "validation_loss": float(valid_hist[i]) if i < len(valid_hist) else math.nan,
        }
        for i, t in enumerate(train_hist)
    ]
    # keep the best round's trees, as a local export does
    best = int(np.argmin(valid_hist[:rounds])) if valid_hist else rounds - 1
    # the booster names its features as Spark's columns (f0, f1, ...); the artifact's model.ubj names them as a
    # local export does, so load mode (and the executors scoring the test rows) read it as one
    booster, stopping = keep_best_round(
        booster, best, list(prep.columns), valid_hist, budget=budget, patience=hp.get("early_stopping_rounds")
    )
    spec: Any = prep.spec
    trained = spec._trained(booster, list(prep.columns), dict(hp), history, prep.features)
    trained.stopping = stopping
    return trained


# --------------------------------------------------------------------------- the whole run


def fit_once(run: SparkRun) -> Callable[[Prepared], Trained]:
    """Training on ``run`` as ``Prepared.fit_elsewhere``: :func:`fit_spark`, then the session is stopped (also
    when training fails)."""

    def fit(prep: Prepared) -> Trained:
        try:
            return fit_spark(prep, run)
        finally:
            run.close()

    return fit


def run_spark(
    params: ExportParams,
    options: SparkOptions,
    echo: Callable[[str], None] | None = None,
    before_export: Callable[[Prepared, Trained, Any], None] | None = None,
    prepared: Callable[[Prepared], None] | None = None,
) -> Any:
    """prepare -> train on Spark -> evaluate and export on the driver, each step timed (a ``pipeline.RunResult``);
    ``prepared`` and ``before_export`` are called as :func:`exporter.export.pipeline.run` calls them."""
    from exporter.export import pipeline as P

    start = last = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[step], last = now - last, now

    prep, run = prepare_spark(params, options)
    try:
        lap("prepare")
        if echo is not None:
            echo(prep.schema_text())
        if prepared is not None:
            prepared(prep)
        trained = fit_spark(prep, run)
        lap("fit")
    finally:
        run.close()
    evaluation = P.evaluate(prep, trained)
    lap("evaluate")
    if before_export is not None:
        before_export(prep, trained, evaluation)
        last = time.perf_counter()
    artifacts = P.export(prep, trained, evaluation)
    lap("export")
    return P.RunResult(prep, trained, evaluation, artifacts, time.perf_counter() - start, timings)
