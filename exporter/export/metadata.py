"""What an export writes about itself: ``metadata.json`` (contract section 3), the sample request, the producer.

metadata.json is a v2 model-metadata response plus what downstream teams need: features, parity, quality,
training provenance (portable: no local paths), producer versions and opsets.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter import __version__
from exporter import contract as C
from exporter import features as F
from exporter.export import repository as repo
from exporter.export import triton
from exporter.export.convert import ParityResult
from exporter.export.params import Evaluation, Prepared
from exporter.models import ExportUnit, Trained, threads
from exporter.models.base import SideFile
from exporter.training import diagnostics as DG

#: rows in sample_request.json
SAMPLE_ROWS = 3


def _producer(unit: ExportUnit) -> dict[str, str]:
    import onnx
    import onnxruntime

    out = {
        "framework": unit.framework,
        "framework_version": unit.framework_version,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "exporter": __version__,
    }
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


def split_counts(prep: Prepared) -> dict[str, int]:
    """Rows the run read and used per split (``rows``, ``train_rows``, ``validation_rows``, ``test_rows``): a
    streamed run's counts cover the whole table (its frames are bounded samples)."""
    reading = prep.reading or {}
    if reading.get("path") == "streaming":
        rows = reading["rows"]
        return {
            "rows": reading["rows_read"],
            "train_rows": rows["train"],
            "validation_rows": rows["validation"],
            "test_rows": rows["test"],
        }
    return {
        "rows": len(prep.train) + len(prep.validation) + len(prep.heldout),
        "train_rows": len(prep.train),
        "validation_rows": len(prep.validation),
        "test_rows": len(prep.heldout),
    }


def _rows(prep: Prepared) -> dict[str, Any]:
    """:func:`split_counts`, and how the rows were split and read (``data_reading``: path and reason, rows per
    split, passes, threads, phases)."""
    reading = dict(prep.reading or {})
    out: dict[str, Any] = dict(split_counts(prep))
    # the rows the metrics are computed on (a streamed run: its bounded test sample)
    out["heldout_rows"] = len(prep.heldout)
    split = prep.split or reading.get("split")
    if split:
        out["split"] = _jsonable(split)
    if reading:
        out["data_reading"] = _jsonable(reading)
    return out


def build_metadata(
    prep: Prepared,
    trained: Trained,
    evaluation: Evaluation,
    unit: ExportUnit,
    version: int,
    model_bytes: bytes,
    sha256: str,
    parity: ParityResult,
    sha256_of: Mapping[str, str] | None = None,
    model_part: str | None = None,
    side_files: Sequence[tuple[SideFile, str]] = (),
) -> dict[str, Any]:
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
    meta["triton"] = triton_tensors(meta, prep.params.max_batch_size)
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
    vocab_sha = sha256_of.get(repo.VOCAB_FILE) if sha256_of else None
    meta["features"] = prep.features.subset(unit.feature_columns).metadata(
        repo.VOCAB_FILE if vocab_sha else None, vocab_sha
    )
    meta.update(
        {
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
            "evaluation": _jsonable(DG.metadata_section(evaluation.diagnostics)),
            "training": {
                "mode": prep.params.mode,
                **sources,
                **_rows(prep),
                "early_stopping": _jsonable(trained.stopping) if trained.stopping else None,
                "seed": prep.params.seed,
                "label_columns": list(prep.label_columns.values()) if prep.y_heldout else [],
                **({"positive_class": _jsonable(prep.positive_class)} if prep.positive_class is not None else {}),
                "column_warnings": [dict(w) for w in prep.column_warnings],
                "hyperparameters": _jsonable(hyper),
                "metrics": {
                    k: (None if not np.isfinite(v) else round(float(v), 6)) for k, v in evaluation.metrics.items()
                },
                # a run without validation rows has no validation loss (NaN): null
                "final_loss": _jsonable(trained.history[-1]) if trained.history else None,
                **_jsonable(prep.training_record),
                **_threads_record(trained),
            },
            **({"tracking": _jsonable(dict(prep.params.tracking))} if prep.params.tracking else {}),
            **({"tuning": _jsonable(dict(prep.params.tuning))} if prep.params.tuning else {}),
            "created_at": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        }
    )
    return meta


