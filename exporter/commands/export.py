"""``python -m exporter export MODEL``: train or load, export to ONNX, check parity, write the artifact."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError

HELP = "train (or load) a model, export it to ONNX with metadata, and gate on parity"
DESCRIPTION = """\
Train a model on built-in synthetic data (or --data), or load one (--mode load --checkpoint ...),
export it to ONNX with v2 metadata into a Triton-style repository, and check that onnxruntime
agrees with the native model on held-out rows (exit 3 when it does not; nothing is written then).

models: {models}, or all.

hyper-parameters (--param KEY=VALUE) and their rules; a run whose parameters would not fit in the available
memory is refused before training:
{hparams}

examples:
  python -m exporter export all
  python -m exporter export xgb --rows 50000 --param n_estimators=300 --param max_depth=6
  python -m exporter export xgb --mode load --checkpoint model.json --feature-meta feature_meta.json
  python -m exporter export deepfm --mode load --checkpoint artifacts/deepfm/1/checkpoint.pt
  python -m exporter export deepfm --data clicks.csv --label clicked --schema schema.json --model-name deepfm_clicks
  python -m exporter export xgb --data sessions.csv --label outcome --positive-class cp --exclude-columns session_id

features: numeric or categorical (integer IDs, strings, booleans), declared with --schema or inferred from the
data and printed before training; empty cells are allowed (numeric: the training median, categorical: the
out-of-vocabulary row). See docs/features.md.

exit codes: 0 ok, 2 bad input (one line says what), 3 parity gate failed, 4 held-out AUC below --min-auc."""


def _models_help() -> str:
    """The registered models, naming what a model with several repository entries writes."""
    from exporter.models import get_spec, model_names

    parts = []
    for name in model_names():
        written = get_spec(name).model_names
        parts.append(name if list(written) == [name] else f"{name} (writes {' and '.join(written)})")
    return ", ".join(parts)


def _hparams_help() -> str:
    """Every model's hyper-parameters with their defaults and rules (the bounds errors name too)."""
    from exporter.models import get_spec, model_names
    from exporter.training.hparams import rule_for

    lines = []
    for name in model_names():
        spec = get_spec(name)
        lines.append(f"  {name}:")
        for key, default in spec.default_hparams.items():
            shown = json.dumps(default)
            shown = f" (default {shown})" if len(shown) <= 30 else ""
            lines.append(f"    {key}{shown}: {rule_for(spec, key)[1]}")
    return "\n".join(lines)


def _describe_on_demand(p: argparse.ArgumentParser) -> None:
    """Fill in the models line only when help is shown: naming what each spec writes imports the specs
    (and torch), which every other command would otherwise pay for at start-up."""
    plain = p.format_help

    def format_help() -> str:
        p.description = DESCRIPTION.replace("{models}", _models_help()).replace("{hparams}", _hparams_help())
        return plain()

    p.format_help = format_help  # type: ignore[method-assign]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from exporter.models import model_names

    _describe_on_demand(p)
    p.add_argument("model", help=f"{', '.join(model_names())} or all")
    add_export_options(p)


