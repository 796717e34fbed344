"""The retrieval evaluation's inputs gathered by Spark from the whole table, as a streamed run gathers them.

:func:`exporter.models.two_tower.eval_inputs.streamed` reads a log once on one machine; on Spark the same facts
are aggregations over the cluster's rows, collected to the driver only once they are small:

* the catalogue: one row per item (``groupBy`` the item key's hash), each column's smallest present value among
  the item's training rows, else among its other rows (Spark has no row order to take a "first" by; an item
  whose columns are constant, as catalogue columns are, gets the same row either way); ordered by the item key;
* the popularity counts: training and validation rows per item;
* the evaluated users: the user key's seeded hash is computed by the same function as on one machine (a pandas
  UDF), so the same users are chosen from the same log; their rows are the only rows collected.

The driver then holds the catalogue and the rows of at most ``CANDIDATE_FACTOR x MAX_EVAL_USERS`` users,
whatever the number of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from exporter.models.two_tower import eval_inputs as E
from exporter.training import split as S


def _hash_column(columns: Sequence[str], seed: int, uniform: bool) -> Any:
    from pyspark.sql.functions import pandas_udf

    names = list(columns)

    def hashed(frame: pd.DataFrame) -> pd.Series:
        h = E.key_hash(frame, names, seed)
        return pd.Series(E.uniform(h) if uniform else h.view(np.int64))

    return pandas_udf(hashed, "double" if uniform else "long")  # type: ignore[call-overload]


def from_spark(
    df: Any,
    split_column: str,
    user: Sequence[str],
    item: Sequence[str],
    user_key: Sequence[str],
    item_key: Sequence[str],
    label_column: str | None,
    seed: int,
    max_users: int | None = None,
) -> E.RetrievalInputs:
    """``df``: the table with each row's split code in ``split_column``; ``label_column``: the 0/1 label (``None``:
    every row is a positive interaction)."""
    from pyspark.sql import functions as SF
    from pyspark.sql.types import ArrayType

    max_users = E.MAX_EVAL_USERS if max_users is None else max_users
    candidates = E.CANDIDATE_FACTOR * max_users
    user_cols, item_cols = list(dict.fromkeys(user)), list(dict.fromkeys(item))
    positive = SF.col(f"`{label_column}`").cast("double") == 1.0 if label_column else SF.lit(True)
    code = SF.col(f"`{split_column}`")
    d = df.select(
        *[SF.col(f"`{c}`") for c in dict.fromkeys([*user_cols, *item_cols])],
        code.cast("byte").alias("__code"),
        _hash_column(user_key, seed + 1, True)(SF.struct(*[SF.col(f"`{c}`") for c in user_key])).alias("__u"),
        _hash_column(item_key, 0, False)(SF.struct(*[SF.col(f"`{c}`") for c in item_key])).alias("__item"),
        SF.coalesce(positive, SF.lit(False)).alias("__positive"),
    ).persist()
    try:
        is_train = SF.col("__code") == S.TRAIN
        first = [SF.coalesce(SF.min(SF.when(is_train, SF.col(f"`{c}`"))), SF.min(SF.col(f"`{c}`"))) for c in item_cols]
        catalogue = (
            d.groupBy("__item")
            .agg(*[v.alias(c) for v, c in zip(first, item_cols, strict=True)])
            .orderBy(*[SF.col(f"`{c}`") for c in item_key])
            .toPandas()
        )
        catalogue_by_key = catalogue[item_cols].set_axis(
            pd.Index(catalogue["__item"].to_numpy(np.int64).view(np.uint64))
        )
        counted = d.where(SF.col("__code") != S.TEST).groupBy("__item").count().toPandas()
        counts = pd.Series(
            counted["count"].to_numpy(np.int64), index=pd.Index(counted["__item"].to_numpy(np.int64).view(np.uint64))
        )
        smallest = d.select("__u").distinct().orderBy("__u").limit(candidates).toPandas()["__u"].to_numpy()
        held_positive = d.where((SF.col("__code") == S.TEST) & SF.col("__positive"))
        positives = held_positive.select("__u").distinct().orderBy("__u").limit(max_users).toPandas()["__u"].to_numpy()
        threshold = np.inf
        if len(smallest) >= candidates:
            threshold = float(smallest[-1])
        if len(positives) >= max_users:
            threshold = min(threshold, float(positives[-1]))
        kept = d if not np.isfinite(threshold) else d.where(SF.col("__u") <= float(threshold))
        # a history (an array per row) is collected once per user, the latest row's as first_rows takes it: every
        # row's array would make the driver's result many times larger (a million rows did not fit)
        arrays = [f.name for f in d.schema.fields if f.name in user_cols and isinstance(f.dataType, ArrayType)]
        latest = SF.struct("__code", "__item")
        histories = (
            kept.groupBy("__u").agg(*[SF.max_by(SF.col(f"`{c}`"), latest).alias(c) for c in arrays]).toPandas()
            if arrays
            else None
        )
        # ordered, so a user's row (its columns' first present values) does not depend on the partitions
        rows = (
            kept.select(*[SF.col(f"`{c}`") for c in user_cols if c not in arrays], *E.PAIR_COLUMNS)
            .orderBy("__u", "__code", "__item")
            .toPandas()
        )
        if histories is not None:
            by_user = histories.set_index("__u")
            for c in arrays:
                rows[c] = rows["__u"].map(by_user[c])
    finally:
        d.unpersist()
    rows["__item"] = rows["__item"].to_numpy(np.int64).view(np.uint64)
    chosen = positives[positives <= threshold] if np.isfinite(threshold) else None
    return E.assemble(catalogue_by_key, counts, rows, chosen, user_cols, label_column is not None)
