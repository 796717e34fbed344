"""Short human and JSON summaries of export runs (CLI and notebooks)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
    *,
    validation: bool = False,
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
    last = history[-1].get("heldout_loss") if history else None
    if isinstance(last, (int, float)) and math.isfinite(last):  # trained here (load mode has no progress bar)
        rows = "the validation rows (not the test rows of the metrics)" if validation else "the same held-out rows"
        notes.append(
            f"the progress bar's heldout figure, last {last:.4g}, is the training loss on {rows}: "
            "the model's own objective (a click model's is its logloss; several tasks add up their losses; "
            "retrieval uses the in-batch softmax)"
        )
    return notes


def format_result(result: RunResult) -> str:
    """A few lines: where each artifact is, its metrics (what each is) and its parity figure."""
    evaluation = result.evaluation
    lines = [
        f"{result.prepared.spec.name}: {_fmt_metrics(evaluation.metrics, evaluation.quality)}  ({result.seconds:.1f}s)"
    ]
    reading = getattr(result.prepared, "reading", None) or {}
    streamed = reading.get("path") == "streaming"
    notes = metric_notes(evaluation.metrics, evaluation.quality, result.trained.history, validation=streamed)
    lines += [f"  ({note})" for note in notes]
    if reading:
        lines.append(f"  {reading_line(reading)}")
    warning = result.evaluation.quality.get("warning")
    if warning:
        lines.append(f"  WARNING: {warning}")
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
                "data_reading": getattr(r.prepared, "reading", None) or {},
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
