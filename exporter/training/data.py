"""Training data: the built-in synthetic click log, user tables (CSV/Parquet) and their validation.

Every check here raises :class:`ExporterError` with the file, column and row at fault, because a
data scientist should learn what is wrong with a file from one line, not from a traceback deep in
torch or xgboost.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from exporter.errors import ExporterError, read_json_file
from exporter.training import split as S

#: Contract section 1: the default feature schema, in tensor order.
DEFAULT_FEATURES: tuple[str, ...] = (
    "item_ctr",
    "item_cvr",
    "item_price",
    "user_age",
    "user_gender",
    "cross_age_x_ctr",
    "cross_gender_x_price",
    "user_id",
    "item_id",
    "item_category",
)
#: the categorical columns of the default schema (integer IDs and a string category)
CATEGORICAL_FEATURES: tuple[str, ...] = ("user_id", "item_id", "item_category")
USER_FEATURES: tuple[str, ...] = ("user_id", "user_age", "user_gender")
ITEM_FEATURES: tuple[str, ...] = ("item_id", "item_category", "item_ctr", "item_cvr", "item_price")
LABEL = "label"
REGRESSION_LABELS: tuple[str, ...] = ("watch_time", "gmv")
CATEGORIES: tuple[str, ...] = (
    "books",
    "shoes",
    "bags",
    "toys",
    "garden",
    "music",
    "beauty",
    "sports",
    "kitchen",
    "games",
    "phones",
    "tools",
)
#: share of cells left empty in the synthetic log (a real log has gaps)
MISSING_RATES = {"user_age": 0.02, "item_price": 0.01, "item_category": 0.01}
_TASTE_DIM = 4


#: most rows of synthetic data (``--rows``): about 1.5 GB of table and training state, what a laptop holds
MAX_SYNTHETIC_ROWS = 10_000_000


def check_rows(rows: object) -> int:
    """``--rows`` for the synthetic data: an integer in 10 ... :data:`MAX_SYNTHETIC_ROWS`."""
    if not isinstance(rows, int) or isinstance(rows, bool) or not 10 <= rows <= MAX_SYNTHETIC_ROWS:
        raise ExporterError(
            f"rows must be an integer >= 10 and <= {MAX_SYNTHETIC_ROWS:,} (the synthetic data is built in memory), "
            f"got {rows!r}; train on more rows with --data"
        )
    return rows


def synthetic_dataset(rows: int, seed: int) -> pd.DataFrame:
    """A click log where IDs matter, with the default schema and labels ``label``, ``watch_time`` and ``gmv``.

    Users and items have latent tastes (an item's taste leans towards its category's), items are drawn with
    Zipf popularity, and every user and item has its own bias: the click probability depends on the
    user-item match as well as on item quality, price sensitivity that differs by gender and an age x ctr
    interaction. So embeddings of ``user_id``, ``item_id`` and ``item_category`` carry real signal, while
    the numeric columns alone still reach a useful AUC. User and item attributes are fixed per user and
    item, and a few cells are empty (:data:`MISSING_RATES`).
    """
    if rows < 1:
        raise ExporterError(f"--rows must be a positive number of rows, got {rows}")
    rng = np.random.default_rng(seed)
    n_users = max(20, rows // 50)
    n_items = max(20, rows // 100)
    n_cat = len(CATEGORIES)

    # users: attributes, taste, bias; IDs are arbitrary integers (their order means nothing)
    user_ids = rng.choice(np.arange(100_000, 100_000 + 20 * n_users), n_users, replace=False)
    u_age = rng.integers(18, 60, n_users).astype(np.float64)
    u_gender = rng.integers(0, 3, n_users).astype(np.float64)
    u_taste = rng.normal(0.0, 1.0, (n_users, _TASTE_DIM))
    u_bias = rng.normal(0.0, 0.4, n_users)
    # items: category, attributes, taste near the category's, bias, Zipf popularity
    item_ids = rng.choice(np.arange(1, 1 + 50 * n_items), n_items, replace=False)
    i_cat = rng.choice(n_cat, n_items, p=_zipf(n_cat, 0.6))
    cat_taste = rng.normal(0.0, 1.0, (n_cat, _TASTE_DIM))
    i_taste = 0.8 * cat_taste[i_cat] + 0.6 * rng.normal(0.0, 1.0, (n_items, _TASTE_DIM))
    i_bias = rng.normal(0.0, 0.4, n_items)
    i_ctr = rng.uniform(0.01, 0.5, n_items)
    i_cvr = rng.uniform(0.001, 0.1, n_items)
    i_price = rng.uniform(10.0, 200.0, n_items)
    popularity = _zipf(n_items, 1.05)[rng.permutation(n_items)]

    u = rng.choice(n_users, rows, p=_zipf(n_users, 0.5)[rng.permutation(n_users)])
    i = _browse(rng.choice(n_items, rows, p=popularity), u, u_taste, i_taste, popularity, seed)
    item_ctr, item_cvr, item_price = i_ctr[i], i_cvr[i], i_price[i]
    user_age, user_gender = u_age[u], u_gender[u]
    cross_age_x_ctr = user_age * item_ctr
    cross_gender_x_price = user_gender * item_price

    young = (user_age < 30).astype(np.float64)
    logit = (
        -1.2
        + 5.0 * (item_ctr - 0.25)
        + 8.0 * (item_cvr - 0.05)
        - 0.006 * (item_price - 100.0)
        - 0.010 * (user_gender == 2) * (item_price - 100.0)
        + 3.0 * young * (item_ctr - 0.25)
        - 0.015 * (user_age - 38.0)
        + 1.5 * np.sum(u_taste[u] * i_taste[i], axis=1) / np.sqrt(_TASTE_DIM)
        + u_bias[u]
        + i_bias[i]
    )
    p_click = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(rows) < p_click).astype(np.float64)
    watch_time = np.exp(2.8 + 2.0 * item_ctr + 0.012 * (user_age - 18.0) + 0.5 * label + rng.normal(0.0, 0.25, rows))
    gmv = label * item_price * np.clip(item_cvr * 8.0, 0.0, 1.0) * np.exp(rng.normal(0.0, 0.2, rows))
    category = np.asarray(CATEGORIES, dtype=object)[i_cat[i]]

    frame = pd.DataFrame(
        {
            "item_ctr": item_ctr,
            "item_cvr": item_cvr,
            "item_price": item_price,
            "user_age": user_age,
            "user_gender": user_gender,
            "cross_age_x_ctr": cross_age_x_ctr,
            "cross_gender_x_price": cross_gender_x_price,
            "user_id": user_ids[u].astype(np.int64),
            "item_id": item_ids[i].astype(np.int64),
            "item_category": category,
            LABEL: label,
            "watch_time": watch_time,
            "gmv": gmv,
        }
    )
    # a few empty cells, as in a real log; a cross feature is missing when its input is
    for col, rate in MISSING_RATES.items():
        gone = rng.random(rows) < rate
        frame.loc[gone, col] = None
        if col == "user_age":
            frame.loc[gone, "cross_age_x_ctr"] = np.nan
        if col == "item_price":
            frame.loc[gone, "cross_gender_x_price"] = np.nan
    return frame


#: users browse by taste: each row's item is chosen among this many popularity-drawn candidates ...
EXPOSURE_CANDIDATES = 4
#: ... with probability proportional to exp(this x the user-item taste match)
EXPOSURE_TASTE = 2.0


def _browse(
    first: np.ndarray, u: np.ndarray, u_taste: np.ndarray, i_taste: np.ndarray, popularity: np.ndarray, seed: int
) -> np.ndarray:
    """Which item each row shows: popular items are seen more, and users pick what matches their taste.

    So what a user interacts with (not only whether they click) carries their taste, as in a real log, and a
    retrieval model has something to learn beyond popularity. The other candidates come from their own
    generator, so the rest of the synthetic stream is unchanged.
    """
    rng = np.random.default_rng([seed, 7])
    extra = rng.choice(len(popularity), (len(first), EXPOSURE_CANDIDATES - 1), p=popularity)
    candidates = np.concatenate([first[:, None], extra], axis=1)
    match = np.einsum("rd,rkd->rk", u_taste[u], i_taste[candidates]) / np.sqrt(u_taste.shape[1])
    gumbel = -np.log(-np.log(rng.random(candidates.shape)))
    pick = np.argmax(EXPOSURE_TASTE * match + gumbel, axis=1)
    return candidates[np.arange(len(first)), pick]


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


#: the files of a table read from several, in order, with their rows: ``[(path, rows), ...]``
Parts = list[tuple[str, int]]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, or every file of a directory or glob (one table), naming the file in every
    error."""
    return read_parts(path)[0]


