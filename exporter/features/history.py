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

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from exporter.errors import ExporterError
from exporter.features.schema import HISTORY, FeatureSpec, Schema
from exporter.runtime.history import (
    HistoryProblem,
    column_name,
    expected,
    history_values,
    split_column_name,
    string_codes,
    text_items,
)
from exporter.runtime.rules import UNKNOWN_CODE, hash_code

__all__ = [
    "add_built_histories",
    "build_history",
    "built_columns",
    "check_no_built_history",
    "history_lists",
    "history_matrix",
    "history_strings",
    "input_columns",
    "holds_strings",
]

_INTEGER_TEXT = re.compile(r"^\s*[+-]?[0-9]+\s*$")


def history_matrix(
    frame: pd.DataFrame, spec: FeatureSpec, *, source: str, strings: Mapping[str, int] | str | None = None
) -> np.ndarray:
    """The ``[rows, max_length]`` FP64 IDs of a history column (NaN after the kept items).

    Reads the column itself (lists, numpy arrays from Parquet, or delimited text from CSV; an empty cell is an
    empty history) or, when the table has them instead, its expanded columns ``name[0]`` ... . Errors name the
    column, the row (1-based) and the position of the element at fault. ``strings`` makes it a history of
    string IDs: each item becomes its code through that vocabulary (string -> code; -1 when unknown), or its
    hash code when ``strings`` is ``"hash"``.
    """
    if strings is not None:
        vocabulary = None if isinstance(strings, str) else strings
        items = history_strings(frame, spec, source=source)
        flat = items.ravel().tolist()
        if vocabulary is not None:
            codes = [np.nan if v is None else vocabulary.get(v, UNKNOWN_CODE) for v in flat]
            return np.array(codes, dtype=np.float64).reshape(items.shape)
        try:
            codes = [np.nan if v is None else hash_code(v) for v in flat]
        except UnicodeEncodeError:
            for k, v in enumerate(flat):
                try:
                    string_codes([] if v is None else [v], None)
                except HistoryProblem as exc:
                    raise ExporterError(
                        f"{source}: column '{spec.name}' row {k // spec.max_length + 1}: value is {exc.what}"
                    ) from None
            raise
        return np.array(codes, dtype=np.float64).reshape(items.shape)
    length = spec.max_length
    out = np.full((len(frame), length), np.nan)
    if spec.name in frame.columns:
        values = frame[spec.name].to_numpy(dtype=object)
        for i, value in enumerate(values):
            try:
                kept = history_values(value, length, delimiter=spec.delimiter)
            except HistoryProblem as exc:
                raise _cell_error(source, spec, i, exc, strings=False) from None
            out[i, : len(kept)] = kept
        return out
    expanded = _expanded(frame, spec, source=source)
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


def history_strings(frame: pd.DataFrame, spec: FeatureSpec, *, source: str) -> np.ndarray:
    """The ``[rows, max_length]`` items of a history of string IDs (object array; None after the kept items).

    As a string column of a data file reads its cells, an integer item is read as its text (``12`` -> ``"12"``).
    """
    length = spec.max_length
    out = np.full((len(frame), length), None, dtype=object)
    if spec.name in frame.columns:
        for i, value in enumerate(frame[spec.name].to_numpy(dtype=object)):
            try:
                kept = history_values(value, length, delimiter=spec.delimiter, strings=True)
            except HistoryProblem as exc:
                raise _cell_error(source, spec, i, exc, strings=True) from None
            out[i, : len(kept)] = [str(v) for v in kept]
        return out
    for p, c in enumerate(_expanded(frame, spec, source=source)):
        values = frame[c].to_numpy(dtype=object)
        present = frame[c].notna().to_numpy()
        for i in (int(k) for k in np.flatnonzero(present)):
            v = values[i]
            if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v) == int(v):
                v = int(v)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer)):
                raise ExporterError(
                    f"{source}: column '{c}' row {i + 1}: value {v!r} is not a string ID; a history position "
                    "holds a string ID or nothing"
                )
            out[i, p] = str(v)
    return out


