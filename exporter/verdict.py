"""Is the model any good? Held-out metrics against baselines, a loud warning near chance, and the ``--min-auc`` gate.

A model at AUC 0.5 exports fine and serves fine, and is useless; this module makes that visible in the
summary, the notebook and ``metadata.json`` (``quality``), and lets CI refuse it (:class:`QualityError`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from exporter.errors import ExporterError

#: a held-out AUC below this is "no better than chance" and gets a warning
WARN_AUC = 0.55
#: metric keys holding the click AUC, by model (mmoe's click head is ``ctr_auc``)
AUC_KEYS = ("auc", "ctr_auc")


class QualityError(ExporterError):
    """The held-out AUC is below ``--min-auc``: nothing was written."""

    exit_code = 4


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def assess(metrics: Mapping[str, float], labels: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """metadata.json ``quality``: the main metric, its baselines, and ``warning`` when no better than chance.

    Empty when there are no held-out labels (load mode on unlabelled data).
    """
    if not metrics:
        return {}
    key = next((k for k in AUC_KEYS if k in metrics), None)
    quality: dict[str, Any] = {}
    warnings: list[str] = []
    if key is not None:
        auc = _finite(metrics[key])
        clicks = np.asarray(labels.get("label", []), dtype=np.float64)
        base = float(clicks.mean()) if clicks.size else None
        base_logloss = None
        if base is not None and 0 < base < 1:
            base_logloss = -(base * math.log(base) + (1 - base) * math.log(1 - base))
        quality.update({
            "metric": key, "value": auc, "warn_below": WARN_AUC,
            "baselines": {"chance_auc": 0.5, "base_rate": base, "base_rate_logloss": base_logloss},
        })
        if auc is None:
            warnings.append(f"held-out {key} is undefined (the held-out labels hold a single class)")
        elif auc < WARN_AUC:
            warnings.append(
                f"held-out {key} {auc:.3f} is below {WARN_AUC}: the model is no better than chance; "
                "check the label column and the features before serving it"
            )
    for name, value in metrics.items():
        baseline = metrics.get(f"{name}_baseline")
        if name.endswith("_rmse") and baseline is not None:
            quality.setdefault("regression", {})[name] = {"value": _finite(value), "predict_the_mean": _finite(baseline)}
            if _finite(value) is not None and _finite(baseline) is not None and value >= baseline:
                warnings.append(f"held-out {name} {value:.4g} is no better than predicting the mean ({baseline:.4g})")
    if warnings:
        quality["warning"] = "; ".join(warnings)
    return quality


def check_min_auc(quality: Mapping[str, Any], min_auc: float | None, model: str) -> None:
    """Raise :class:`QualityError` when the held-out AUC is below ``min_auc`` (or undefined)."""
    if min_auc is None:
        return
    value = quality.get("value")
    if value is None or value < min_auc:
        shown = "undefined" if value is None else f"{value:.4f}"
        raise QualityError(
            f"{model}: held-out {quality.get('metric', 'AUC')} {shown} is below --min-auc {min_auc:g}; nothing was written"
        )
