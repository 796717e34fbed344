"""Short human and JSON summaries of export runs (CLI and notebooks)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from exporter.training import refit as RF
from exporter.training.quality_gate import WARN_AUC

if TYPE_CHECKING:  # pragma: no cover - annotations only: the notebooks import this module before any pipeline
    from exporter.export.pipeline import RunResult

#: metrics shown beside others rather than on their own (baselines, counts)
_ASIDE = ("popularity_", "users_evaluated", "catalogue_items")


def _fmt_metrics(metrics: Mapping[str, float], quality: Mapping[str, Any] | None = None) -> str:
    if not metrics:
        return "no labels: metrics not computed"
    unjudged = unjudged_auc(quality)
    shown = "held-out " + " ".join(
        f"{k}={v:.4g}" + (" (not judged)" if k == unjudged else "")
        for k, v in metrics.items()
        if not k.endswith(("_baseline", "base_rate")) and not k.startswith(_ASIDE)
    )
    popular = [f"{k[len('popularity_') :]}={v:.4g}" for k, v in metrics.items() if k.startswith("popularity_recall@")]
    if popular:
        shown += f"  (popularity: {' '.join(popular)}; {int(metrics.get('catalogue_items', 0))} items)"
    return shown


def unjudged_auc(quality: Mapping[str, Any] | None) -> str | None:
    """The AUC a retrieval model reports beside recall@K: shown, never judged (no warning below 0.55)."""
    auc = (quality or {}).get("auc")
    return auc.get("metric") if "retrieval" in (quality or {}) and isinstance(auc, Mapping) else None


def metric_notes(
    metrics: Mapping[str, float],
    quality: Mapping[str, Any] | None,
    history: Sequence[Mapping[str, float]] = (),
) -> list[str]:
    """What the figures are: the metric the model is judged by, and the progress bar's heldout loss beside them."""
    if not metrics:
        return []
    quality = quality or {}
    notes = []
    judged = quality.get("metric")
    if "retrieval" in quality:
        unjudged = unjudged_auc(quality)
        notes.append(
            f"judged by {judged} against recommending the most popular items"
            + (f"; {unjudged} (clicks ranked above non-clicks) is reported, not judged" if unjudged else "")
        )
    elif judged:
        notes.append(f"judged by {judged}: a warning below {quality.get('warn_below', WARN_AUC)}")
    last = history[-1].get("validation_loss") if history else None
    if isinstance(last, (int, float)) and math.isfinite(last):  # trained here (load mode has no progress bar)
        notes.append(
            f"the progress bar's validation figure, last {last:.4g}, is the training loss on the validation rows "
            "(early stopping watches it; the metrics above are on other, held-out test rows): the model's own "
            "objective (a click model's is its logloss; several tasks add up their losses; retrieval uses the "
            "in-batch softmax)"
        )
    return notes


#: feature importances a summary line names
SUMMARY_IMPORTANCES = 5
_METRIC_WORDS = {"gain": "gain", "auc_drop": "AUC drop", "rmse_increase": "RMSE increase"}


def head_name(head: str, column: str | None) -> str:
    """How a head is called beside its figures: its label column (``label`` renamed by --label), and the task."""
    column = column or head
    return column if head in ("label", column) else f"{head} ({column})"


def evaluation_lines(diagnostics: Mapping[str, Any]) -> list[str]:
    """Average precision and calibration of each binary head, then the top feature importances of each head."""
    from exporter.training.diagnostics import CALIBRATION_BINS, ranked

    lines = []
    heads = diagnostics.get("heads") or {}
    for head, entry in heads.items():
        if entry.get("kind") != "binary":
            continue
        positive = entry.get("positive_class")
        base = f"base rate {_fmt(entry.get('base_rate'))}" + (f", 1 = {positive}" if positive is not None else "")
        ap = _fmt(entry.get("average_precision"))
        text = f"{head_name(head, entry.get('column'))}: average precision {ap} ({base})"
        if entry.get("calibration_error") is not None:
            text += f", expected calibration error {_fmt(entry['calibration_error'])} ({CALIBRATION_BINS} bins)"
        lines.append(text)
    imp = diagnostics.get("importance") or {}
    for head, entry in (imp.get("heads") or {}).items():
        top = ranked(entry.get("values") or {}, SUMMARY_IMPORTANCES)
        if imp.get("method") == "permutation":
            metric = _METRIC_WORDS.get(entry.get("metric"), entry.get("metric"))
            how = f"{metric} when shuffled, on {imp.get('rows')} held-out rows"
        else:
            how = f"the model's {imp.get('method')}"
        shown = ", ".join(f"{c} {v:.3g}" for c, v in top)
        lines.append(f"{head_name(head, (heads.get(head) or {}).get('column'))}: top features by {how}: {shown}")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "undefined"


