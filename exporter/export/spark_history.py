"""History columns in a Spark training run: their items counted on the executors, the vocabulary fitted once.

Each executor reads its training rows' history cells (Parquet lists, or delimited text) with the same
:class:`~exporter.features.HistoryCounts` the in-memory and streamed fits use, and sends back its item counts and
length statistics; Spark sums them per item, and the driver applies the vocabulary rules (the shared column's,
or the history's own ``min_count`` / ``max_size`` / hashing) to the totals. So a Spark run fits the history an
in-memory run fits on the same training rows. Whether the items are strings follows the column the history shares,
else the driver's sample of the table, until an executor's batch holds text IDs (as the streamed path decides on
its first batch until then): the items are then strings everywhere, an integer counted elsewhere as its text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from exporter import features as F
from exporter.features.schema import read_column

__all__ = ["fit_histories_spark"]

#: columns of the executors' answer: an item (as text) and its count, or (item null) one batch's length statistics
_STATS = ("rows", "items", "empty", "full")
#: beside them: the most items a row of the batch holds
_LONGEST = "longest"
#: beside them: 1 when the batch held text IDs of a history guessed to hold integers
_TEXT = "text"


def _counter(spec_json: dict[str, Any], strings: bool, source: str) -> Callable[..., Any]:
    """A ``mapInArrow`` function: record batches of one history column -> (item, count) rows and a stats row."""

    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        spec = F.FeatureSpec.from_dict(spec_json, source="history")
        for batch in batches:
            if batch.num_rows == 0:
                continue
            counts = F.HistoryCounts(spec, strings)
            counts.add_part(batch.to_pandas(), np.arange(batch.num_rows), source=source)
            keys = list(counts.counts)
            n = [counts.counts[k] for k in keys]
            arrays = [pa.array([*map(str, keys), None], type=pa.string()), pa.array([*n, 0], type=pa.int64())]
            for value in [
                *(int(getattr(counts, name)) for name in (*_STATS, _LONGEST)),
                int(counts.strings and not strings),
            ]:
                arrays.append(pa.array([0] * len(keys) + [value], type=pa.int64()))
            yield pa.RecordBatch.from_arrays(arrays, names=["k", "n", *_STATS, _LONGEST, _TEXT])

    return count


def fit_histories_spark(
    train: Any,
    specs: Sequence[F.FeatureSpec],
    fitted: Mapping[str, F.FittedFeature],
    sample: pd.DataFrame,
    fit_shared: Callable[[F.FeatureSpec, str], F.FittedFeature],
    *,
    source: str,
) -> dict[str, list[F.FittedFeature]]:
    """Each history of ``specs``: its positions fitted on the ``train`` DataFrame's rows. ``fitted``: the other
    columns' fits (a shared vocabulary); ``fit_shared(spec, dtype)`` fits a shared column that is no feature."""
    from pyspark.sql import functions as Fn

    out: dict[str, list[F.FittedFeature]] = {}
    for spec in specs:
        if spec.kind != F.HISTORY:
            continue
        shared = None
        if spec.vocab_from is not None:
            shared = fitted.get(spec.vocab_from)
            if shared is None:
                column_spec = F.FeatureSpec(spec.vocab_from, F.CATEGORICAL)
                dtype = read_column(sample[spec.vocab_from], column_spec, source=source).dtype
                shared = fit_shared(column_spec, dtype)
        strings = F.history_holds_strings(sample, spec, shared, source=source)
        schema = "k string, n bigint, " + ", ".join(f"{s} bigint" for s in (*_STATS, _LONGEST, _TEXT))
        parts = train.select(f"`{spec.name}`").mapInArrow(_counter(spec.to_dict(), strings, source), schema)
        parts = parts.persist()
        try:
            sums = [Fn.sum(s).alias(s) for s in (*_STATS, _TEXT)]
            totals = parts.agg(*sums, Fn.max(_LONGEST).alias(_LONGEST)).collect()[0].asDict()
            items = parts.where(Fn.col("k").isNotNull()).groupBy("k").agg(Fn.sum("n").alias("n")).collect()
        finally:
            parts.unpersist()
        strings = strings or bool(totals[_TEXT])
        counts = F.HistoryCounts(spec, strings, {r["k"] if strings else int(r["k"]): int(r["n"]) for r in items})
        for name in (*_STATS, _LONGEST):
            setattr(counts, name, int(totals[name] or 0))
        out[spec.name] = counts.fitted(shared)
    return out
