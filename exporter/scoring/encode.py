"""Arrow record batch -> the model's FP64 ``features`` matrix, with a reason for every row it refuses.

This module is the single place where batch scoring turns input columns into the tensor. Both engines call
:func:`encode_batch` (the local engine in threads, Spark inside ``mapInArrow`` on the executors), so a row
is accepted or refused the same way everywhere. The rules are the handler's (contract section 4), applied
per row and vectorised instead of per request:

* a numeric cell must be a finite number; booleans, non-numeric text, NaN, +-Infinity and nulls are refused
  with the column and what was found; NaN/null are allowed (sent as NaN, which the graph replaces by the
  column's fill) only when metadata marks the column ``optional``;
* text cells (CSV, or string columns in Parquet) are parsed as decimal numbers, so a CSV behaves like the
  same numbers in Parquet;
* categorical columns (when metadata has a ``features`` list): a string category is mapped to its code through
  the training vocabulary, unknown strings to :data:`OOV_CODE` (the graph's out-of-vocabulary row), a hashed
  one to its hash code; an integer ID must be an integer within 2^53, checked on the exact value (an int64
  or the text 9007199254740993 is refused, not rounded to 2^53);
* a boolean categorical column takes booleans (Parquet ``bool``) and the words ``true``/``false`` in any letter
  case (CSV, as the training reader reads them) as 1 and 0, the codes of JSON true/false, besides integer codes.

The columns' rules come from :mod:`exporter.runtime.columns`, the one reader of metadata ``features`` and
``vocab.json`` (the handler's); this module applies them to whole Arrow columns at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exporter.runtime.columns import BOOL_TEXT, ColumnSpec, column_specs, read_vocab, vocab_files
from exporter.runtime.errors import ArtifactError
from exporter.runtime.rules import MAX_EXACT_INT, UNKNOWN_CODE, hash_code
from exporter.scoring.history import encode_history_column, history_schema_problems

__all__ = [
    "OOV_CODE",
    "ColumnRule",
    "EncodingPlan",
    "EncodedBatch",
    "SchemaProblem",
    "plan_from_metadata",
    "check_schema",
    "encode_batch",
]

#: Code sent for a string category that is not in the vocabulary: not a vocabulary code, so the graph
#: maps it to its out-of-vocabulary row (contract section 1).
OOV_CODE = float(UNKNOWN_CODE)
#: Integer IDs are exact in FP64 up to 2^53 (contract section 1).
MAX_EXACT_ID = float(MAX_EXACT_INT)
#: Decimal text accepted for a number (after trimming blanks): sign, digits, point, exponent.
_NUMBER_TEXT = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_NAN_TEXT = r"^[+-]?[nN][aA][nN]$"
_SHOWN = 40


class SchemaProblem(ValueError):
    """A column whose Arrow type can never hold a usable value (a schema error, not a row error)."""


#: How one feature column becomes one column of the FP64 tensor: the runtime's column spec (name, kind,
#: optional, vocabulary or hashed strings; ``takes_strings`` and ``is_id`` say which rules apply).
ColumnRule = ColumnSpec


@dataclass(frozen=True)
class EncodingPlan:
    """The per-column rules of one model version, in tensor order (built once, shipped to executors)."""

    columns: tuple[ColumnRule, ...]
    _vocab_arrays: dict[str, tuple[pa.Array, np.ndarray]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def names(self) -> list[str]:
        """The input columns the encoder reads: a history by its own name (a list or delimited text), once."""
        return list(dict.fromkeys(c.history or c.name for c in self.columns))

    def vocab_arrays(self, rule: ColumnRule) -> tuple[pa.Array, np.ndarray]:
        """The vocabulary as an Arrow value set and the codes in the same order (cached)."""
        cached = self._vocab_arrays.get(rule.name)
        if cached is None:
            assert rule.vocabulary is not None
            keys = list(rule.vocabulary)
            cached = (pa.array(keys, pa.string()), np.array([rule.vocabulary[k] for k in keys], np.float64))
            self._vocab_arrays[rule.name] = cached
        return cached


@dataclass
class EncodedBatch:
    """The result of :func:`encode_batch`.

    ``matrix`` holds only the accepted rows, in input order; ``accepted`` is the row mask (``None`` when every
    row was accepted); ``rejects`` lists ``(row index in the batch, reason)`` for the refused rows.
    """

    matrix: np.ndarray
    accepted: np.ndarray | None
    rejects: list[tuple[int, str]]

    @property
    def n_rejected(self) -> int:
        return len(self.rejects)


# ---------------------------------------------------------------------------------------------- plan
def plan_from_metadata(metadata: Mapping[str, Any], directory: Path | None = None) -> EncodingPlan:
    """The encoding rules of one artifact version, from its ``metadata.json`` and ``vocab.json``.

    Read by :func:`exporter.runtime.columns.column_specs`, as the handler reads them: ``features``
    (docs/features.md) gives each column's kind and ``optional``; a string column names its vocabulary as
    ``{"file": "vocab.json", "sha256": ..., "key": <column>}`` (the file's sha256 is checked) or is hashed.
    Metadata without ``features`` (older exports) means every column is numeric. ``directory`` holds the
    vocabulary file (None: the metadata names none). Raises ``ValueError`` for unusable feature metadata.
    """
    try:
        vocab = read_vocab(directory, metadata) if directory is not None else None
        return EncodingPlan(tuple(column_specs(metadata, vocab)))
    except ArtifactError as exc:
        raise ValueError(exc.message) from None


#: The vocabulary files a version's features name (what an executor needs beside the model).
vocabulary_files = vocab_files


# ---------------------------------------------------------------------------------------------- schema
def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t)
    )


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def check_schema(schema: pa.Schema, plan: EncodingPlan) -> list[str]:
    """Problems with the input's columns that no row could fix: missing columns, unusable types.

    Called on every input file before any work, so that these are one exit-2 line, not a million rejects.
    """
    problems = []
    missing = [c for c in plan.names if schema.get_field_index(c) < 0]
    if missing:
        problems.append(
            f"missing feature column{'s' if len(missing) > 1 else ''} {', '.join(json.dumps(m) for m in missing)}"
        )
    for rule in plan.columns:
        if rule.history is not None:
            problems += history_schema_problems(schema, rule)
            continue
        index = schema.get_field_index(rule.name)
        if index < 0:
            continue
        t = _value_type(schema.field(index).type)
        if not (_is_numeric(t) or _is_text(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
            problems.append(
                f"column {json.dumps(rule.name)} has type {t}; expected numbers"
                + (" or strings" if rule.takes_strings else " (or their text)")
            )
    return problems


# ---------------------------------------------------------------------------------------------- rows
def encode_batch(batch: pa.RecordBatch | pa.Table, plan: EncodingPlan) -> EncodedBatch:
    """Validate and encode one batch: the FP64 matrix of the accepted rows plus a reason per refused row.

    Vectorised per column (Arrow compute and numpy); Python runs only to word the reasons of refused rows.
    Raises :class:`SchemaProblem` for a column missing from the batch or of an unusable type.
    """
    n = batch.num_rows
    k = len(plan.columns)
    matrix = np.empty((n, k), dtype=np.float64)
    first_bad = np.full(n, -1, dtype=np.int64)  # index of the first column at fault per row (-1: fine)
    problems: list[np.ndarray | None] = []
    history_reasons: dict[tuple[int, int], str] = {}
    for j, rule in enumerate(plan.columns):
        if rule.history is not None:  # a history's columns at once, from its list or text column
            if rule.history not in batch.schema.names:
                raise SchemaProblem(f"missing feature column {json.dumps(rule.history)}")
            bad = encode_history_column(batch, plan.columns, j, matrix, history_reasons)
            problems.append(bad)
            if bad is not None:
                np.putmask(first_bad, (first_bad < 0) & bad, j)
            continue
        try:
            column = batch.column(rule.name)
        except KeyError:
            raise SchemaProblem(f"missing feature column {json.dumps(rule.name)}") from None
        values, bad = _encode_column(column, rule, plan)
        matrix[:, j] = values
        problems.append(bad)
        if bad is not None:
            np.putmask(first_bad, (first_bad < 0) & bad, j)
    rejected = np.flatnonzero(first_bad >= 0)
    if rejected.size == 0:
        return EncodedBatch(matrix, None, [])
    reasons = []
    for row in rejected.tolist():
        j = int(first_bad[row])
        rule = plan.columns[j]
        more = sum(1 for b in problems[j + 1 :] if b is not None and b[row])
        if rule.history is not None:
            reason = history_reasons[(j, row)]
        else:
            reason = f"{json.dumps(rule.name)} is {_describe(batch.column(rule.name)[row].as_py())}; {_expected(rule)}"
        reasons.append((row, reason + (f" (and {more} more column{'s' if more > 1 else ''})" if more else "")))
    accepted = first_bad < 0
    return EncodedBatch(matrix[accepted], accepted, reasons)


def _expected(rule: ColumnRule) -> str:
    if rule.takes_strings:
        return "expected a category string or its code"
    if rule.boolean:
        return "expected true, false or an integer code within 2^53"
    if rule.is_id:
        return "expected an integer ID within 2^53"
    return "expected a finite number"


def _describe(value: Any) -> str:
    """What a refused cell held, worded like the handler's errors (text shortened: prefix and length)."""
    if value is None:
        return "null (a missing value)"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        if value.strip() == "":
            return "empty (a missing value)"
        shown = value if len(value) <= _SHOWN else f"{value[: _SHOWN - 3]}... ({len(value)} characters)"
        try:
            number = float(value)
        except ValueError:
            return f"a string ({json.dumps(shown)})"
        if number != number:
            return f"NaN (text {json.dumps(shown)})"
        if number in (float("inf"), float("-inf")):
            return f"{'Infinity' if number > 0 else '-Infinity'} (text {json.dumps(shown)})"
        if re.match(_NUMBER_TEXT, value.strip()) is None:  # float() also takes "1_000", "infinity"...
            return f"a string ({json.dumps(shown)})"
        beyond = abs(Decimal(value.strip())) > MAX_EXACT_INT
        return f"{json.dumps(shown)} ({'beyond 2^53' if beyond else 'not an integer'})"
    exact = isinstance(value, int) or (isinstance(value, Decimal) and value.is_finite())
    if exact and value == int(value) and abs(value) > MAX_EXACT_INT:
        return f"{int(value)} (beyond 2^53)"
    if isinstance(value, (int, float)) or hasattr(value, "is_finite"):
        f = float(value)
        if f != f:
            return "NaN"
        if f in (float("inf"), float("-inf")):
            return "Infinity" if f > 0 else "-Infinity"
        if float(f).is_integer() and abs(f) > MAX_EXACT_ID:
            return f"{int(value)} (beyond 2^53)"
        return f"{value!r} (not an integer)"
    return type(value).__name__


def _to_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _encode_column(
    column: pa.Array | pa.ChunkedArray, rule: ColumnRule, plan: EncodingPlan
) -> tuple[np.ndarray, np.ndarray | None]:
    """FP64 values of one column (NaN where refused or missing) and the mask of refused cells (or None)."""
    array = _to_array(column)
    t = array.type
    n = len(array)
    bad: np.ndarray | None = None
    if pa.types.is_null(t):
        values = np.full(n, np.nan)
        missing = np.ones(n, dtype=bool)
    elif pa.types.is_boolean(t):
        # true/false travel as 1/0 in a boolean column; elsewhere the handler refuses them: not a number
        missing = _null_mask(array)
        if rule.boolean:
            values = pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(np.float64)
        else:
            values = np.full(n, np.nan)
            bad = ~missing
    elif _is_text(t):
        text = pc.utf8_trim_whitespace(array)
        if rule.takes_strings:
            return _encode_categories(text, rule, plan)
        # empty cells and NaN text are missing values, as null and NaN are in typed columns
        missing = _null_mask(text) | _as_bool(pc.equal(text, "")) | _as_bool(pc.match_substring_regex(text, _NAN_TEXT))
        ok = _as_bool(pc.match_substring_regex(text, _NUMBER_TEXT)) & ~missing
        bad = ~ok & ~missing
        parsed = pc.cast(pc.if_else(pa.array(ok), text, pa.scalar("0")), pa.float64())
        values = parsed.to_numpy(zero_copy_only=False).copy()
        values[~ok] = np.nan
        # text beyond the FP64 range parses to +-inf: a refused value like any other non-finite one
        bad |= ok & ~np.isfinite(values)
        if rule.is_id:
            bad |= _inexact_ids(text, values, ok)
        if rule.boolean:
            words = pc.utf8_lower(text)
            for word, code in BOOL_TEXT.items():
                is_word = _as_bool(pc.equal(words, word))
                values[is_word] = code
                bad &= ~is_word
    elif _is_numeric(t):
        missing = _null_mask(array)
        original = array
        if pa.types.is_decimal(t):
            array = pc.cast(array, pa.float64(), safe=False)
        raw = array.to_numpy(zero_copy_only=False)
        values = raw.astype(np.float64, copy=raw.dtype != np.float64 or not raw.flags.writeable)
        if raw.dtype.kind == "f":
            missing = missing | np.isnan(values)  # NaN is a missing value, allowed for optional columns only
        bad = np.isinf(values)
        if rule.is_id and raw.dtype.kind in "iu":  # beyond 2^53 before FP64 rounds 2^53 + 1 down to 2^53
            bad |= (raw > MAX_EXACT_INT) | ((raw < -MAX_EXACT_INT) if raw.dtype.kind == "i" else False)
        elif rule.is_id and pa.types.is_decimal(t):
            bad |= _as_bool(pc.greater(pc.abs(original), pa.scalar(Decimal(MAX_EXACT_INT))))
    else:
        raise SchemaProblem(f"column {json.dumps(rule.name)} has type {t}; expected numbers")
    if rule.is_id:
        finite = np.isfinite(values)
        bad = (bad if bad is not None else np.zeros(n, bool)) | (
            finite & ((np.abs(values) > MAX_EXACT_ID) | (values != np.floor(values)))
        )
    if missing.any():
        values[missing] = np.nan
        if not rule.optional:
            bad = missing if bad is None else (bad | missing)
    if bad is not None and not bad.any():
        bad = None
    return values, bad


def _inexact_ids(text: pa.Array, values: np.ndarray, parsed: np.ndarray) -> np.ndarray:
    """Parsed ID text whose exact decimal value FP64 does not hold (2^52 and beyond, where FP64 rounds to
    integers: "9007199254740993" would become 2^53): refused like an ID beyond 2^53 or not an integer."""
    bad = np.zeros(len(values), dtype=bool)
    with np.errstate(invalid="ignore"):
        large = np.flatnonzero(parsed & np.isfinite(values) & (np.abs(values) >= 2.0**52))
    for row in large.tolist():
        try:
            bad[row] = Decimal(str(text[row].as_py())) != Decimal(float(values[row]))
        except InvalidOperation:
            bad[row] = True
    return bad


def _encode_categories(text: pa.Array, rule: ColumnRule, plan: EncodingPlan) -> tuple[np.ndarray, np.ndarray | None]:
    """String categories -> vocabulary codes; unknown strings -> :data:`OOV_CODE`, digits or not: text is the
    category itself, as a JSON string is in a request ("3", an unseen store code, is not the vocabulary's
    fourth entry; only an integer cell is a code)."""
    missing = _null_mask(text) | _as_bool(pc.equal(text, ""))
    values = np.full(len(text), OOV_CODE)
    if rule.hashed:
        encoded = pc.dictionary_encode(text)
        uniques = encoded.dictionary.to_pylist()
        table = np.array([float(hash_code(u)) for u in uniques] or [OOV_CODE], dtype=np.float64)
        index = encoded.indices.to_numpy(zero_copy_only=False)
        known = ~_null_mask(encoded.indices)
        values[known] = table[index[known].astype(np.int64)]
    else:
        keys, codes = plan.vocab_arrays(rule)
        position = pc.index_in(text, value_set=keys).to_numpy(zero_copy_only=False)
        known = ~np.isnan(position)
        values[known] = codes[position[known].astype(np.int64)]
    bad = None
    if missing.any():
        values[missing] = np.nan
        if not rule.optional:
            bad = missing
    return values, bad


def _null_mask(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.zeros(len(array), dtype=bool)
    return array.is_null().to_numpy(zero_copy_only=False)


def _as_bool(array: pa.Array) -> np.ndarray:
    """Boolean Arrow result -> numpy mask, nulls as False."""
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


def feature_columns(plan: EncodingPlan) -> Sequence[str]:
    """Column names the encoder reads (for projection pushdown in the readers)."""
    return plan.names