def _threads_record(trained: Trained) -> dict[str, Any]:
    """The threads training ran on and the OpenMP wait policy (train mode; a loaded model trained elsewhere)."""
    if trained.threads is None:
        return {}
    return {"threads": trained.threads, "openmp_wait_policy": threads.wait_policy()}


def triton_tensors(meta: Mapping[str, Any], max_batch_size: int) -> dict[str, list[dict[str, Any]]]:
    """``inputs``/``outputs`` as Triton (and KServe's Triton runtime) report them for this version's config.pbtxt:
    a per-row score is ``[-1, 1]`` there, while ``inputs``/``outputs`` keep the project's ``[-1]``."""
    config = triton.config_pbtxt(meta, max_batch_size=max_batch_size, warmup=False)
    return triton.triton_view(config)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON holds it: numpy scalars as numbers, a NaN or infinity (JSON has neither) as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def sample_request(prep: Prepared, unit: ExportUnit, rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """A TorchServe-style request built from held-out rows, raw values by column name.

    Raw means as the data holds them: strings for string categories, integer IDs, numbers. The rows are the first
    ones with a value in every column serving requires (an optional column may be null: serving fills it). When no
    held-out row has them all (a wide table with a few empty cells in many columns), the rows with the fewest gaps
    are taken and each missing required cell gets the column's first value present in the held-out rows, else in
    the training rows, else its fill: a request the handler accepts, not a row of the data.
    """
    columns = F.input_columns(unit.feature_columns, list(prep.heldout.columns))  # a history by its name
    frame = prep.heldout[columns]
    optional = {f.spec.name for f in prep.features.features if f.spec.optional or f.history}
    required = [c for c in columns if c not in optional]
    # rows complete in every column first, then complete in the required ones, then the fewest required gaps
    gaps = frame[required].isna().sum(axis=1).to_numpy() * (len(columns) + 1) + frame.isna().sum(axis=1).to_numpy()
    histories = [c for c in columns if c not in prep.features.columns and c in frame.columns]
    empty = np.zeros(len(frame), dtype=np.int64)  # among equals, rows whose histories hold items show them
    for c in histories:
        empty |= frame[c].map(_no_items).to_numpy(dtype=bool)
    chosen = frame.iloc[np.argsort(gaps * 2 + empty, kind="stable")[:rows]].copy()
    for c in required:
        missing = chosen[c].isna()
        if missing.any():
            chosen[c] = chosen[c].astype(object).where(~missing, _present_value(prep, c))
    for f in prep.features.features:
        if f.dtype == "string" and f.name in chosen.columns:  # a declared string column of digits stays strings
            chosen[f.name] = chosen[f.name].map(lambda v: v if v is None or v != v else str(v))
    for name, ids in F.history_lists(prep.features.subset(columns), chosen).items():  # a JSON list of IDs
        chosen[name] = pd.Series(ids, index=chosen.index, dtype=object)
    return C.torchserve_request(chosen.to_dict("records"), columns)


def _no_items(value: Any) -> bool:
    """A history cell without items: missing, an empty list, or blank text."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    if isinstance(value, str):
        return not value.strip()
    return hasattr(value, "__len__") and len(value) == 0


def _present_value(prep: Prepared, column: str) -> Any:
    """A value of ``column`` for a sample request: its first in the held-out rows, else the training rows, else
    its fill (a numeric column's; None when it has none)."""
    for part in (prep.heldout, prep.train):
        if column in part.columns:
            present = part[column].dropna()
            if len(present):
                return present.iloc[0]
    fitted = {f.spec.name: f for f in prep.features.features}.get(column)
    return fitted.fill if fitted is not None else None
