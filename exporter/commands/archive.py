"""``python -m exporter archive``: the CLI over :mod:`exporter.export.archive` (a TorchServe ``.mar`` of one
version)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build a TorchServe model archive (.mar) of one exported model version"
DESCRIPTION = """\
Build <export-path>/<model>.mar with torch-model-archiver from MODEL[/VERSION] of the artifacts tree
(no VERSION: the highest one). The archive holds the model file, metadata.json, vocab.json when the model
has string categories, and the exporter.runtime package with its TorchServe entry point
(torchserve_entry.py, the archive's handler): TorchServe's Python needs numpy, onnxruntime and orjson,
not this package. The version is loaded and its sha256 checked first; the .mar appears whole or not at all.

examples:
  python -m exporter archive xgb --export-path model_store
  python -m exporter archive mmoe/2 --export-path model_store --force
  torchserve --start --ncs --model-store model_store --models xgb=xgb.mar --disable-token-auth
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``archive``."""
    parser.add_argument("model", metavar="MODEL[/VERSION]", help="model directory name, optionally with a version")
    parser.add_argument(
        "--export-path",
        required=True,
        type=Path,
        metavar="DIR",
        help="directory to write <model>.mar into (TorchServe's --model-store); created if missing",
    )
    parser.add_argument("--artifacts", default="artifacts", type=Path, help="artifacts tree (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace an existing <model>.mar")


def run(args: argparse.Namespace) -> int:
    """Build the archive and say where it is and how to serve it."""
    from exporter.export.archive import build_archive

    result = build_archive(args.model, args.export_path, args.artifacts, force=args.force)
    name = result.model_name
    print(
        f"wrote {result.path} ({name} version {result.version}: {', '.join(result.files)}, exporter/runtime; "
        f"handler torchserve_entry.py)"
    )
    print(
        f"serve it: torchserve --start --ncs --model-store {args.export_path} --models {name}={name}.mar "
        "--disable-token-auth"
    )
    return 0
