"""The one export path every model shares: prepare -> fit -> evaluate -> export (ONNX, parity, artifact).

Notebooks call the steps one by one (to plot in between); the command line calls :func:`run`.
Nothing here is model specific: that lives in the specs (:mod:`exporter.specs`).
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from exporter import __version__, contract as C, data as D
from exporter import hparams as H
from exporter import repository as repo
from exporter.errors import ExporterError, ParityError
from exporter.specs import ExportUnit, ModelSpec, Trained, get_spec

MODES = ("train", "load")
PARITY_MIN_ROWS = 1000
#: seeds go to numpy, torch and xgboost alike: the range all three accept
MAX_SEED = 2**32 - 1
SAMPLE_ROWS = 3


@dataclass
class ExportParams:
    """Everything a run depends on; the notebooks' ``parameters`` cell and the CLI options map onto it."""

    model: str
    mode: str = "train"
    data_path: str | Path | None = None
    rows: int = 20_000
    seed: int = 0
    feature_columns: Sequence[str] | None = None
    checkpoint: str | Path | None = None
    feature_meta: str | Path | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    atol: float | None = None
    artifacts: str | Path = "artifacts"
    version: int | None = None
    progress: bool = True


@dataclass
class Prepared:
    """Validated parameters, resolved columns and the data split, before any training."""

    spec: ModelSpec
    params: ExportParams
    columns: list[str]
    hparams: dict[str, Any]
    data_source: str
    train: pd.DataFrame
    heldout: pd.DataFrame
    x_train: np.ndarray
    x_heldout: np.ndarray
    y_train: dict[str, np.ndarray]
    y_heldout: dict[str, np.ndarray]
    loaded: Trained | None = None

    @property
    def atol(self) -> float:
        return float(self.params.atol if self.params.atol is not None else self.spec.atol)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    labels: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]


@dataclass
class ParityResult:
    model_name: str
    rows: int
    heldout_rows: int
    max_abs_diff: float
    mean_abs_diff: float
    atol: float
    native: np.ndarray
    onnx: np.ndarray

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.atol)

    def as_metadata(self, reference: str) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "heldout_rows": self.heldout_rows,
            "synthetic_rows": self.rows - self.heldout_rows,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "atol": self.atol,
            "passed": self.passed,
            "reference": reference,
            "runtime": "onnxruntime CPUExecutionProvider",
        }


@dataclass
class ExportedArtifact:
    model_name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    parity: ParityResult


@dataclass
class RunResult:
    prepared: Prepared
    trained: Trained
    evaluation: Evaluation
    artifacts: list[ExportedArtifact]
    seconds: float


# --------------------------------------------------------------------------- prepare


def _labels(df: pd.DataFrame, names: Sequence[str], source: str) -> dict[str, np.ndarray]:
    matrix = D.numeric_matrix(df, names, source=source)
    return {n: matrix[:, i] for i, n in enumerate(names)}


def _check_range(spec: ModelSpec, x: np.ndarray, columns: Sequence[str], where: str) -> None:
    """Values the model's framework cannot represent (xgboost computes in float32) fail here, naming the cell."""
    limit = spec.max_abs_feature
    if limit is None or not x.size:
        return
    beyond = np.abs(x) > limit
    if beyond.any():
        row, col = (int(i) for i in np.argwhere(beyond)[0])
        raise ExporterError(
            f"{where}: column '{columns[col]}' row {row + 1}: value {x[row, col]:.6g} is beyond what "
            f"{spec.framework} can represent (|value| <= {limit:.4g}); rescale the column or drop the row"
        )


def _check_two_classes(labels: np.ndarray, train_idx: np.ndarray, held_idx: np.ndarray, where: str, *,
                       training: bool) -> None:
    """A click label with one class trains nothing and makes AUC undefined: say so before any training."""
    parts = ([("training", train_idx)] if training else []) + [("held-out", held_idx)]
    for part, idx in parts:
        classes = np.unique(labels[idx])
        if len(classes) < 2:
            value = f"{classes[0]:g}" if len(classes) else "none"
            raise ExporterError(
                f"{where}: the {part} labels '{D.LABEL}' hold one class (all {value}, {len(idx)} rows): a click "
                f"model needs clicks (1) and non-clicks (0) to {'learn' if part == 'training' else 'be evaluated'}; "
                "use more rows or data with both classes"
            )


