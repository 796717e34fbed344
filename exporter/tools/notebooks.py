"""``python -m exporter notebooks``: run the model notebooks headless with papermill.

Each executed notebook is kept as the report beside its artifact.

Every notebook runs in a fresh kernel with its default parameters plus ``-p NAME VALUE`` overrides. The
notebook exports to the next free version at the moment it writes (unless ``-p model_version N``), as ``export``
does, so runs into one artifacts directory at once never claim the same version; the notebook's export records the
versions it wrote in the file :data:`VERSIONS_ENV` names, and the runner copies the executed notebook into each as
``report.ipynb`` (contract section 2). The first failing notebook stops the run with its failing cell's error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.export.repository import REPORT_FILE, write_text_atomic
from exporter.tools.notebook_tracking import VERSIONS_ENV


def notebook_names() -> dict[str, str]:
    """model -> notebook file name, in the registry's order (every registered model has ``<name>.ipynb``)."""
    from exporter.models import model_names

    return {name: f"{name}.ipynb" for name in model_names()}


#: old parameter name -> its name now; the runner passes the new name and says so
DEPRECATED_PARAMETERS = {"parity_atol": "atol", "epochs": "max_epochs"}
#: notebook parameters that name files: relative values are made absolute against the caller's directory
PATH_PARAMETERS = ("data_path", "checkpoint_path", "feature_meta_path", "feature_schema")
#: How papermill runs the kernel. The kernel's own log (a "running over TCP without encryption" notice at
#: start, "KeyboardInterrupt caught" when jupyter_client interrupts it at shutdown) is noise for a local
#: headless run: cell errors reach us through papermill, start-up crashes as tracebacks on stderr. The kernel
#: is stopped at once when the last cell has answered (every output is in by then), which spares the
#: seconds a graceful shutdown of a process holding torch takes.
KERNEL_OPTIONS: dict[str, Any] = {
    "extra_arguments": ["--IPKernelApp.log_level=CRITICAL"],
    "shutdown_kernel": "immediate",
}


def notebooks_dir() -> Path:
    """``notebooks/`` of the checkout holding this package."""
    return Path(__file__).resolve().parents[2] / "notebooks"


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


def artifacts_option(
    pairs: Sequence[Sequence[str]], artifacts: str, default: str = "artifacts"
) -> tuple[list[Sequence[str]], str]:
    """Take ``-p artifacts_dir DIR`` (what papermill users type) as ``--artifacts DIR``.

    Returns the other ``-p`` pairs and the artifacts directory; the two spellings may not disagree.
    """
    rest = [pair for pair in pairs if pair[0] != "artifacts_dir"]
    given = [pair[1] for pair in pairs if pair[0] == "artifacts_dir"]
    if len(given) > 1:
        raise ExporterError("parameter artifacts_dir is given twice")
    if not given:
        return rest, artifacts
    if artifacts != default and Path(artifacts) != Path(given[0]):
        raise ExporterError(f"--artifacts {artifacts} and -p artifacts_dir {given[0]} disagree: give one of them")
    return rest, given[0]


def rename_deprecated(pairs: Sequence[Sequence[str]]) -> tuple[list[Sequence[str]], list[str]]:
    """``-p parity_atol X`` becomes ``-p atol X`` (``-p epochs N``: ``-p max_epochs N``); returns the pairs and
    one note per renamed parameter."""
    renamed, notes = [], []
    for pair in pairs:
        new = DEPRECATED_PARAMETERS.get(pair[0])
        if new is None:
            renamed.append(pair)
            continue
        renamed.append((new, pair[1]))
        notes.append(f"note: -p {pair[0]} is deprecated, taken as -p {new} {pair[1]}")
    return renamed, notes


def resolve_overrides(pairs: Sequence[Sequence[str]], cwd: Path) -> dict[str, Any]:
    """``[(name, raw value), ...]`` -> parameters, file paths made absolute against ``cwd``."""
    out: dict[str, Any] = {}
    for name, raw in pairs:
        if name == "artifacts_dir":
            raise ExporterError(
                "artifacts_dir is the runner's --artifacts DIR (artifacts_option takes it first: "
                "the runner needs it to pick the version and store the report)"
            )
        if name in out:
            raise ExporterError(f"parameter {name} is given twice")
        value = parse_value(raw)
        if name in PATH_PARAMETERS and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            value = str((cwd / value).resolve())
        out[name] = value
    return out


def select(names: Sequence[str]) -> list[str]:
    """Validated notebook names in the order given (all four when none)."""
    notebooks = notebook_names()
    if not names:
        return list(notebooks)
    unknown = [n for n in names if n not in notebooks]
    if unknown:
        raise ExporterError(
            f"unknown notebook {', '.join(repr(n) for n in unknown)}: expected one of {', '.join(notebooks)}"
        )
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
    #: the version asked for (``-p model_version``), or None: the next free one when the notebook exports
    version: int | None
    ignored: list[str] = field(default_factory=list)


