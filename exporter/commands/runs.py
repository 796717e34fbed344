"""``python -m exporter runs MODEL``: the recent tracked runs of a model side by side."""

from __future__ import annotations

import argparse

HELP = "compare the recent MLflow runs of a model (parameters, held-out metrics, parity)"
DESCRIPTION = """\
Print the most recent runs of MODEL (its MLflow experiment), newest first: run id, start time, status, kind
(export, tune, trial), artifact version, the hyper-parameters that differ between them, held-out metrics (the
one the model is judged by first) and the parity max difference.

Browse the same runs in MLflow's UI: mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db (docs/tracking.md).

exit codes: 0 ok, 2 bad input, 5 the store is unreachable."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="the model's repository name (xgb, deepfm, ..., or a --model-name)")
    p.add_argument(
        "--artifacts", default="artifacts", help="artifacts tree whose embedded store to read (default: %(default)s)"
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else mlruns/mlflow.db beside --artifacts)",
    )
    p.add_argument("--limit", type=int, default=10, metavar="N", help="most runs to show (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    from exporter.tracking import compare
    from exporter.tracking.store import resolve

    store = resolve(args.artifacts, args.tracking_uri)
    frame = compare.runs_frame(store, args.model, args.limit)
    if args.json:
        print(frame.to_json(orient="records", indent=2))
    else:
        print(compare.format_table(frame, args.model, store))
    return 0