def prepare(params: ExportParams) -> Prepared:
    """Check every parameter and input before any training, so mistakes fail fast and clearly."""
    spec = get_spec(params.model)
    if params.mode not in MODES:
        raise ExporterError(f"unknown mode '{params.mode}': expected 'train' or 'load'")
    if params.atol is not None and not (isinstance(params.atol, (int, float)) and not isinstance(params.atol, bool)
                                        and math.isfinite(params.atol) and params.atol >= 0):
        raise ExporterError(f"--atol must be a finite non-negative number, got {params.atol!r}")
    if isinstance(params.seed, bool) or not isinstance(params.seed, int) or not 0 <= params.seed <= MAX_SEED:
        raise ExporterError(f"--seed must be an integer from 0 to {MAX_SEED}, got {params.seed!r}")
    if params.version is not None and C.version_problem(params.version):
        raise ExporterError(str(C.version_problem(params.version)))
    hparams = H.resolve_hparams(spec, params.hparams)
    repo.check_target(Path(params.artifacts), spec.model_names, params.version)

    columns: list[str] | None = None
    if params.feature_columns is not None:
        columns = D.validate_feature_columns(params.feature_columns, source="feature_columns")
    if params.feature_meta is not None:
        meta_columns = D.read_feature_meta(params.feature_meta)
        if columns is not None and columns != meta_columns:
            raise ExporterError(
                f"feature_columns {columns} disagree with feature-meta {params.feature_meta}: {meta_columns}"
            )
        columns = meta_columns

    loaded: Trained | None = None
    if params.mode == "load":
        if params.checkpoint is None:
            raise ExporterError(f"load mode needs --checkpoint: {spec.checkpoint_hint}")
        loaded = spec.load(params.checkpoint, columns, hparams)
        columns = loaded.feature_columns
    elif params.checkpoint is not None:
        raise ExporterError("--checkpoint is only used with --mode load")
    columns = spec.columns(columns)

    if params.data_path is not None:
        frame = D.read_table(params.data_path)
        source = str(params.data_path)
    else:
        if not isinstance(params.rows, int) or isinstance(params.rows, bool) or params.rows < 10:
            raise ExporterError(f"rows must be an integer >= 10, got {params.rows!r}")
        frame = D.synthetic_dataset(params.rows, params.seed)
        source = "synthetic"
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ExporterError(
                f"columns {', '.join(absent)} are not in the built-in synthetic data "
                f"({', '.join(D.DEFAULT_FEATURES)}): pass --data with a file that has them"
            )
    where = f"data file {params.data_path}" if params.data_path is not None else "synthetic data"
    D.check_columns(frame, columns, what="feature", source=where)
    labels_needed = params.mode == "train"
    has_labels = all(c in frame.columns for c in spec.label_columns)
    if labels_needed:
        D.check_columns(frame, spec.label_columns, what="label", source=where)
    # validate the whole table first, so errors name rows as they are in the file
    x_all = D.numeric_matrix(frame, columns, source=where)
    _check_range(spec, x_all, columns, where)
    y_all = _labels(frame, spec.label_columns, where) if has_labels else {}
    train_idx, held_idx = D.split_indices(len(frame), seed=params.seed)
    if D.LABEL in y_all:
        _check_two_classes(y_all[D.LABEL], train_idx, held_idx, where, training=params.mode == "train")
    if loaded is not None:
        hparams = dict(loaded.hparams)
    return Prepared(
        spec, params, columns, hparams, source,
        frame.iloc[train_idx].reset_index(drop=True), frame.iloc[held_idx].reset_index(drop=True),
        x_all[train_idx], x_all[held_idx],
        {k: v[train_idx] for k, v in y_all.items()}, {k: v[held_idx] for k, v in y_all.items()},
        loaded,
    )


# --------------------------------------------------------------------------- fit / evaluate


def fit(prep: Prepared) -> Trained:
    """Train (with a progress bar) or hand back the model that load mode already read."""
    if prep.loaded is not None:
        return prep.loaded
    from exporter.progress_bar import progress_bar  # tqdm in a terminal, one updating line in a notebook

    total = prep.spec.progress_total(prep.hparams, len(prep.x_train))
    with progress_bar(total, f"train {prep.spec.name}", enabled=prep.params.progress) as bar:
        return prep.spec.train(prep.x_train, prep.y_train, prep.x_heldout, prep.y_heldout,
                               prep.columns, prep.hparams, prep.params.seed, bar)