def holds_strings(frame: pd.DataFrame, spec: FeatureSpec) -> bool:
    """Whether a history column (with no vocabulary to share) holds string IDs: some item is text that is not an
    integer, as a CSV reader would tell a string column from a column of numbers."""

    def textual(v: Any) -> bool:
        return isinstance(v, str) and not _INTEGER_TEXT.match(v)

    if spec.name in frame.columns:
        for value in frame[spec.name].to_numpy(dtype=object):
            if isinstance(value, str):
                if any(textual(piece) for piece in text_items(value, spec.delimiter) if str(piece).strip()):
                    return True
            elif isinstance(value, (list, tuple, np.ndarray)) and any(textual(v) for v in value):
                return True
        return False
    columns = [column_name(spec.name, p) for p in range(spec.max_length)]
    return any(
        c in frame.columns and any(textual(v) for v in frame[c].dropna().to_numpy(dtype=object)) for c in columns
    )


def _expanded(frame: pd.DataFrame, spec: FeatureSpec, *, source: str) -> list[str]:
    """The expanded columns ``name[0]`` ... of a history, refused unless the table has them all."""
    expanded = [column_name(spec.name, p) for p in range(spec.max_length)]
    if all(c in frame.columns for c in expanded):
        return expanded
    have = ", ".join(map(str, list(frame.columns)[:20]))
    raise ExporterError(
        f"{source}: missing history column '{spec.name}' (or its columns {expanded[0]} ... {expanded[-1]}); "
        f"the table has: {have}"
    )


def _cell_error(source: str, spec: FeatureSpec, i: int, exc: HistoryProblem, *, strings: bool) -> ExporterError:
    at = "" if exc.position is None else f" position {exc.position}"
    return ExporterError(
        f"{source}: column '{spec.name}' row {i + 1}{at}: value is {exc.what}; expected {expected(strings)} "
        f"(a list; in text, a printed list such as [12, 7] or the IDs separated by {spec.delimiter!r})"
    )


def history_lists(plan: Any, frame: pd.DataFrame, *, source: str = "data") -> dict[str, list[list[Any]]]:
    """Each history of ``plan`` (a :class:`~exporter.features.FeaturePlan`) in ``frame`` as its kept IDs per row:
    what a TorchServe request sends (``{"hist_items": [12, 7, 99]}``, or the strings of a string history)."""
    out: dict[str, list[list[Any]]] = {}
    for group in plan.histories():
        first = plan.features[group["columns"][0]]
        spec = first.spec
        if first.dtype == "string":
            items = history_strings(frame, spec, source=source)
            out[spec.name] = [[v for v in row if v is not None] for row in items]
            continue
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


def check_no_built_history(schema: Schema | None, path: str) -> None:
    """A history the schema builds from the log (``from``) needs the whole table at once (each user's rows in time
    order, after the split): refused by the streamed and Spark paths, which read the table in parts."""
    built = built_columns(schema)
    if built:
        raise ExporterError(
            f"history column(s) {', '.join(built)} are built from the log ('from' in the schema), which needs the "
            f"whole table in memory, but this run reads it {path}: use --streaming off, or build the column beforehand "
            "(exporter.features.build_history) and declare it without 'from'"
        )


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

    Missing users or items never feed a history; a row with a missing user gets an empty one. Items are integer
    IDs, or strings when the item column holds strings (as a data file's string column reads its cells).
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
    items, known = _item_values(frame[item_col])
    feeds &= ~pd.isna(frame[user_col]).to_numpy() & known
    if time_col is not None:
        times = pd.to_numeric(frame[time_col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(times).any():
            i = int(np.flatnonzero(np.isnan(times))[0])
            raise ExporterError(f"build_history: column '{time_col}' row {i + 1} has no numeric timestamp")
    else:
        times = np.arange(n, dtype=np.float64)
    out: list[list[Any]] = [[] for _ in range(n)]
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


def _item_values(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The items of an interaction log (integer IDs, or strings for a column of string IDs) and which are
    present: an object array of ``int`` or ``str``."""
    numbers = pd.to_numeric(series, errors="coerce")
    present = series.notna().to_numpy()
    if bool((numbers.notna().to_numpy() | ~present).all()) and not pd.api.types.is_bool_dtype(series):
        values = numbers.to_numpy(dtype=np.float64)
        known = np.isfinite(values) & (values == np.floor(values))
        return np.array([int(v) if k else None for v, k in zip(values, known, strict=True)], dtype=object), known
    return np.array([str(v) if p else None for v, p in zip(series, present, strict=True)], dtype=object), present


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
    out: list[list[Any]],
) -> None:
    """One user's rows in time order: each row's history from the feeding rows before it (or all but itself)."""
    fed = [int(r) for r in rows if feeds[r]]
    fed_items = [items[r] for r in fed]
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
