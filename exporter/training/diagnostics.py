"""Evaluation a data scientist trusts beyond AUC: precision-recall, calibration and feature importance.

* :func:`average_precision`: the area under the precision-recall curve (sklearn's step-wise definition), which
  shows what AUC hides at a low base rate;
* :func:`reliability` / :func:`expected_calibration_error`: whether a predicted 0.3 is right 30% of the time
  (ten equal-width bins of the predicted probability; ECE is the row-weighted mean gap);
* :func:`permutation_importance`: how much a held-out metric drops when one column's values are shuffled
  (AUC drop for binary heads, RMSE increase for regression heads), on a bounded sample of held-out rows so that
  it costs seconds; models with a native importance (XGBoost's gain) give that instead.

:func:`diagnose` puts them together for one run (``Evaluation.diagnostics``); metadata, the model card, the
summary and the notebook plots read that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from exporter.training.metrics import auc, rmse

#: bins of the reliability curve and the expected calibration error
CALIBRATION_BINS = 10
#: most held-out rows permutation importance predicts on (each column costs one prediction of these rows)
PERMUTATION_ROWS = 5_000
#: shuffles per column, averaged
PERMUTATION_REPEATS = 1
#: importances recorded in metadata.json per head
TOP_IMPORTANCES = 10


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve; NaN when the labels hold a single class."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y_true, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(average_precision_score(y, np.asarray(score, dtype=np.float64)))


def reliability(y_true: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
    """Per non-empty bin of the predicted probability: its mean prediction, the observed share of 1s, its rows."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins)
    sum_p = np.bincount(which, weights=p, minlength=bins)
    sum_y = np.bincount(which, weights=y, minlength=bins)
    used = counts > 0
    return {
        "predicted": (sum_p[used] / counts[used]).tolist(),
        "observed": (sum_y[used] / counts[used]).tolist(),
        "rows": counts[used].astype(int).tolist(),
    }


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Row-weighted mean |observed share - mean prediction| over equal-width bins (0: perfectly calibrated)."""
    if len(np.asarray(y_true)) == 0:
        return float("nan")
    curve = reliability(y_true, p, bins)
    rows = np.asarray(curve["rows"], dtype=np.float64)
    gap = np.abs(np.asarray(curve["observed"]) - np.asarray(curve["predicted"]))
    return float(np.sum(rows * gap) / np.sum(rows))


def _score(kind: str, y: np.ndarray, pred: np.ndarray) -> float:
    """Higher is better for both kinds: AUC, or minus the RMSE."""
    return auc(y, pred) if kind == "binary" else -rmse(y, pred)


def permutation_importance(
    predict: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    x: np.ndarray,
    labels: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    columns: Sequence[str],
    *,
    max_rows: int = PERMUTATION_ROWS,
    repeats: int = PERMUTATION_REPEATS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """head -> column -> the metric's loss when the column is shuffled (AUC drop, or RMSE increase).

    ``x`` is the prepared held-out matrix, ``predict`` the model's (all heads at once), ``labels`` the held-out
    truth by head. At most ``max_rows`` rows (a seeded sample) are used; every column is shuffled ``repeats``
    times with the same permutations, so columns are compared on equal terms.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(x))
    if len(rows) > max_rows:
        rows = np.sort(rng.choice(len(x), size=max_rows, replace=False))
    xs = np.ascontiguousarray(x[rows])
    ys = {h: np.asarray(labels[h], dtype=np.float64)[rows] for h in labels}
    base_pred = predict(xs)
    base = {h: _score(kinds[h], ys[h], base_pred[h]) for h in ys if h in base_pred}
    heads = [h for h, v in base.items() if np.isfinite(v)]
    out: dict[str, dict[str, float]] = {h: {} for h in heads}
    orders = [rng.permutation(len(xs)) for _ in range(max(1, repeats))]
    for j, column in enumerate(columns):
        losses: dict[str, list[float]] = {h: [] for h in heads}
        original = xs[:, j].copy()
        for order in orders:
            xs[:, j] = original[order]
            pred = predict(xs)
            for h in heads:
                losses[h].append(base[h] - _score(kinds[h], ys[h], pred[h]))
        xs[:, j] = original
        for h in heads:
            out[h][column] = float(np.mean(losses[h]))
    return out


def head_kinds(evaluation: Any) -> dict[str, str]:
    """head -> ``binary``/``regression`` (mmoe's tasks say; otherwise ``label`` is the binary one)."""
    declared = (evaluation.details or {}).get("heads", {})
    return {
        h: declared.get(h, "binary" if h == "label" else "regression")
        for h in evaluation.predictions
        if h in evaluation.labels
    }


def head_columns(prep: Any, evaluation: Any) -> dict[str, str]:
    """head -> the data's label column it is judged against (``--label`` renames ``label``; mmoe's tasks)."""
    task_labels = (evaluation.details or {}).get("label_columns", {})
    renamed = dict(getattr(prep, "label_columns", {}) or {})
    out = {}
    for head in evaluation.labels:
        model_label = task_labels.get(head, head)
        out[head] = renamed.get(model_label, model_label)
    return out