def evaluate(prep: Prepared, trained: Trained) -> Evaluation:
    """Held-out metrics (empty when a load-mode data file has no labels)."""
    predictions = trained.predict(prep.x_heldout)
    metrics = prep.spec.metrics(predictions, prep.y_heldout) if prep.y_heldout else {}
    return Evaluation(metrics, dict(prep.y_heldout), predictions)


# --------------------------------------------------------------------------- export


def _check_io(unit: ExportUnit, model: Any) -> None:
    """The graph's own tensors must be exactly the contract's: a Triton user never reads our code."""
    problems = C.graph_io_problems(model, len(unit.feature_columns), unit.output_shape)
    if problems:
        raise ExporterError(f"exported graph of {unit.model_name} breaks the tensor contract: " + "; ".join(problems))


def build_onnx(unit: ExportUnit) -> bytes:
    """Export, check (full_check) and serialise one unit."""
    import onnx

    model = unit.build_onnx()
    _check_io(unit, model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExporterError(f"exported graph of {unit.model_name} fails onnx.checker: {exc}") from exc
    return model.SerializeToString()


def check_parity(unit: ExportUnit, model_bytes: bytes, x: np.ndarray, heldout_rows: int, atol: float) -> ParityResult:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run([C.OUTPUT_NAME], {C.INPUT_NAME: x})[0], dtype=np.float64)
    native = np.asarray(unit.native_predict(x), dtype=np.float64)
    if got.shape != native.shape:
        raise ParityError(
            f"{unit.model_name}: onnxruntime returned shape {got.shape}, the native model {native.shape}"
        )
    diff = np.abs(got - native)
    max_diff = float(np.max(diff)) if diff.size else 0.0
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    return ParityResult(unit.model_name, len(x), heldout_rows, max_diff,
                        float(np.mean(diff)) if diff.size else 0.0, atol, native, got)


def _producer(unit: ExportUnit) -> dict[str, str]:
    import onnx
    import onnxruntime

    out = {"framework": unit.framework, "framework_version": unit.framework_version,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "exporter": __version__}
    if unit.framework == "xgboost":
        import onnxmltools

        out["onnxmltools"] = onnxmltools.__version__
    return out


def _opsets(model_bytes: bytes) -> dict[str, int]:
    import onnx

    model = onnx.load_from_string(model_bytes)
    return {(o.domain or ""): int(o.version) for o in model.opset_import}


def repository_root() -> Path | None:
    """The source checkout this package runs from (``None`` for an installed, non-editable copy)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "exporter").is_dir() else None


def portable_source(path: str | Path) -> tuple[str, str | None]:
    """How metadata names an input file without the machine's layout: its path relative to the repository
    when it lies inside it, else its file name; with the file's sha256 (``None`` when it cannot be read).

    metadata.json is served as is (``GET /models/{name}``): absolute local paths would leak the machine's
    directories and differ between machines for the same export.
    """
    path = Path(path)
    root = repository_root()
    shown = path.name
    if root is not None:
        try:
            shown = path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    try:
        digest = repo.sha256_file(path) if path.is_file() else None
    except OSError:
        digest = None
    return shown, digest


def _training_sources(data_source: str, hparams: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``training`` entries for the data file and the hyper-parameters' ``source_file`` (load mode), portable."""
    data: dict[str, Any] = {"data_source": data_source}
    if data_source != "synthetic":
        data["data_source"], data["data_sha256"] = portable_source(data_source)
    hyper = dict(hparams)
    if isinstance(hyper.get("source_file"), str):
        hyper["source_file"], hyper["source_sha256"] = portable_source(hyper["source_file"])
    return data, hyper


