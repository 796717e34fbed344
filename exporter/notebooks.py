"""``python -m exporter notebooks``: run the model notebooks headless with papermill, keep each report beside its artifact.

Every notebook runs in a fresh kernel with its default parameters plus ``-p NAME VALUE`` overrides. The
runner picks the version to write (the next free one unless ``-p model_version N``) and passes it in, so
after a successful run it can copy the executed notebook into that version directory as ``report.ipynb``
(contract section 2). The first failing notebook stops the run with its failing cell's error.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from exporter.errors import ExporterError
from exporter.repository import REPORT_FILE, write_text_atomic

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
  python -m exporter notebooks deepfm -p epochs 10 -p learning_rate 0.002 --output-dir reports/
  python -m exporter notebooks xgb -p mode load -p checkpoint_path artifacts/xgb/1/model.ubj

exit codes: 0 ok, 1 a notebook failed, 2 bad parameters (one line says what), 3 parity gate failed."""

#: model -> notebook file name, in the default run order
NOTEBOOKS: dict[str, str] = {
    "xgb": "xgb.ipynb",
    "deepfm": "deepfm.ipynb",
    "mmoe": "mmoe.ipynb",
    "two_tower": "two_tower.ipynb",
}
#: notebook parameters that name files: relative values are made absolute against the caller's directory
PATH_PARAMETERS = ("data_path", "checkpoint_path", "feature_meta_path", "feature_schema")
#: How papermill runs the kernel. The kernel's own log (a "running over TCP without encryption" notice at
#: start, "KeyboardInterrupt caught" when jupyter_client interrupts it at shutdown) is noise for a local
#: headless run: cell errors reach us through papermill, start-up crashes as tracebacks on stderr. The kernel
#: is stopped at once when the last cell has answered (every output is in by then), which spares the
#: seconds a graceful shutdown of a process holding torch takes.
KERNEL_OPTIONS: dict[str, Any] = {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"], "shutdown_kernel": "immediate"}


def notebooks_dir() -> Path:
    """``notebooks/`` of the checkout holding this package."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"notebooks to run: {', '.join(NOTEBOOKS)} (default: all, in this order)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a notebook parameter (repeatable), e.g. -p rows 5000")
    p.add_argument("--artifacts", default="artifacts",
                   help="model repository the notebooks export into (default: %(default)s)")
    p.add_argument("--output-dir", default=None,
                   help="also keep each executed notebook as DIR/<name>.ipynb (default: only report.ipynb "
                        "beside the artifact; a failed notebook is kept in a temporary directory)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: %(default)s)")


# --------------------------------------------------------------------------- parameters


def parse_value(raw: str) -> Any:
    """A ``-p`` value: JSON when it parses, papermill's True/False/None, else the string itself."""
    literals = {"True": True, "False": False, "None": None}
    if raw in literals:
        return literals[raw]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Name -> default of the notebook's ``parameters`` cell (as papermill sees it)."""
    import papermill as pm

    try:
        found = pm.inspect_notebook(str(path))
    except Exception as exc:  # papermill raises several types for unreadable notebooks
        raise ExporterError(f"cannot read the parameters of notebook {path}: {exc}") from exc
    if not found:
        raise ExporterError(f"notebook {path} has no cell tagged 'parameters'")
    return {name: info.get("default") for name, info in found.items()}


def resolve_overrides(pairs: Sequence[Sequence[str]], cwd: Path) -> dict[str, Any]:
    """``[(name, raw value), ...]`` -> parameters, file paths made absolute against ``cwd``."""
    out: dict[str, Any] = {}
    for name, raw in pairs:
        if name == "artifacts_dir":
            raise ExporterError("set the model repository with --artifacts DIR, not -p artifacts_dir "
                                "(the runner needs it to pick the version and store the report)")
        if name in out:
            raise ExporterError(f"parameter {name} is given twice")
        value = parse_value(raw)
        if name in PATH_PARAMETERS and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            value = str((cwd / value).resolve())
        out[name] = value
    return out


def select(names: Sequence[str]) -> list[str]:
    """Validated notebook names in the order given (all four when none)."""
    if not names:
        return list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ExporterError(f"unknown notebook {', '.join(repr(n) for n in unknown)}: expected one of {', '.join(NOTEBOOKS)}")
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise ExporterError(f"notebook {', '.join(dupes)} named twice")
    return list(names)


@dataclass
class Plan:
    """One notebook run: where it is, its parameters, the version it will write."""

    name: str
    source: Path
    parameters: dict[str, Any]
    model_names: tuple[str, ...]
    version: int
    ignored: list[str] = field(default_factory=list)


def plan(names: Sequence[str], overrides: dict[str, Any], artifacts: Path, directory: Path | None = None) -> list[Plan]:
    """Check every notebook and parameter before running any kernel; pick each notebook's version."""
    from exporter import repository as repo
    from exporter.specs import get_spec

    directory = directory or notebooks_dir()
    plans = []
    declared: dict[str, set[str]] = {}
    for name in names:
        source = directory / NOTEBOOKS[name]
        if not source.is_file():
            raise ExporterError(f"notebook {source} not found: the notebooks ship with the source checkout")
        declared[name] = set(notebook_parameters(source))
    for key in overrides:
        if not any(key in d for d in declared.values()):
            known = sorted(set().union(*declared.values()))
            raise ExporterError(f"unknown parameter {key!r} for {', '.join(names)}: known parameters are {', '.join(known)}")
    for name in names:
        spec = get_spec(name)
        params = {k: v for k, v in overrides.items() if k in declared[name]}
        version = params.get("model_version")
        if version is None:
            version = repo.next_version(artifacts, spec.model_names)
        elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ExporterError(f"model_version must be a positive integer, got {version!r}")
        params.update(artifacts_dir=str(artifacts), model_version=version)
        plans.append(Plan(name, directory / NOTEBOOKS[name], params, tuple(spec.model_names), version,
                          sorted(k for k in overrides if k not in declared[name])))
    return plans


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    name: str
    seconds: float
    reports: list[Path]


def _failure(name: str, exc: Exception, executed: Path) -> ExporterError:
    """The failing cell's error as one ExporterError (exit code by kind: 2 parameters, 3 parity, 1 other)."""
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    count = getattr(exc, "exec_count", None)
    where = f" in cell [{count}]" if count is not None else ""
    detail = f"{ename}: {evalue}" if evalue else ename
    kept = f"\n  executed notebook: {executed}" if executed.exists() else ""
    err = ExporterError(f"notebook {name} failed{where}: {detail}{kept}")
    err.exit_code = {"ParameterError": 2, "ExporterError": 2, "ParityError": 3}.get(ename, 1)
    return err


def copy_report(executed: Path, version_dir: Path) -> Path:
    """Put the executed notebook into a version directory as report.ipynb in one step (temp file, then rename)."""
    target = version_dir / REPORT_FILE
    write_text_atomic(target, executed.read_text(encoding="utf-8"))
    return target


def run_one(p: Plan, artifacts: Path, executed: Path, kernel: str) -> Outcome:
    """Execute one notebook into ``executed``, then store it as report.ipynb in every version it wrote."""
    import papermill as pm

    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(p.source), str(executed), parameters=p.parameters, kernel_name=kernel,
            cwd=str(p.source.parent), progress_bar=False, log_output=False, **KERNEL_OPTIONS,
        )
    except Exception as exc:  # PapermillExecutionError (a cell failed), a dead kernel, ...: one readable line
        raise _failure(p.name, exc, executed) from exc
    seconds = time.perf_counter() - start
    reports = []
    for model_name in p.model_names:
        version_dir = artifacts / model_name / str(p.version)
        if not (version_dir / "metadata.json").is_file():
            raise ExporterError(f"notebook {p.name} finished but wrote no version {p.version} of {model_name} "
                                f"under {artifacts}; executed notebook: {executed}")
        reports.append(copy_report(executed, version_dir))
    return Outcome(p.name, seconds, reports)


def check_kernel(name: str) -> None:
    """Fail before any work when the Jupyter kernel does not exist."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise ExporterError(f"no Jupyter kernel named {name!r}; installed kernels: {known}") from None


def run(args: argparse.Namespace) -> int:
    cwd = Path.cwd()
    names = select(args.names)
    check_kernel(args.kernel)
    artifacts = (cwd / args.artifacts).resolve()
    if artifacts.exists() and not artifacts.is_dir():
        raise ExporterError(f"--artifacts {artifacts} exists and is not a directory")
    overrides = resolve_overrides(args.parameter, cwd)
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
            print(f"{p.name}: running {p.source.name} -> version {p.version}{note}", flush=True)
            try:
                outcome = run_one(p, artifacts, executed, args.kernel)
            except ExporterError:
                keep_work = keep_dir is None
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