def add_export_options(p: argparse.ArgumentParser) -> None:
    """The data, training and output options of an export (``tune`` takes the same)."""
    p.add_argument("--artifacts", default="artifacts", help="model repository root (default: %(default)s)")
    p.add_argument("--version", type=int, default=None, help="version number to write (default: next free integer)")
    p.add_argument("--mode", default="train", help="train (default) or load an existing model")
    p.add_argument(
        "--data",
        default=None,
        help="CSV or Parquet file, a directory of them or a glob, with the feature and label columns "
        "(default: synthetic)",
    )
    p.add_argument("--rows", type=int, default=20_000, help="rows of synthetic data (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed for data, split and training (default: %(default)s)"
    )
    p.add_argument("--checkpoint", default=None, help="load mode: xgboost .json/.ubj model or torch checkpoint.pt")
    p.add_argument(
        "--feature-meta", default=None, help='JSON file with {"feature_columns": [...]}: sets the input columns'
    )
    p.add_argument(
        "--feature-columns", default=None, help="comma-separated input columns (default: the contract's schema)"
    )
    p.add_argument(
        "--label",
        default=None,
        help="the binary (0/1 or true/false) label column (default: the schema's label, else 'label')",
    )
    p.add_argument(
        "--positive-class",
        default=None,
        metavar="VALUE",
        help="the label value that means 1 when the label column holds two other values (e.g. yes, cp, clicked); "
        "the other value is 0 (default: the schema's positive_class, else the label must be 0/1 or true/false)",
    )
    p.add_argument(
        "--exclude-columns",
        default=None,
        metavar="A,B",
        help="comma-separated columns to leave out of the automatically chosen features (e.g. a row ID or a name)",
    )
    p.add_argument(
        "--schema",
        default=None,
        metavar="FILE",
        help="JSON feature schema: kind (numeric/categorical), fill, optional, vocabulary policy, tower "
        "per column, and the label (see docs/features.md); default: inferred from the data",
    )
    p.add_argument(
        "--min-auc",
        type=float,
        default=None,
        metavar="X",
        help="exit 4 and write nothing when the held-out AUC is below X (a warning below 0.55 always)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="repository name to export under (two_tower: NAME and NAME_item); default: the model's own",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="hyper-parameter override, repeatable (e.g. max_epochs=30, patience=5, n_estimators=300, hidden=[64,32])",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="parity tolerance: every value within atol + rtol * |native| of the native model, rtol the model's "
        "(0, or 1e-4 for a torch network computing in float32) (default: 1e-5)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads training uses (torch intra-op threads, xgboost's nthread unless n_jobs is set); "
        "default: xgboost every core, torch one thread per 2,048 rows of its batch (one at the default batches)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="Triton config.pbtxt max_batch_size: largest batch its dynamic batcher forms (default: %(default)s)",
    )
    p.add_argument(
        "--storage-uri",
        default=None,
        help="where the artifacts tree will live for KServe, written into <model>/kserve.yaml "
        "(default: pvc://model-repository/artifacts)",
    )
    p.add_argument(
        "--engine",
        default="local",
        choices=("local", "spark"),
        help="where to train: this machine, or Spark (fits features and trains on the cluster; --data needed; "
        "default: %(default)s)",
    )
    p.add_argument("--spark-master", default=None, metavar="URL", help="spark engine: master URL (default: local[*])")
    p.add_argument(
        "--num-workers",
        type=int,
        default=2,
        metavar="N",
        help="spark engine: training workers (xgboost.spark workers / TorchDistributor processes; default: 2)",
    )
    p.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="spark engine: extra Spark configuration, repeatable",
    )
    p.add_argument(
        "--streaming",
        choices=("auto", "on", "off"),
        default="auto",
        help="read --data in memory (off), stream it in record batches with memory flat in rows (on), or choose "
        "by its size (auto, the default: streams beyond about 10 million cells); the choice is printed",
    )
    add_tracking_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def _spark_options(args: argparse.Namespace) -> Any:
    from exporter.commands.key_values import key_values
    from exporter.export.spark_train import SparkOptions

    conf = key_values(args.spark_conf, "--spark-conf")
    return SparkOptions(master=args.spark_master, num_workers=args.num_workers, conf=conf)


def add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    """--tracking-uri and --no-tracking, shared by export, tune, track and runs."""
    p.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking store: http(s)://HOST:PORT or sqlite:///PATH (default: $MLFLOW_TRACKING_URI, else "
        "the embedded SQLite store mlruns/mlflow.db beside the --artifacts tree)",
    )
    p.add_argument(
        "--no-tracking",
        action="store_true",
        help="do not log this export as an MLflow run (also: EXPORTER_TRACKING=off)",
    )


