"""``python -m exporter bench``: the CLI over :mod:`exporter.tools.serve_bench` (measure, print the tables and
targets)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from exporter.errors import ExporterError
from exporter.export.tree import exported_models
from exporter.scoring.bench import latest_version
from exporter.tools.serve_bench import Results, bench_http, bench_model, bench_scaling, environment, render, targets

HELP = (
    "benchmark native vs onnxruntime vs the handler (both body forms), and the HTTP server under load; "
    "`bench quality`: held-out quality on MovieLens-100k next to baselines; "
    "`bench train`: training in memory vs streamed; "
    "`bench peers`: serve vs TorchServe, KServe and a bare endpoint over HTTP"
)


DESCRIPTION = """\
Benchmark every exported model (latest version) in one run and print tables:

  native      the model's own predict (xgboost inplace_predict on model.ubj; torch eager in
              inference_mode rebuilt from checkpoint.pt)
  ort         raw onnxruntime session.run on a ready float64 array (the handler's session)
  torchserve  handler.handle_bytes on a TorchServe body {"data": [{col: value}, ...]}
  v2          handler.handle_bytes on an Open Inference Protocol body
  v2 binary   handler.handle_http on the same tensor as binary tensor data (Inference-Header-Content-Length),
              answer requested as binary too
  as rows/s, with x = time relative to raw onnxruntime in the same run (lower is better)

and, over HTTP on loopback against `python -m exporter serve`: requests/s, p50 and p99 latency at
batch 1 with --clients concurrent keep-alive connections for --http-seconds (wrk when installed,
otherwise a built-in asyncio client; both run on this machine and share its cores), with the server
process's CPU time per request. --http-log both runs the load twice, against a server writing its
per-request log line and one at --log-level warning. These rows run `serve --workers 1`. --http-scaling
adds rows for the first HTTP model with --workers 1 and 2, metrics on and off (--no-metrics), at batch 1
and 1024, with the same-run ratios.

`python -m exporter bench quality` is another suite: held-out quality on MovieLens-100k next to baselines
(see `python -m exporter bench quality --help`); `python -m exporter bench train` measures training in memory
vs streamed from Parquet (see `python -m exporter bench train --help`); `python -m exporter bench peers` serves
one model with `serve`, TorchServe, KServe's Python server and a bare Starlette endpoint side by side and loads
each over HTTP at batch 1 (see `python -m exporter bench peers --help`).

Example:
  python -m exporter bench --artifacts artifacts --batch-sizes 1 64 1024 --http-seconds 10 --clients 8
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench``."""
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifacts tree (default: artifacts)")
    parser.add_argument("--models", nargs="+", default=None, help="models to benchmark (default: every model found)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 1024], help="default: 1 64 1024")
    parser.add_argument("--http-seconds", type=float, default=10.0, help="load duration per model; 0 skips HTTP")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default: 8)")
    parser.add_argument(
        "--http-models", nargs="+", default=None, help="models to load-test over HTTP (default: the benchmarked models)"
    )
    parser.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="auto: wrk when installed, else the built-in asyncio client",
    )
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per cell (default: 0.3)")
    parser.add_argument(
        "--http-log",
        choices=["on", "off", "both"],
        default="on",
        help="serve with its per-request log line (on), at --log-level warning (off), or both "
        "side by side (default: on)",
    )
    parser.add_argument(
        "--http-scaling",
        action="store_true",
        help="also load the first HTTP model with serve --workers 1 and 2, metrics on and off, at batch 1 and 1024 "
        "(at least 16 connections), and print the same-run ratios",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write all measurements to this JSON file")
    # the suites (`bench quality`, `bench train`, `bench peers`): each module has its HELP, DESCRIPTION,
    # add_arguments() and run()
    from exporter.tools import peers_bench, quality_bench, train_bench

    suites = parser.add_subparsers(
        dest="suite",
        metavar="SUITE",
        help="quality: the MovieLens-100k quality benchmark; train: training in memory vs streamed; "
        "peers: serve vs other model servers over HTTP",
    )
    for name, module in (("quality", quality_bench), ("train", train_bench), ("peers", peers_bench)):
        suite = suites.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(suite)
        suite.set_defaults(_module=module)


def run(args: argparse.Namespace) -> int:
    """Run every measurement and print the tables and the targets."""
    artifacts = Path(args.artifacts)
    models = exported_models(artifacts, args.models)
    if any(b < 1 for b in args.batch_sizes):
        raise ExporterError("--batch-sizes must be positive integers")
    if args.clients < 1:
        raise ExporterError("--clients must be at least 1")
    # OpenMP threads of torch/xgboost busy-wait after each call by default; on a small shared machine that
    # makes the native column measure contention, not the model. Passive waiting is the usual serving setting.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    results = Results()
    print(f"# exporter bench: {environment()}", flush=True)
    for model in models:
        vdir = latest_version(artifacts, model)
        print(f"measuring {model} ({vdir}) ...", file=sys.stderr, flush=True)
        results.cells.extend(bench_model(model, vdir, list(args.batch_sizes), args.min_time))
    if args.http_seconds > 0:
        http_models = args.http_models or models
        print(
            f"HTTP load: {', '.join(http_models)}, {args.clients} clients, {args.http_seconds:g} s each ...",
            file=sys.stderr,
            flush=True,
        )
        modes = {"on": ("on",), "off": ("off",), "both": ("on", "off")}[args.http_log]
        results.http = bench_http(artifacts, http_models, args.http_seconds, args.clients, args.load_generator, modes)
        if args.http_scaling:
            print(
                f"HTTP scaling: {http_models[0]}, workers 1 and 2, metrics on and off ...", file=sys.stderr, flush=True
            )
            clients = max(16, args.clients)
            results.scaling = bench_scaling(artifacts, http_models[0], args.http_seconds, clients, args.load_generator)
    print()
    print(render(results))
    print()
    for line in targets(results):
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": environment(),
                    "cells": [c.__dict__ for c in results.cells],
                    "http": [h.__dict__ for h in results.http],
                    "scaling": [h.__dict__ for h in results.scaling],
                },
                indent=2,
            )
        )
    return 0
