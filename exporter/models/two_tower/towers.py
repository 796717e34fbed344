"""Users, items and their catalogue for the two-tower model: the pair split, retrieval evaluation, items.parquet.

A retrieval model is judged the way it is used: for every user with held-out positives, every item of the
catalogue is scored (dot product of the towers' vectors), the user's training items are removed, and the
held-out positives are looked for in the top K (:mod:`exporter.models.two_tower.retrieval`: recall@K, NDCG@K), next to a
popularity baseline computed on the same split.

* A user (an item) is identified by its tower's ID column when it has one (``user_id``/``item_id``, else a
  column named ``*_id``), else by all of its tower's columns together.
* The held-out set is split by distinct user-item pairs (:func:`split_by_pairs`), so no held-out pair was
  seen in training, whatever the log repeats.
* The catalogue is every item of the data, one row each with the item tower's raw columns (each column's
  first non-missing value among the item's rows; training rows come first). It is written beside the item
  tower as ``items.parquet``, and the evaluation embeds exactly it, so offline scoring and an ANN index
  rank the items the evaluation ranked. Users are embedded from one row each, built the same way.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from exporter import features as F
from exporter.models import torch_common as tc
from exporter.models.base import Evaluated, SideFile, Trained
from exporter.models.two_tower import eval_inputs as E
from exporter.models.two_tower import retrieval as R
from exporter.training import data as D
from exporter.training.data import LABEL

CATALOGUE_FILE = "items.parquet"
CATALOGUE_KEY = "catalogue"
#: K of the recall@K curve the notebook plots (those above the catalogue size are dropped)
CURVE_KS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200)
_ID = re.compile(r"(?i:(^|_)id)$|[a-z0-9](Id|ID)$")  # user_id, ID, movieId, itemID; not "paid"


def key_columns(tower: Sequence[str], preferred: str) -> list[str]:
    """The column(s) that identify an entity of a tower: ``preferred`` (``user_id``), else a ``*_id`` column,
    else all."""
    if preferred in tower:
        return [preferred]
    ids = [c for c in tower if _ID.search(c)]
    return ids[:1] if ids else list(tower)


def split_by_pairs(
    frame: pd.DataFrame, user: Sequence[str], item: Sequence[str], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(train, validation, test rows, the rule) by distinct user-item pairs: a seeded hash of the pair's key
    columns (:func:`pair_keys`, as the Spark engine hashes them), so every row of a pair falls on one side and no
    held-out pair was seen in training."""
    return D.three_way_split(frame, seed=seed, key_columns=pair_keys(user, item))


def entity_keys(user: Sequence[str], item: Sequence[str]) -> tuple[list[str], list[str]]:
    """The :func:`key_columns` of a user tower's and an item tower's columns."""
    return key_columns(user, "user_id"), key_columns(item, "item_id")


def pair_keys(user: Sequence[str], item: Sequence[str]) -> list[str]:
    """The columns that identify a user-item pair: the user's and the item's :func:`key_columns`, sorted."""
    user_key, item_key = entity_keys(user, item)
    return sorted(set(user_key) | set(item_key))


#: an item-tower column that differs between the rows of one item in at least this share of the items seen in more
#: than one row is warned about (a genuine item property, e.g. a price revised now and then, varies in few)
VARYING_SHARE = 0.1
VARIES_WITHIN_ITEM = "varies_within_item"


def varying_item_columns(frame: pd.DataFrame, item: Sequence[str]) -> list[dict[str, str]]:
    """A column warning per item-tower column of ``frame`` (the training rows) that is not a property of the item.

    The catalogue embeds each item once, from one row (:func:`catalogue_frame`), and that is how a retrieval
    system serves it; a column that changes from row to row of one item (a per-pair cross feature, the hour, the
    device, the user's age when it was not named ``user_*``) trains the item tower on values it is never served,
    and retrieval quality collapses without an error. A history column and a tower identified by all its
    columns (no ID column) are not checked.
    """
    key = key_columns(item, "item_id")
    checked = [c for c in item if c not in key and c in frame.columns and not E.is_list_column(frame, c)]
    if not checked or not len(frame):
        return []
    codes = E.entity_codes(frame, key)
    repeated = int(np.count_nonzero(np.bincount(codes) >= 2))
    distinct = frame[checked].groupby(codes).nunique(dropna=True)  # one grouping for every column
    out = []
    for c in checked:
        varying = int(np.count_nonzero(distinct[c].to_numpy() > 1))
        if repeated and varying >= VARYING_SHARE * repeated:
            out.append(
                {
                    "column": c,
                    "reason": VARIES_WITHIN_ITEM,
                    "message": f"column '{c}' feeds the item tower but is not a property of the item: it differs "
                    f"between the rows of one {'/'.join(key)} for {varying:,} of the {repeated:,} items seen more "
                    f"than once ({varying / repeated:.0%}); the catalogue ({CATALOGUE_FILE}) embeds each item from "
                    "one row, so the item tower learns from values it is never served and retrieval suffers. If it "
                    'describes the user or the request, give it "tower": "user" in the feature schema (or '
                    f"name it user_*, or list it in user_columns); else leave it out with --exclude-columns {c}",
                }
            )
    return out