def read_parts(path: str | Path) -> tuple[pd.DataFrame, Parts]:
    """:func:`read_table`, and the files the table's rows came from (:func:`located_in_files` uses them)."""
    if path is not None and _many(path):
        return _read_many(str(path))
    frame = _read_one(path)
    return frame, [(str(path), len(frame))]


def _many(path: str | Path) -> bool:
    return Path(path).is_dir() or (not Path(path).exists() and any(c in str(path) for c in "*?["))


@contextlib.contextmanager
def located_in_files(parts: Parts, where: str) -> Iterator[None]:
    """An error about ``where`` (a directory or glob) at "row N" of the whole table names the file and its row
    instead: "data file d/part-1.csv: ... row 6", as a streamed read of the same files says."""
    try:
        yield
    except ExporterError as exc:
        text = str(exc)
        found = re.search(r"\brow (\d+)", text)
        if not text.startswith(f"{where}:") or found is None:
            raise
        row, start = int(found.group(1)), 0
        for file, rows in parts:
            if row <= start + rows:
                text = f"data file {file}:{text[len(where) + 1 : found.start()]}row {row - start}{text[found.end() :]}"
                raise type(exc)(text) from None
            start += rows
        raise


def _read_one(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ExporterError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".gz") or suffix == "":
            frame = pd.read_csv(path)
            names = [str(c) for c in frame.columns]
            renamed = any(n.rsplit(".", 1)[0] in names for n in names if re.fullmatch(r".+\.[0-9]+", n))
            if len(names) == 1 or renamed:  # one column, or pandas renamed a repeated name x to x.1: check the header
                from exporter.training.sources import check_unique_columns, csv_header

                check_unique_columns(path, csv_header(str(path)), "csv")
            return frame
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise ExporterError(f"cannot read data file {path}: {exc}".splitlines()[0]) from exc
    raise ExporterError(f"unsupported data file type '{suffix}' for {path}: expected .csv or .parquet")


