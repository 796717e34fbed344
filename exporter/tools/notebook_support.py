"""Glue the model notebooks share: parameters -> validated run, data tables, printouts, handler smoke test.

The notebooks (``notebooks/*.ipynb``) stay thin: each cell calls one function here, in
:mod:`exporter.export.pipeline` or in :mod:`exporter.tools.plots`. Everything a notebook prints in a cell marked
``# NBVAL_CHECK_OUTPUT`` comes from this module and is deterministic (no paths, times or raw float
differences), so nbval can compare it with the stored output.

The parameter checks (:func:`prepare`, :class:`ParameterError`, the path rules) are
:mod:`exporter.tools.notebook_params`, importable from here as the notebooks do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from exporter import contract as C
from exporter.tools.notebook_params import (
    ARTIFACTS_ENV,
    DEFAULT_ARTIFACTS,
    DEPRECATED_ATOL,
    ParameterError,
    display_path,
    feature_columns_param,
    knobs,
    notebook_terms,
    prepare,
    repo_root,
    resolve_artifacts_dir,
    resolve_path,
)
from exporter.tools.notebook_tracking import export, show_runs, train
from exporter.tools.summary import column_warning_lines, evaluation_lines, metric_notes, unjudged_auc
from exporter.training import refit as RF

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    from exporter.export.pipeline import Evaluation, ExportedArtifact, Prepared
    from exporter.models import Trained

#: what the notebooks call, whether defined here or in notebook_params
__all__ = [
    "ARTIFACTS_ENV",
    "DEFAULT_ARTIFACTS",
    "DEPRECATED_ATOL",
    "PREVIEW_ROWS",
    "SMOKE_ROWS",
    "ParameterError",
    "SmokeResult",
    "column_summary",
    "contract_text",
    "describe_exports",
    "describe_run",
    "export",
    "display_path",
    "feature_columns_param",
    "feature_table",
    "format_metrics",
    "knobs",
    "notebook_terms",
    "parity_text",
    "prepare",
    "preview",
    "repo_root",
    "resolve_artifacts_dir",
    "resolve_path",
    "show_runs",
    "smoke_test",
    "torchserve_predictions",
    "torchserve_request",
    "train",
]

#: Held-out rows sent to the handler by :func:`smoke_test`.
SMOKE_ROWS = 8
PREVIEW_ROWS = 5


# --------------------------------------------------------------------------- the run


def feature_table(prep: Prepared) -> pd.DataFrame:
    """The feature schema as training fitted it: kind, dtype, vocabulary size, missing rate, fill per column."""
    assert prep.features is not None
    table = prep.features.describe()
    table.insert(0, "from", [prep.origins.get(c, "stored") for c in table.index])
    return table


def describe_run(prep: Prepared) -> str:
    """One paragraph: what will be trained or loaded, on which data, written where."""
    p = prep.params
    what = f"load {display_path(Path(p.checkpoint))}" if p.mode == "load" and p.checkpoint is not None else "train"
    data = "built-in synthetic data" if p.data_path is None else f"data file {display_path(Path(p.data_path))}"
    version = f"version {p.version}" if p.version else "the next free version"
    total = len(prep.train) + len(prep.validation) + len(prep.heldout)
    lines = [
        f"{prep.spec.name}: {what} on {data}",
        (
            f"  rows: {len(prep.train)} training, {len(prep.validation)} validation (early stopping"
            + ("; the refit trains on them too" if _refits(prep) else "")
            + "), "
            f"{len(prep.heldout)} held-out test (seed {p.seed})"
            if p.mode == "train"
            else f"  rows: {len(prep.heldout)} held-out of {total} for evaluation and the parity check"
        ),
        f"  features ({_count_features(prep)}): {', '.join(_table_columns(prep))}"
        + (f"  [{prep.columns_note}]" if prep.columns_note and prep.columns_note != "default schema" else ""),
        f"  label: {', '.join(prep.label_columns.get(c, c) for c in prep.spec.label_columns)}",
        f"  hyper-parameters: {_short(prep.hparams)}",
        f"  export to {display_path(Path(p.artifacts))}/{_model_dirs(prep.spec.model_names)}/ as {version}",
    ]
    if prep.positive_class is not None:
        lines[3] += f" (1 = {prep.positive_class}, the other value 0)"
    lines += [notebook_terms(line) for line in column_warning_lines(prep.column_warnings)]
    return "\n".join(lines)


def _refits(prep: Prepared) -> bool:
    """Whether this in-memory training run will refit on its training and validation rows."""
    in_memory = getattr(prep, "stream", None) is None and getattr(prep, "fit_elsewhere", None) is None
    return in_memory and RF.decide(prep.hparams, len(prep.train), len(prep.validation))[0]


def _model_dirs(names: Sequence[str]) -> str:
    """``xgb`` for one model directory, ``{two_tower,two_tower_item}`` (shell brace style) for several."""
    return names[0] if len(names) == 1 else "{" + ",".join(names) + "}"


def _short(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if k != "source_file" and v is not None)


# --------------------------------------------------------------------------- data


def preview(prep: Prepared, rows: int = PREVIEW_ROWS) -> pd.DataFrame:
    """The first training rows, model inputs first, then labels."""
    labels = [c for c in dict.fromkeys(prep.label_columns.values()) if c in prep.train.columns]
    return prep.train[_table_columns(prep) + labels].head(rows)


def _count_features(prep: Prepared) -> str:
    """``5`` or, with a history, ``5; 24 tensor columns``."""
    shown = len(_table_columns(prep))
    return str(shown) if shown == len(prep.columns) else f"{shown}; {len(prep.columns)} tensor columns"


def _table_columns(prep: Prepared) -> list[str]:
    """The data's columns the model reads: a history's tensor columns (``recent[0]``, ...) are its one list column."""
    from exporter.features.history import input_columns

    return input_columns(prep.columns, [str(c) for c in prep.train.columns])


#: values :func:`column_summary` shows for a categorical or ID column
SUMMARY_TOP = 3


def column_summary(prep: Prepared) -> pd.DataFrame:
    """Per column of the data (every row: training, validation and held-out): its role for this model, dtype, and
    what its values are: range and mean of a numeric column; distinct count and most frequent values of a
    categorical or ID column (whose mean means nothing); of a history, the range and mean of its lengths and its
    distinct and most frequent items."""
    parts = [f for f in (prep.train, prep.validation, prep.heldout) if len(f)]
    frame = pd.concat(parts, ignore_index=True) if parts else prep.train
    labels = set(prep.label_columns.values())
    categorical = {f.name for f in prep.features.features if f.categorical} if prep.features is not None else set()
    inputs = set(_table_columns(prep))
    histories = _history_items(prep, frame)
    records = []
    for col in frame.columns:
        series = frame[col]
        role = "feature" if col in inputs else "label" if col in labels else "unused"
        if col in histories:
            records.append(_history_summary(col, role, series, histories[col]))
            continue
        series = series.map(_hashable) if series.dtype == object else series
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        identifier = col in categorical or (role != "feature" and _looks_like_id(col, series))
        numeric = numeric and not identifier
        records.append(
            {
                "column": col,
                "role": role,
                "dtype": str(series.dtype),
                "min": series.min() if numeric else None,
                "mean": series.mean() if numeric else None,
                "max": series.max() if numeric else None,
                "distinct": int(series.nunique()),
                "top values": "" if numeric else _top_values(series),
            }
        )
    order = {"feature": 0, "label": 1, "unused": 2}
    out = pd.DataFrame.from_records(records).set_index("column")
    return out.sort_values("role", key=lambda s: s.map(order), kind="stable")


def _history_items(prep: Prepared, frame: pd.DataFrame) -> dict[str, list[list[Any]]]:
    """Each history feature's kept items per row (its text read as the model reads it)."""
    from exporter.features.history import history_lists

    if prep.features is None or not prep.features.histories():
        return {}
    return history_lists(prep.features, frame)


