"""The row split: train / validation / held-out test, decided row by row from a seeded hash of the row.

Why a hash and not a shuffled permutation: a permutation needs the whole table in memory and depends on the
row order, so a streaming reader, a Spark job and the in-memory path would each split differently. A hash of
the row's own values gives every engine the same answer for the same row, batch by batch, in any order.

The rule (``docs/training.md`` states it for people; this module is its one owner):

- each key column ``c`` (by default every column of the table whose type is a number, boolean or string, in
  sorted name order) is hashed on its own with XXH64 and seed 42, exactly as Spark's ``xxhash64(c)`` does
  (``hashInt`` for 8/16/32-bit integers, booleans and dates, ``hashLong`` for 64-bit integers and timestamps,
  ``hashLong(doubleToLongBits(x))`` for doubles with -0.0 read as 0.0 and one NaN, UTF-8 bytes for strings;
  a null leaves the seed, 42);
- the row's hash chains them, as Spark's ``xxhash64(lit(seed), h_1, ..., h_k)`` over those 64-bit values:
  ``h = hashLong(seed, 42)``, then ``h = hashLong(h_i, h)`` for each column;
- ``u = (h >>> 11) / 2**53`` is uniform in [0, 1): ``u < test`` is a held-out test row, ``u < test +
  validation`` a validation row, the rest train.

In Spark the same codes come from :func:`spark_split_expression`'s SQL. Rows that are exact duplicates land on
the same side, which is what a held-out set should do anyway. ``--split-by COLUMN`` hashes that column alone:
every row of one user (or session) lands on one side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from exporter.errors import ExporterError

TRAIN, VALIDATION, TEST = 0, 1, 2
DEFAULT_VALIDATION = 0.1
DEFAULT_TEST = 0.2
#: Spark's fixed seed for ``xxhash64``
SPARK_SEED = 42

_M = (1 << 64) - 1
_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P3 = 1609587929392839161
_P4 = 9650029242287828579
_P5 = 2870177450012600261
_U = np.uint64


def check_fractions(validation: float, test: float) -> None:
    """Both shares in [0, 1), and some rows left to train on."""
    for name, value in (("validation", validation), ("test", test)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ExporterError(f"the {name} share of the split must be a number in [0, 1), got {value!r}")
    if validation + test >= 1:
        raise ExporterError(
            f"the validation ({validation}) and test ({test}) shares leave no training rows: their sum must be < 1"
        )


# --------------------------------------------------------------------------- XXH64, as Spark computes it


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U(r)) | (x >> _U(64 - r))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U(33))
    h = h * _U(_P2)
    h = h ^ (h >> _U(29))
    h = h * _U(_P3)
    return h ^ (h >> _U(32))


def hash_long(values: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
    """Spark's ``XXH64.hashLong`` over 64-bit values (as uint64), vectorised; ``seed`` per row or one for all."""
    with np.errstate(over="ignore"):
        v = np.asarray(values).astype(_U, copy=False)
        h = np.asarray(seed, dtype=np.uint64) + _U((_P5 + 8) & _M)
        h = h ^ (_rotl(v * _U(_P2), 31) * _U(_P1))
        h = _rotl(h, 27) * _U(_P1) + _U(_P4)
        return _fmix(h)


