"""Retrieval evaluation as the field does it: every held-out positive against the whole item catalogue.

For each user, every catalogue item is scored (dot product of the user and item embeddings, or a
baseline's scores), the user's training items are removed, the exact top K is taken and compared with
the user's held-out positive items:

* recall@K = |top K ∩ held-out| / |held-out|,
* NDCG@K   = sum over hits at rank r (1-based) of 1/log2(r + 1), divided by the same sum for a perfect
  ranking (min(K, |held-out|) hits at the top),

averaged over the users that have at least one held-out positive (the others are counted, not scored).
Equal scores are ranked by catalogue position (lower index first), so results are deterministic and a
baseline with many ties (popularity) is reproducible. Users are scored in chunks sized by a memory
budget, so 10^4 users x 10^5 items runs in tens of MB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from exporter.errors import ExporterError
from exporter.training import data as D

KS: tuple[int, ...] = (10, 50)
#: scores of users [start, stop) against every catalogue item, float64 [stop - start, n_items]
ScoreChunk = Callable[[int, int], np.ndarray]
DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class UserItems:
    """For each user row 0..n_users-1, a set of catalogue item rows (CSR: ``indptr``, ``indices``)."""

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_pairs(
        cls, user_rows: Sequence[int] | np.ndarray, item_rows: Sequence[int] | np.ndarray, n_users: int
    ) -> UserItems:
        """Sets from (user row, item row) pairs; duplicate pairs count once."""
        u = np.asarray(user_rows, dtype=np.int64)
        i = np.asarray(item_rows, dtype=np.int64)
        if u.shape != i.shape or u.ndim != 1:
            raise ExporterError(f"user and item rows must be 1-d and of equal length, got {u.shape} and {i.shape}")
        if len(u) and (u.min() < 0 or u.max() >= n_users):
            raise ExporterError(f"user rows must be in [0, {n_users}), got {int(u.min())}..{int(u.max())}")
        if len(i) and i.min() < 0:
            raise ExporterError(f"item rows must be non-negative, got {int(i.min())}")
        pairs = np.unique(np.stack([u, i], axis=1), axis=0) if len(u) else np.empty((0, 2), np.int64)
        counts = np.bincount(pairs[:, 0], minlength=n_users)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), pairs[:, 1].copy())

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> UserItems:
        """Sets from one list of item rows per user (handy in tests)."""
        users = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
        items = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if lists else np.empty(0, np.int64)
        return cls.from_pairs(users, items, len(lists))

    def row(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def mask(self, start: int, stop: int, n_items: int) -> np.ndarray:
        """Boolean [stop - start, n_items]: True where the item is in the user's set."""
        out = np.zeros((stop - start, n_items), dtype=bool)
        lo, hi = self.indptr[start], self.indptr[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start : stop + 1]))
        out[rows, self.indices[lo:hi]] = True
        return out


@dataclass(frozen=True)
class RetrievalResult:
    """``metrics``: ``recall@K`` and ``ndcg@K`` per K; users scored and users without held-out positives."""

    metrics: dict[str, float]
    users_evaluated: int
    users_without_heldout: int
    n_items: int


# --------------------------------------------------------------------------------------------- ranking


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first; ties go to the lower column index.

    Exact and vectorised: a partition finds the k-th best value, every score above it is taken, and the
    remaining places go to the lowest-index columns equal to it. Cost O(rows x columns), no full sort.
    """
    m, n = scores.shape
    k = min(int(k), n)
    if k <= 0 or m == 0:
        return np.empty((m, 0), dtype=np.int64)
    kth = np.partition(scores, n - k, axis=1)[:, n - k][:, None]
    above = scores > kth
    equal = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (equal & (np.cumsum(equal, axis=1, dtype=np.int32) <= room))
    cols = np.nonzero(chosen)[1].reshape(m, k)  # row-major: each row's columns in ascending order
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _chunk_users(n_items: int, max_chunk_bytes: int) -> int:
    # per user and item, at the peak: float64 scores and the partition's copy, int32 tie counts, ~6 masks
    return max(1, int(max_chunk_bytes // max(1, n_items * (8 + 8 + 4 + 6))))


def evaluate_scores(
    score_chunk: ScoreChunk,
    n_users: int,
    n_items: int,
    train: UserItems,
    heldout: UserItems,
    ks: Sequence[int] = KS,
    *,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> RetrievalResult:
    """recall@K and NDCG@K of any scorer; training items excluded, held-out items that are also
    training items of the same user are not counted (they can never be recommended)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ExporterError(f"K must be positive integers, got {list(ks)}")
    for name, sets in (("training", train), ("held-out", heldout)):
        if sets.n_users != n_users:
            raise ExporterError(f"{name} item sets cover {sets.n_users} users, the scores {n_users}")
        if len(sets.indices) and sets.indices.max() >= n_items:
            raise ExporterError(
                f"{name} item sets refer to item row {int(sets.indices.max())}, beyond the catalogue of {n_items} items"
            )
    kmax = min(ks[-1], n_items)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal[j]: DCG of j hits at the top
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    evaluated = 0
    step = _chunk_users(n_items, max_chunk_bytes)
    for start in range(0, n_users, step):
        stop = min(n_users, start + step)
        scores = np.array(score_chunk(start, stop), dtype=np.float64)  # a private, writable copy
        if scores.shape != (stop - start, n_items):
            raise ExporterError(
                f"scores of users {start}..{stop} have shape {scores.shape}, expected {(stop - start, n_items)}"
            )
        if np.isnan(scores).any():
            r, c = np.argwhere(np.isnan(scores))[0]
            raise ExporterError(
                f"score of user row {start + int(r)} for item row {int(c)} is NaN (non-finite embeddings?)"
            )
        seen = train.mask(start, stop, n_items)
        scores[seen] = -np.inf
        relevant = heldout.mask(start, stop, n_items) & ~seen
        n_rel = relevant.sum(axis=1)
        keep = n_rel > 0
        if not keep.any():
            continue
        ranked = top_k(scores[keep], kmax)
        hits = np.take_along_axis(relevant[keep], ranked, axis=1)
        n_rel = n_rel[keep]
        evaluated += int(keep.sum())
        for k in ks:
            kk = min(k, kmax)
            h = hits[:, :kk]
            sums[f"recall@{k}"] += float(np.sum(h.sum(axis=1) / n_rel))
            dcg = (h * discount[:kk]).sum(axis=1)
            sums[f"ndcg@{k}"] += float(np.sum(dcg / ideal[np.minimum(n_rel, kk)]))
    metrics = {key: (total / evaluated if evaluated else float("nan")) for key, total in sums.items()}
    return RetrievalResult(metrics, evaluated, n_users - evaluated, n_items)


