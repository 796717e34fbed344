"""Fitted columns from the counts and statistics pass 1 gathers (:mod:`exporter.training.stream_scan`): numeric
columns from their streamed statistics, histories from their item counts, through the rules of
:mod:`exporter.features.plan` that the in-memory fit applies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from exporter import features as F
from exporter.errors import ExporterError
from exporter.features.plan import FittedFeature, HistoryCounts, categorical_from_counts, check_shared
from exporter.training.sketch import ValueCounter

__all__ = ["numeric_from_stats", "with_histories"]


def with_histories(
    fitted: list[FittedFeature],
    specs: Sequence[F.FeatureSpec],
    counts: Mapping[str, HistoryCounts],
    counters: Mapping[str, ValueCounter],
    dtypes: Mapping[str, str],
    where: str,
) -> list[FittedFeature]:
    """The fitted columns with each history's positions in its place, its vocabulary the shared column's (a
    feature, or a column counted for it) or its own over the counted items."""
    by_name = {f.name: f for f in fitted}
    out: list[FittedFeature] = []
    for spec in specs:
        if spec.kind != F.HISTORY:
            out.append(by_name[spec.name])
            continue
        shared = None
        if spec.vocab_from is not None:
            shared = by_name.get(spec.vocab_from)
            if shared is None:
                c = counters[spec.vocab_from]
                shared = categorical_from_counts(
                    F.FeatureSpec(spec.vocab_from, F.CATEGORICAL), dtypes.get(spec.vocab_from, "int64"), c.counts(),
                    rows=c.rows, present=c.present,
                )  # fmt: skip
            check_shared(spec, shared, source=where)
        hc = counts.get(spec.name) or HistoryCounts(spec, shared is not None and shared.dtype == "string")
        out += hc.fitted(shared)
    return out


def numeric_from_stats(spec: F.FeatureSpec, dtype: str, stats: Mapping[str, Any], *, source: str) -> FittedFeature:
    """A numeric column fitted from streamed statistics (mean, std, min, max, median, missing_rate): the fill is
    the spec's, else the median, as :func:`fit` does in memory."""
    if stats.get("median") is None:
        if spec.fill is None:
            raise ExporterError(
                f"{source}: column '{spec.name}' has no values in the training rows: give it a 'fill' in the schema "
                "or leave it out of the features"
            )
        return FittedFeature(spec, dtype, spec.fill, [], None, dict(stats))
    fill = spec.fill if spec.fill is not None else float(stats["median"])
    return FittedFeature(spec, dtype, float(fill), [], None, dict(stats))