def plan(names: Sequence[str], overrides: dict[str, Any], artifacts: Path, directory: Path | None = None) -> list[Plan]:
    """Check every notebook and parameter before running any kernel."""
    from exporter.export.write import renamed_model_names
    from exporter.models import get_spec

    directory = directory or notebooks_dir()
    plans = []
    declared: dict[str, set[str]] = {}
    for name in names:
        source = directory / notebook_names()[name]
        if not source.is_file():
            raise ExporterError(f"notebook {source} not found: the notebooks ship with the source checkout")
        declared[name] = set(notebook_parameters(source))
    for key in overrides:
        if not any(key in d for d in declared.values()):
            known = sorted(set().union(*declared.values()))
            raise ExporterError(
                f"unknown parameter {key!r} for {', '.join(names)}: known parameters are {', '.join(known)}"
            )
    named = [n for n in names if "model_name" in declared[n]]
    if overrides.get("model_name") is not None and len(named) > 1:
        raise ExporterError(
            f"-p model_name {overrides['model_name']} would export {', '.join(named)} under one name: "
            "run one notebook per model name"
        )
    for name in names:
        spec = get_spec(name)
        params = {k: v for k, v in overrides.items() if k in declared[name]}
        model_names = renamed_model_names(spec.model_names, params.get("model_name"))
        version = params.get("model_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ExporterError(f"model_version must be a positive integer, got {version!r}")
        params.update(artifacts_dir=str(artifacts), model_version=version)
        plans.append(
            Plan(
                name,
                directory / notebook_names()[name],
                params,
                tuple(model_names),
                version,
                sorted(k for k in overrides if k not in declared[name]),
            )
        )
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
    """Put the executed notebook into a version directory as report.ipynb in one step (temp file, then rename),
    its local paths made portable (:func:`portable_report`)."""
    target = version_dir / REPORT_FILE
    write_text_atomic(target, portable_report(executed.read_text(encoding="utf-8")))
    return target


def portable_report(text: str) -> str:
    """The executed notebook as it is handed off with an artifact: papermill's input and output paths as file names,
    and every path under the working directory or the repository relative to it, under the home directory as
    ``~/...`` (parameters, printed lines), so a report names no one's directories (metadata.json records none)."""
    from exporter.tools.notebook_params import repo_root

    try:
        nb = json.loads(text)
    except ValueError:
        return text
    papermill = nb.get("metadata", {}).get("papermill") if isinstance(nb, dict) else None
    if isinstance(papermill, dict):
        for key in ("input_path", "output_path"):
            if isinstance(papermill.get(key), str):
                papermill[key] = Path(papermill[key]).name
    out = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    prefixes = {str(Path.cwd().resolve()): "", str(repo_root().resolve()): "", str(Path.home().resolve()): "~/"}
    for prefix, replacement in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
        if len(Path(prefix).parts) < (2 if replacement else 3):  # never "/" (or "/tmp" as a working directory)
            continue
        out = out.replace(json.dumps(prefix + "/", ensure_ascii=False)[1:-1], replacement)
    return out


def run_one(p: Plan, artifacts: Path, executed: Path, kernel: str) -> Outcome:
    """Execute one notebook into ``executed``, then store it as report.ipynb in every version it wrote."""
    import os

    import papermill as pm

    start = time.perf_counter()
    record = executed.with_name(executed.stem + ".versions.json")
    record.unlink(missing_ok=True)
    os.environ[VERSIONS_ENV] = str(record)  # the kernel inherits it
    try:
        pm.execute_notebook(
            str(p.source),
            str(executed),
            parameters=p.parameters,
            kernel_name=kernel,
            cwd=str(p.source.parent),
            progress_bar=False,
            log_output=False,
            **KERNEL_OPTIONS,
        )
    except Exception as exc:  # PapermillExecutionError (a cell failed), a dead kernel, ...: one readable line
        raise _failure(p.name, exc, executed) from exc
    finally:
        os.environ.pop(VERSIONS_ENV, None)
    seconds = time.perf_counter() - start
    written = _written_versions(record)
    reports = []
    for model_name in p.model_names:
        version = written.get(model_name, p.version)
        version_dir = artifacts / model_name / str(version)
        if version is None or not (version_dir / "metadata.json").is_file():
            raise ExporterError(
                f"notebook {p.name} finished but wrote no {f'version {version}' if version else 'version'} of "
                f"{model_name} under {artifacts}; executed notebook: {executed}"
            )
        reports.append(copy_report(executed, version_dir))
        if p.parameters.get("tracking", True) is not False:
            from exporter.tools.notebook_tracking import attach_report

            problem = attach_report(version_dir, reports[-1], p.parameters.get("tracking_uri"))
            if problem:
                print(problem, file=sys.stderr)
    return Outcome(p.name, seconds, reports)


def _written_versions(record: Path) -> dict[str, int]:
    try:
        raw = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    finally:
        record.unlink(missing_ok=True)
    return {str(k): v for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {}


def check_kernel(name: str) -> None:
    """Fail before any work when the Jupyter kernel does not exist."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise ExporterError(f"no Jupyter kernel named {name!r}; installed kernels: {known}") from None
