"""Refit: once the validation rows have chosen how long to train, train again on training + validation rows.

The validation rows (a tenth of the table) decide the epoch or boosting round to keep; a model exported from the
training rows alone never learns from them. A refit trains a fresh model of the same settings on the training and
validation rows together for exactly the chosen number of epochs (torch, replaying the first fit's learning-rate
schedule) or rounds (xgb), as H2O's and AutoGluon's "refit full" do, and that model is exported. The held-out test
rows stay out of both fits: they report on the refit model as they would have on the first one.

On MovieLens-100k (docs/benchmarks.md), on each of three seeded splits, the refit raised the held-out AUC of
deepfm by 0.0015-0.0033, of mmoe by 0.0038-0.0047, of xgb by 0.0017-0.0035, and two_tower's recall@50 by
0.002-0.016. It costs a second fit, as
long as the first: so ``refit: auto`` (the default) refits runs trained in memory on at most
:data:`AUTO_MAX_ROWS` training and validation rows, where that is seconds to minutes and an eighth more data
still counts. Above it the gain shrinks while the cost grows with the rows (deepfm on a synthetic log of 800,000
training and validation rows: +0.0024 AUC for a second 418-s fit), and ``refit: true`` asks for it. Streamed and
Spark runs (large logs, read in passes) do not refit, and ``refit: true`` there is an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from exporter.errors import ExporterError

#: ``refit: auto`` refits a run with at most this many training + validation rows (in memory)
AUTO_MAX_ROWS = 500_000
#: the hyper-parameter's values
VALUES = ("auto", True, False)
EXPECTED = (
    f"auto (train the exported model again on the training + validation rows, for the epochs or rounds they chose, "
    f"when the run is in memory with at most {AUTO_MAX_ROWS:,} of them), true or false"
)


def valid_value(value: Any) -> bool:
    """Whether ``value`` is a ``refit`` setting (:data:`VALUES`)."""
    return value == "auto" or isinstance(value, bool)


def decide(hparams: Mapping[str, Any], train_rows: int, validation_rows: int) -> tuple[bool, str]:
    """(refit or not, why) for a run in memory with these rows; ``pipeline.prepare`` asks it to fit the feature
    plan on both parts, ``pipeline.refit_model`` to refit, so the two always agree."""
    value, rows = hparams.get("refit", False), train_rows + validation_rows
    if value is not True and value != "auto":
        return False, "refit: false"
    if value == "auto" and rows > AUTO_MAX_ROWS:
        return False, f"refit: auto, and {rows:,} training and validation rows are more than {AUTO_MAX_ROWS:,}"
    if not validation_rows:
        return False, "no validation rows chose an epoch or round"
    if value is True:
        return True, "refit: true"
    return True, f"refit: auto, {rows:,} training and validation rows (at most {AUTO_MAX_ROWS:,})"


def require_in_memory(hparams: Mapping[str, Any], where: str) -> None:
    """A streamed or Spark run does not refit: ``refit: true`` there fails before any reading."""
    if hparams.get("refit") is True:
        raise ExporterError(
            f"hyper-parameter refit: true refits in memory only, and {where} does not: it would read and train on "
            "the whole log once more. Drop it (auto: no refit here), or train in memory with --streaming off"
        )


def not_done(why: str) -> dict[str, Any]:
    """metadata ``training.early_stopping.refit`` of a run that exported its first fit."""
    return {"applied": False, "why": why}


def done(why: str, rows: int, seconds: float, **chosen: Any) -> dict[str, Any]:
    """metadata ``training.early_stopping.refit`` of a refit run: the rows it trained on and what it replayed."""
    return {"applied": True, "why": why, "rows": int(rows), "seconds": round(float(seconds), 3), **chosen}


def combined(data: Any) -> Any:
    """``data`` (a :class:`~exporter.models.base.TrainData`) with the validation rows appended to the training
    rows and no validation rows left (nothing may stop or prune the refit)."""
    y_train = {k: np.concatenate([v, np.asarray(data.y_valid[k])]) for k, v in data.y_train.items()}
    return dataclasses.replace(
        data,
        x_train=np.concatenate([data.x_train, data.x_valid]),
        y_train=y_train,
        x_valid=data.x_valid[:0],
        y_valid={k: np.asarray(v)[:0] for k, v in data.y_valid.items()},
        on_epoch=None,
    )


def describe(stopping: Mapping[str, Any] | None) -> str | None:
    """One line on how long the model trained and what was exported (summary, model card); None when there is no
    training record (load mode)."""
    if not stopping:
        return None
    if stopping.get("best_round") is not None:
        chosen = f"best round {stopping['best_round']} of {stopping.get('rounds_run', '?')}"
        unit = "rounds"
    elif stopping.get("best_epoch") is not None:
        chosen = f"best epoch {stopping['best_epoch']} of {stopping.get('epochs_run', '?')}"
        unit = "epochs"
    else:
        return None
    how = "chosen on the validation rows" if stopping.get("monitor") != "none" else "early stopping off: the last"
    refit = stopping.get("refit") or {}
    if refit.get("applied"):
        count = refit.get(unit, "?")
        exported = f"exported: refit on {refit.get('rows', 0):,} training + validation rows for {count} {unit}"
    else:
        exported = f"exported: the first fit ({refit.get('why', 'no refit')})"
    return f"{chosen} ({how}); {exported}"