def hash_int(values: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
    """Spark's ``XXH64.hashInt`` over 32-bit values, vectorised."""
    with np.errstate(over="ignore"):
        v = np.asarray(values).astype(np.int64).astype(_U) & _U(0xFFFFFFFF)
        h = np.asarray(seed, dtype=np.uint64) + _U((_P5 + 4) & _M)
        h = h ^ (v * _U(_P1))
        h = _rotl(h, 23) * _U(_P2) + _U(_P3)
        return _fmix(h)


def _rotl_int(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    return (_rotl_int((acc + lane * _P2) & _M, 31) * _P1) & _M


def hash_bytes(data: bytes, seed: int) -> int:
    """Standard XXH64 of ``data`` (Spark's ``hashUnsafeBytes``), as an unsigned 64-bit int."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed & _M, (seed - _P1) & _M]
        while i <= n - 32:
            for lane in range(4):
                v[lane] = _round(v[lane], int.from_bytes(data[i : i + 8], "little"))
                i += 8
        h = (_rotl_int(v[0], 1) + _rotl_int(v[1], 7) + _rotl_int(v[2], 12) + _rotl_int(v[3], 18)) & _M
        for lane in v:
            h = ((h ^ _round(0, lane)) * _P1 + _P4) & _M
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i <= n - 8:
        h ^= _round(0, int.from_bytes(data[i : i + 8], "little"))
        h = (_rotl_int(h, 27) * _P1 + _P4) & _M
        i += 8
    if i <= n - 4:
        h ^= (int.from_bytes(data[i : i + 4], "little") * _P1) & _M
        h = (_rotl_int(h, 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _M
        h = (_rotl_int(h, 11) * _P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    return h ^ (h >> 32)


# --------------------------------------------------------------------------- one column, one hash per row


def hashable(kind: pa.DataType) -> bool:
    """Column types the default key uses (lists, maps and structs are left out, here and in Spark)."""
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_date32(kind)
        or pa.types.is_dictionary(kind)
    )


def column_hash(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Spark's ``xxhash64(column)`` per row (uint64): seed 42, nulls keep the seed."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    n = len(column)
    valid = np.ones(n, dtype=bool) if column.null_count == 0 else column.is_valid().to_numpy(zero_copy_only=False)
    seed = np.full(n, SPARK_SEED, dtype=np.uint64)
    if pa.types.is_boolean(kind):
        out = hash_int(column.fill_null(False).to_numpy(zero_copy_only=False).astype(np.int64), seed)
    elif pa.types.is_integer(kind) and kind.bit_width == 64:
        out = hash_long(column.fill_null(0).to_numpy().view(np.uint64), seed)
    elif pa.types.is_integer(kind) or pa.types.is_date32(kind):
        values = column.cast(pa.int32()) if pa.types.is_date32(kind) else column
        out = hash_int(values.fill_null(0).to_numpy().astype(np.int64), seed)
    elif pa.types.is_timestamp(kind):  # Spark keeps microseconds
        micros = pc.cast(column, pa.timestamp("us", tz=kind.tz)).cast(pa.int64())
        out = hash_long(micros.fill_null(0).to_numpy().view(np.uint64), seed)
    elif pa.types.is_floating(kind):
        out = _hash_floats(column, seed)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        codes, uniques = pd.factorize(column.to_pandas(), use_na_sentinel=True)
        table = np.array([hash_bytes(str(u).encode("utf-8"), SPARK_SEED) for u in uniques], dtype=np.uint64)
        out = table[np.where(codes < 0, 0, codes)] if len(table) else seed.copy()
    else:
        raise ExporterError(f"cannot hash a column of type {kind} for the row split")
    return np.where(valid, out, seed)


def _hash_floats(column: pa.Array, seed: np.ndarray) -> np.ndarray:
    if column.type.bit_width == 32:
        values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float32)
        values = np.where(values == 0, np.float32(0), values)  # -0.0 as 0.0
        bits32 = values.view(np.uint32).copy()
        bits32[np.isnan(values)] = 0x7FC00000  # Java's canonical NaN
        return hash_int(bits32.astype(np.int64), seed)
    values = column.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    values = np.where(values == 0, 0.0, values)
    bits = values.view(np.uint64).copy()
    bits[np.isnan(values)] = 0x7FF8000000000000
    return hash_long(bits, seed)


# --------------------------------------------------------------------------- rows -> split codes


def key_columns(schema: pa.Schema, chosen: Sequence[str] | None = None) -> list[str]:
    """The columns a row's hash covers: ``chosen`` as given, else every hashable column in sorted name order."""
    if chosen:
        missing = [c for c in chosen if c not in schema.names]
        if missing:
            raise ExporterError(
                f"split column(s) {', '.join(missing)} not in the data (columns: {', '.join(schema.names)})"
            )
        bad = [c for c in chosen if not hashable(schema.field(c).type)]
        if bad:
            kinds = ", ".join(f"{c} ({schema.field(c).type})" for c in bad)
            raise ExporterError(f"cannot split by {kinds}: expected a number, boolean, string or date column")
        return list(chosen)
    return sorted(f.name for f in schema if hashable(f.type))


def row_uniform(table: pa.Table | pa.RecordBatch, *, seed: int, columns: Sequence[str] | None = None) -> np.ndarray:
    """Per row, ``u`` in [0, 1) from the seeded hash of its key columns (the module docstring's rule)."""
    names = key_columns(table.schema, columns)
    n = table.num_rows
    with np.errstate(over="ignore"):
        h = hash_long(np.full(n, seed, dtype=np.int64).view(np.uint64), np.full(n, SPARK_SEED, dtype=np.uint64))
        for name in names:
            h = hash_long(column_hash(table.column(name)), h)
    return (h >> _U(11)).astype(np.float64) * (2.0**-53)


def split_codes_arrow(
    table: pa.Table | pa.RecordBatch,
    *,
    seed: int,
    key_columns: Sequence[str] | None = None,
    validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
) -> np.ndarray:
    """:data:`TRAIN` / :data:`VALIDATION` / :data:`TEST` per row (int8) of an Arrow table or record batch."""
    check_fractions(validation, test)
    u = row_uniform(table, seed=seed, columns=key_columns)
    codes = np.full(len(u), TRAIN, dtype=np.int8)
    codes[u < test + validation] = VALIDATION
    codes[u < test] = TEST
    return codes


def split_codes(
    frame: pd.DataFrame,
    *,
    seed: int,
    key_columns: Sequence[str] | None = None,
    validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
) -> np.ndarray:
    """:func:`split_codes_arrow` for a pandas frame (converted to Arrow: a nullable integer column that pandas
    holds as float64 hashes as a double, not as the file's integer: hash the file's Arrow batches for that)."""
    table = pa.Table.from_arrays(
        [_arrow_column(frame[name]) for name in frame.columns], names=[str(n) for n in frame.columns]
    )
    return split_codes_arrow(table, seed=seed, key_columns=key_columns, validation=validation, test=test)


def _arrow_column(column: pd.Series) -> pa.Array:
    """The column as Arrow; a column of Python objects Arrow cannot hold as one type (an ID of 2^64 among
    small integers, mixed ints and strings) hashes by its text, so the split never fails before the column
    checks can name the bad value."""
    try:
        return pa.Array.from_pandas(column)
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.Array.from_pandas(column.map(lambda v: None if v is None or v != v else str(v)))


def three_way(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row indices from split codes."""
    codes = np.asarray(codes)
    return np.flatnonzero(codes == TRAIN), np.flatnonzero(codes == VALIDATION), np.flatnonzero(codes == TEST)


def spark_split_expression(names: Sequence[str], *, seed: int, validation: float, test: float) -> str:
    """Spark SQL giving the same codes (0 train, 1 validation, 2 test) for rows with the key columns ``names``."""
    check_fractions(validation, test)
    hashes = ", ".join(f"xxhash64(`{n.replace('`', '``')}`)" for n in names)
    h = f"xxhash64(CAST({int(seed)} AS BIGINT){', ' + hashes if hashes else ''})"
    u = f"(CAST(shiftrightunsigned({h}, 11) AS DOUBLE) / {float(2**53)!r})"
    return f"CASE WHEN {u} < {test!r} THEN {TEST} WHEN {u} < {test + validation!r} THEN {VALIDATION} ELSE {TRAIN} END"


def describe(seed: int, columns: Sequence[str] | None, validation: float, test: float) -> dict[str, Any]:
    """The split's record in metadata: enough to reproduce it."""
    return {
        "rule": "xxhash64 of the row's key columns (Spark-compatible)",
        "seed": seed,
        "key_columns": list(columns) if columns else "all hashable columns, sorted by name",
        "validation_fraction": validation,
        "test_fraction": test,
    }