def catalogue_frame(frame: pd.DataFrame, item: Sequence[str]) -> pd.DataFrame:
    """One raw row per item with the item tower's columns, in order of first appearance (see
    :func:`~exporter.models.two_tower.eval_inputs.first_rows`)."""
    return E.first_rows(frame, E.entity_codes(frame, key_columns(item, "item_id")), item).reset_index(drop=True)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _prepared(plan: Any, table: pd.DataFrame) -> np.ndarray:
    """The tower's prepared input of a raw table: encoded as serving sends it, then prepared as the graph does."""
    sub = plan.subset(list(table.columns))
    return sub.prepare(sub.encode(table, source="catalogue"))


def _embed(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return np.asarray(tc.in_chunks(module, x)) if len(x) else np.zeros((0, 0))


def evaluate_two_tower(prep: Any, trained: Trained, label: str = LABEL) -> Evaluated:
    """Retrieval metrics of a trained two-tower model on the pair split's test pairs, popularity beside them, and
    the catalogue. The training and validation pairs are what is known of each user: excluded from the ranking,
    and what popularity counts.

    Metrics: ``recall@K``/``ndcg@K`` (K = 10, 50) and ``popularity_recall@K``/``popularity_ndcg@K``, the users
    scored and the catalogue size; ``auc`` of the score as well when the held-out rows carry 0/1 labels.
    """
    net = trained.model
    columns = list(trained.feature_columns)
    stream = getattr(prep, "stream", None)
    present = stream.reader.columns if stream is not None else list(prep.train.columns)
    # a history travels as several tensor columns; the tables hold it as one column of lists
    user = F.input_columns([columns[j] for j in net.user_idx.tolist()], present)
    item = F.input_columns([columns[j] for j in net.item_idx.tolist()], present)
    user_key, item_key = entity_keys(user, item)
    y = prep.y_heldout
    if getattr(prep, "evaluation_inputs", None) is not None:  # gathered by Spark from the whole table
        inputs = prep.evaluation_inputs
    elif stream is not None:  # the samples would miss items and known pairs: one more pass over the log
        inputs = E.streamed(
            stream.reader.batches(),
            user,
            item,
            user_key,
            item_key,
            stream.labels,
            stream.kinds,
            label,
            prep.params.seed,
            positive_class=stream.positive,
        )
    else:
        # the validation pairs are known interactions too: excluded from the ranking like the training pairs
        inputs = E.in_memory(
            [prep.train, prep.validation, prep.heldout],
            len(prep.train) + len(prep.validation),
            user,
            item,
            user_key,
            item_key,
            y[label] if label in y else None,
            prep.params.seed,
        )
    users, catalogue, popularity = inputs.users, inputs.catalogue, inputs.popularity
    n_items = len(catalogue)
    labelled = "positive" in inputs.held.columns
    plan = prep.features
    user_emb = _embed(net.user, _prepared(plan, users))
    item_emb = _embed(net.item, _prepared(plan, catalogue))
    sets = R.eval_sets(
        inputs.known,
        inputs.held,
        users=np.arange(len(users)),
        items=np.arange(n_items),
        user_col="user",
        item_col="item",
        positive="positive" if labelled else None,
    )
    ks = sorted({*R.KS, *(k for k in CURVE_KS if k <= n_items)})
    model = R.evaluate_embeddings(user_emb, item_emb, sets.train, sets.heldout, ks)
    popular = R.evaluate_scores(
        lambda a, b: np.broadcast_to(popularity, (b - a, n_items)), len(users), n_items, sets.train, sets.heldout, ks
    )

    metrics: dict[str, float] = {}
    for name in R.metric_names():
        metrics[name] = model.metrics[name]
    for name in R.metric_names():
        metrics[f"popularity_{name}"] = popular.metrics[name]
    metrics["users_evaluated"] = float(model.users_evaluated)
    metrics["catalogue_items"] = float(n_items)
    predictions: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    if label in y and len(np.unique(y[label])) == 2:  # click logs: the score against clicks too
        from exporter.training.metrics import auc

        predictions = {label: trained.predict(prep.x_heldout)[label]}
        labels = {label: np.asarray(y[label], dtype=np.float64)}
        metrics["auc"] = auc(labels[label], predictions[label])
    curve = {
        "k": [k for k in ks],
        "model": [model.metrics[f"recall@{k}"] for k in ks],
        "popularity": [popular.metrics[f"recall@{k}"] for k in ks],
    }
    details = {
        "retrieval": {
            "curve": curve,
            "users_evaluated": model.users_evaluated,
            "users_without_heldout": model.users_without_heldout,
            "catalogue_items": n_items,
            "users_sampled": inputs.sampled,
            "popularity_counts": inputs.popularity_counts,
        }
    }
    info = {
        "rows": len(catalogue),
        "columns": list(item),
        "key": key_columns(item, "item_id"),
        "description": "the item catalogue of the held-out evaluation: one row per item, the item tower's raw columns",
    }
    files = {"two_tower_item": [SideFile(CATALOGUE_FILE, parquet_bytes(catalogue), CATALOGUE_KEY, info)]}
    return Evaluated(metrics, predictions, labels, details, files)
