"""The model card's evaluation beyond the metrics table: average precision, calibration error, feature importance
(metadata ``evaluation``) and the warnings about features in training (``training.column_warnings``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _section(metadata: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = metadata.get(key)
    return value if isinstance(value, Mapping) else {}


def _num(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, bool):
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _code(value: Any) -> str:
    return "`" + str(value).replace("`", "'") + "`"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


_IMPORTANCE_WORDS = {
    "gain": "gain: the average loss reduction of the column's splits",
    "auc_drop": "AUC drop when the column is shuffled",
    "rmse_increase": "RMSE increase when the column is shuffled",
}


def evaluation_section(metadata: Mapping[str, Any]) -> list[str]:
    """metadata ``evaluation``: average precision, calibration error and the top feature importances."""
    ev = _section(metadata, "evaluation")
    if not ev:
        return []
    lines: list[str] = []
    if ev.get("average_precision") is not None or ev.get("heads"):
        heads = ev.get("heads") or {ev.get("head", "label"): ev}
        rows = [
            (
                _code(h),
                _code(e.get("label_column", "—")),
                _num(e.get("average_precision")),
                _num(e.get("calibration_error")) if e.get("calibration_error") is not None else "— (not a probability)",
            )
            for h, e in heads.items()
            if isinstance(e, Mapping)
        ]
        lines += [
            "",
            f"Ranking and calibration on the held-out rows (expected calibration error over "
            f"{_num(ev.get('calibration_bins', 10))} equal-width bins of the prediction; 0 is perfectly calibrated):",
            "",
        ]
        lines += _table(["head", "label column", "average precision", "expected calibration error"], rows)
    imp = _section(ev, "feature_importance")
    for head, entry in (imp.get("heads") or {}).items():
        if not isinstance(entry, Mapping) or not entry.get("top"):
            continue
        metric = str(entry.get("metric"))
        how = _IMPORTANCE_WORDS.get(metric, metric)
        where = f", {_num(imp.get('rows'))} held-out rows" if imp.get("method") == "permutation" else ""
        lines += ["", f"Feature importance of `{head}` ({how}{where}):", ""]
        lines += _table(
            ["column", "importance"],
            [(_code(t.get("column")), _num(t.get("importance"))) for t in entry["top"] if isinstance(t, Mapping)],
        )
    return lines


def column_warnings_section(metadata: Mapping[str, Any]) -> list[str]:
    """Features that carried nothing in training, or that the model misused (``training.column_warnings``)."""
    warnings = _section(metadata, "training").get("column_warnings")
    if not isinstance(warnings, list) or not warnings:
        return []
    lines = ["", "Warnings about the features in training (see each one for what the model learned from it):", ""]
    return lines + [f"- **Warning:** {w.get('message')}" for w in warnings if isinstance(w, Mapping)]
