"""``python -m exporter track VERSION_DIR ...``: log exported versions as MLflow runs after the fact."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "log exported versions as MLflow runs (when the tracking store was unreachable or off at export time)"
DESCRIPTION = """\
Log one or more exported version directories (e.g. artifacts/xgb/3) as MLflow runs: parameters, held-out
metrics and parity from metadata.json, the model card and samples as files, model.onnx as an MLflow ONNX
model registered under the model's name (tagged with the artifact version and sha256).

A version whose metadata.json names a run of the store (the export opened it, then lost the store) is logged
into that run; otherwise the parts of one export share a new run. The training curve and step timings are
known only while an export runs, so a run logged later has none.

exit codes: 0 logged, 2 bad input (not a version directory, already logged), 5 the store is unreachable."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directories", nargs="+", type=Path, metavar="VERSION_DIR", help="exported version directories")
    p.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else mlruns/mlflow.db beside the artifacts tree)",
    )


def run(args: argparse.Namespace) -> int:
    from exporter.tracking.session import track_versions

    for logged, registered in track_versions(args.directories, args.tracking_uri):
        models = ", ".join(f"{m.name} v{m.version}" for m in registered)
        print(f"run {logged.run_id} in {logged.store.shown()}: registered {models}")
    return 0
