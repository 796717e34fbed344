"""Row objects -> the ``features`` matrix in the common case, column by column, without wording any error.

:meth:`exporter.runtime.columns.FeatureColumns.rows` tries :meth:`FastRows.matrix` first: it accepts only
requests every cell of which is valid, and builds exactly the matrix the cell-by-cell rules would; anything
unusual or invalid returns ``None`` and the request goes the careful way, which finds the first bad cell and
words the error. So this module never changes what a request is answered, only how fast a valid one is.

Why two shapes: a few rows (batch 1) are cheapest cell by cell in one Python loop (a numpy call costs about a
microsecond, a cell about a tenth of that); many rows are cheapest column by column (one type pass, one
``np.fromiter`` per column, dictionary lookups mapped in C, the checks as array operations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from exporter.runtime.rules import MAX_EXACT_INT, UNKNOWN_CODE, hash_code

__all__ = ["FastRows", "SMALL_BATCH"]

#: up to this many rows a request is converted cell by cell, beyond it column by column
SMALL_BATCH = 16
_NUMBERS = frozenset({float, int})
_BOOL_NUMBERS = frozenset({bool, float, int})
#: what a string column's cells may be: raw strings, integer codes (as numbers), null (optional columns)
_CODES = frozenset({str, int, float, type(None)})
_TEXT = frozenset({str, type(None)})
_NAN = math.nan
#: hashed strings seen recently -> their code (sha256 per string is the cost of a hashed column); bounded
_HASH_CACHE: dict[str, float] = {}
_HASH_CACHE_SIZE = 1 << 16
_HASH_CACHE_TEXT = 256


def hash_codes(values: Sequence[str]) -> list[float]:
    """Codes of hashed strings, cached (strings longer than a few hundred characters are not kept)."""
    cache = _HASH_CACHE
    codes: list[Any] = list(map(cache.get, values))
    if None in codes:
        if len(cache) > _HASH_CACHE_SIZE:
            cache.clear()
        for i, code in enumerate(codes):
            if code is None:
                text = values[i]
                code = codes[i] = float(hash_code(text))  # a lone surrogate raises UnicodeEncodeError
                if len(text) <= _HASH_CACHE_TEXT:
                    cache[text] = code
    return codes


class _Unusual(Exception):
    """A request the fast paths leave to the careful way."""


class _Vocabulary(dict[str, float]):
    """A string column's vocabulary for ``map(vocabulary.__getitem__, column)``: an unknown string is the unknown
    code, an integer or float stays itself (a code, checked as an ID afterwards), null is NaN in an optional
    column; anything else is refused."""

    def __init__(self, table: dict[str, int], optional: bool) -> None:
        super().__init__((w, float(c)) for w, c in table.items())
        self.optional = optional

    def __missing__(self, key: Any) -> float:
        t = type(key)
        if t is str:
            return float(UNKNOWN_CODE)
        if t is int or t is float:
            return key  # type: ignore[no-any-return]
        if key is None and self.optional:
            return _NAN
        raise KeyError(key)


class FastRows:
    """The columns' rules in the shape the fast paths use (built once per model)."""

    def __init__(
        self,
        columns: Sequence[str],
        categorical: Sequence[bool],
        optional: Sequence[bool],
        booleans: Sequence[bool],
        tables: Sequence[dict[str, int] | str | None],
    ) -> None:
        self.k = len(columns)
        self.columns = list(columns)
        self.getter = itemgetter(*columns)
        self.getters = [itemgetter(c) for c in columns]
        self.categorical = list(categorical)
        self.optional = list(optional)
        self.booleans = list(booleans)
        self.any_optional = any(optional)
        self.vocabularies: list[_Vocabulary | None] = [
            _Vocabulary(t, o) if isinstance(t, dict) else None for t, o in zip(tables, optional, strict=True)
        ]
        self.hashed = [t == "hash" for t in tables]
        self.takes_strings = any(t is not None for t in tables)
        self.cat_index = [j for j, c in enumerate(categorical) if c]
        self.optional_mask = np.array(optional, dtype=bool)
        #: per column, what the cell loop needs: (categorical, optional, boolean, vocabulary or None, hashed)
        self._cells = list(zip(categorical, optional, booleans, self.vocabularies, self.hashed, strict=True))

    # ------------------------------------------------------------------ entry
    def matrix(self, rows: list[Any]) -> np.ndarray | None:
        """The float64 matrix of valid row objects, or None (anything to refuse or unusual: the careful way)."""
        n = len(rows)
        if n == 0 or type(rows[0]) is not dict:
            return None
        try:
            if n <= SMALL_BATCH:
                return self._cells_matrix(self._values(rows), n)
            return self._columns_matrix(rows, n)
        except (KeyError, OverflowError, TypeError, ValueError, UnicodeEncodeError, _Unusual):
            return None

    def _values(self, rows: list[Any]) -> list[Any]:
        """Each row's values in column order (absent optional columns as null)."""
        try:
            return list(map(self.getter, rows))
        except (KeyError, TypeError):
            if not self.any_optional:
                raise
            got = self._values_get(rows)
            if got is None:
                raise _Unusual from None
            return got

    def _values_get(self, rows: list[Any]) -> list[Any] | None:
        """Rows where optional columns may be absent (read as null), when every row is a dict."""
        if not all(type(row) is dict for row in rows):
            return None
        columns = self.columns
        if self.k == 1:
            return [row.get(columns[0]) for row in rows]
        return [tuple(map(row.get, columns)) for row in rows]

    # ------------------------------------------------------------------ a few rows: cell by cell
    def _cells_matrix(self, values: list[Any], n: int) -> np.ndarray | None:
        out: list[float] = []
        append = out.append
        cells = self._cells
        for row in values if self.k > 1 else ((v,) for v in values):
            for v, (cat, optional, boolean, vocabulary, hashed) in zip(row, cells):  # noqa: B905 - k checked
                t = type(v)
                if t is float:
                    if v != v:  # NaN
                        if not optional:
                            return None
                    elif cat:
                        if not (v.is_integer() and -MAX_EXACT_INT < v < MAX_EXACT_INT):
                            return None
                    elif v - v != 0.0:  # +-inf
                        return None
                    append(v)
                elif t is int:
                    if cat and not -MAX_EXACT_INT < v < MAX_EXACT_INT:
                        return None
                    append(float(v))  # OverflowError beyond FP64
                elif t is str:
                    if vocabulary is not None:
                        append(vocabulary[v])
                    elif hashed:
                        append(hash_codes([v])[0])
                    else:
                        return None
                elif t is bool and boolean:
                    append(1.0 if v else 0.0)
                elif v is None and optional:
                    append(_NAN)
                else:
                    return None
        return np.array(out, dtype=np.float64).reshape(n, self.k)

    # ------------------------------------------------------------------ many rows: column by column
    def _columns_matrix(self, rows: list[Any], n: int) -> np.ndarray | None:
        k = self.k
        try:
            columns = [list(map(get, rows)) for get in self.getters]
        except (KeyError, TypeError):
            if not self.any_optional:
                raise
            values = self._values(rows)
            flat = values if k == 1 else list(chain.from_iterable(values))
            columns = [flat[j::k] for j in range(k)]
        out = np.empty((n, k), dtype=np.float64)
        for j, col in enumerate(columns):
            column = self._column(col, j, n)
            if column is None:
                return None
            out[:, j] = column
        return out if self._valid(out) else None

    def _column(self, col: list[Any], j: int, n: int) -> np.ndarray | None:
        """One column's values -> float64 (validity is checked on the whole matrix afterwards)."""
        types = set(map(type, col))
        if types <= _NUMBERS:
            return np.fromiter(col, np.float64, n)
        vocabulary = self.vocabularies[j]
        if vocabulary is not None and types <= _CODES:
            return np.fromiter(map(vocabulary.__getitem__, col), np.float64, n)
        if self.hashed[j] and types <= _TEXT:
            if types == {str}:
                return np.fromiter(hash_codes(col), np.float64, n)
            if not self.optional[j]:
                return None
            codes = iter(hash_codes([v for v in col if v is not None]))
            return np.fromiter((_NAN if v is None else next(codes) for v in col), np.float64, n)
        if self.booleans[j] and types <= _BOOL_NUMBERS:
            return np.fromiter(col, np.float64, n)  # true/false travel as 1/0
        if self.optional[j] and types <= {float, int, type(None)}:
            return np.array(col, dtype=np.float64)  # null -> NaN
        return None  # mixed strings and nulls, values of the wrong type: the careful way

    def _valid(self, out: np.ndarray) -> bool:
        """Finite everywhere but NaN in optional columns; categorical values integers strictly within +-2^53
        (exactly +-2^53 goes the careful way, which compares the client's own integer)."""
        finite = np.isfinite(out)
        has_nan = False
        if not finite.all():
            nan = np.isnan(out)
            if not (finite | (nan & self.optional_mask)).all():
                return False
            has_nan = True
        if not self.cat_index:
            return True
        sub = out[:, self.cat_index]
        with np.errstate(invalid="ignore"):
            bad = (np.floor(sub) != sub) | (np.abs(sub) >= MAX_EXACT_INT)
        if has_nan:
            bad &= ~np.isnan(sub)
        return not bad.any()
