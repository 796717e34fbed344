"""What the retrieval evaluation ranks, gathered from a table in memory or from one pass over a streamed log.

The evaluation (:func:`exporter.models.two_tower.towers.evaluate_two_tower`) needs, whatever path trained:

* the **catalogue**: one raw row per item of the *whole* data (it is also the ``items.parquet`` shipped beside the
  item tower: an item missing from it could never be retrieved);
* the **evaluated users**: one raw row each, every user with held-out positives or a seeded sample of
  :data:`MAX_EVAL_USERS` of them;
* their **known** pairs (training and validation interactions: excluded from the ranking) and their **held-out**
  pairs (the positives looked for in the top K);
* the **popularity** baseline's count per catalogue item.

In memory these come from the table (:func:`in_memory`). A streamed run holds only bounded samples, so
:func:`streamed` reads the log once more: the catalogue and the popularity counts over every row, and all pairs of
the evaluated users, chosen during the pass as the :data:`MAX_EVAL_USERS` users with held-out positives whose
seeded key hash is smallest (a uniform sample; rows of users whose hash is above the running threshold are dropped
as the pass goes, so memory holds the catalogue and the rows of at most :data:`CANDIDATE_FACTOR` times that many
users). Every user is ranked when the log has fewer.

Popularity counts distinct user-item pairs in memory and interaction rows when streamed (distinct pairs over a
whole log would need memory that grows with it); on a log where each pair occurs once they are equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from exporter.models.two_tower import retrieval as R
from exporter.training import inputs as I
from exporter.training import split as S

#: users ranked against the whole catalogue at most (a seeded sample beyond it keeps a big log's export fast)
MAX_EVAL_USERS = 20_000
#: a streamed evaluation keeps the rows of at most this many times :data:`MAX_EVAL_USERS` users while it looks
#: for users with held-out positives
CANDIDATE_FACTOR = 8
_KEY = "__key"
_HASH_KEY = "exporter-2tower-"  # pandas' 16-byte hash key; the seed is mixed in after


@dataclass
class RetrievalInputs:
    """Users (row = user code) and catalogue (row = item code) as raw tower columns, and the pairs between them."""

    users: pd.DataFrame
    catalogue: pd.DataFrame
    #: ``user``, ``item`` codes: the evaluated users' training and validation interactions
    known: pd.DataFrame
    #: ``user``, ``item`` codes (and ``positive`` when the rows carry labels): their held-out interactions
    held: pd.DataFrame
    #: the popularity baseline's score of each catalogue item
    popularity: np.ndarray
    #: whether the users are a sample of those with held-out positives
    sampled: bool
    #: what :attr:`popularity` counts
    popularity_counts: str = "distinct user-item pairs of the training and validation rows"


def is_list_column(frame: pd.DataFrame, column: str) -> bool:
    """A history column: Python lists (or arrays) in an object column."""
    s = frame[column]
    if s.dtype != object:
        return False
    present = s.dropna()
    return bool(len(present)) and isinstance(present.iloc[0], (list, np.ndarray))


def first_rows(frame: pd.DataFrame, codes: np.ndarray | pd.Series, columns: Sequence[str]) -> pd.DataFrame:
    """One row per code, in order of first appearance: each column's first non-missing value among the code's
    rows; a history column (lists) takes the code's last row's (the latest)."""
    grouped = frame[list(columns)].groupby(np.asarray(codes), sort=False)
    table = grouped.first()  # GroupBy.first skips missing values
    lists = [c for c in columns if is_list_column(frame, c)]
    if lists:
        table[lists] = grouped[lists].last()
    return table


def key_hash(frame: pd.DataFrame, columns: Sequence[str], seed: int = 0) -> np.ndarray:
    """A seeded 64-bit hash of each row's key columns, equal for equal keys in any batch (numbers are hashed as
    float64, so a column read as int64 in one batch and float64 (with gaps) in another hashes alike)."""
    parts = {}
    for c in columns:
        s = frame[c]
        parts[c] = s.astype(np.float64) if pd.api.types.is_numeric_dtype(s) and s.dtype != bool else s.astype(object)
    h = pd.util.hash_pandas_object(pd.DataFrame(parts), index=False, hash_key=_HASH_KEY).to_numpy(np.uint64)
    return S.hash_long(h, np.full(len(h), seed, dtype=np.int64).view(np.uint64))


def uniform(h: np.ndarray) -> np.ndarray:
    """[0, 1) from a 64-bit hash."""
    return (h >> np.uint64(11)).astype(np.float64) * (2.0**-53)


# ------------------------------------------------------------------------------------------------ in memory


def in_memory(
    frames: Sequence[pd.DataFrame],
    n_known: int,
    user: Sequence[str],
    item: Sequence[str],
    user_key: Sequence[str],
    item_key: Sequence[str],
    positive: np.ndarray | None,
    seed: int,
) -> RetrievalInputs:
    """From the tables themselves: ``frames`` are train, validation and held-out rows in that order (the first
    ``n_known`` rows are the known ones); ``positive`` marks the held-out rows that are positives (``None``: every
    held-out row is one)."""
    frame = pd.concat(list(frames), ignore_index=True)
    user_codes = entity_codes(frame, user_key)
    item_codes = entity_codes(frame, item_key)
    users = first_rows(frame, user_codes, user).reset_index(drop=True)
    catalogue = first_rows(frame, item_codes, item).reset_index(drop=True)
    pairs = pd.DataFrame({"user": user_codes, "item": item_codes})
    held = pairs.iloc[n_known:]
    if positive is not None:
        held = held.assign(positive=np.asarray(positive) == 1)
    known = pairs.iloc[:n_known]
    # popularity counts every training interaction, also of users left out of a sampled evaluation
    popularity = R.popularity_counts(R.UserItems.from_pairs(known["user"], known["item"], len(users)), len(catalogue))
    chosen = _chosen_users(users, user_key, held, positive is not None, seed)
    if chosen is not None:
        keep = np.zeros(len(users), dtype=bool)
        keep[chosen] = True
        renumber = np.cumsum(keep) - 1
        known = known[keep[known["user"].to_numpy()]].assign(user=lambda d: renumber[d["user"].to_numpy()])
        held = held[keep[held["user"].to_numpy()]].assign(user=lambda d: renumber[d["user"].to_numpy()])
        users = users.iloc[np.flatnonzero(keep)].reset_index(drop=True)
    return RetrievalInputs(users, catalogue, known, held, popularity, chosen is not None)


def entity_codes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """0..n-1 per distinct value (tuple) of ``columns``, numbered by first appearance; NaN is a value too."""
    return frame.groupby(list(columns), sort=False, dropna=False).ngroup().to_numpy(dtype=np.int64)


def _chosen_users(
    users: pd.DataFrame, user_key: Sequence[str], held: pd.DataFrame, labelled: bool, seed: int
) -> np.ndarray | None:
    """``None`` (every user), or the :data:`MAX_EVAL_USERS` users with held-out positives whose seeded key hash
    is smallest (a uniform sample, the same users :func:`streamed` chooses from the same log)."""
    positive = held[held["positive"]] if labelled else held
    candidates = np.unique(positive["user"].to_numpy())
    if len(candidates) <= MAX_EVAL_USERS:
        return None
    u = uniform(key_hash(users.iloc[candidates], user_key, seed + 1))
    return np.sort(candidates[np.argsort(u, kind="stable")[:MAX_EVAL_USERS]])


# ------------------------------------------------------------------------------------------------ streamed


class _Reduced:
    """Per-key results of batches (one row per key, indexed by the key's hash), folded together by ``reduce``
    whenever they hold twice the keys of the last fold: memory follows the distinct keys, not the batches."""

    def __init__(self, reduce: Callable[[Any], Any], empty: Callable[[], Any]) -> None:
        self.reduce, self.empty = reduce, empty
        self.parts: list[Any] = []
        self.rows = self.reduced = 0

    def add(self, part: Any) -> None:
        self.parts.append(part)
        self.rows += len(part)
        if self.rows > 2 * self.reduced + 65_536:
            self._fold()

    def _fold(self) -> None:
        if self.parts:
            self.parts = [self.reduce(pd.concat(self.parts))]
        self.rows = self.reduced = len(self.parts[0]) if self.parts else 0

    def result(self) -> Any:
        self._fold()
        return self.parts[0] if self.parts else self.empty()


def _first_rows_by_key(columns: Sequence[str]) -> _Reduced:
    """:func:`first_rows` over batches, keyed by the item key's hash."""
    return _Reduced(
        lambda both: first_rows(both, both.index.to_numpy(), columns),
        lambda: pd.DataFrame(columns=list(columns), index=pd.Index([], dtype=np.uint64)),
    )


def streamed(
    batches: Iterable[Any],
    user: Sequence[str],
    item: Sequence[str],
    user_key: Sequence[str],
    item_key: Sequence[str],
    labels: Mapping[str, str],
    kinds: Mapping[str, str],
    label: str,
    seed: int,
    max_users: int | None = None,
    positive_class: Any = None,
) -> RetrievalInputs:
    """From one pass over ``batches`` (:class:`~exporter.training.stream_scan.StreamBatch`: a frame and each
    row's split code): see the module docstring. ``positive_class``: ``--positive-class`` (the label value that is
    1), None for a 0/1 label."""
    train_items, other_items = _first_rows_by_key(item), _first_rows_by_key(item)
    # rows per item key hash
    counts = _Reduced(lambda both: both.groupby(level=0, sort=False).sum(), lambda: pd.Series(dtype=np.int64))
    kept: list[pd.DataFrame] = []
    kept_rows = 0
    # users are kept while their hash u is at most the threshold: the max_users-th smallest u of users with
    # held-out positives, and the (CANDIDATE_FACTOR x max_users)-th of all users (a log with few held-out positives
    # must not keep every user's rows); the users kept with positives are then those of smallest u: uniform
    positive_u, any_u = np.empty(0), np.empty(0)
    max_users = MAX_EVAL_USERS if max_users is None else max_users
    candidates = CANDIDATE_FACTOR * max_users
    threshold = np.inf
    pruned = 0
    user_cols = list(dict.fromkeys(user))
    for b in batches:
        frame, codes = b.frame, b.codes
        if not len(frame):
            continue
        items = key_hash(frame, item_key)
        is_train = codes == S.TRAIN
        for part, where in ((train_items, is_train), (other_items, ~is_train)):
            if where.any():
                part.add(first_rows(frame.loc[where], items[where], item))
        if (codes != S.TEST).any():
            counts.add(pd.Series(items[codes != S.TEST]).value_counts(sort=False))
        u = uniform(key_hash(frame, user_key, seed + 1))
        if label in labels:
            source = f"data file {b.path}"
            read = {label: labels[label]}
            y = I.read_labels(frame, read, source=source, kinds=kinds, positive=positive_class, partial=True)[label]
            positive = np.asarray(y) == 1
        else:
            positive = np.ones(len(frame), dtype=bool)
        held_positive = (codes == S.TEST) & positive
        any_u = np.unique(np.concatenate([any_u, u[u <= threshold]]))[:candidates]
        if len(any_u) >= candidates:
            threshold = min(threshold, float(any_u[-1]))
        positive_u = np.unique(np.concatenate([positive_u, u[held_positive & (u <= threshold)]]))[:max_users]
        if len(positive_u) >= max_users:
            threshold = min(threshold, float(positive_u[-1]))
        take = u <= threshold
        if take.any():
            part = frame.loc[take, user_cols].reset_index(drop=True)
            kept.append(part.assign(__u=u[take], __item=items[take], __code=codes[take], __positive=positive[take]))
            kept_rows += len(part)
        if kept_rows > 2 * pruned + 262_144 and np.isfinite(threshold):  # drop users above the threshold
            both = pd.concat(kept, ignore_index=True)
            kept = [both[both["__u"].to_numpy() <= threshold]]
            kept_rows = pruned = len(kept[0])
    catalogue_by_key = pd.concat(
        [t for t in (train_items.result(), other_items.result()) if len(t)] or [train_items.result()]
    )
    catalogue_by_key = first_rows(catalogue_by_key, catalogue_by_key.index.to_numpy(), list(item))
    rows = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=[*user_cols, *PAIR_COLUMNS])
    sampled = bool(np.isfinite(threshold))
    chosen = positive_u[positive_u <= threshold] if sampled else None
    return assemble(catalogue_by_key, counts.result(), rows, chosen, user_cols, label in labels)


