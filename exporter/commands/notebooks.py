"""``python -m exporter notebooks``: the CLI over :mod:`exporter.tools.notebooks` (plan, run each notebook, keep
reports)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from exporter.errors import ExporterError
from exporter.tools.notebooks import (
    Outcome,
    artifacts_option,
    check_kernel,
    notebook_names,
    plan,
    rename_deprecated,
    resolve_overrides,
    run_one,
    select,
)

HELP = "run the model notebooks headless (papermill) and store each executed notebook beside its artifact"


DESCRIPTION = """\
Run notebooks/<model>.ipynb for the named models (default: all four) through papermill in a fresh
kernel, with the notebook's default parameters plus -p overrides, export into --artifacts and store the
executed notebook as report.ipynb in each new version directory (two_tower: in two_tower/<v>/ and
two_tower_item/<v>/). Prints the wall time of each notebook. Stops at the first failing notebook with the
failing cell's error and keeps that executed notebook for inspection.

Values of -p are read as JSON when they parse (numbers, true/false/null, lists such as '["a","b"]'),
as True/False/None like papermill, else as strings. Relative paths in -p values and --artifacts are
relative to the current directory. A parameter only some of the named notebooks have is passed to those.

examples:
  python -m exporter notebooks
  python -m exporter notebooks xgb deepfm -p rows 50000
  python -m exporter notebooks deepfm -p max_epochs 10 -p learning_rate 0.002 --output-dir reports/
  python -m exporter notebooks xgb -p mode load -p checkpoint_path artifacts/xgb/1/model.ubj
  python -m exporter notebooks xgb -p artifacts_dir /tmp/repo   # the same as --artifacts /tmp/repo

exit codes: 0 ok, 1 a notebook failed, 2 bad parameters (one line says what), 3 parity gate failed."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"notebooks to run: {', '.join(notebook_names())} (default: all, in this order)",
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a notebook parameter (repeatable), e.g. -p rows 5000",
    )
    p.add_argument(
        "--artifacts", default="artifacts", help="model repository the notebooks export into (default: %(default)s)"
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="also keep each executed notebook as DIR/<name>.ipynb (default: only report.ipynb "
        "beside the artifact; a failed notebook is kept in a temporary directory)",
    )
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    cwd = Path.cwd()
    names = select(args.names)
    check_kernel(args.kernel)
    pairs, artifacts_arg = artifacts_option(args.parameter, args.artifacts)  # -p artifacts_dir X = --artifacts X
    artifacts = (cwd / artifacts_arg).resolve()
    if artifacts.exists() and not artifacts.is_dir():
        raise ExporterError(f"--artifacts {artifacts} exists and is not a directory")
    pairs, notes = rename_deprecated(pairs)
    for note in notes:
        print(note, file=sys.stderr)
    overrides = resolve_overrides(pairs, cwd)
    plans = plan(names, overrides, artifacts)
    keep_dir = (cwd / args.output_dir).resolve() if args.output_dir else None
    if keep_dir is not None:
        try:
            keep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExporterError(f"cannot create --output-dir {keep_dir}: {exc.strerror or exc}") from exc
    work = Path(tempfile.mkdtemp(prefix="exporter-notebooks-"))
    keep_work = False  # set when a failed notebook's only copy is in ``work``
    outcomes: list[Outcome] = []
    total = time.perf_counter()
    try:
        for p in plans:
            executed = (keep_dir or work) / f"{p.name}.ipynb"
            note = f" (not a parameter here: {', '.join(p.ignored)})" if p.ignored else ""
            target = f"version {p.version}" if p.version is not None else "the next free version"
            print(f"{p.name}: running {p.source.name} -> {target}{note}", flush=True)
            try:
                outcome = run_one(p, artifacts, executed, args.kernel)
            except ExporterError:
                # keep the temporary directory only when it holds the executed notebook the error names
                keep_work = keep_dir is None and executed.exists()
                raise
            outcomes.append(outcome)
            where = ", ".join(str(r.parent) for r in outcome.reports)
            print(f"{p.name}: ok in {outcome.seconds:.1f}s, report.ipynb in {where}", flush=True)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'notebook':<10} {'seconds':>8}")
    for o in outcomes:
        print(f"{o.name:<10} {o.seconds:>8.1f}")
    print(f"{'total':<10} {time.perf_counter() - total:>8.1f}")
    return 0
