"""Bounded-memory statistics of a streamed column: moments, extremes, a median sketch and value counts.

A streamed training pass sees each record batch once; these accumulators keep what the feature plan needs in
memory that does not grow with the rows:

* :class:`NumericSummary`: count, missing, mean and standard deviation (Chan's pairwise update, stable over
  10^8 rows), min, max, and the median from a :class:`QuantileSketch`;
* :class:`QuantileSketch`: a seeded uniform reservoir of at most :data:`SKETCH_CAPACITY` values (each value gets
  a random key, the smallest keys are kept). Up to that many values it is exact; beyond, the median it gives
  is the median of a uniform sample of ``k`` values, whose rank is off by at most
  :data:`MEDIAN_RANK_ERROR` (3.3 standard deviations of ``0.5 / sqrt(k)``: 1 run in 1,000 exceeds it);
* :class:`ValueCounter`: exact counts of a categorical column's values (memory grows with the distinct values,
  as the vocabulary itself does, never with the rows).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

#: values a :class:`QuantileSketch` keeps (8 bytes each, plus an 8-byte key: 2 MiB per numeric column)
SKETCH_CAPACITY = 131_072
#: bound on |rank(sketch median) - 0.5| beyond the capacity (3.3 sigma of a uniform sample's median rank)
MEDIAN_RANK_ERROR = round(3.3 * 0.5 / math.sqrt(SKETCH_CAPACITY), 4)


class QuantileSketch:
    """A seeded uniform sample of a stream of numbers (exact below :data:`SKETCH_CAPACITY` values).

    The same values in the same order with the same seed give the same sample, so an export stays reproducible.
    """

    def __init__(self, seed: int, capacity: int = SKETCH_CAPACITY) -> None:
        self.capacity = int(capacity)
        self._rng = np.random.default_rng(seed)
        self._values: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._held = 0
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return
        self.count += len(values)
        self._values.append(values.copy())
        self._keys.append(self._rng.random(len(values)))
        self._held += len(values)
        if self._held > 2 * self.capacity:
            self._shrink()

    def _shrink(self) -> None:
        values, keys = np.concatenate(self._values), np.concatenate(self._keys)
        if len(values) > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            values, keys = values[keep], keys[keep]
        self._values, self._keys, self._held = [values], [keys], len(values)

    def sample(self) -> np.ndarray:
        self._shrink()
        return self._values[0] if self._values else np.zeros(0)

    @property
    def exact(self) -> bool:
        return self.count <= self.capacity

    def quantile(self, q: float) -> float | None:
        sample = self.sample()
        return float(np.quantile(sample, q)) if len(sample) else None


class NumericSummary:
    """Moments, extremes, missing rate and median of one numeric column over the rows it is shown."""

    def __init__(self, seed: int) -> None:
        self.rows = 0
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.sketch = QuantileSketch(seed)

    def add(self, values: np.ndarray) -> None:
        """``values`` with NaN for a missing cell."""
        self.rows += len(values)
        present = values[~np.isnan(values)]
        if not len(present):
            return
        with np.errstate(over="ignore", invalid="ignore"):
            n_b, mean_b = len(present), float(np.mean(present))
            m2_b = float(np.sum((present - mean_b) ** 2))
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total
        self.min = min(self.min, float(present.min()))
        self.max = max(self.max, float(present.max()))
        self.sketch.add(present)

    def stats(self) -> dict[str, Any]:
        """The plan's statistics of the column (``median`` from the sketch: exact or within its rank error)."""
        if not self.n:
            return {"mean": None, "std": None, "min": None, "max": None, "median": None, "missing_rate": 1.0}
        return {
            "mean": self.mean,
            "std": math.sqrt(max(self.m2, 0.0) / self.n),
            "min": self.min,
            "max": self.max,
            "median": self.sketch.quantile(0.5),
            "missing_rate": float((self.rows - self.n) / self.rows) if self.rows else 0.0,
        }

    @property
    def finite(self) -> bool:
        return math.isfinite(self.mean) and math.isfinite(self.m2)


class ValueCounter:
    """Exact counts of a categorical column's present values: integer IDs in numpy, strings in a dict."""

    #: pending (value, count) pairs of integer IDs merged into one table past this many
    MERGE_AT = 2_000_000

    def __init__(self) -> None:
        self.rows = 0
        self.present = 0
        self._keys: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._pending = 0
        self._strings: dict[str, int] = {}

    def add_numbers(self, values: np.ndarray) -> None:
        self.rows += len(values)
        present = values[~np.isnan(values)].astype(np.int64)
        self.present += len(present)
        if not len(present):
            return
        keys, counts = np.unique(present, return_counts=True)
        self._keys.append(keys)
        self._counts.append(counts.astype(np.int64))
        self._pending += len(keys)
        if self._pending > self.MERGE_AT:
            self._merge()

    def add_strings(self, values: list[str | None]) -> None:
        self.rows += len(values)
        counts = pd.Series(values, dtype=object).value_counts(dropna=True)
        self.present += int(counts.sum())
        for key, count in counts.items():
            self._strings[str(key)] = self._strings.get(str(key), 0) + int(count)

    def _merge(self) -> None:
        if len(self._keys) <= 1:
            return
        keys = np.concatenate(self._keys)
        uniq, inverse = np.unique(keys, return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate(self._counts)).astype(np.int64)
        self._keys, self._counts, self._pending = [uniq], [counts], len(uniq)

    def counts(self) -> dict[Any, int]:
        """Value -> count (ints for IDs, strings for text)."""
        if self._strings:
            return dict(self._strings)
        self._merge()
        if not self._keys:
            return {}
        return dict(zip(self._keys[0].tolist(), self._counts[0].tolist(), strict=True))
