"""The model notebooks' parameters checked before any training: paths, columns, hyper-parameters, the version.

Each mistake is a :class:`ParameterError` naming the notebook parameter (not the CLI option the pipeline's
message speaks of) and what was expected. Relative paths resolve against the repository root, so a kernel
started in ``notebooks/`` (JupyterLab) and one started at the root (CI) read and write the same files.
The notebooks reach all of this through :mod:`exporter.tools.notebook_support`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExporterError

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    from exporter.export.pipeline import Prepared

#: Environment variable that sets the default ``artifacts_dir`` of the notebooks (nbval runs use a temp dir).
ARTIFACTS_ENV = "EXPORTER_ARTIFACTS_DIR"
DEFAULT_ARTIFACTS = "artifacts"


class ParameterError(ExporterError):
    """A notebook parameter is wrong. Shown in a notebook as two lines instead of a long traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython hook: what the failing cell displays
        return [
            f"ParameterError: {self}",
            "Fix the parameters cell (or the -p overrides) and run the notebook again.",
        ]


# --------------------------------------------------------------------------- paths


def repo_root() -> Path:
    """The checkout holding the ``exporter`` package (the parent of ``exporter/``); for an installed,
    non-editable copy (no checkout around it) the current directory."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def resolve_path(value: Any, name: str, *, root: Path | None = None) -> Path | None:
    """``None`` stays ``None``; a relative path is taken relative to the repository root."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ParameterError(f"{name} must be a file path (string) or None, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root or repo_root()) / path


def resolve_artifacts_dir(value: Any = None, *, root: Path | None = None) -> Path:
    """The model repository a notebook writes to: ``value``, else ``$EXPORTER_ARTIFACTS_DIR``, else ``artifacts``."""
    if value is None:
        value = os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS
    resolved = resolve_path(value, "artifacts_dir", root=root)
    assert resolved is not None
    if resolved.exists() and not resolved.is_dir():
        raise ParameterError(f"artifacts_dir {resolved} exists and is not a directory")
    return resolved


def display_path(path: Path, *, root: Path | None = None) -> str:
    """A path relative to the repository root when it lies inside it (shorter, and the same on every machine)."""
    root = root or repo_root()
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- parameters


def feature_columns_param(value: Any) -> list[str] | None:
    """``None``, a list of names, or one comma-separated string (handy with ``papermill -p``)."""
    return _columns_param(value, "feature_columns")


def _columns_param(value: Any, name: str) -> list[str] | None:
    """``None``, a list of column names, or one comma-separated string; else a :class:`ParameterError`."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) and c.strip() for c in value):
        raise ParameterError(f"{name} must be None, a list of column names or a comma-separated string, got {value!r}")
    return list(value)


#: command-line options the pipeline's messages mention -> the notebook parameters that set the same thing
_CLI_TERMS = {
    "--mode load": 'mode = "load"',
    "--checkpoint": "checkpoint_path",
    "--feature-meta": "feature_meta_path",
    "--feature-columns": "feature_columns",
    "--data": "data_path",
    "--rows": "rows",
    "--version": "model_version",
    "--atol": "atol",
    "--threads": "threads",
    "--artifacts": "artifacts_dir",
    "--seed": "seed",
    "--model-name": "model_name",
    "--label": "label",
    "--schema": "feature_schema",
    "--positive-class": "positive_class",
    "--exclude-columns": "exclude_columns",
    "--param": "the hyper-parameter knobs",
    "--engine spark": 'engine = "spark"',
    "--spark-master": "spark_master",
    "--num-workers": "num_workers",
}


def knobs(extra_hparams: Any, **named: Any) -> dict[str, Any]:
    """The hyper-parameters of a notebook: its own knob parameters (``named``) and ``extra_hparams``, a dict of
    any others; a mistake in it is a parameter error, not the glue's TypeError."""
    if not isinstance(extra_hparams, Mapping):
        raise ParameterError(
            f"extra_hparams must be a dict of hyper-parameters (papermill: -p extra_hparams '{{\"key\": value}}'), "
            f"got {extra_hparams!r}"
        )
    own = [k for k in extra_hparams if k in named]
    if own:
        raise ParameterError(
            f"extra_hparams sets {', '.join(map(str, own))}, which the notebook has as its own parameter: set "
            f"{own[0]} = ... instead"
        )
    return {**named, **extra_hparams}


