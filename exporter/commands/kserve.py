"""``python -m exporter kserve``: the CLI over :mod:`exporter.export.kserve` (write or print the InferenceService
manifests)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exporter.export.kserve import (
    API_VERSION,
    DEFAULT_STORAGE_URI,
    MANIFEST_FILE,
    PROTOCOL,
    RUNTIME,
    check_storage_uri,
    manifests,
    to_yaml,
)
from exporter.export.repository import repository_lock, write_text_atomic

HELP = "write (or print) a KServe InferenceService manifest per exported model"
DESCRIPTION = f"""\
Write <artifacts>/<model>/{MANIFEST_FILE} for every model of an artifacts tree (or the models named):
a KServe InferenceService ({API_VERSION}) whose predictor runs the ONNX model on KServe's Triton
runtime ({RUNTIME}, protocol {PROTOCOL}) from the model repository at --storage-uri.
`export` writes the same file; use this command to point the manifests at another storage location.

examples:
  python -m exporter kserve --storage-uri s3://my-bucket/recsys/artifacts
  python -m exporter kserve xgb --stdout | kubectl apply -f -
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kserve``."""
    parser.add_argument("models", nargs="*", metavar="MODEL", help="model names (default: every model in the tree)")
    parser.add_argument("--artifacts", default="artifacts", type=Path, help="artifacts tree (default: %(default)s)")
    parser.add_argument(
        "--storage-uri",
        default=DEFAULT_STORAGE_URI,
        help="where the artifacts tree will live for KServe (default: %(default)s)",
    )
    parser.add_argument(
        "--stdout", action="store_true", help="print the manifests (YAML documents) instead of writing them"
    )


def run(args: argparse.Namespace) -> int:
    """Write or print the manifests."""
    check_storage_uri(args.storage_uri)
    found = manifests(args.artifacts, args.models, storage_uri=args.storage_uri)
    if args.stdout:
        sys.stdout.write("---\n".join(to_yaml(m) for m in found.values()))
        return 0
    for name, manifest in found.items():
        path = args.artifacts / name / MANIFEST_FILE
        with repository_lock(args.artifacts):  # exports publish their kserve.yaml under the same lock
            write_text_atomic(path, to_yaml(manifest))
        print(f"wrote {path} (InferenceService {manifest['metadata']['name']}, storageUri {args.storage_uri})")
    return 0