def evaluate_embeddings(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    train: UserItems,
    heldout: UserItems,
    ks: Sequence[int] = KS,
    *,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> RetrievalResult:
    """A retrieval model: score = dot product of the user's and the item's embeddings (exact, no ANN)."""
    u = np.asarray(user_emb, dtype=np.float64)
    v = np.asarray(item_emb, dtype=np.float64)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise ExporterError(f"user embeddings {u.shape} and item embeddings {v.shape} must be 2-d with the same width")
    for name, e in (("user", u), ("item", v)):
        if not np.isfinite(e).all():
            row = int(np.argwhere(~np.isfinite(e))[0][0])
            raise ExporterError(f"{name} embedding row {row} is not finite")
    vt = np.ascontiguousarray(v.T)
    return evaluate_scores(
        lambda a, b: u[a:b] @ vt, len(u), len(v), train, heldout, ks, max_chunk_bytes=max_chunk_bytes
    )


def popularity_counts(train: UserItems, n_items: int) -> np.ndarray:
    """Training interactions per item (each user-item pair once)."""
    return np.bincount(train.indices, minlength=n_items).astype(np.float64)


def evaluate_popularity(
    train: UserItems,
    heldout: UserItems,
    n_items: int,
    ks: Sequence[int] = KS,
    *,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> RetrievalResult:
    """The baseline every retrieval model must beat: the most popular training items the user has not seen."""
    counts = popularity_counts(train, n_items)
    return evaluate_scores(
        lambda a, b: np.broadcast_to(counts, (b - a, n_items)),
        train.n_users,
        n_items,
        train,
        heldout,
        ks,
        max_chunk_bytes=max_chunk_bytes,
    )


# --------------------------------------------------------------------------------------------- splits


def split_pairs(
    frame: pd.DataFrame,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    seed: int = 0,
    heldout_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of ``frame``, split by distinct user-item pairs, seeded.

    All rows of a pair fall on the same side, so no held-out pair was seen in training. Pairs are
    numbered by first appearance and split with :func:`exporter.training.data.split_indices`: when every pair occurs
    once (MovieLens), this is exactly the exporter's own row split with the same seed.
    """
    D.check_columns(frame, [user_col, item_col], what="interaction", source="split_pairs")
    pair = frame.groupby([user_col, item_col], sort=False, dropna=False).ngroup().to_numpy()
    n_pairs = int(pair.max()) + 1 if len(pair) else 0
    train_pairs, held_pairs = D.split_indices(n_pairs, seed=seed, heldout_fraction=heldout_fraction)
    held = np.zeros(n_pairs, dtype=bool)
    held[held_pairs] = True
    rows = np.arange(len(frame))
    return rows[~held[pair]], rows[held[pair]]


@dataclass(frozen=True)
class EvalSets:
    """Integer rows of users and items, and the sets :func:`evaluate_scores` takes."""

    users: pd.Index
    items: pd.Index
    train: UserItems
    heldout: UserItems


def _rows(index: pd.Index, values: pd.Series, what: str) -> np.ndarray:
    pos = index.get_indexer(values)
    if (pos < 0).any():
        bad = values.iloc[int(np.flatnonzero(pos < 0)[0])]
        raise ExporterError(f"{what} {bad!r} is not in the catalogue of {len(index)} {what}s")
    return pos.astype(np.int64)


def eval_sets(
    train: pd.DataFrame,
    heldout: pd.DataFrame,
    *,
    users: Sequence | pd.Index,
    items: Sequence | pd.Index,
    user_col: str = "user_id",
    item_col: str = "item_id",
    positive: str | None = None,
) -> EvalSets:
    """Training items to exclude (every training interaction) and held-out positives per user.

    ``users``/``items`` fix the row order of the embeddings (one row per user, the item catalogue);
    ``positive`` names a 0/1 column selecting the held-out positives (``None``: every held-out row is one).
    """
    users, items = pd.Index(users), pd.Index(items)
    for name, index in (("users", users), ("items", items)):
        if not index.is_unique:
            raise ExporterError(f"{name} must list each id once")
    for name, df in (("training", train), ("held-out", heldout)):
        D.check_columns(
            df,
            [user_col, item_col] + ([positive] if positive and df is heldout else []),
            what="interaction",
            source=f"{name} interactions",
        )
    if positive is not None:
        heldout = heldout[heldout[positive].to_numpy() == 1]
    t = UserItems.from_pairs(_rows(users, train[user_col], "user"), _rows(items, train[item_col], "item"), len(users))
    h = UserItems.from_pairs(
        _rows(users, heldout[user_col], "user"), _rows(items, heldout[item_col], "item"), len(users)
    )
    return EvalSets(users, items, t, h)


def metric_names(ks: Sequence[int] = KS) -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in sorted(ks)]