def notebook_terms(message: str) -> str:
    """Say ``checkpoint_path`` where a pipeline message says ``--checkpoint`` (the notebook's own words)."""
    import re

    for option, parameter in _CLI_TERMS.items():
        message = re.sub(re.escape(option) + r"(?![\w-])", parameter, message)
    return message


def prepare(
    model: str,
    *,
    mode: str = "train",
    data_path: Any = None,
    checkpoint_path: Any = None,
    feature_meta_path: Any = None,
    feature_columns: Any = None,
    rows: int = 20_000,
    seed: int = 0,
    hparams: Mapping[str, Any] | None = None,
    artifacts_dir: Any = None,
    model_version: int | None = None,
    atol: float | None = None,
    progress: bool = True,
    root: Path | None = None,
    label: str | None = None,
    feature_schema: Any = None,
    model_name: str | None = None,
    parity_atol: float | None = None,
    positive_class: Any = None,
    exclude_columns: Any = None,
    threads: int | None = None,
    engine: str = "local",
    spark_master: str | None = None,
    num_workers: int | None = None,
) -> Prepared:
    """Validate every notebook parameter and load the data, before any training.

    ``hparams`` entries whose value is ``None`` are left out (the model's default applies). ``feature_schema``
    is a dict (or list) as in docs/features.md, or the path of such a JSON file. ``atol`` is the parity
    tolerance (``--atol`` of the CLI); ``parity_atol`` is its old name, still honoured with a
    :class:`FutureWarning` so that ``papermill -p parity_atol X`` keeps working. ``positive_class`` and
    ``exclude_columns`` are the CLI's ``--positive-class`` and ``--exclude-columns``; ``engine="spark"`` (with
    ``spark_master`` and ``num_workers``) prepares and trains on Spark as ``--engine spark`` does. Any problem raises
    :class:`ParameterError` naming the parameter and what was expected.
    """
    from exporter.export import pipeline
    from exporter.export import repository as repo
    from exporter.export.write import renamed_model_names
    from exporter.models import get_spec
    from exporter.training.hparams import check_hparam_values

    try:
        spec = get_spec(model)
    except ExporterError as exc:
        raise ParameterError(str(exc)) from exc
    if mode == "train" and checkpoint_path is not None:
        raise ParameterError(
            f"checkpoint_path is set ({checkpoint_path!r}) but mode is 'train': set mode = \"load\" to export "
            "that model, or checkpoint_path = None to train a new one"
        )
    if mode == "load" and checkpoint_path is None:
        raise ParameterError(f"mode 'load' needs checkpoint_path: {spec.checkpoint_hint}")
    if engine not in ("local", "spark"):
        raise ParameterError(f'engine must be "local" or "spark", got {engine!r}')
    if engine == "local" and (spark_master is not None or num_workers is not None):
        raise ParameterError('spark_master and num_workers are for engine = "spark": set it, or unset them')
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if hparams is not None and not isinstance(hparams, Mapping):
        raise ParameterError(f"hyper-parameters must be a dict, got {hparams!r}")
    atol = _atol_param(atol, parity_atol, spec.atol)
    overrides = {k: _json_param(k, v, spec.default_hparams.get(k)) for k, v in (hparams or {}).items() if v is not None}
    try:
        check_hparam_values(spec, overrides)
        params = pipeline.ExportParams(
            model=model,
            mode=mode,
            rows=rows,
            seed=seed,
            hparams=overrides,
            atol=atol,
            data_path=resolve_path(data_path, "data_path", root=root),
            feature_columns=feature_columns_param(feature_columns),
            checkpoint=resolve_path(checkpoint_path, "checkpoint_path", root=root),
            feature_meta=resolve_path(feature_meta_path, "feature_meta_path", root=root),
            artifacts=resolve_artifacts_dir(artifacts_dir, root=root),
            version=model_version,
            progress=progress,
            label=label,
            schema=_schema_param(feature_schema, root),
            model_name=model_name,
            positive_class=positive_class,
            exclude_columns=_columns_param(exclude_columns, "exclude_columns"),
            threads=threads,
        )
        names = renamed_model_names(spec.model_names, model_name)
        if isinstance(model_version, int) and not isinstance(model_version, bool):
            artifacts = Path(params.artifacts)
            taken = [n for n in names if (artifacts / n / str(model_version)).is_dir()]
            if taken:
                raise ParameterError(
                    f"model_version {model_version} already exists for {', '.join(taken)} under {artifacts}; "
                    f"set model_version = None for the next free version ({repo.next_version(artifacts, names)})"
                )
        if engine == "spark":
            from exporter.export import spark_train

            workers = 2 if num_workers is None else num_workers
            prep, run = spark_train.prepare_spark(params, spark_train.SparkOptions(spark_master, workers))
            prep.fit_elsewhere = spark_train.fit_once(run)  # pipeline.fit trains on Spark, then stops the session
        else:
            prep = pipeline.prepare(params)
        if len(names) == 1:
            try:
                _check_existing_inputs(Path(params.artifacts), names[0], len(prep.columns))
            except BaseException:
                if engine == "spark":
                    run.close()
                raise
    except ParameterError:
        raise
    except ExporterError as exc:
        raise ParameterError(notebook_terms(str(exc))) from exc
    return prep


