"""Evaluation metrics recorded in metadata.json ``training.metrics``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC; NaN when the labels hold a single class (AUC is undefined then)."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, score))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)) ** 2)))


def logloss(y_true: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ctr_metrics(pred: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {
        "auc": auc(labels["label"], pred["label"]),
        "logloss": logloss(labels["label"], pred["label"]),
        "base_rate": float(np.mean(labels["label"])),
    }


def retrieval_metrics(pred: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AUC of the user-item dot product against clicks, on held-out pairs."""
    return {"auc": auc(labels["label"], pred["label"])}