def _history_summary(col: str, role: str, series: pd.Series, items: list[list[Any]]) -> dict[str, Any]:
    """A history column in :func:`column_summary`: min / mean / max of its lengths (items kept per row), its
    distinct items and the most frequent ones."""
    lengths = np.array([len(row) for row in items], dtype=np.int64)
    flat = pd.Series([v for row in items for v in row], dtype=object)
    return {
        "column": col,
        "role": role,
        "dtype": f"history ({series.dtype})",
        "min": int(lengths.min()) if len(lengths) else None,
        "mean": float(lengths.mean()) if len(lengths) else None,
        "max": int(lengths.max()) if len(lengths) else None,
        "distinct": int(flat.nunique()),
        "top values": _top_values(flat),
    }


def _hashable(value: Any) -> Any:
    """A list or array cell as a tuple, so that an unused list column can be counted like any other."""
    return tuple(value) if isinstance(value, (list, np.ndarray)) else value


def _looks_like_id(name: str, series: pd.Series) -> bool:
    """An integer column named ``*id`` (the schema's rule for inferring a categorical ID)."""
    from exporter.features import CATEGORICAL, infer_kind

    return bool(name.lower().endswith("id")) and infer_kind(series, name) == CATEGORICAL


def _top_values(series: pd.Series) -> str:
    """``books (1,204), shoes (980), bags (611)``: the most frequent values with their counts."""
    counts = series.value_counts(dropna=True).head(SUMMARY_TOP)
    shown = []
    for value, n in counts.items():
        item = getattr(value, "item", None)
        value = item() if callable(item) else value
        text = str(value)
        shown.append(f"{text if len(text) <= 24 else text[:21] + '...'} ({n:,})")
    return ", ".join(shown)


