"""``python -m exporter verify DIR``: the CLI over :func:`exporter.tools.verify.verify` (one line per problem)."""

from __future__ import annotations

import argparse
from pathlib import Path

from exporter.tools.verify import verify
from exporter.tools.verify_sample import DEFAULT_SAMPLE_TIMEOUT

HELP = "check exported artifacts (version, model or whole tree) before a serving team accepts them"


DESCRIPTION = """\
Check what a serving team needs before accepting a handoff, for every version found under DIR
(a version directory such as artifacts/xgb/1, a model directory such as artifacts/xgb, or a whole
artifacts tree):

  - layout: <model>/config.pbtxt and <model>/<positive integer>/{model.onnx, metadata.json,
    sample_request.json, sample_response.json}
  - sha256 of the model file equals metadata.json's
  - metadata.json is a valid Open Inference Protocol metadata_model_response and carries the
    fields of contract section 3 (feature_columns, parity, producer, training, created_at, ...)
  - onnx.checker passes; the graph's single input/output names, element types and shapes match
    metadata.json and config.pbtxt
  - the handler's answer to sample_request.json equals sample_response.json within parity.atol,
    and likewise sample_request_v2.json / sample_response_v2.json when the version has them; the
    samples run in a child process, stopped after --sample-timeout seconds (a FAIL for that version)

Prints one line per problem; exit code 0 only when every check holds, 1 otherwise.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``verify``."""
    parser.add_argument("path", type=Path, metavar="DIR", help="version directory, model directory or artifacts tree")
    parser.add_argument("--quiet", action="store_true", help="print only problems and the summary")
    parser.add_argument(
        "--sample-timeout",
        type=float,
        default=DEFAULT_SAMPLE_TIMEOUT,
        metavar="SECONDS",
        help="stop a version's sample run after this long and report it (default: %(default)g)",
    )


def run(args: argparse.Namespace) -> int:
    """Verify ``args.path`` and print the outcome."""
    report = verify(args.path, sample_timeout=args.sample_timeout)
    if not args.quiet:
        for line in report.passed:
            print(f"ok    {line}")
    for line in report.notes:
        print(f"note  {line}")
    for line in report.problems:
        print(f"FAIL  {line}")
    if report.ok:
        print(f"verify: all checks passed ({len(report.passed)} version(s) under {args.path})")
        return 0
    print(f"verify: {len(report.problems)} problem(s) under {args.path}; not ready for handoff")
    return 1
