"""The one export path every model shares: prepare -> fit -> evaluate -> export (ONNX, parity, artifact).

Notebooks call the steps one by one (to plot in between); the command line calls :func:`run`.
Nothing here is model specific: that lives in the specs (:mod:`exporter.models`).
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from exporter import __version__, contract as C
from exporter.training import data as D
from exporter import features as F
from exporter.training import hparams as H
from exporter.training import inputs as I
from exporter.training import quality_gate as Q
from exporter.export import repository as repo
from exporter.errors import ExporterError, ParityError
from exporter.models import ExportUnit, ModelSpec, TrainData, Trained, get_spec
from exporter.models.base import BINARY, SideFile

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
    #: Triton config.pbtxt: largest batch (issue 11); KServe manifest: where the artifacts tree will live
    max_batch_size: int = 1024
    storage_uri: str | None = None
    #: the binary label column (default: the schema's ``label``, else ``label``)
    label: str | None = None
    #: feature schema: a JSON file path, a dict or a list (see docs/features.md); None: defaults or inferred
    schema: Any = None
    #: refuse to export (exit 4, nothing written) when the held-out AUC is below this
    min_auc: float | None = None
    #: export under this repository name instead of the model's own (two_tower: NAME and NAME_item)
    model_name: str | None = None


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
    #: prepared matrices (numeric NaN filled, categorical values as embedding rows): what models see
    x_train: np.ndarray
    x_heldout: np.ndarray
    y_train: dict[str, np.ndarray]
    y_heldout: dict[str, np.ndarray]
    loaded: Trained | None = None
    #: the fitted feature plan (kinds, fills, vocabularies, statistics) of ``columns``
    features: F.FeaturePlan | None = None
    #: raw FP64 matrices as serving sends them (NaN where missing, IDs, string codes): what the graph takes
    raw_train: np.ndarray | None = None
    raw_heldout: np.ndarray | None = None
    #: model label name -> data column (``--label`` renames ``label``)
    label_columns: dict[str, str] = field(default_factory=dict)
    #: where each column's kind came from (declared, default, inferred, stored), and how the columns were chosen
    origins: dict[str, str] = field(default_factory=dict)
    columns_note: str = ""

    def schema_text(self) -> str:
        """The feature schema as the user should see it before training (kinds, inferred ones marked)."""
        assert self.features is not None
        return F.format_schema([f.spec for f in self.features.features], self.origins, note=self.columns_note)

    @property
    def atol(self) -> float:
        return float(self.params.atol if self.params.atol is not None else self.spec.atol)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    labels: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]
    #: metrics against baselines, with ``warning`` when the model is no better than chance (metadata ``quality``)
    quality: dict[str, Any] = field(default_factory=dict)
    #: what the notebook shows beyond the metrics (each head's kind, retrieval curves)
    details: dict[str, Any] = field(default_factory=dict)
    #: spec part name -> small files written beside that part (two_tower: the item catalogue)
    files: dict[str, list[SideFile]] = field(default_factory=dict)


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
    #: rows built to exercise the OOV and fill paths (unseen IDs, unknown codes, non-integers, NaN, +-inf)
    probe_rows: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.atol)

    def as_metadata(self, reference: str) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "heldout_rows": self.heldout_rows,
            "synthetic_rows": self.rows - self.heldout_rows - self.probe_rows,
            "probe_rows": self.probe_rows,
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


def _check_handoff_params(params: ExportParams) -> None:
    """Options of the Triton config and KServe manifest, checked before any training (issue 11)."""
    from exporter.export import kserve
    from exporter.export import triton

    triton.check_max_batch_size(params.max_batch_size)
    if params.storage_uri is not None:
        kserve.check_storage_uri(params.storage_uri)


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


def _check_two_classes(labels: np.ndarray, column: str, train_idx: np.ndarray, held_idx: np.ndarray, where: str, *,
                       training: bool) -> None:
    """A click label with one class trains nothing and makes AUC undefined: say so before any training."""
    parts = ([("training", train_idx)] if training else []) + [("held-out", held_idx)]
    for part, idx in parts:
        classes = np.unique(labels[idx])
        if len(classes) < 2:
            value = f"{classes[0]:g}" if len(classes) else "none"
            raise ExporterError(
                f"{where}: the {part} labels '{column}' hold one class (all {value}, {len(idx)} rows): a click "
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
    if params.min_auc is not None and (isinstance(params.min_auc, bool) or not isinstance(params.min_auc, (int, float))
                                       or not 0 <= params.min_auc <= 1):
        raise ExporterError(f"min_auc must be a number in [0, 1], got {params.min_auc!r}")
    if params.model_name is not None:
        check_model_name(params.model_name)
    schema = F.load_schema(params.schema, source="schema")
    label_name = params.label or (schema.label if schema is not None else None)
    I.label_map([], label_name)  # a bad --label fails before any loading
    _check_handoff_params(params)
    # before any training: the artifacts tree can take this export (under --model-name's names, if given)
    repo.check_target(Path(params.artifacts), renamed_model_names(spec.model_names, params.model_name),
                      params.version)

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
    # the labels this run needs come from the spec (mmoe: its tasks'; load mode: the loaded model's settings)
    needs = spec.label_needs(loaded.hparams if loaded is not None else hparams)
    labels = I.label_map([n.name for n in needs], label_name)

    if params.data_path is not None:
        frame = D.read_table(params.data_path)
        source = str(params.data_path)
    else:
        if not isinstance(params.rows, int) or isinstance(params.rows, bool) or params.rows < 10:
            raise ExporterError(f"rows must be an integer >= 10, got {params.rows!r}")
        frame = D.synthetic_dataset(params.rows, params.seed)
        source = "synthetic"
        absent = [c for c in (columns or []) if c not in frame.columns]
        if absent:
            raise ExporterError(
                f"columns {', '.join(absent)} are not in the built-in synthetic data "
                f"({', '.join(D.DEFAULT_FEATURES)}): pass --data with a file that has them"
            )
    where = f"data file {params.data_path}" if params.data_path is not None else "synthetic data"
    columns, note = I.choose_columns(frame, spec.default_features, columns, schema, list(labels.values()), source=where)
    D.check_columns(frame, columns, what="feature", source=where)
    clash = sorted(set(columns) & set(labels.values()))
    if clash:
        raise ExporterError(f"column(s) {', '.join(clash)} cannot be both a feature and a label")
    if params.mode == "train":
        I.check_labels(frame, needs, labels, source=where)
    optional = {n.name for n in needs if not n.required}
    labels = {n: c for n, c in labels.items() if n not in optional or c in frame.columns}
    has_labels = all(c in frame.columns for c in labels.values())
    # the seeded 80/20 row split, or the model's own (two_tower: by user-item pairs, none seen in training)
    train_idx, held_idx = spec.split(frame, columns, loaded.hparams if loaded is not None else hparams,
                                     lambda: _towers(frame, columns, schema, loaded), params.seed)
    # validate the whole table first, so errors name rows as they are in the file
    stored = None
    if loaded is not None:
        stored = loaded.features or I.stored_plan(params.feature_meta)
        if stored is None:  # a model trained elsewhere on plain numbers
            stored = I.numeric_plan(frame, columns, train_idx, source=where)
            note = "a loaded model without a feature plan: every column numeric, missing values passed on as NaN"
    plan, origins = I.fit_plan(frame, columns, schema, train_idx, source=where, stored=stored)
    raw = plan.encode(frame, source=where)
    x_all = plan.prepare(raw)
    y_all = I.read_labels(frame, labels, source=where, kinds={n.name: n.kind for n in needs}) if has_labels else {}
    _check_range(spec, x_all, columns, where)
    for need in needs:  # an optional label (two_tower's positives-only pairs) may hold one class
        if need.kind == BINARY and need.required and need.name in y_all:
            _check_two_classes(y_all[need.name], labels[need.name], train_idx, held_idx, where,
                               training=params.mode == "train")
    if loaded is not None:
        hparams = dict(loaded.hparams)
        loaded.features = plan
    return Prepared(
        spec, params, columns, hparams, source,
        frame.iloc[train_idx].reset_index(drop=True), frame.iloc[held_idx].reset_index(drop=True),
        x_all[train_idx], x_all[held_idx],
        {k: v[train_idx] for k, v in y_all.items()}, {k: v[held_idx] for k, v in y_all.items()},
        loaded, plan, raw[train_idx], raw[held_idx], labels, origins, note,
    )


def _towers(frame: pd.DataFrame, columns: Sequence[str], schema: F.Schema | None,
            loaded: Trained | None) -> dict[str, str | None]:
    """Column -> tower declared for it (the loaded model's plan, else the schema or the contract's defaults)."""
    if loaded is not None and loaded.features is not None:
        return {f.name: f.spec.tower for f in loaded.features.features}
    specs, _ = F.resolve_specs(frame, columns, schema, I.default_specs())
    return {s.name: s.tower for s in specs}


def check_model_name(name: Any) -> str:
    """A repository name Triton and every file system accept: letters, digits, ``_ . -``; not a version number."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name) or name.isdigit():
        raise ExporterError(
            f"model name {name!r} is not usable as a repository directory: expected letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit, at most 100 characters, not only digits)"
        )
    return name


