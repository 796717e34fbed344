"""Features that carry nothing: warned about (summary, notebook, metadata), never refused.

A column the model cannot learn from is trained on silently otherwise: a free-text name or a row ID becomes an
all out-of-vocabulary categorical (every value seen once, below ``min_count``: ``vocab_size 0``), a constant or an
all-empty column is one value after its fill, a saved DataFrame index is a row number. Each costs parameters and,
worse, hides that the data is not what the data scientist thinks; so the run goes on and says which column and
why, and how to leave it out (``--exclude-columns``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from exporter import features as F

UNIQUE = "unique_per_row"
CONSTANT = "constant"
EMPTY = "all_empty"
ROW_NUMBER = "row_number"
UNUSED_POSITIONS = "unused_positions"
LIST_TEXT = "list_text"
#: share of a text column's cells that must read as several IDs for it to be named a history written as text
LIST_TEXT_SHARE = 0.5


def column_warnings(
    frame: pd.DataFrame, plan: F.FeaturePlan, x_train: np.ndarray, train_rows: np.ndarray
) -> list[dict[str, str]]:
    """One ``{"column", "reason", "message"}`` per feature that carries nothing, in feature order.

    ``x_train`` is the prepared training matrix (what the model sees: a categorical column as its embedding
    rows), ``train_rows`` the rows of ``frame`` it came from.
    """
    out = []
    seen: set[str] = set()
    for j, feat in enumerate(plan.features):
        if feat.history:
            if feat.spec.name not in seen:
                seen.add(feat.spec.name)
                out += _history_warning(feat, len(train_rows))
            continue
        listed = _list_text(frame, feat)
        if listed is not None:
            out.append({"column": feat.name, "reason": LIST_TEXT, "message": listed})
            continue
        found = _why(frame, feat, x_train[:, j] if x_train.size else np.zeros(0), len(train_rows))
        if found is not None:
            reason, why = found
            out.append(
                {
                    "column": feat.name,
                    "reason": reason,
                    "message": f"column '{feat.name}' carries nothing: {why}; the model learns nothing from it "
                    f"(leave it out with --exclude-columns {feat.name})",
                }
            )
    return out


def _history_warning(first: F.FittedFeature, n: int) -> list[dict[str, str]]:
    """One warning for a history (``first``: its first position) that no training row fills, or whose last
    positions none does (its ``longest`` statistic, over every training row)."""
    name, length, longest = first.spec.name, first.spec.max_length, first.stats.get("longest")
    if longest is None or longest >= length or not n:
        return []
    if longest == 0:
        message = (
            f"history '{name}' carries nothing: it is empty in all {n:,} training rows; the model learns nothing "
            f"from it (leave it out with --exclude-columns {name})"
        )
        return [{"column": name, "reason": EMPTY, "message": message}]
    message = (
        f"history '{name}' holds at most {longest} item(s) in every training row, so its columns {name}[{longest}] "
        f"... {name}[{length - 1}] are always empty: the model trains as with max_length {longest}, at the cost of "
        f"{length} columns per row ("
    )
    if longest == 1:  # text joined by another separator reads as one item per row
        message += (
            f"if its cells list several items joined by another separator than its delimiter "
            f'{first.spec.delimiter!r}, set the schema\'s "delimiter"; else '
        )
    message += f'set "max_length": {longest} in the schema unless requests send longer histories)'
    return [{"column": name, "reason": UNUSED_POSITIONS, "message": message}]


def _list_text(frame: pd.DataFrame, feat: F.FittedFeature) -> str | None:
    """A warning for a categorical text column whose cells mostly read as several IDs (``i_31|i_16``, a printed
    list): as a category each whole list is one value, most of them seen once; a history embeds its items."""
    from exporter.runtime.history import text_items

    if not feat.categorical or feat.dtype != "string" or feat.name not in frame.columns:
        return None
    cells = [v for v in frame[feat.name].dropna().head(1000) if isinstance(v, str) and v.strip()]
    if not cells:
        return None
    delimiter = F.FeatureSpec(feat.name, F.HISTORY).delimiter
    several = [v for v in cells if len(text_items(v, delimiter)) >= 2]
    if len(several) < LIST_TEXT_SHARE * len(cells):
        return None
    example = several[0] if len(several[0]) <= 40 else several[0][:37] + "..."
    return (
        f"column '{feat.name}' holds lists of IDs written as text ({len(several)} of {len(cells)} cells read have "
        f"several, e.g. {example!r}): as a categorical each whole list is one value ({feat.rows - 1} in its "
        f'vocabulary); declare it a history to embed its items (schema: {{"name": "{feat.name}", "kind": "history"}}, '
        f"docs/features.md), or leave it out with --exclude-columns {feat.name}"
    )


def _why(frame: pd.DataFrame, feat: F.FittedFeature, prepared: np.ndarray, n: int) -> tuple[str, str] | None:
    """(reason, explanation) for a column that carries nothing, else None."""
    stats = feat.stats
    missing = float(stats.get("missing_rate") or 0.0)
    if n and missing >= 1.0:
        where = "the missing value (the out-of-vocabulary row)" if feat.categorical else f"its fill {feat.fill:g}"
        return EMPTY, f"it is empty in all {n:,} training rows, so every row holds {where}"
    present = round(n * (1.0 - missing))
    if feat.categorical:
        distinct = int(stats.get("distinct") or 0)
        if present >= 2 and distinct == present:
            if feat.hashed:
                tail = "hashing them learns one row per training row, nothing that generalises"
            else:
                tail = (
                    f"each is seen once, below min_count {feat.spec.min_count}, so all map to the "
                    f"out-of-vocabulary row (vocab_size {feat.rows - 1})"
                )
            return UNIQUE, f"it is unique per row ({distinct:,} distinct values in {present:,} training rows): {tail}"
    if len(prepared) >= 2 and float(np.ptp(prepared)) == 0.0:
        top = stats.get("top_values") or []
        value = (
            F.show_value(top[0]["value"])
            if feat.categorical and top and isinstance(top[0], dict)
            else f"{float(prepared[0]):g}"
        )
        return CONSTANT, f"every training row holds the same value ({value})"
    if not feat.categorical and feat.name in frame.columns and _row_number(frame[feat.name]):
        return ROW_NUMBER, (
            f"it counts the rows (consecutive integers from {_first(frame[feat.name])}, one per row: a saved "
            "DataFrame index or a row ID), so it says where a row sits in the file, not what it is"
        )
    return None


def _first(series: pd.Series) -> Any:
    return int(series.min())


def _row_number(series: pd.Series) -> bool:
    """Consecutive distinct integers, one per row (in any order): ``0, 1, 2, ...`` as ``to_csv`` writes an index."""
    if len(series) < 3 or not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(values).any():
        return False
    low, high = float(values.min()), float(values.max())
    if high - low + 1 != len(values) or not np.all(values == np.floor(values)):
        return False
    return len(np.unique(values)) == len(values)