def format_metrics(evaluation: Evaluation, history: Sequence[Mapping[str, float]] = ()) -> str:
    """Held-out metrics, one per line (baselines beside the RMSEs they are compared with), then what they are:
    the metric the model is judged by and, given the training ``history``, the progress bar's heldout loss."""
    m = evaluation.metrics
    if not m:
        return "held-out metrics: none (the data has no label columns)"
    lines = ["held-out metrics:"]
    warning = evaluation.quality.get("warning") if evaluation.quality else None
    unjudged = unjudged_auc(evaluation.quality)
    for key, value in m.items():
        if key.endswith("_baseline") or key.startswith("popularity_") or key in ("users_evaluated", "catalogue_items"):
            continue
        extra = ""
        if f"{key}_baseline" in m:
            extra = f"  (predicting the mean: {m[f'{key}_baseline']:.4g})"
        elif f"popularity_{key}" in m:
            extra = f"  (popularity: {m[f'popularity_{key}']:.4f})"
        elif key.endswith("base_rate"):
            extra = "  (share of positives)" if key != "base_rate" else "  (share of clicks)"
        elif key == unjudged:
            extra = "  (not judged: see below)"
        lines.append(f"  {key:<18} {value:.4f}{extra}")
    if "catalogue_items" in m:
        lines.append(
            f"  (retrieval over {int(m['catalogue_items'])} items for {int(m.get('users_evaluated', 0))} users "
            "with held-out positives; their training items excluded)"
        )
    lines += [f"  ({note})" for note in metric_notes(m, evaluation.quality, history)]
    lines += [f"  {line}" for line in evaluation_lines(evaluation.diagnostics)]
    if warning:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- export printouts


def describe_exports(exported: Sequence[ExportedArtifact]) -> str:
    """Where each artifact went (volatile: version and path), for people, not for nbval."""
    lines = []
    for a in exported:
        files = sorted(p.name for p in Path(a.path).iterdir())
        lines.append(f"{a.model_name} version {a.version} -> {display_path(Path(a.path))}/  ({', '.join(files)})")
    return "\n".join(lines)