#: what :func:`assemble` reads of each kept row besides the user tower's columns
PAIR_COLUMNS = ("__u", "__item", "__code", "__positive")


def assemble(
    catalogue_by_key: pd.DataFrame,
    counts: pd.Series,
    rows: pd.DataFrame,
    chosen: np.ndarray | None,
    user: Sequence[str],
    labelled: bool,
) -> RetrievalInputs:
    """The inputs from what a pass over the whole log gathered (streamed here, or by Spark aggregations):

    ``catalogue_by_key``: one raw row per item indexed by the item key's hash (uint64); ``counts``: training and
    validation rows per item key hash; ``rows``: the user tower's columns and :data:`PAIR_COLUMNS` (user hash
    ``u``, item key hash, split code, positive) of every row of the candidate users; ``chosen``: the ``u`` of the
    users to rank (``None``: every user of ``rows``)."""
    catalogue = catalogue_by_key.reset_index(drop=True)
    item_index = pd.Index(catalogue_by_key.index.to_numpy(np.uint64))
    popularity = np.zeros(len(catalogue))
    if len(counts):
        popularity[item_index.get_indexer(counts.index.to_numpy(np.uint64))] = counts.to_numpy(np.float64)
    if chosen is not None and len(rows):  # only users with held-out positives are ranked
        rows = rows[rows["__u"].isin(set(np.asarray(chosen).tolist()))]
    empty = not len(rows)
    user_codes = np.empty(0, np.int64) if empty else pd.factorize(rows["__u"].to_numpy())[0]
    users = pd.DataFrame(columns=list(user)) if empty else first_rows(rows, user_codes, user).reset_index(drop=True)
    item_codes = np.empty(0, np.int64) if empty else item_index.get_indexer(rows["__item"].to_numpy(np.uint64))
    pairs = pd.DataFrame({"user": user_codes, "item": item_codes})
    code = np.empty(0, np.int8) if empty else rows["__code"].to_numpy()
    known = pairs[code != S.TEST].reset_index(drop=True)
    held = pairs[code == S.TEST].reset_index(drop=True)
    if labelled:
        held = held.assign(positive=(np.empty(0, bool) if empty else rows["__positive"].to_numpy(bool))[code == S.TEST])
    return RetrievalInputs(
        users,
        catalogue,
        known,
        held,
        popularity,
        chosen is not None,
        "interaction rows of the training and validation rows",
    )
