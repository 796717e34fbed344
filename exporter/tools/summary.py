"""Short human and JSON summaries of export runs (CLI and notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporter.export.pipeline import RunResult

#: metrics shown beside others rather than on their own (baselines, counts)
_ASIDE = ("popularity_", "users_evaluated", "catalogue_items")


def _fmt_metrics(metrics: dict[str, float]) -> str:
    if not metrics:
        return "no labels: metrics not computed"
    shown = " ".join(
        f"{k}={v:.4g}"
        for k, v in metrics.items()
        if not k.endswith(("_baseline", "base_rate")) and not k.startswith(_ASIDE)
    )
    popular = [f"{k[len('popularity_') :]}={v:.4g}" for k, v in metrics.items() if k.startswith("popularity_recall@")]
    if popular:
        shown += f"  (popularity: {' '.join(popular)}; {int(metrics.get('catalogue_items', 0))} items)"
    return shown


def format_result(result: RunResult) -> str:
    """A few lines: where each artifact is, its metrics and its parity figure."""
    lines = [f"{result.prepared.spec.name}: {_fmt_metrics(result.evaluation.metrics)}  ({result.seconds:.1f}s)"]
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


def as_json(results: Sequence[RunResult], total_seconds: float) -> dict[str, Any]:
    return {
        "seconds": round(total_seconds, 3),
        "models": [
            {
                "model": r.prepared.spec.name,
                "seconds": round(r.seconds, 3),
                "metrics": r.evaluation.metrics,
                "quality": r.artifacts[0].metadata.get("quality") if r.artifacts else r.evaluation.quality,
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