def contract_text(exported: Sequence[ExportedArtifact]) -> str:
    """The v2 model-metadata contract of each artifact: deterministic for given columns and model."""
    lines = []
    for a in exported:
        m = a.metadata
        lines.append(f"{m['name']}  (platform {m['platform']})")
        for kind in ("inputs", "outputs"):
            for t in m[kind]:
                lines.append(f"  {kind[:-1]:<7}{t['name']}  {t['datatype']}  {t['shape']}")
        lines.append(f"  feature_columns: {', '.join(m['feature_columns'])}")
        if m.get("output_columns"):
            lines.append(f"  output_columns:  {', '.join(m['output_columns'])}")
        if m.get("embed_dim") is not None:
            lines.append(f"  embed_dim:       {m['embed_dim']}")
        lines.append(f"  TorchServe-style answer: {_FORMATS.get(m['prediction_format'], m['prediction_format'])}")
    return "\n".join(lines)


_FORMATS = C.PREDICTION_FORMATS


def parity_text(exported: Sequence[ExportedArtifact]) -> str:
    """The parity verdict without the raw difference (which may vary across platforms)."""
    lines = []
    for a in exported:
        p = a.parity
        verdict = "passed" if p.passed else "FAILED"
        op = "<=" if p.passed else ">"
        sampled = p.rows - p.heldout_rows - p.probe_rows
        parts = [f"{p.heldout_rows} held-out"]
        if sampled:  # small data: the gate tops the held-out rows up with sampled ones
            parts.append(f"{sampled} sampled from the data's values")
        if p.probe_rows:
            parts.append(f"{p.probe_rows} probes with unseen IDs, unknown codes and missing values")
        rows = f"{p.rows} rows ({', '.join(parts)})" if len(parts) > 1 else f"{p.rows} held-out rows"
        diff = f"|native - onnxruntime| {op} atol {p.atol:g} + rtol {p.rtol:g} * |native|" if p.rtol else None
        diff = diff or f"max |native - onnxruntime| {op} atol {p.atol:g}"
        lines.append(f"parity {a.model_name}: {verdict} ({diff} on {rows})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- smoke test


def torchserve_request(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, Any]:
    """``{"data": [{column: value}, ...]}`` from table rows (raw values, by name)."""
    return C.torchserve_request(frame[list(columns)].to_dict("records"), columns)


v2_request = C.v2_request


def torchserve_predictions(
    answer: Mapping[str, Any], prediction_format: str, output_columns: Sequence[str], rows: int
) -> np.ndarray:
    """Turn a TorchServe-style answer back into the array the native model returns, checking its shape."""
    if not isinstance(answer, Mapping) or set(answer) != {C.ANSWER_KEY}:
        raise AssertionError(f"TorchServe-style answer must be {{'{C.ANSWER_KEY}': [...]}}, got keys {list(answer)}")
    preds = answer[C.ANSWER_KEY]
    if prediction_format == "named_columns":
        if len(preds) != rows or not all(isinstance(p, Mapping) and list(p) == list(output_columns) for p in preds):
            raise AssertionError(f"expected {rows} objects with keys {list(output_columns)}, got {preds[:2]!r}...")
        return np.array([[p[c] for c in output_columns] for p in preds], dtype=np.float64)
    if prediction_format == "vector" and rows == 1:
        if not preds or isinstance(preds[0], list):
            raise AssertionError(f"a one-row request must be answered with the vector itself, got {preds!r}")
        return np.array([preds], dtype=np.float64)
    out = np.array(preds, dtype=np.float64)
    if len(out) != rows:
        raise AssertionError(f"expected {rows} predictions, got {len(out)}")
    return out


@dataclass
class SmokeResult:
    model_name: str
    rows: int
    atol: float
    prediction_format: str
    width: int | None
    rtol: float = 0.0

    def __str__(self) -> str:
        bound = f"{self.atol:g}" + (f" + {self.rtol:g} * |native|" if self.rtol else "")
        text = (
            f"smoke test {self.model_name}: TorchServe-style and v2 requests for {self.rows} held-out rows "
            f"agree with the native model (|diff| <= {bound})"
        )
        if self.prediction_format == "vector":
            text += f"; a one-row request gets a flat vector of {self.width}"
        return text


def smoke_test(prep: Prepared, trained: Trained, exported: Sequence[ExportedArtifact], rows: int = SMOKE_ROWS) -> str:
    """Load each artifact with the serving handler, ask it in both request forms, compare with the native model.

    Requests are built from held-out rows (TorchServe style with every model column by name, so a tower
    must pick its own; v2 with the artifact's own columns). Raises ``AssertionError`` on any disagreement.
    """
    from exporter.runtime.handler import ModelHandler

    units = {u.model_name: u for u in trained.units()}
    held = prep.heldout
    columns = _table_columns(prep)  # a history by its own name, sent as a JSON list of its IDs
    lists = {h["name"] for h in prep.features.histories()} if prep.features is not None else set()
    plain = [c for c in columns if c not in lists]
    complete = held[held[plain].notna().all(axis=1)]  # a TorchServe null is for optional columns only
    frame = (complete if len(complete) else held).head(rows)
    n = len(frame)
    sent = frame.copy()
    for name, items in _history_items(prep, frame).items():
        sent[name] = pd.Series(items, index=frame.index, dtype=object)
    results: list[SmokeResult] = []
    for artifact in exported:
        unit = units[artifact.metadata.get("model_part") or artifact.model_name]
        handler = ModelHandler.load(artifact.path)
        plan = prep.features.subset(unit.feature_columns) if prep.features is not None else None
        # raw values as serving sends them (strings as their codes for v2), prepared by the numpy twin for torch/xgb
        x = plan.encode(frame) if plan is not None else frame[list(unit.feature_columns)].to_numpy(dtype=np.float64)
        native = np.asarray(unit.native_predict(plan.prepare(x) if plan is not None else x), dtype=np.float64)
        atol, rtol = artifact.parity.atol, artifact.parity.rtol
        fmt = artifact.metadata["prediction_format"]
        out_cols = artifact.metadata.get("output_columns") or []

        answer = handler.predict(torchserve_request(sent, columns))
        got = torchserve_predictions(answer, fmt, out_cols, n)
        np.testing.assert_allclose(
            got.reshape(native.shape),
            native,
            rtol=rtol,
            atol=atol,
            err_msg=f"{artifact.model_name}: TorchServe-style answer != native model",
        )

        request_id = f"smoke-{artifact.model_name}"
        response = handler.predict(v2_request(x, request_id))
        output = response["outputs"][0]
        problems = []
        if response.get("model_name") != artifact.model_name:
            problems.append(f"model_name {response.get('model_name')!r}")
        if response.get("id") != request_id:
            problems.append(f"id {response.get('id')!r} (expected {request_id!r} echoed)")
        if output.get("name") != C.OUTPUT_NAME or output.get("datatype") != C.DATATYPE:
            problems.append(f"output {output.get('name')!r} {output.get('datatype')!r}")
        if list(output.get("shape", [])) != list(native.shape):
            problems.append(f"shape {output.get('shape')} (native {list(native.shape)})")
        if problems:
            raise AssertionError(f"{artifact.model_name}: v2 response has " + "; ".join(problems))
        v2 = np.asarray(output["data"], dtype=np.float64).reshape(native.shape)
        np.testing.assert_allclose(
            v2, native, rtol=rtol, atol=atol, err_msg=f"{artifact.model_name}: v2 answer != native model"
        )

        width = None
        if fmt == "vector":
            one = handler.predict(torchserve_request(sent.head(1), columns))
            vec = torchserve_predictions(one, fmt, out_cols, 1)
            np.testing.assert_allclose(
                vec, native[:1], rtol=rtol, atol=atol, err_msg=f"{artifact.model_name}: one-row answer != native model"
            )
            width = vec.shape[1]
        results.append(SmokeResult(artifact.model_name, n, atol, fmt, width, rtol))
    return "\n".join(str(r) for r in results)