# --------------------------------------------------------------------------- fit / evaluate


def fit(prep: Prepared) -> Trained:
    """Train (with a progress bar) or hand back the model that load mode already read."""
    if prep.loaded is not None:
        return prep.loaded
    from exporter.training.progress_bar import progress_bar  # tqdm in a terminal, one updating line in a notebook

    total = prep.spec.progress_total(prep.hparams, len(prep.x_train))
    with progress_bar(total, f"train {prep.spec.name}", enabled=prep.params.progress) as bar:
        return prep.spec.train(TrainData(
            x_train=prep.x_train, y_train=prep.y_train, x_heldout=prep.x_heldout, y_heldout=prep.y_heldout,
            columns=prep.columns, hparams=prep.hparams, seed=prep.params.seed, features=prep.features, progress=bar,
        ))


def evaluate(prep: Prepared, trained: Trained) -> Evaluation:
    """Held-out metrics (empty when a load-mode data file has no labels), as the model evaluates itself."""
    own = prep.spec.evaluate(prep, trained)
    return Evaluation(own.metrics, own.labels, own.predictions, Q.assess(own.metrics, own.labels),
                      own.details, own.files)


# --------------------------------------------------------------------------- export


def _check_io(unit: ExportUnit, model: Any) -> None:
    """The graph's own tensors must be exactly the contract's: a Triton user never reads our code."""
    problems = C.graph_io_problems(model, len(unit.feature_columns), unit.output_shape)
    if problems:
        raise ExporterError(f"exported graph of {unit.model_name} breaks the tensor contract: " + "; ".join(problems))