def _read_many(spec: str) -> tuple[pd.DataFrame, Parts]:
    """The files of a directory or glob as one table; a file that lacks a column of the first names it."""
    from exporter.training.sources import resolve_inputs

    files = resolve_inputs(spec, option="--data")
    frames = [_read_one(f.path) for f in files]
    columns = list(frames[0].columns)
    for f, frame in zip(files, frames, strict=True):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ExporterError(
                f"data {spec}: file {f.path} has no column(s) {', '.join(map(str, missing))} that {files[0].path} "
                "has; every file of the data must hold the same columns"
            )
    _check_one_type(files, frames, columns)
    table = pd.concat([frame[columns] for frame in frames], ignore_index=True)
    return table, [(str(f.path), len(frame)) for f, frame in zip(files, frames, strict=True)]


def _check_one_type(files: Sequence[Any], frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> None:
    """Parquet files that type a column as numbers in one and text in another are refused, as the streamed reader
    refuses them: read together, the column would be text, and the model's IDs strings, which a later file of
    integers (scored, or sent by a client) would be read against as vocabulary codes."""
    seen: dict[str, tuple[str, str]] = {}
    for f, frame in zip(files, frames, strict=True):
        if getattr(f, "format", None) != "parquet":
            continue
        for c in columns:
            kind = _value_kind(frame[c])
            if kind is None:
                continue
            first = seen.setdefault(c, (kind, f.path))
            if first[0] != kind:
                raise ExporterError(
                    f"data file {f.path}: column '{c}' holds {kind} values here but {first[0]} values in {first[1]}; "
                    "expected one type in every file (write the column with one type, e.g. every file's IDs as "
                    "integers or every file's as text)"
                )


def _value_kind(series: pd.Series) -> str | None:
    """``number`` or ``text`` (a column of neither, or of nothing, says nothing)."""
    if pd.api.types.is_bool_dtype(series):
        return None
    if pd.api.types.is_numeric_dtype(series):
        return "number"
    present = series.dropna()
    if len(present) and isinstance(present.iloc[0], str):
        return "text"
    return None


def check_columns(df: pd.DataFrame, required: Sequence[str], *, what: str, source: str) -> None:
    """Fail with the list of missing columns (and those present) when ``required`` is not a subset."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns[:20]))
        raise ExporterError(f"{source}: missing {what} column(s) {', '.join(missing)}; the file has: {have}")


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
    meta = read_json_file(path, f"feature-meta file {path}", '{"feature_columns": [...]}')
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


#: shares of rows in the validation part (early stopping, model selection) and the held-out test part (reported only)
VALIDATION_FRACTION = S.DEFAULT_VALIDATION
TEST_FRACTION = S.DEFAULT_TEST


def three_way_split(
    frame: pd.DataFrame, *, seed: int, key_columns: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(train, validation, test row indices, the rule) by a seeded hash of each row's content (or of
    ``key_columns``: rows with equal keys fall on one side), :data:`VALIDATION_FRACTION` / :data:`TEST_FRACTION`:
    the rule of :mod:`exporter.training.split` (the Spark engine computes the same codes).

    A row's side depends on the row alone, not on the table's order or length: appending rows moves none.
    On a table so small that the hash leaves a part empty, the first row of the largest part moves there,
    so each part has a row (a model needs training rows, validation rows to stop on and test rows to report).
    """
    if len(frame) < 10:
        raise ExporterError(f"need at least 10 rows of data to train, validate and hold out, got {len(frame)}")
    try:
        codes = S.split_codes(
            frame, seed=seed, key_columns=key_columns, validation=VALIDATION_FRACTION, test=TEST_FRACTION
        ).copy()
    except (TypeError, ValueError, pa.ArrowException) as exc:  # a column Arrow cannot type (mixed ints and text)
        raise ExporterError(f"cannot split the data by row content: {exc}".splitlines()[0]) from exc
    for part in (S.TRAIN, S.VALIDATION, S.TEST):
        if not (codes == part).any():  # move the first row of the largest part, with every row of equal key
            largest = int(np.argmax(np.bincount(codes, minlength=3)))
            keys = frame if key_columns is None else frame[list(key_columns)]
            hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy()
            first = int(np.flatnonzero(codes == largest)[0])
            codes[(hashed == hashed[first]) & (codes == largest)] = part
    train, valid, test = S.three_way(codes)
    return train, valid, test, S.describe(seed, key_columns, VALIDATION_FRACTION, TEST_FRACTION)


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