def diagnose(
    prep: Any, trained: Any, evaluation: Any, native: tuple[str, Mapping[str, float]] | None = None
) -> dict[str, Any]:
    """Per binary head average precision and calibration; feature importance (``native``: the model's own, e.g.
    ``("gain", {column: value})``, else permutation on held-out rows). Empty without held-out labels."""
    kinds = head_kinds(evaluation)
    if not kinds:
        return {}
    columns = head_columns(prep, evaluation)
    retrieval = "retrieval" in (evaluation.details or {})
    positive = getattr(prep, "positive_class", None)
    # --positive-class names a value of the binary ``label`` column (the one --label names), else of the run's only
    # binary label (an mmoe task naming its column), as training read it
    label_columns = getattr(prep, "label_columns", None) or {}
    binary = [columns.get(h, h) for h, k in kinds.items() if k == "binary"]
    target = label_columns["label"] if "label" in label_columns else binary[0] if len(binary) == 1 else "label"
    heads: dict[str, dict[str, Any]] = {}
    for head, kind in kinds.items():
        entry: dict[str, Any] = {"kind": kind, "column": columns.get(head, head)}
        y, pred = evaluation.labels[head], evaluation.predictions[head]
        if kind == "binary":
            entry["positive_class"] = positive if entry["column"] == target else None
            entry["base_rate"] = float(np.mean(y)) if len(y) else float("nan")
            entry["average_precision"] = average_precision(y, pred)
            if not retrieval:  # a retrieval score (sigmoid of a scaled cosine) ranks, it is no probability
                entry["calibration_error"] = expected_calibration_error(y, pred)
                entry["reliability"] = reliability(y, pred)
        heads[head] = entry
    start = time.perf_counter()
    importance: dict[str, Any]
    if native is not None:
        method, values = native
        importance = {
            "method": method,
            "heads": {h: {"metric": method, "values": dict(values)} for h in kinds if kinds[h] == "binary"},
        }
    else:
        x = prep.x_heldout
        found = permutation_importance(
            trained.predict, x, evaluation.labels, kinds, list(trained.feature_columns), seed=prep.params.seed
        )
        metric = {"binary": "auc_drop", "regression": "rmse_increase"}
        importance = {
            "method": "permutation",
            "rows": int(min(len(x), PERMUTATION_ROWS)),
            "repeats": PERMUTATION_REPEATS,
            "heads": {h: {"metric": metric[kinds[h]], "values": v} for h, v in found.items()},
        }
    importance["seconds"] = time.perf_counter() - start
    return {"rows": int(len(next(iter(evaluation.labels.values())))), "heads": heads, "importance": importance}


def ranked(values: Mapping[str, float], top: int | None = None) -> list[tuple[str, float]]:
    """(column, importance) largest first; ties by column name, so the order is stable."""
    items = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    return items[:top] if top is not None else items


def primary_head(diagnostics: Mapping[str, Any]) -> str | None:
    """The head the one-line summaries speak of: the first binary head, else the first head."""
    heads = diagnostics.get("heads") or {}
    binary = [h for h, e in heads.items() if e.get("kind") == "binary"]
    return binary[0] if binary else next(iter(heads), None)


def metadata_section(diagnostics: Mapping[str, Any]) -> dict[str, Any]:
    """metadata.json ``evaluation``: the primary head's average precision and calibration error, every binary
    head's, and the top feature importances per head (curves stay out: the notebook draws them)."""
    if not diagnostics:
        return {}
    heads = diagnostics.get("heads") or {}
    main = primary_head(diagnostics)
    out: dict[str, Any] = {"heldout_rows": diagnostics.get("rows")}
    first = heads.get(main or "", {})
    if first.get("kind") == "binary":
        out["head"] = main
        out["label_column"] = first.get("column")
        out["average_precision"] = _round(first.get("average_precision"))
        if first.get("calibration_error") is not None:  # retrieval scores are no probabilities: none
            out["calibration_error"] = _round(first.get("calibration_error"))
            out["calibration_bins"] = CALIBRATION_BINS
    binary = {h: e for h, e in heads.items() if e.get("kind") == "binary"}
    if len(binary) > 1:
        out["heads"] = {
            h: {
                "label_column": e.get("column"),
                "average_precision": _round(e.get("average_precision")),
                "calibration_error": _round(e.get("calibration_error")),
            }
            for h, e in binary.items()
        }
    imp = diagnostics.get("importance") or {}
    if imp.get("heads"):
        section: dict[str, Any] = {"method": imp.get("method")}
        for key in ("rows", "repeats"):
            if key in imp:
                section[key] = imp[key]
        section["heads"] = {
            h: {
                "metric": e["metric"],
                "top": [{"column": c, "importance": _round(v)} for c, v in ranked(e["values"], TOP_IMPORTANCES)],
            }
            for h, e in imp["heads"].items()
        }
        out["feature_importance"] = section
    return out


def _round(value: Any) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)
