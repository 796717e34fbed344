"""``python -m exporter kserve``: the CLI over :mod:`exporter.export.kserve` (write or print the InferenceService
manifests)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exporter.errors import ExporterError
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


def _first_os_error(exc: OSError) -> str:
    """The OS error that started it (removing the temporary file after a failed write fails the same way on a
    read-only file system and would hide the write's own error)."""
    first: BaseException = exc
    while isinstance(first.__context__, OSError):
        first = first.__context__
    assert isinstance(first, OSError)
    return first.strerror or str(first)


def run(args: argparse.Namespace) -> int:
    """Write or print the manifests."""
    check_storage_uri(args.storage_uri)
    found = manifests(args.artifacts, args.models, storage_uri=args.storage_uri)
    if args.stdout:
        sys.stdout.write("---\n".join(to_yaml(m) for m in found.values()))
        return 0
    for name, manifest in found.items():
        path = args.artifacts / name / MANIFEST_FILE
        try:
            with repository_lock(args.artifacts):  # exports publish their kserve.yaml under the same lock
                write_text_atomic(path, to_yaml(manifest))
        except OSError as exc:
            raise ExporterError(f"cannot write {path}: {_first_os_error(exc)}") from None
        print(f"wrote {path} (InferenceService {manifest['metadata']['name']}, storageUri {args.storage_uri})")
    return 0