def _check_existing_inputs(artifacts: Path, name: str, width: int) -> None:
    """Before training: an existing model ``name`` whose input is not ``[-1, width]`` cannot take this export.

    The export checks every tensor again; the input width is known from the columns alone, so a model-name
    clash stops the notebook here instead of after training.
    """
    from exporter.export import repository as repo
    from exporter.export import triton

    path = artifacts / name / repo.CONFIG_FILE
    if not path.is_file():
        return
    try:
        config = triton.parse_pbtxt(path.read_text(encoding="utf-8"))
        max_batch = config.get("max_batch_size", [0])[0]
        shapes = [triton.model_shape(t, max_batch) for t in config.get("input", [])]
    except (OSError, ValueError, UnicodeDecodeError):
        return  # unreadable: the export's own check reports it
    if shapes and shapes != [[-1, width]]:
        raise ParameterError(
            f"model_name {name!r}: the model in {artifacts} takes input {', '.join(map(str, shapes))} but this "
            f"export has [-1, {width}] ({width} feature columns); set model_name to another name, or "
            "artifacts_dir to another repository"
        )


#: The notebook parameter's old name (before it matched ``--atol`` and metadata ``parity.atol``).
DEPRECATED_ATOL = "parity_atol"


def _atol_param(atol: Any, parity_atol: Any, default: float) -> Any:
    """The parity tolerance from ``atol`` or its deprecated alias ``parity_atol``.

    Notebooks pass ``atol`` always (its default is the model's tolerance), so the alias wins unless ``atol``
    was changed too and says something else.
    """
    if parity_atol is None:
        return atol
    warnings.warn(
        f"the notebook parameter {DEPRECATED_ATOL} is deprecated: use atol (same meaning)", FutureWarning, stacklevel=3
    )
    if atol is not None and atol != default and atol != parity_atol:
        raise ParameterError(
            f"atol = {atol!r} and {DEPRECATED_ATOL} = {parity_atol!r} (its old name) disagree: set only atol"
        )
    return parity_atol


def _json_param(name: str, value: Any, default: Any) -> Any:
    """A list or dict knob given as JSON text (``papermill -p tasks '[...]'`` passes strings) becomes its value."""
    import json

    if isinstance(value, str) and isinstance(default, (list, dict)) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ParameterError(
                f"{name} = {value[:40]!r}... is not valid JSON ({exc.msg}); expected e.g. {default!r}"
            ) from exc
    return value


def _schema_param(value: Any, root: Path | None) -> Any:
    """``feature_schema``: None, a dict or list (used as is), or a JSON file path (relative to the repository)."""
    if value is None or isinstance(value, (dict, list)):
        return value
    if isinstance(value, (str, os.PathLike)):
        return resolve_path(value, "feature_schema", root=root)
    raise ParameterError(f"feature_schema must be None, a dict, a list or a JSON file path, got {value!r}")
