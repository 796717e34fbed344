"""Is the model any good? Held-out metrics against baselines, a loud warning near chance, and the ``--min-auc`` gate.

A model at AUC 0.5 exports fine and serves fine, and is useless; this module makes that visible in the
summary, the notebook and ``metadata.json`` (``quality``), and lets CI refuse it (:class:`QualityError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from exporter.errors import ExporterError

#: a held-out AUC below this is "no better than chance" and gets a warning
WARN_AUC = 0.55
#: metric keys holding the click AUC, by model (mmoe's click head is ``ctr_auc``); any ``<task>_auc`` also counts
AUC_KEYS = ("auc", "ctr_auc")
#: retrieval metrics (two_tower) are judged against the popularity baseline of the same run: ``popularity_<metric>``
RETRIEVAL_PREFIXES = ("recall@", "ndcg@")
POPULARITY = "popularity_"


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
    auc_keys = [k for k in AUC_KEYS if k in metrics] + [k for k in metrics if k.endswith("_auc") and k not in AUC_KEYS]
    key = auc_keys[0] if auc_keys else None
    quality: dict[str, Any] = {}
    warnings: list[str] = []
    retrieval = _retrieval(metrics, warnings)
    if retrieval:
        quality.update(retrieval)
    elif key is not None:
        auc = _finite(metrics[key])
        clicks = np.asarray(labels.get("label", []), dtype=np.float64)
        base = float(clicks.mean()) if clicks.size else _finite(metrics.get(key[: -len("auc")] + "base_rate"))
        base_logloss = None
        if base is not None and 0 < base < 1:
            base_logloss = -(base * math.log(base) + (1 - base) * math.log(1 - base))
        quality.update(
            {
                "metric": key,
                "value": auc,
                "warn_below": WARN_AUC,
                "baselines": {"chance_auc": 0.5, "base_rate": base, "base_rate_logloss": base_logloss},
            }
        )
    for k in [] if retrieval else auc_keys:  # every binary head (mmoe may have several); retrieval: recall@K
        auc = _finite(metrics[k])
        if auc is None:
            warnings.append(f"held-out {k} is undefined (the held-out labels hold a single class)")
        elif auc < WARN_AUC:
            warnings.append(
                f"held-out {k} {auc:.3f} is below {WARN_AUC}: the model is no better than chance; "
                "check the label column and the features before serving it"
            )
    if retrieval and key is not None:
        quality["auc"] = {"metric": key, "value": _finite(metrics[key])}
    for name, value in metrics.items():  # a click head's logloss against always predicting the base rate
        if not name.endswith("logloss") or retrieval:
            continue
        rate = _finite(metrics.get(name[: -len("logloss")] + "base_rate"))
        clicks = np.asarray(labels.get("label", []), dtype=np.float64)
        rate = rate if rate is not None else (float(clicks.mean()) if clicks.size else None)
        loss = _finite(value)
        if loss is not None and rate is not None and 0 < rate < 1:
            constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
            if loss >= constant:
                warnings.append(
                    f"held-out {name} {loss:.4f} is no better than always predicting the base rate "
                    f"{rate:.3f} (logloss {constant:.4f}): the model is no better than a constant"
                )
    for name, value in metrics.items():
        baseline = metrics.get(f"{name}_baseline")
        if name.endswith("_rmse") and baseline is not None:
            quality.setdefault("regression", {})[name] = {
                "value": _finite(value),
                "predict_the_mean": _finite(baseline),
            }
            if _finite(value) is not None and _finite(baseline) is not None and value >= baseline:
                warnings.append(f"held-out {name} {value:.4g} is no better than predicting the mean ({baseline:.4g})")
    if warnings:
        quality["warning"] = "; ".join(warnings)
    return quality


#: fewer optimiser steps than this in a whole torch run: the model is flagged as under-trained
MIN_OPTIMISER_STEPS = 200


def training_warnings(stopping: Mapping[str, Any]) -> list[str]:
    """Why a trained model may be under-trained, from how its training stopped (``Trained.stopping``).

    Torch: a budget (max_epochs x steps an epoch) below :data:`MIN_OPTIMISER_STEPS` optimiser steps, the
    validation loss still falling when
    ``max_epochs`` ran out, or no epoch better than the untrained network. XGBoost: the validation logloss still
    falling at the last of ``n_estimators`` rounds. Empty for a loaded model (it has no training record)."""
    out: list[str] = []
    if not stopping:
        return out
    per_epoch, most = stopping.get("steps_per_epoch"), stopping.get("max_epochs")
    if isinstance(per_epoch, int) and isinstance(most, int) and per_epoch * most < MIN_OPTIMISER_STEPS:
        out.append(
            f"under-trained: max_epochs {most} x {per_epoch} optimiser steps an epoch allow fewer than "
            f"{MIN_OPTIMISER_STEPS} steps; use more rows, a larger max_epochs or a smaller batch_size"
        )
    best, run = stopping.get("best_epoch"), stopping.get("epochs_run")
    if stopping.get("monitor") == "none":  # early stopping off (patience 0): no loss was watched, the last epoch kept
        pass
    elif best == 0 and run:
        out.append(
            f"no epoch improved the {stopping.get('monitor', 'validation loss')} of the untrained network: "
            "check the learning_rate, the label and the features"
        )
    elif stopping.get("stopped_because") == "max_epochs" and best is not None and best == run:
        out.append(
            f"under-trained: the {stopping.get('monitor', 'validation loss')} still fell at the last of "
            f"max_epochs {stopping.get('max_epochs')} epochs; raise max_epochs"
        )
    if stopping.get("stopped_because") == "n_estimators" and stopping.get("best_round") == stopping.get("rounds_run"):
        out.append(
            f"under-trained: the validation logloss still fell at the last of n_estimators "
            f"{stopping.get('n_estimators')} rounds; raise n_estimators or learning_rate"
        )
    return out


def with_training_warnings(quality: Mapping[str, Any], stopping: Mapping[str, Any]) -> dict[str, Any]:
    """``quality`` with :func:`training_warnings` added to its ``warning`` (metadata, summary, notebook)."""
    out = dict(quality)
    extra = training_warnings(stopping)
    if extra:
        out["warning"] = "; ".join(([out["warning"]] if out.get("warning") else []) + extra)
    return out


def _retrieval(metrics: Mapping[str, float], warnings: list[str]) -> dict[str, Any]:
    """Retrieval quality: recall@K/NDCG@K next to popularity, and a warning for each recall@K popularity matches.

    A K that covers the whole catalogue (``catalogue_items``) ranks nothing: it is reported, not judged.
    """
    names = [k for k in metrics if k.startswith(RETRIEVAL_PREFIXES) and f"{POPULARITY}{k}" in metrics]
    if not names:
        return {}
    items = _finite(metrics.get("catalogue_items"))
    judged = [k for k in names if k.startswith("recall@") and (items is None or int(k.split("@")[1]) < items)]
    judged.sort(key=lambda k: int(k.split("@")[1]))
    main = judged[-1] if judged else names[0]
    out: dict[str, Any] = {
        "metric": main,
        "value": _finite(metrics[main]),
        "baselines": {"popularity": {k: _finite(metrics[f"{POPULARITY}{k}"]) for k in names}},
        "retrieval": {k: _finite(metrics[k]) for k in names},
    }
    if items is not None:
        out["catalogue_items"] = int(items)
    behind = []
    for k in judged:
        value, base = _finite(metrics[k]), _finite(metrics[f"{POPULARITY}{k}"])
        if value is None or base is None or value <= base:
            shown = "undefined" if value is None else f"{value:.4f}"
            behind.append(f"{k} {shown} vs popularity {'undefined' if base is None else f'{base:.4f}'}")
    if behind:
        warnings.append(
            "held-out retrieval is no better than recommending the most popular items ("
            + ", ".join(behind)
            + "): check the interactions, the tower columns and the training settings before serving it"
        )
    return out


def check_min_auc(quality: Mapping[str, Any], min_auc: float | None, model: str) -> None:
    """Raise :class:`QualityError` when the held-out AUC is below ``min_auc`` (or undefined)."""
    if min_auc is None:
        return
    if "retrieval" in quality:  # a retrieval model's AUC (when its data has negatives) sits beside recall@K
        auc = quality.get("auc")
        if auc is None:
            raise ExporterError(
                f"{model}: --min-auc needs a held-out AUC, but this run reports recall@K only "
                "(trained on positives without negatives to score)"
            )
        quality = auc
    value = quality.get("value")
    if value is None or value < min_auc:
        shown = "undefined" if value is None else f"{value:.4f}"
        raise QualityError(
            f"{model}: held-out {quality.get('metric', 'AUC')} {shown} is below --min-auc {min_auc:g}; "
            "nothing was written"
        )