def parse_params(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON when they parse as JSON (numbers, lists), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ExporterError(f"--param expects KEY=VALUE, got '{item}'")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _note(text: str) -> None:
    """With --json, stdout carries only the JSON: the run's notes go to stderr."""
    print(text, file=sys.stderr, flush=True)


def export_params(args: argparse.Namespace, model: str, columns: list[str] | None, hparams: dict[str, Any]) -> Any:
    """The pipeline's ExportParams from export's options (``tune`` shares them)."""
    from exporter.export import pipeline

    return pipeline.ExportParams(
        model=model,
        mode=args.mode,
        data_path=args.data,
        rows=args.rows,
        seed=args.seed,
        feature_columns=columns,
        checkpoint=args.checkpoint,
        feature_meta=args.feature_meta,
        hparams=hparams,
        atol=args.atol,
        artifacts=args.artifacts,
        version=args.version,
        progress=not args.quiet,
        max_batch_size=args.max_batch_size,
        storage_uri=args.storage_uri,
        label=args.label,
        schema=args.schema,
        min_auc=args.min_auc,
        model_name=args.model_name,
        positive_class=args.positive_class,
        exclude_columns=args.exclude_columns,
        streaming=args.streaming,
        log=_note if args.json else None,
        threads=args.threads,
    )


def _from_mlflow(args: argparse.Namespace, workdir: Path, columns: list[str] | None) -> list[str] | None:
    """Download the MLflow model ``--checkpoint`` names; the local file becomes the checkpoint, the signature's
    columns the feature columns (unless --feature-columns or --feature-meta name them)."""
    from exporter.models import get_spec
    from exporter.tracking.mlflow_load import localize
    from exporter.tracking.store import resolve

    spec = get_spec(args.model)
    found = localize(args.checkpoint, resolve(args.artifacts, args.tracking_uri), spec.framework, spec.name, workdir)
    args.checkpoint = str(found.checkpoint)
    if columns is None and args.feature_meta is None and found.columns:
        return found.columns
    return columns


def run(args: argparse.Namespace) -> int:
    from exporter.export import pipeline
    from exporter.models import get_spec, model_names
    from exporter.tools import summary
    from exporter.tracking.mlflow_load import is_mlflow_uri
    from exporter.tracking.runs import Extras
    from exporter.tracking.session import ExportTracking
    from exporter.tracking.store import enabled

    if args.model == "all":
        if args.mode != "train" or args.checkpoint:
            raise ExporterError("'all' trains every model; export one model at a time in load mode")
        models = model_names()
        if args.model_name:
            raise ExporterError("--model-name names one model: export one model at a time to rename it")
    else:
        get_spec(args.model)  # unknown names fail here, before any work
        models = [args.model]
    columns = [c.strip() for c in args.feature_columns.split(",")] if args.feature_columns else None
    hparams = parse_params(args.param)
    start = time.perf_counter()
    results = []
    shown: set[str] = set()

    def echo(text: str) -> None:  # the feature schema, once per distinct schema (stdout: stderr is for errors)
        if text not in shown and not args.json:
            shown.add(text)
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="exporter-mlflow-") as workdir:
        if args.mode == "load" and is_mlflow_uri(args.checkpoint):  # models:/NAME/VERSION or runs:/RUN_ID/PATH
            columns = _from_mlflow(args, Path(workdir), columns)
        for name in models:
            tracking = ExportTracking(args.artifacts, args.tracking_uri, enabled=enabled(args.no_tracking))
            params = export_params(args, name, columns, hparams if len(models) == 1 else {})
            try:
                if args.engine == "spark":
                    from exporter.export import spark_train

                    result = spark_train.run_spark(
                        params,
                        _spark_options(args),
                        echo=echo,
                        before_export=tracking.start,
                        prepared=tracking.warm_up,
                    )
                else:
                    result = pipeline.run(params, echo=echo, before_export=tracking.start, prepared=tracking.warm_up)
            except BaseException:
                tracking.failed()
                raise
            tracking.log(
                [a.path for a in result.artifacts],
                Extras(history=result.trained.history, timings={**result.timings, "total": result.seconds}),
            )
            results.append(result)
            if not args.json:
                print(summary.format_result(result), flush=True)
                line = tracking.summary()
                if line:
                    print(line, flush=True)
    total = time.perf_counter() - start
    if args.json:
        print(json.dumps(summary.as_json(results, total), indent=2))
    else:
        print(f"done: {sum(len(r.artifacts) for r in results)} artifact(s) in {total:.1f}s", file=sys.stdout)
    return 0