def build_metadata(prep: Prepared, trained: Trained, evaluation: Evaluation, unit: ExportUnit,
                   version: int, model_bytes: bytes, sha256: str, parity: ParityResult) -> dict[str, Any]:
    """metadata.json: a v2 model-metadata response plus what downstream teams need (contract section 3)."""
    opsets = _opsets(model_bytes)
    inputs, outputs = C.tensor_specs(len(unit.feature_columns), unit.output_shape)
    sources, hyper = _training_sources(prep.data_source, trained.hparams)
    meta: dict[str, Any] = {
        "name": unit.model_name,
        "versions": [str(version)],
        "platform": C.PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
        "feature_columns": list(unit.feature_columns),
    }
    if unit.output_columns:
        meta["output_columns"] = list(unit.output_columns)
    if unit.embed_dim is not None:
        meta["embed_dim"] = unit.embed_dim
    meta.update({
        "prediction_format": unit.prediction_format,
        "description": prep.spec.description,
        "related_models": list(unit.related_models),
        "model_file": repo.MODEL_FILE,
        "sha256": sha256,
        "opset": opsets.get("", 0),
        "opset_imports": opsets,
        "producer": _producer(unit),
        "parity": parity.as_metadata(unit.reference),
        "training": {
            "mode": prep.params.mode,
            **sources,
            "rows": len(prep.train) + len(prep.heldout),
            "train_rows": len(prep.train),
            "heldout_rows": len(prep.heldout),
            "seed": prep.params.seed,
            "label_columns": list(prep.spec.label_columns) if prep.y_heldout else [],
            "hyperparameters": _jsonable(hyper),
            "metrics": {k: (None if not np.isfinite(v) else round(float(v), 6)) for k, v in evaluation.metrics.items()},
            "final_loss": trained.history[-1] if trained.history else None,
        },
        "created_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    })
    return meta


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def sample_request(prep: Prepared, unit: ExportUnit, rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """A TorchServe-style request built from the first held-out rows, raw values by column name."""
    frame = prep.heldout[unit.feature_columns].head(rows)
    return C.torchserve_request(frame.to_dict("records"), unit.feature_columns)


def export(prep: Prepared, trained: Trained, evaluation: Evaluation) -> list[ExportedArtifact]:
    """Export every unit; all pass the parity gate and are committed together, or nothing is written."""
    from exporter.handler import ModelHandler

    units = trained.units()
    x_parity, n_synthetic = D.parity_rows(prep.x_heldout, prep.x_train, minimum=PARITY_MIN_ROWS, seed=prep.params.seed)
    built: list[tuple[ExportUnit, bytes, ParityResult]] = []
    for unit in units:
        model_bytes = build_onnx(unit)
        idx = [prep.columns.index(c) for c in unit.feature_columns]
        parity = check_parity(unit, model_bytes, np.ascontiguousarray(x_parity[:, idx]), len(x_parity) - n_synthetic, prep.atol)
        built.append((unit, model_bytes, parity))
    failed = [p for _, _, p in built if not p.passed]
    if failed:
        raise ParityError(
            "parity check failed, nothing was written: "
            + "; ".join(f"{p.model_name} max |native - onnxruntime| = {p.max_abs_diff:.3g} > atol {p.atol:g} over {p.rows} rows" for p in failed)
        )

    artifacts = Path(prep.params.artifacts)
    exported: list[ExportedArtifact] = []
    # the writer claims the version (the next free one unless given), so concurrent exports never collide
    with repo.VersionWriter(artifacts, prep.params.version, [u.model_name for u in units]) as writer:
        version = writer.version
        metas = {}
        for unit, model_bytes, parity in built:
            d = writer.path(unit.model_name)
            (d / repo.MODEL_FILE).write_bytes(model_bytes)
            sha = repo.sha256_file(d / repo.MODEL_FILE)
            meta = build_metadata(prep, trained, evaluation, unit, version, model_bytes, sha, parity)
            repo.write_json(d / repo.METADATA_FILE, meta)
            request = sample_request(prep, unit)
            repo.write_json(d / repo.SAMPLE_REQUEST, request)
            repo.write_json(d / repo.SAMPLE_RESPONSE, ModelHandler.load(d).predict(request))
            if unit.write_native_files is not None:
                unit.write_native_files(d)
            metas[unit.model_name] = meta
        committed = writer.commit()
        for unit, _, parity in built:
            meta = metas[unit.model_name]
            repo.write_text_atomic(
                artifacts / unit.model_name / repo.CONFIG_FILE,
                repo.config_pbtxt(unit.model_name, meta["inputs"], meta["outputs"]),
            )
            exported.append(ExportedArtifact(unit.model_name, version, committed[unit.model_name], meta, parity))
    return exported


def run(params: ExportParams) -> RunResult:
    """prepare -> fit -> evaluate -> export, timed."""
    start = time.perf_counter()
    prep = prepare(params)
    trained = fit(prep)
    evaluation = evaluate(prep, trained)
    artifacts = export(prep, trained, evaluation)
    return RunResult(prep, trained, evaluation, artifacts, time.perf_counter() - start)
