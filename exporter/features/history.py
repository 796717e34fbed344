"""History features: reading a list-of-IDs column, and building one from an interaction log without leaking.

A history column holds, per row, a user's recent items (a list, or IDs joined by a delimiter in text). It
travels as ``max_length`` columns of the FP64 tensor (:mod:`exporter.runtime.history`, docs/features.md).

:func:`build_history` builds such a column from an interaction log so that no row sees its own interaction or
a later one, and rows outside the training split never feed a history: with a time column, a row's history is
the user's items of training rows strictly before its timestamp; without one, the user's items of all training
rows except the row itself. The schema option ``"from": {"user": ..., "item": ..., "time": ..., "positive": ...}``
runs it inside an export (:func:`add_built_histories`), after the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from exporter.errors import ExporterError
from exporter.features.schema import HISTORY, FeatureSpec, Schema
from exporter.runtime.history import EXPECTED, HistoryProblem, column_name, history_values, split_column_name

__all__ = [
    "add_built_histories",
    "build_history",
    "built_columns",
    "history_lists",
    "history_matrix",
    "input_columns",
]


def history_matrix(frame: pd.DataFrame, spec: FeatureSpec, *, source: str) -> np.ndarray:
    """The ``[rows, max_length]`` FP64 IDs of a history column (NaN after the kept items).

    Reads the column itself (lists, numpy arrays from Parquet, or delimited text from CSV; an empty cell is an
    empty history) or, when the table has them instead, its expanded columns ``name[0]`` ... . Errors name the
    column, the row (1-based) and the position of the element at fault.
    """
    length = spec.max_length
    out = np.full((len(frame), length), np.nan)
    if spec.name in frame.columns:
        values = frame[spec.name].to_numpy(dtype=object)
        for i, value in enumerate(values):
            try:
                kept = history_values(value, length, delimiter=spec.delimiter)
            except HistoryProblem as exc:
                at = "" if exc.position is None else f" position {exc.position}"
                raise ExporterError(
                    f"{source}: column '{spec.name}' row {i + 1}{at}: value is {exc.what}; expected {EXPECTED} "
                    f"(a list, or the IDs separated by {spec.delimiter!r} in text)"
                ) from None
            out[i, : len(kept)] = kept
        return out
    expanded = [column_name(spec.name, p) for p in range(length)]
    if all(c in frame.columns for c in expanded):
        for p, c in enumerate(expanded):
            numbers = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad = frame[c].notna().to_numpy() & ~(np.isfinite(numbers) & (numbers == np.floor(numbers)))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ExporterError(
                    f"{source}: column '{c}' row {i + 1}: value {frame[c].iloc[i]!r} is not an integer ID; "
                    "a history position holds an integer ID or nothing"
                )
            out[:, p] = numbers
        return out
    have = ", ".join(map(str, list(frame.columns)[:20]))
    raise ExporterError(
        f"{source}: missing history column '{spec.name}' (or its columns {expanded[0]} ... {expanded[-1]}); "
        f"the table has: {have}"
    )


def history_lists(plan: Any, frame: pd.DataFrame, *, source: str = "data") -> dict[str, list[list[int]]]:
    """Each history of ``plan`` (a :class:`~exporter.features.FeaturePlan`) in ``frame`` as its kept IDs per row:
    what a TorchServe request sends (``{"hist_items": [12, 7, 99]}``)."""
    out: dict[str, list[list[int]]] = {}
    for group in plan.histories():
        spec = plan.features[group["columns"][0]].spec
        ids = history_matrix(frame, spec, source=source)
        out[spec.name] = [[int(v) for v in row[~np.isnan(row)]] for row in ids]
    return out


def input_columns(columns: Sequence[str], present: Sequence[str] = ()) -> list[str]:
    """Tensor columns -> the table columns that hold them: ``hist_items[3]`` -> ``hist_items`` (once) unless
    the table itself has a column of that name."""
    have = set(present)
    out: list[str] = []
    for c in columns:
        split = split_column_name(c)
        name = split[0] if split is not None and c not in have else c
        if name not in out:
            out.append(name)
    return out


def built_columns(schema: Schema | None) -> list[str]:
    """History columns the schema builds from the interaction log (``from``): not in the data file."""
    if schema is None:
        return []
    return [s.name for s in schema.features if s.kind == HISTORY and s.build]


def build_history(
    frame: pd.DataFrame,
    user_col: str,
    item_col: str,
    time_col: str | None = None,
    max_length: int = 20,
    train_mask: Any = None,
    *,
    positive: Any = None,
) -> pd.Series:
    """For each row, the user's items before it, as a list (oldest first, at most ``max_length``: the latest).

    * With ``time_col``: the items of the user's rows with a timestamp strictly before the row's (a row never
      sees its own interaction, one at the same instant, or a later one).
    * Without: the items of all the user's rows except the row itself, in table order.
    * ``train_mask`` (boolean per row; default all): only those rows feed histories, so held-out rows never
      leak into what the model trains on. Every row, held-out ones included, gets a history.
    * ``positive`` (boolean per row, or a column name; default all): only those rows are interactions (e.g.
      clicks, not mere impressions).

    Missing users or items never feed a history; a row with a missing user gets an empty one.
    """
    for c in (user_col, item_col, *([time_col] if time_col else [])):
        if c not in frame.columns:
            raise ExporterError(
                f"build_history: column '{c}' is not in the table ({', '.join(map(str, frame.columns[:20]))})"
            )
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ExporterError(f"build_history: max_length must be a positive integer, got {max_length!r}")
    n = len(frame)
    feeds = _mask(train_mask, n, "train_mask") & _mask(
        frame[positive].to_numpy() if isinstance(positive, str) else positive, n, "positive"
    )
    users = frame[user_col].to_numpy(dtype=object)
    items = pd.to_numeric(frame[item_col], errors="coerce").to_numpy(dtype=np.float64)
    feeds &= ~pd.isna(frame[user_col]).to_numpy() & np.isfinite(items)
    if time_col is not None:
        times = pd.to_numeric(frame[time_col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(times).any():
            i = int(np.flatnonzero(np.isnan(times))[0])
            raise ExporterError(f"build_history: column '{time_col}' row {i + 1} has no numeric timestamp")
    else:
        times = np.arange(n, dtype=np.float64)
    out: list[list[int]] = [[] for _ in range(n)]
    codes = pd.factorize(pd.Series(users), use_na_sentinel=True)[0]
    order = np.lexsort((np.arange(n), times, codes))
    start = 0
    while start < n:
        end = start
        while end < n and codes[order[end]] == codes[order[start]]:
            end += 1
        if codes[order[start]] >= 0:
            _user_histories(order[start:end], times, items, feeds, max_length, time_col is not None, out)
        start = end
    return pd.Series(out, index=frame.index, name=f"{item_col}_history", dtype=object)


def _mask(value: Any, n: int, what: str) -> np.ndarray:
    if value is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(value)
    if mask.shape != (n,):
        raise ExporterError(f"build_history: {what} must hold one value per row ({n}), got shape {mask.shape}")
    return mask.astype(bool)


def _user_histories(
    rows: np.ndarray,
    times: np.ndarray,
    items: np.ndarray,
    feeds: np.ndarray,
    max_length: int,
    timed: bool,
    out: list[list[int]],
) -> None:
    """One user's rows in time order: each row's history from the feeding rows before it (or all but itself)."""
    fed = [int(r) for r in rows if feeds[r]]
    fed_items = [int(items[r]) for r in fed]
    if not timed:
        where = {r: k for k, r in enumerate(fed)}
        tail = max(0, len(fed) - max_length - 1)  # a row's history lies within the last max_length + 1 items
        for r in rows:
            k = where.get(int(r), -1)
            if k < tail:  # the row feeds no history, or an older one than the kept items
                out[int(r)] = fed_items[-max_length:]
            else:
                out[int(r)] = (fed_items[tail:k] + fed_items[k + 1 :])[-max_length:]
        return
    fed_times = np.array([times[r] for r in fed])
    for r in rows:
        k = int(np.searchsorted(fed_times, times[int(r)], side="left"))  # strictly earlier
        out[int(r)] = fed_items[max(0, k - max_length) : k]


def add_built_histories(
    frame: pd.DataFrame, schema: Schema | None, train_rows: np.ndarray, *, source: str
) -> pd.DataFrame:
    """The table with every history the schema builds ``from`` the log added (training rows feed them)."""
    specs = [s for s in (schema.features if schema is not None else ()) if s.kind == HISTORY and s.build]
    if not specs:
        return frame
    train = np.zeros(len(frame), dtype=bool)
    train[np.asarray(train_rows, dtype=np.int64)] = True
    out = frame.copy()
    for spec in specs:
        how = spec.build_from
        missing = [c for c in how.values() if c not in frame.columns]
        if missing:
            raise ExporterError(
                f"{source}: history '{spec.name}' is built from column(s) {', '.join(missing)}, which the table lacks"
            )
        if spec.name in frame.columns:
            raise ExporterError(
                f"{source}: history '{spec.name}' is built from the log ('from'), but the table already has a "
                "column of that name: drop 'from' to use it, or rename the history"
            )
        positive = how.get("positive")
        out[spec.name] = build_history(
            frame,
            how["user"],
            how["item"],
            how.get("time"),
            spec.max_length,
            train,
            positive=None if positive is None else frame[positive].fillna(0).astype(bool).to_numpy(),
        )
    return out