def column_warning_lines(warnings: Sequence[Mapping[str, str]]) -> list[str]:
    """``WARNING: column 'x' carries nothing: ...`` (or another column warning) per feature the checks flagged."""
    return [f"WARNING: {w['message']}" for w in warnings]


def format_result(result: RunResult) -> str:
    """A few lines: where each artifact is, its metrics (what each is) and its parity figure."""
    evaluation = result.evaluation
    lines = [
        f"{result.prepared.spec.name}: {_fmt_metrics(evaluation.metrics, evaluation.quality)}  ({result.seconds:.1f}s)"
    ]
    lines += [f"  ({note})" for note in metric_notes(evaluation.metrics, evaluation.quality, result.trained.history)]
    lines += [f"  {line}" for line in evaluation_lines(evaluation.diagnostics)]
    trained = RF.describe(getattr(result.trained, "stopping", None))
    if trained:
        lines.append(f"  training: {trained}")
    reading = getattr(result.prepared, "reading", None) or {}
    if reading:
        lines.append(f"  {reading_line(reading)}")
    warning = result.evaluation.quality.get("warning")
    if warning:
        lines.append(f"  WARNING: {warning}")
    lines += [f"  {line}" for line in column_warning_lines(getattr(result.prepared, "column_warnings", []))]
    for a in result.artifacts:
        p = a.parity
        lines.append(
            f"  {a.model_name:<15} -> {a.path}  sha256 {a.metadata['sha256'][:12]}  "
            f"parity max|native-onnx| {p.max_abs_diff:.2e} over {p.rows} rows (atol {p.atol:g}): "
            f"{'passed' if p.passed else 'FAILED'}"
        )
    return "\n".join(lines)


def reading_line(reading: Mapping[str, Any]) -> str:
    """How the data was read: the path and why, rows per split, passes, and time and peak RSS per phase."""
    phases = ", ".join(
        f"{name} {p['seconds']:.1f}s (peak RSS {p['peak_rss_mb']:,.0f} MB)"
        for name, p in reading.get("phases", {}).items()
    )
    rows = reading.get("rows") or {}
    split = ", ".join(f"{k} {v:,}" for k, v in rows.items())
    sampled = reading.get("rows_in_memory")
    kept = f"; in memory: {', '.join(f'{k} {v:,}' for k, v in sampled.items())}" if sampled else ""
    read = f"{reading['rows_read']:,} rows read, " if "rows_read" in reading else ""
    return (
        f"data: {reading.get('path')} ({reading.get('reason')}): {read}{split}{kept}; "
        f"{reading.get('passes', 1)} pass(es); {phases}"
    )


def as_json(results: Sequence[RunResult], total_seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(total_seconds, 3),
        "models": [
            {
                "model": r.prepared.spec.name,
                "seconds": round(r.seconds, 3),
                "metrics": r.evaluation.metrics,
                "quality": r.artifacts[0].metadata.get("quality") if r.artifacts else r.evaluation.quality,
                "evaluation": r.artifacts[0].metadata.get("evaluation") if r.artifacts else {},
                "column_warnings": [dict(w) for w in r.prepared.column_warnings],
                "data_reading": r.prepared.reading,
                "tracking": dict(r.prepared.params.tracking) if r.prepared.params.tracking else None,
                "artifacts": [
                    {
                        "model_name": a.model_name,
                        "version": a.version,
                        "path": str(a.path),
                        "sha256": a.metadata["sha256"],
                        "parity": a.metadata["parity"],
                    }
                    for a in r.artifacts
                ],
            }
            for r in results
        ],
    }
