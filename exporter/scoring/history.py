"""Batch scoring of history columns: a Parquet list column or delimited text (CSV) -> the history's tensor columns.

A history (docs/features.md) travels as ``max_length`` columns (``hist_items[0]`` ...); an input file holds it
as one column named like the history: a list of integer IDs (Parquet ``list<int64>``, ``list<double>`` or
``list<string>`` of digits), or text with the IDs separated by the schema's delimiter (``"12|7|99"``; empty:
no items). A history of string IDs takes ``list<string>`` (or the delimited text), each string mapped through
the vocabulary or hash of the history, an integer being its code, as in a string column. A longer list keeps
its last ``max_length`` IDs (the most recent). The rules are the handler's
(:mod:`exporter.runtime.history`); a bad element refuses the row, the reason naming the column and position.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from exporter.runtime.columns import ColumnSpec
from exporter.runtime.history import HistoryProblem, expected, history_values, string_codes
from exporter.training.sources import is_list_type

__all__ = ["encode_history_column", "history_schema_problems"]


def history_schema_problems(schema: pa.Schema, rule: ColumnSpec) -> list[str]:
    """An unusable type for the history column of ``rule`` (checked once, at its position 0)."""
    if rule.history is None or not rule.name.endswith("[0]"):
        return []
    index = schema.get_field_index(rule.history)
    if index < 0:
        return []  # reported as a missing column
    t = schema.field(index).type
    if pa.types.is_dictionary(t):
        t = t.value_type
    ok = (
        is_list_type(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_null(t)
    )
    if ok:
        return []
    return [
        f"column {json.dumps(rule.history)} has type {t}; expected a history: "
        f"{'a list of string IDs' if rule.takes_strings else 'a list of integer IDs'}, or the IDs "
        f"separated by {rule.delimiter!r} in text"
    ]


def encode_history_column(
    batch: pa.RecordBatch | pa.Table,
    rules: Sequence[ColumnSpec],
    j: int,
    matrix: np.ndarray,
    reasons: dict[tuple[int, int], str],
) -> np.ndarray | None:
    """Fill the history columns starting at ``rules[j]`` (only at its position 0) into ``matrix``; returns the
    refused rows (or None) and records each one's reason under ``(j, row)``."""
    rule = rules[j]
    if j > 0 and rules[j - 1].history == rule.history:
        return None  # filled with the history's first column
    columns = [k for k in range(j, len(rules)) if rules[k].history == rule.history]
    column = batch.column(rule.history)  # present: checked by the caller
    values = column.to_pylist()
    text = not is_list_type(column.type)
    block = np.full((len(values), len(columns)), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    strings = rule.takes_strings
    for row, value in enumerate(values):
        try:
            kept = history_values(value, rule.max_length, delimiter=rule.delimiter, strings=strings)
            if strings:
                kept = string_codes(kept, None if rule.hashed else rule.vocabulary)
        except HistoryProblem as exc:
            bad[row] = True
            cell = exc.where(json.dumps(rule.history))
            reasons[(j, row)] = f"{cell} is {exc.what}; expected {expected(strings)}" + (
                f" separated by {rule.delimiter!r}" if text else ""
            )
            continue
        block[row, : len(kept)] = kept
    matrix[:, columns] = block
    return bad if bad.any() else None
