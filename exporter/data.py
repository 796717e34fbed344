"""Training data: the built-in synthetic click log, user tables (CSV/Parquet) and their validation.

Every check here raises :class:`ExporterError` with the file, column and row at fault, because a
data scientist should learn what is wrong with a file from one line, not from a traceback deep in
torch or xgboost.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from exporter.errors import ExporterError

#: Contract section 1: the default feature schema, in tensor order.
DEFAULT_FEATURES: tuple[str, ...] = (
    "item_ctr",
    "item_cvr",
    "item_price",
    "user_age",
    "user_gender",
    "cross_age_x_ctr",
    "cross_gender_x_price",
)
USER_FEATURES: tuple[str, ...] = ("user_age", "user_gender")
ITEM_FEATURES: tuple[str, ...] = ("item_ctr", "item_cvr", "item_price")
LABEL = "label"
REGRESSION_LABELS: tuple[str, ...] = ("watch_time", "gmv")


def synthetic_dataset(rows: int, seed: int) -> pd.DataFrame:
    """A click log with the default schema and labels ``label``, ``watch_time`` and ``gmv``.

    The click probability depends on item quality, price sensitivity that differs by gender and an
    age x ctr interaction, so every model has something real to learn (AUC around 0.75-0.8).
    """
    if rows < 1:
        raise ExporterError(f"--rows must be a positive number of rows, got {rows}")
    rng = np.random.default_rng(seed)
    item_ctr = rng.uniform(0.01, 0.5, rows)
    item_cvr = rng.uniform(0.001, 0.1, rows)
    item_price = rng.uniform(10.0, 200.0, rows)
    user_age = rng.integers(18, 60, rows).astype(np.float64)
    user_gender = rng.integers(0, 3, rows).astype(np.float64)
    cross_age_x_ctr = user_age * item_ctr
    cross_gender_x_price = user_gender * item_price

    young = (user_age < 30).astype(np.float64)
    logit = (
        -1.1
        + 7.0 * (item_ctr - 0.25)
        + 12.0 * (item_cvr - 0.05)
        - 0.008 * (item_price - 100.0)
        - 0.012 * (user_gender == 2) * (item_price - 100.0)
        + 3.0 * young * (item_ctr - 0.25)
        - 0.02 * (user_age - 38.0)
    )
    p_click = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(rows) < p_click).astype(np.float64)
    watch_time = np.exp(
        2.8 + 2.0 * item_ctr + 0.012 * (user_age - 18.0) + 0.5 * label + rng.normal(0.0, 0.25, rows)
    )
    gmv = label * item_price * np.clip(item_cvr * 8.0, 0.0, 1.0) * np.exp(rng.normal(0.0, 0.2, rows))
    return pd.DataFrame(
        {
            "item_ctr": item_ctr,
            "item_cvr": item_cvr,
            "item_price": item_price,
            "user_age": user_age,
            "user_gender": user_gender,
            "cross_age_x_ctr": cross_age_x_ctr,
            "cross_gender_x_price": cross_gender_x_price,
            LABEL: label,
            "watch_time": watch_time,
            "gmv": gmv,
        }
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, naming the file in every error."""
    path = Path(path)
    if not path.exists():
        raise ExporterError(f"data file not found: {path}")
    if path.is_dir():
        raise ExporterError(f"data path is a directory, expected a .csv or .parquet file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".gz") or suffix == "":
            return pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise ExporterError(f"cannot read data file {path}: {exc}".splitlines()[0]) from exc
    raise ExporterError(f"unsupported data file type '{suffix}' for {path}: expected .csv or .parquet")


def check_columns(df: pd.DataFrame, required: Sequence[str], *, what: str, source: str) -> None:
    """Fail with the list of missing columns (and those present) when ``required`` is not a subset."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns[:20]))
        raise ExporterError(
            f"{source}: missing {what} column(s) {', '.join(missing)}; the file has: {have}"
        )


def numeric_matrix(df: pd.DataFrame, columns: Sequence[str], *, source: str) -> np.ndarray:
    """The float64 matrix of ``columns``; rejects non-numeric and non-finite values with their row.

    Rows are reported 1-based as a person counts data rows in a file (the header is not a row).
    """
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        series = df[col]
        if pd.api.types.is_bool_dtype(series):
            raise ExporterError(
                f"{source}: column '{col}' row 1: value {_show(series.iloc[0])} is a boolean, expected a number"
            )
        if not pd.api.types.is_numeric_dtype(series):
            converted = pd.to_numeric(series, errors="coerce")
            bad = (converted.isna() & series.notna()).to_numpy() | series.map(lambda v: isinstance(v, bool)).to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ExporterError(
                    f"{source}: column '{col}' row {i + 1}: value {_show(series.iloc[i])} is not a number"
                )
            series = converted
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise ExporterError(
                f"{source}: column '{col}' row {i + 1}: value {values[i]} is not a finite number "
                "(missing, NaN or infinite values are not allowed)"
            )
        out[:, j] = values
    return out


def _show(value: object) -> str:
    item = getattr(value, "item", None)
    return repr(item() if callable(item) else value)


def read_feature_meta(path: str | Path) -> list[str]:
    """``feature_columns`` from a feature-meta JSON, as other projects' training scripts write it."""
    path = Path(path)
    if not path.exists():
        raise ExporterError(f"feature-meta file not found: {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExporterError(f"feature-meta file {path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or "feature_columns" not in meta:
        raise ExporterError(
            f"feature-meta file {path} has no 'feature_columns': expected a JSON object like "
            '{"feature_columns": ["col_a", "col_b", ...]}'
        )
    return validate_feature_columns(meta["feature_columns"], source=f"feature-meta file {path}")


def validate_feature_columns(columns: object, *, source: str) -> list[str]:
    """A non-empty list of distinct, non-empty column names."""
    if isinstance(columns, str) or not isinstance(columns, (list, tuple)) or not columns:
        raise ExporterError(f"{source}: feature_columns must be a non-empty list of column names, got {columns!r}")
    bad = [c for c in columns if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ExporterError(f"{source}: feature_columns must be non-empty strings, got {bad[0]!r}")
    dupes = sorted({c for c in columns if list(columns).count(c) > 1})
    if dupes:
        raise ExporterError(f"{source}: feature_columns has duplicates: {', '.join(dupes)}")
    return list(columns)


def split_indices(n_rows: int, *, seed: int, heldout_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffled (train, held-out) row indices; at least one row on each side."""
    if n_rows < 10:
        raise ExporterError(f"need at least 10 rows of data to train and hold out, got {n_rows}")
    order = np.random.default_rng(seed + 1).permutation(n_rows)
    n_held = min(n_rows - 1, max(1, int(round(n_rows * heldout_fraction))))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def parity_rows(heldout: np.ndarray, train: np.ndarray, *, minimum: int, seed: int) -> tuple[np.ndarray, int]:
    """Rows for the parity gate: all held-out rows, topped up to ``minimum`` when data is small.

    The top-up draws each column independently from the observed values, so the rows stay inside
    the data's range while covering combinations the held-out set lacks. Returns (rows, n_synthetic).
    """
    if len(heldout) >= minimum:
        return heldout, 0
    pool = np.concatenate([heldout, train]) if len(train) else heldout
    rng = np.random.default_rng(seed + 2)
    extra = minimum - len(heldout)
    cols = [pool[rng.integers(0, len(pool), extra), j] for j in range(pool.shape[1])]
    return np.concatenate([heldout, np.stack(cols, axis=1)]), extra
