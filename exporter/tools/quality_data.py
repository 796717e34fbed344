"""The quality benchmark's table: MovieLens columns as the models read them, and a synthetic stand-in for --quick."""

from __future__ import annotations

import numpy as np
import pandas as pd

from exporter.tools import movielens as ml
from exporter.training import data as D

SEED = 0
LABEL = ml.LIKED

#: The CTR models' inputs: every ML-100k feature as one number (categoricals as integer codes).
FEATURES: tuple[str, ...] = (
    "user_id",
    "item_id",
    "age",
    "gender",
    "occupation",
    "zip_prefix",
    "release_year",
    *ml.GENRE_COLUMNS,
)
CATEGORICAL: tuple[str, ...] = ("user_id", "item_id", "gender", "occupation", "zip_prefix")
USER_TOWER: tuple[str, ...] = ("user_id", "age", "gender", "occupation", "zip_prefix")
ITEM_TOWER: tuple[str, ...] = ("item_id", "release_year", *ml.GENRE_COLUMNS)
#: the history feature of the "+ history" rows: each user's liked items of the training rows (time order, the
#: row itself excluded), the last HISTORY_LENGTH of them, sharing item_id's vocabulary
HISTORY = "liked_items"
HISTORY_LENGTH = 20


def add_history(table: pd.DataFrame, train_rows: np.ndarray) -> pd.DataFrame:
    """``table`` with :data:`HISTORY`: leak-free (:func:`exporter.features.build_history`, no time column: only
    training rows feed it, never the row itself), in timestamp order so that truncation keeps the latest.

    A row's own label never shapes its own history: a liked row's item is left out as itself, an unliked row's
    item is not liked, so both see the same items, those of the user's *other* liked training rows. (Histories
    by time, only items rated before the row, were measured too: the towers then learn from the short histories
    of early rows and are served each user's full one, and retrieval falls from about 0.59 to 0.42 recall@50.)"""
    from exporter.features import build_history

    train = np.zeros(len(table), dtype=bool)
    train[train_rows] = True
    order = np.argsort(table["timestamp"].to_numpy(), kind="stable")
    ordered = table.iloc[order]
    built = build_history(
        ordered, "user_id", "item_id", None, HISTORY_LENGTH, train[order], positive=ordered[LABEL].to_numpy() == 1
    )
    out = table.copy()
    out[HISTORY] = built.reindex(table.index)
    return out


def user_histories(table: pd.DataFrame, train_rows: np.ndarray, users: pd.Series) -> list[list[int]]:
    """Per user (in ``users`` order) the history serving would send: the last HISTORY_LENGTH liked training items."""
    train = table.iloc[train_rows]
    liked = train[train[LABEL] == 1].sort_values("timestamp", kind="stable")
    by_user = liked.groupby("user_id")["item_id"].apply(lambda s: [int(v) for v in s.tolist()[-HISTORY_LENGTH:]])
    return [list(by_user.get(u, [])) for u in users.tolist()]


def synthetic_movielens(n_users: int = 150, n_items: int = 100, per_user: int = 20, seed: int = 0) -> pd.DataFrame:
    """A small table in :func:`exporter.tools.movielens.load_ml100k`'s format: latent tastes, popular items, one
    rating per user-item pair. For the ``--quick`` smoke run and tests; it is no stand-in for the real data."""
    rng = np.random.default_rng(seed)
    occupations = np.array(["artist", "engineer", "student", "writer", "other"])
    taste_u, taste_i = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=min(per_user, n_items), replace=False, p=popularity / popularity.sum())
        rows += [(u, i) for i in items]
    users, items = np.array(rows).T
    affinity = (taste_u[users] * taste_i[items]).sum(axis=1) + 0.5 * np.log(popularity[items] * n_items)
    rating = np.clip(np.round(3.2 + 0.8 * affinity + rng.normal(0, 0.7, len(users))), 1, 5).astype(np.int64)
    genres = (rng.random((n_items, len(ml.GENRES))) < 0.15).astype(np.int64)
    year = rng.integers(1930, 1999, n_items).astype(np.float64)
    year[0] = np.nan
    frame = pd.DataFrame(
        {
            "user_id": users + 1,
            "item_id": items + 1,
            "rating": rating,
            "timestamp": 880_000_000 + np.arange(len(users)),
            "age": rng.integers(7, 74, n_users)[users],
            "gender": np.where(rng.random(n_users) < 0.7, "M", "F")[users],
            "occupation": occupations[rng.integers(0, len(occupations), n_users)][users],
            "zip_code": np.array([f"{z:05d}" for z in rng.integers(0, 99999, n_users)])[users],
        }
    )
    frame["zip_prefix"] = frame["zip_code"].str[:1]
    frame["release_year"] = year[items]
    for j, col in enumerate(ml.GENRE_COLUMNS):
        frame[col] = genres[items, j]
    frame[LABEL] = (frame["rating"] >= 4).astype(np.int64)
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)[list(ml.COLUMNS)]
    frame.attrs["source"] = f"synthetic MovieLens-like table ({n_users} users, {n_items} items, seed {seed})"
    return frame


def encode(frame: pd.DataFrame, train_rows: np.ndarray) -> pd.DataFrame:
    """Every feature as a number: gender 1/2 (0 unknown, as the contract's user_gender), occupation and zip
    prefix as codes of their sorted vocabulary, a missing release year as the training median. Ids stay.
    ``label`` is a copy of ``liked`` (for a pipeline without a label option)."""
    out = frame.copy()
    out["gender"] = frame["gender"].map({"M": 1, "F": 2}).fillna(0).astype(np.int64)
    for col in ("occupation", "zip_prefix"):
        vocabulary = sorted(frame[col].astype(str).unique())
        out[col] = pd.Categorical(frame[col].astype(str), categories=vocabulary).codes.astype(np.int64)
    fill = float(np.nanmedian(frame["release_year"].to_numpy()[train_rows]))
    out["release_year"] = frame["release_year"].fillna(fill)
    out[D.LABEL] = frame[LABEL]
    return out