def build_onnx(unit: ExportUnit, plan: F.FeaturePlan | None = None) -> bytes:
    """Export, put the in-graph preprocessing of ``plan`` in front, check (full_check) and serialise one unit."""
    import onnx

    from exporter.features import onnx_prep

    model = unit.build_onnx()
    if plan is not None:
        model = onnx_prep.compose(plan, model)
    _check_io(unit, model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExporterError(f"exported graph of {unit.model_name} fails onnx.checker: {exc}") from exc
    return model.SerializeToString()


def check_parity(unit: ExportUnit, model_bytes: bytes, x: np.ndarray, heldout_rows: int, atol: float,
                 plan: F.FeaturePlan | None = None) -> ParityResult:
    """onnxruntime on raw rows ``x`` against the native model on the same rows prepared by the numpy twin."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run([C.OUTPUT_NAME], {C.INPUT_NAME: x})[0], dtype=np.float64)
    native = np.asarray(unit.native_predict(plan.prepare(x) if plan is not None else x), dtype=np.float64)
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
    root = Path(__file__).resolve().parents[2]
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
                   version: int, model_bytes: bytes, sha256: str, parity: ParityResult,
                   sha256_of: Mapping[str, str] | None = None, model_part: str | None = None,
                   side_files: Sequence[tuple[SideFile, str]] = ()) -> dict[str, Any]:
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
    for key, value in unit.metadata.items():
        if key == "tasks":  # the data's own label columns (``--label`` renames ``label``)
            value = [{**t, "label": prep.label_columns.get(t["label"], t["label"])} for t in value]
        meta[key] = _jsonable(value)
    for side, sha in side_files:
        meta[side.metadata_key] = {"file": side.name, "sha256": sha, **_jsonable(dict(side.info))}
    if prep.features is not None:
        vocab_sha = sha256_of.get(repo.VOCAB_FILE) if sha256_of else None
        meta["features"] = prep.features.subset(unit.feature_columns).metadata(
            repo.VOCAB_FILE if vocab_sha else None, vocab_sha)
    meta.update({
        "prediction_format": unit.prediction_format,
        "model_part": model_part or unit.model_name,
        "description": prep.spec.description,
        "related_models": list(unit.related_models),
        "model_file": repo.MODEL_FILE,
        "sha256": sha256,
        "opset": opsets.get("", 0),
        "opset_imports": opsets,
        "producer": _producer(unit),
        "parity": parity.as_metadata(unit.reference),
        "quality": _jsonable(evaluation.quality),
        "training": {
            "mode": prep.params.mode,
            **sources,
            "rows": len(prep.train) + len(prep.heldout),
            "train_rows": len(prep.train),
            "heldout_rows": len(prep.heldout),
            "seed": prep.params.seed,
            "label_columns": list(prep.label_columns.values()) if prep.y_heldout else [],
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
    """A TorchServe-style request built from the first complete held-out rows, raw values by column name.

    Raw means as the data holds them: strings for string categories, integer IDs, numbers.
    """
    frame = prep.heldout[unit.feature_columns]
    complete = frame[frame.notna().all(axis=1)]
    return C.torchserve_request((complete if len(complete) else frame).head(rows).to_dict("records"), unit.feature_columns)


def renamed_model_names(names: Sequence[str], name: str | None) -> list[str]:
    """The repository names of ``names`` under ``--model-name``: the first is NAME, the others NAME plus their
    own suffix (``_item``); each checked as a directory name."""
    if name is None:
        return list(names)
    first = names[0]
    renamed = [name + (n[len(first):] if n.startswith(first) else "_" + n) for n in names]
    for new in renamed:
        check_model_name(new)
    return renamed


def _renamed(units: Sequence[ExportUnit], name: str | None) -> list[ExportUnit]:
    """Units under ``--model-name``: the first is NAME, the others NAME plus their own suffix (``_item``)."""
    from dataclasses import replace

    if name is None:
        return list(units)
    mapping = dict(zip((u.model_name for u in units), renamed_model_names([u.model_name for u in units], name)))
    return [replace(u, model_name=mapping[u.model_name], related_models=[mapping.get(r, r) for r in u.related_models])
            for u in units]


def _config_tensors(text: str) -> str:
    """The tensors of a config.pbtxt as the graph sees them, e.g. ``input features TYPE_FP64 [-1, 10]; output ...``.

    Batched and unbatched configs of the same graph read the same (:func:`exporter.export.triton.model_shape`), so a
    new ``--max-batch-size`` or the move from the older unbatched form is not a clash.
    """
    from exporter.export.triton import model_shape
    from exporter.tools.verify import parse_pbtxt

    cfg = parse_pbtxt(text)
    max_batch = cfg.get("max_batch_size", [0])[0]
    parts = []
    for kind in ("input", "output"):
        for t in cfg.get(kind, []):
            parts.append(f"{kind} {t.get('name', ['?'])[0]} {t.get('data_type', ['?'])[0]} {model_shape(t, max_batch)}")
    return "; ".join(parts)


def check_config_compatible(artifacts: Path, model_name: str, new_text: str) -> None:
    """Refuse to export into a model whose config.pbtxt describes other tensors (it would break its versions)."""
    path = artifacts / model_name / repo.CONFIG_FILE
    if not path.is_file():
        return
    try:
        old = _config_tensors(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ExporterError(f"cannot read the existing {path} ({exc}); fix or remove it, or export with --model-name") from exc
    new = _config_tensors(new_text)
    if old != new:
        raise ExporterError(
            f"model '{model_name}' in {artifacts} has tensors [{old}] but this export has [{new}]: a new version "
            "would break the existing ones; export under another name (--model-name) or into another --artifacts"
        )


def export(prep: Prepared, trained: Trained, evaluation: Evaluation) -> list[ExportedArtifact]:
    """Export every unit; all pass the parity gate and are committed together, or nothing is written."""
    from exporter.export import kserve
    from exporter.export import model_card
    from exporter.export import triton
    from exporter.runtime.handler import ModelHandler

    Q.check_min_auc(evaluation.quality, prep.params.min_auc, prep.spec.name)
    original = trained.units()
    units = _renamed(original, prep.params.model_name)
    parts = {u.model_name: o.model_name for u, o in zip(units, original)}
    artifacts = Path(prep.params.artifacts)
    for unit in units:  # before the slow work: a clash is known from the shapes alone
        inputs, outputs = C.tensor_specs(len(unit.feature_columns), unit.output_shape)
        new_config = triton.config_pbtxt({"name": unit.model_name, "inputs": inputs, "outputs": outputs},
                                         max_batch_size=prep.params.max_batch_size, warmup=False)
        check_config_compatible(artifacts, unit.model_name, new_config)
    plan = prep.features
    raw_held = prep.raw_heldout if prep.raw_heldout is not None else prep.x_heldout
    raw_train = prep.raw_train if prep.raw_train is not None else prep.x_train
    x_parity, n_synthetic = D.parity_rows(raw_held, raw_train, minimum=PARITY_MIN_ROWS, seed=prep.params.seed)
    n_probes = 0
    if plan is not None:  # unseen IDs, unknown codes, non-integers, NaN: the OOV paths must agree too
        probes = F.probe_rows(plan, x_parity)
        x_parity, n_probes = np.concatenate([x_parity, probes]), len(probes)
    built: list[tuple[ExportUnit, bytes, ParityResult]] = []
    for unit in units:
        sub = plan.subset(unit.feature_columns) if plan is not None else None
        model_bytes = build_onnx(unit, sub)
        idx = [prep.columns.index(c) for c in unit.feature_columns]
        parity = check_parity(unit, model_bytes, np.ascontiguousarray(x_parity[:, idx]),
                              len(x_parity) - n_synthetic - n_probes, prep.atol, sub)
        parity.probe_rows = n_probes
        built.append((unit, model_bytes, parity))
    failed = [p for _, _, p in built if not p.passed]
    if failed:
        raise ParityError(
            "parity check failed, nothing was written: "
            + "; ".join(f"{p.model_name} max |native - onnxruntime| = {p.max_abs_diff:.3g} > atol {p.atol:g} over {p.rows} rows" for p in failed)
        )

    exported: list[ExportedArtifact] = []
    # the writer claims the version (the next free one unless given), so concurrent exports never collide
    with repo.VersionWriter(artifacts, prep.params.version, [u.model_name for u in units]) as writer:
        version = writer.version
        metas = {}
        for unit, model_bytes, parity in built:
            d = writer.path(unit.model_name)
            (d / repo.MODEL_FILE).write_bytes(model_bytes)
            sha = repo.sha256_file(d / repo.MODEL_FILE)
            extra: dict[str, str] = {}
            vocab = plan.subset(unit.feature_columns).vocab_json() if plan is not None else {}
            if vocab:
                repo.write_json(d / repo.VOCAB_FILE, vocab)
                extra[repo.VOCAB_FILE] = repo.sha256_file(d / repo.VOCAB_FILE)
            written = []
            for side in evaluation.files.get(parts[unit.model_name], []):
                if not C.is_plain_file_name(side.name):
                    raise ExporterError(f"{unit.model_name}: side file name {side.name!r} is not a plain file name")
                (d / side.name).write_bytes(side.data)
                written.append((side, repo.sha256_file(d / side.name)))
            meta = build_metadata(prep, trained, evaluation, unit, version, model_bytes, sha, parity, extra,
                                  parts[unit.model_name], written)
            repo.write_json(d / repo.METADATA_FILE, meta)
            request = sample_request(prep, unit)
            repo.write_json(d / repo.SAMPLE_REQUEST, request)
            handler = ModelHandler.load(d)
            response = handler.predict(request)
            repo.write_json(d / repo.SAMPLE_RESPONSE, response)
            idx = [prep.columns.index(c) for c in unit.feature_columns]
            model_card.write_version_files(d, meta, request, response, raw_held[:, idx], handler)
            if unit.write_native_files is not None:
                unit.write_native_files(d)
            metas[unit.model_name] = meta
        committed = writer.commit()
        for unit, _, parity in built:
            meta = metas[unit.model_name]
            idx = [prep.columns.index(c) for c in unit.feature_columns]
            finite = raw_held[np.isfinite(raw_held[:, idx]).all(axis=1)][:1, idx]  # what the graph takes
            triton.write_model_config(artifacts / unit.model_name, meta, finite[0] if len(finite) else None,
                                      max_batch_size=prep.params.max_batch_size)
            kserve.write_manifest(artifacts / unit.model_name, meta,
                                  storage_uri=prep.params.storage_uri or kserve.DEFAULT_STORAGE_URI)
            exported.append(ExportedArtifact(unit.model_name, version, committed[unit.model_name], meta, parity))
    return exported


def run(params: ExportParams, echo: Callable[[str], None] | None = None) -> RunResult:
    """prepare -> fit -> evaluate -> export, timed; ``echo`` receives the feature schema before training."""
    start = time.perf_counter()
    prep = prepare(params)
    if echo is not None:
        echo(prep.schema_text())
    trained = fit(prep)
    evaluation = evaluate(prep, trained)
    artifacts = export(prep, trained, evaluation)
    return RunResult(prep, trained, evaluation, artifacts, time.perf_counter() - start)
