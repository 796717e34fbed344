"""The one reader of ``metadata.json`` ``features``: what each input column takes, and raw values -> the graph's
FP64 ``features`` tensor (docs/features.md).

Numeric columns take finite numbers. Categorical columns take integer IDs (codes) within +-2^53; a string
category also takes its raw string (mapped through ``vocab.json``, unknown strings to the code -1, or hashed),
a boolean column true/false. ``optional`` columns may be absent, null or NaN: NaN, which the graph turns into
the fill or the OOV row. A JSON integer is exact: one beyond +-2^53 is refused, never rounded. Artifacts without
``features`` (older exports) are all numeric.

:func:`column_specs` is what batch scoring reads too (:mod:`exporter.scoring.encode` vectorises the same
rules over Arrow tables); :class:`FeatureColumns` applies them to request rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from exporter.runtime.errors import ArtifactError, HandlerError
from exporter.runtime.fast_rows import SMALL_BATCH, FastRows
from exporter.runtime.history import expand_rows
from exporter.runtime.messages import describe_bad_value, int_text, quote, type_name
from exporter.runtime.rules import MAX_EXACT_INT, UNKNOWN_CODE, VOCAB_FILE, hash_code, is_plain_file_name, sha256_file

__all__ = [
    "MISSING",
    "BOOL_TEXT",
    "ColumnSpec",
    "FeatureColumns",
    "column_specs",
    "history_groups",
    "read_vocab",
    "vocab_files",
]

_NUMBER_TYPES = frozenset({float, int})
#: A boolean column's values as text (CSV): the words the training reader reads as booleans, in any letter
#: case, and the codes they travel as, the codes of JSON true/false (:meth:`FeatureColumns.convert`).
BOOL_TEXT = {"true": 1.0, "false": 0.0}
KINDS = ("numeric", "categorical", "history")


class _Missing:
    """Marks a key absent from a row object (distinct from a JSON null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclass(frozen=True)
class ColumnSpec:
    """What one input column takes, as ``metadata.json`` ``features`` describes it."""

    name: str
    kind: str = "numeric"
    #: may be absent or null (NaN in the tensor: the graph applies the fill or the OOV row)
    optional: bool = False
    #: a boolean categorical column: true/false travel as 1/0
    boolean: bool = False
    #: a string categorical column with a vocabulary: string -> code
    vocabulary: Mapping[str, int] | None = None
    #: a string categorical column hashed into buckets: a string's code is :func:`rules.hash_code`
    hashed: bool = False
    #: one position of a history column (:mod:`exporter.runtime.history`): the history's name, else None;
    #: such a column takes IDs like a categorical one (integers, or strings with ``vocabulary`` / ``hashed``),
    #: NaN (or absent) meaning no item
    history: str | None = None
    #: the history's ``max_length`` (its number of columns)
    max_length: int = 0
    #: text sources (CSV): the separator of the IDs in one cell
    delimiter: str = "|"

    @property
    def takes_strings(self) -> bool:
        return self.vocabulary is not None or self.hashed

    @property
    def is_id(self) -> bool:
        """A categorical column that takes integer IDs only (no strings)."""
        return self.kind == "categorical" and not self.takes_strings


def _entries(metadata: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = metadata.get("features")
    return [e for e in entries if isinstance(e, Mapping)] if isinstance(entries, list) else []


def _vocab_refs(metadata: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """column -> its ``features[].vocab`` reference ``{"file", "sha256", "key"}``."""
    return {str(e.get("name")): e["vocab"] for e in _entries(metadata) if isinstance(e.get("vocab"), Mapping)}


def vocab_files(metadata: Mapping[str, Any]) -> list[str]:
    """The vocabulary files a version's features name (what a copy of the version needs beside the model)."""
    return sorted({str(ref["file"]) for ref in _vocab_refs(metadata).values() if ref.get("file")})


def read_vocab(directory: Path, metadata: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """Each string column's vocabulary, from the file its ``features[].vocab`` names (``{"file", "sha256",
    "key"}``), the file's sha256 checked like the model file's; ``None`` when no column names one."""
    refs = _vocab_refs(metadata)
    if not refs:
        return None
    files: dict[str, dict[str, Any]] = {}
    vocab: dict[str, list[str]] = {}
    for column, ref in refs.items():
        name = ref.get("file")
        if not isinstance(name, str) or not is_plain_file_name(name):
            raise ArtifactError(f"metadata.json names an unusable vocabulary file {name!r}")
        if name not in files:
            files[name] = _vocab_file(directory / name, ref.get("sha256"))
        words = files[name].get(str(ref.get("key", column)))
        if words is not None:
            vocab[column] = words
    return vocab


def _vocab_file(path: Path, digest: Any) -> dict[str, Any]:
    """One vocabulary file, refused unless its sha256 is the one metadata records."""
    if not path.is_file():
        raise ArtifactError(f"vocabulary file {str(path)!r} named by metadata.json is missing")
    actual = sha256_file(path)
    if actual != digest:
        raise ArtifactError(
            f"sha256 of {str(path)!r} is {actual} but metadata.json records {digest}: the vocabulary was modified "
            "after export; refusing to load it"
        )
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(vocab, dict) or not all(isinstance(v, list) for v in vocab.values()):
        raise ArtifactError(f"{str(path)!r} must map each string column to its list of values")
    return vocab


def column_specs(metadata: Mapping[str, Any], vocab: Mapping[str, Sequence[str]] | None) -> list[ColumnSpec]:
    """One :class:`ColumnSpec` per ``feature_columns`` entry, in tensor order; ``vocab`` is :func:`read_vocab`'s."""
    by_name = {e.get("name"): e for e in _entries(metadata)}
    specs = []
    tables: dict[int, dict[str, int]] = {}  # one string -> code table per vocabulary (a history's positions share it)
    for name in metadata["feature_columns"]:
        e = by_name.get(name) or {}
        kind = e.get("kind", "numeric")
        if kind not in KINDS:
            raise ArtifactError(
                f"metadata feature {name!r} has kind {kind!r}; expected numeric, categorical or history"
            )
        vocabulary, hashed = None, False
        if kind != "numeric" and e.get("dtype") == "string":
            raw_oov = e.get("oov")
            oov: Mapping[str, Any] = raw_oov if isinstance(raw_oov, Mapping) else {}
            if oov.get("policy") == "hash":
                hashed = True
            else:
                words = (vocab or {}).get(name)
                if words is None:
                    raise ArtifactError(f"string feature {name!r} has no vocabulary in {VOCAB_FILE}")
                if id(words) not in tables:
                    tables[id(words)] = {str(w): i for i, w in enumerate(words)}
                vocabulary = tables[id(words)]
        if kind == "history":
            specs.append(_history_spec(str(name), e, vocabulary, hashed))
            continue
        categorical = kind == "categorical"
        specs.append(
            ColumnSpec(
                str(name),
                kind,
                bool(e.get("optional", False)),
                categorical and e.get("dtype") == "bool",
                vocabulary,
                hashed,
            )
        )
    return specs


def _history_spec(
    name: str, entry: Mapping[str, Any], vocabulary: Mapping[str, int] | None, hashed: bool
) -> ColumnSpec:
    """One position of a history column: an optional categorical column that knows its history (integer IDs,
    or strings through the history's ``vocabulary`` or hash)."""
    info = entry.get("history")
    if not isinstance(info, Mapping) or not isinstance(info.get("column"), str):
        raise ArtifactError(f"metadata feature {name!r} of kind history has no history {{column, max_length}}")
    length = info.get("max_length")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ArtifactError(f"metadata feature {name!r}: history max_length must be a positive integer")
    delimiter = info.get("delimiter") or "|"
    return ColumnSpec(
        name,
        "categorical",
        True,
        vocabulary=vocabulary,
        hashed=hashed,
        history=str(info["column"]),
        max_length=length,
        delimiter=str(delimiter),
    )


def history_groups(specs: Sequence[ColumnSpec]) -> dict[str, list[str]]:
    """History name -> its tensor columns in order (empty when the model has no history column)."""
    groups: dict[str, list[str]] = {}
    for s in specs:
        if s.history is not None:
            groups.setdefault(s.history, []).append(s.name)
    return groups


_EXACT_LIMIT = float(MAX_EXACT_INT)


def _small_ids_ok(cells: list[float]) -> bool:
    """Categorical cells all integers within +-2^53 or NaN (a few of them: cheaper in Python than in numpy)."""
    return all(v != v or (v.is_integer() and -_EXACT_LIMIT <= v <= _EXACT_LIMIT) for v in cells)


Where = Callable[[int, str], str]
#: the client's own value at (row, column index), for the exact check of integers FP64 rounded to 2^53
ValueAt = Callable[[int, int], Any]


def _as_dict(vocabulary: Mapping[str, int] | None) -> dict[str, int] | None:
    """The vocabulary as a dict (the one :func:`column_specs` built, not a copy)."""
    return vocabulary if vocabulary is None or isinstance(vocabulary, dict) else dict(vocabulary)


class FeatureColumns:
    """The columns of one model applied to request values: cells and rows -> the float64 ``features`` matrix."""

    def __init__(self, specs: Sequence[ColumnSpec]) -> None:
        self.specs = list(specs)
        self.columns = [s.name for s in self.specs]
        self.kinds = [s.kind for s in self.specs]
        self.optional = [s.optional for s in self.specs]
        self.booleans = [s.boolean for s in self.specs]
        #: per column: str -> code for a string vocabulary, "hash" for hashed strings, None otherwise
        self.strings: list[dict[str, int] | str | None] = [
            "hash" if s.hashed else _as_dict(s.vocabulary) for s in self.specs
        ]
        self.categorical = [j for j, k in enumerate(self.kinds) if k == "categorical"]
        #: the fast numeric path suffices (no strings, booleans or optional columns to interpret)
        self.plain = not any(self.optional) and all(t is None for t in self.strings) and not any(self.booleans)
        self._getter = itemgetter(*self.columns)
        #: history name -> its columns: rows may send a history as one JSON list (:mod:`.history`)
        self.histories = history_groups(self.specs)
        #: the histories of string IDs (their items map through a vocabulary or hash, like a string column's)
        self.string_histories = {s.history for s in self.specs if s.history is not None and s.takes_strings}
        self._fast = FastRows(
            self.columns, [k == "categorical" for k in self.kinds], self.optional, self.booleans, self.strings
        )

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], vocab: Mapping[str, Sequence[str]] | None) -> FeatureColumns:
        return cls(column_specs(metadata, vocab))

    # ------------------------------------------------------------------ wording
    def takes(self, j: int) -> str:
        """What column ``j`` takes, for error messages."""
        if self.strings[j] is not None:
            return "a string or its integer code (at most 2^53 in magnitude)"
        if self.specs[j].history is not None:
            return "an integer ID (at most 2^53 in magnitude), or null for no item"
        if self.booleans[j]:
            return "true, false or an integer code"
        if self.kinds[j] == "categorical":
            return "an integer ID (at most 2^53 in magnitude)"
        return "a finite number"

    def placeholder(self, j: int) -> str:
        """Column ``j``'s value in an example request."""
        if self.strings[j] is not None:
            return "<string>"
        return "<integer ID>" if self.kinds[j] == "categorical" else "<number>"

    # ------------------------------------------------------------------ checks and cells
    def check_ids(self, matrix: np.ndarray, where: Where) -> None:
        """Categorical columns must hold integers within +-2^53 (NaN: an omitted optional value)."""
        if not self.categorical:
            return
        if len(matrix) <= SMALL_BATCH and _small_ids_ok(matrix[:, self.categorical].ravel().tolist()):
            return  # a few rows: checked in Python (the array operations cost more than the cells)
        sub = matrix[:, self.categorical]
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(sub) & ((np.floor(sub) != sub) | (np.abs(sub) > MAX_EXACT_INT))
        if bad.any():
            i, k = (int(v) for v in np.argwhere(bad)[0])
            j = self.categorical[k]
            raise HandlerError(400, self._not_an_id(where(i, self.columns[j]), float(sub[i, k]), j))

    def check_exact(self, matrix: np.ndarray, value_at: ValueAt, where: Where) -> None:
        """FP64 rounds the integer 2^53+1 to 2^53: a categorical cell that reads +-2^53 is checked against the
        client's own integer, which must be within +-2^53 too (JSON integers are exact in Python)."""
        if not self.categorical:
            return
        sub = matrix[:, self.categorical]
        if len(matrix) <= SMALL_BATCH:
            cells = sub.ravel().tolist()
            if _EXACT_LIMIT not in cells and -_EXACT_LIMIT not in cells:
                return
        for i, k in np.argwhere(np.abs(sub) == MAX_EXACT_INT):
            j = self.categorical[int(k)]
            value = value_at(int(i), j)
            if type(value) is int and abs(value) > MAX_EXACT_INT:
                raise HandlerError(400, self._beyond(where(int(i), self.columns[j]), value, j))

    def _beyond(self, where: str, value: int, j: int) -> str:
        return f"{where} is {int_text(value)}, beyond 2^53, not an exact integer ID; expected {self.takes(j)}"

    def _not_an_id(self, where: str, number: float, j: int) -> str:
        beyond = ", beyond 2^53," if abs(number) > MAX_EXACT_INT else ","
        return f"{where} is {number!r}{beyond} not an integer ID; expected {self.takes(j)}"

    def convert(self, value: Any, j: int, where: str) -> float:
        """One cell -> its FP64 value; a 400 naming ``where`` when it cannot be one (``MISSING``: key absent)."""
        t = type(value)
        nan = isinstance(value, (float, np.floating)) and math.isnan(value)
        if value is None or value is MISSING or nan:
            if self.optional[j]:
                return math.nan
            if nan:
                raise HandlerError(400, f"{where} is NaN; expected {self.takes(j)} (the column is not optional)")
            if value is MISSING:
                raise HandlerError(400, f"{where} is missing; the column is not optional")
            raise HandlerError(400, f"{where} is null; expected {self.takes(j)} (the column is not optional)")
        table = self.strings[j]
        if t is str and table is not None:
            if table == "hash":
                try:
                    return float(hash_code(value))
                except UnicodeEncodeError:
                    raise HandlerError(
                        400, f"{where} is {quote(value)}, not valid Unicode text (it holds a lone surrogate)"
                    ) from None
            return float(table.get(value, UNKNOWN_CODE))  # type: ignore[union-attr]
        if t is bool and self.booleans[j]:
            return BOOL_TEXT["true" if value else "false"]
        problem = describe_bad_value(value)
        if problem is not None:
            raise HandlerError(400, f"{where} is {problem}; expected {self.takes(j)}")
        if t is int and self.kinds[j] == "categorical" and abs(value) > MAX_EXACT_INT:
            raise HandlerError(400, self._beyond(where, value, j))
        number = float(value)
        if self.kinds[j] == "categorical" and (number != math.floor(number) or abs(number) > MAX_EXACT_INT):
            raise HandlerError(400, self._not_an_id(where, number, j))
        return number

    def column(self, values: Sequence[Any], j: int, n: int) -> np.ndarray | None:
        """A whole column of one request at once when it is uniform (all numbers, or all strings); else None."""
        types = set(map(type, values))
        table = self.strings[j]
        try:
            if types <= _NUMBER_TYPES:
                return np.fromiter(values, np.float64, n)
            if types == {str} and isinstance(table, dict):
                get = table.get
                return np.fromiter((get(v, UNKNOWN_CODE) for v in values), np.float64, n)
        except (OverflowError, ValueError):
            return None
        return None

    # ------------------------------------------------------------------ rows
    def rows(self, rows: list[Any], name: str = "data") -> np.ndarray:
        """Row objects ``{column: value}`` -> the matrix; a 400 naming ``name[i]["column"]`` at the first bad cell.

        A request whose every cell is valid is converted by :mod:`exporter.runtime.fast_rows` (cell by cell for
        a few rows, column by column for many); anything else goes :meth:`_rows_careful`, which words the error.
        """
        if self.histories:
            rows = expand_rows(rows, self.histories, name, self.string_histories)
        matrix = self._fast.matrix(rows)
        return matrix if matrix is not None else self._rows_careful(rows, name)

    def _rows_careful(self, rows: list[Any], name: str) -> np.ndarray:
        """Uniform numeric requests take one numpy pass; columns of raw strings go column by column; anything
        else cell by cell, which also words the error."""
        n = len(rows)
        k = len(self.columns)
        where: Where = lambda i, c: f"{name}[{i}][{json.dumps(c)}]"  # noqa: E731
        matrix = None
        try:
            values = list(map(self._getter, rows)) if type(rows[0]) is dict else None
        except (KeyError, TypeError):
            values = None
        if values is not None:
            flat = values if k == 1 else list(chain.from_iterable(values))
            if set(map(type, flat)) <= _NUMBER_TYPES:
                try:
                    matrix = np.fromiter(flat, np.float64, n * k).reshape(n, k)
                except (OverflowError, ValueError):
                    matrix = None
                if matrix is not None and not np.isfinite(matrix).all():
                    matrix = None
            elif not self.plain:
                matrix = self._columns_fast(values, n)
        if matrix is None and not self.plain:
            return self._rows_typed(rows, name)  # names the first bad cell
        if matrix is None:
            self._raise_row_problem(rows, name)  # always raises for invalid input
            matrix = np.array([[float(row[c]) for c in self.columns] for row in rows], dtype=np.float64)
        self.check_ids(matrix, where)
        self.check_exact(matrix, lambda i, j: rows[i].get(self.columns[j]), where)
        return matrix

    def _columns_fast(self, values: list[Any], n: int) -> np.ndarray | None:
        """Column by column when each column is uniform (numbers, or raw strings of a string category)."""
        k = len(self.columns)
        out = np.empty((n, k), dtype=np.float64)
        columns = [values] if k == 1 else list(zip(*values, strict=True))
        for j, col in enumerate(columns):
            got = self.column(col, j, n)
            if got is None:
                return None
            out[:, j] = got
        return out if np.isfinite(out).all() else None

    def _rows_typed(self, rows: list[Any], name: str) -> np.ndarray:
        """Cell by cell with each column's rules (strings, booleans, optional columns); 400 at the first bad cell."""
        columns = self.columns
        convert = self.convert
        out = np.empty((len(rows), len(columns)), dtype=np.float64)
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise HandlerError(
                    400,
                    f"{name}[{i}] must be an object mapping feature columns to values, got "
                    f"{type_name(row)}; expected keys: {', '.join(columns)}",
                )
            missing = [c for j, c in enumerate(columns) if c not in row and not self.optional[j]]
            if missing:
                raise HandlerError(
                    400,
                    f"{name}[{i}] is missing feature column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(json.dumps(c) for c in missing)} (not optional); expected keys: {', '.join(columns)}",
                )
            for j, c in enumerate(columns):
                out[i, j] = convert(row.get(c, MISSING), j, f"{name}[{i}][{json.dumps(c)}]")
        return out

    def _raise_row_problem(self, rows: list[Any], name: str) -> None:
        """Find the first invalid row of an all-numeric model and raise a 400 naming it (returns when all are valid)."""
        columns = self.columns
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise HandlerError(
                    400,
                    f"{name}[{i}] must be an object mapping feature columns to numbers, got "
                    f"{type_name(row)}; expected keys: {', '.join(columns)}",
                )
            missing = [c for c in columns if c not in row]
            if missing:
                raise HandlerError(
                    400,
                    f"{name}[{i}] is missing feature column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(json.dumps(c) for c in missing)}; expected keys: {', '.join(columns)}",
                )
            for c in columns:
                problem = describe_bad_value(row[c])
                if problem is not None:
                    raise HandlerError(400, f"{name}[{i}][{json.dumps(c)}] is {problem}; expected a finite number")
