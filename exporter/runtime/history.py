"""History columns: a list of item IDs (a user's recent items) as ``max_length`` columns of the FP64 tensor.

A history feature ``hist_items`` with ``max_length`` L travels as the tensor columns ``hist_items[0]`` ...
``hist_items[L-1]`` (docs/features.md): the kept items in their order (oldest first, the most recent last),
then NaN for "no item". A longer list keeps its last L elements (the most recent). The graph maps each item to
its embedding row like a categorical ID (unknown, non-integer or beyond 2^53: the OOV row) and masks the NaN
padding. The items are integer IDs, or strings when the history's vocabulary is one of strings (its own, or
the string column it shares): a string travels as its code, as in a string categorical column.

This module is the one decoder of such a value, shared by the handler (a JSON list in the TorchServe form),
``score`` (a Parquet list column or a delimited string in CSV) and the training encoder. Standard library and
numpy only, like the rest of :mod:`exporter.runtime`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from exporter.runtime.errors import HandlerError
from exporter.runtime.messages import describe_bad_value, int_text, quote, type_name
from exporter.runtime.rules import MAX_EXACT_INT, UNKNOWN_CODE, hash_code

__all__ = [
    "DEFAULT_DELIMITER",
    "EXPECTED",
    "EXPECTED_STRINGS",
    "HistoryProblem",
    "column_name",
    "expand_rows",
    "history_values",
    "split_column_name",
    "string_codes",
    "text_items",
]

#: the separator of a history written as text ("12|7|99"), unless the schema names another
DEFAULT_DELIMITER = "|"
_POSITION = re.compile(r"^(.*)\[(0|[1-9][0-9]*)\]$")
_INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+$")
#: integers joined by something else than the history's delimiter (``12,7`` or ``12 7`` read with ``|``)
_OTHER_SEPARATOR = re.compile(r"^[+-]?[0-9]+\s*([,;:/])\s*[+-]?[0-9]+")
#: numpy's repr of a scalar inside a printed list (numpy 2: ``[np.int64(4), np.str_('a')]``)
_NUMPY_SCALAR = re.compile(r"\bnp\.[A-Za-z_][A-Za-z_0-9]*\(([^()]*)\)")
#: one element of numpy's printed array (``[4 5 6]``, ``['a' 'b']``): a quoted string or a bare token
_NUMPY_TOKEN = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|(\S+)")
EXPECTED = "a list of integer IDs (at most 2^53 in magnitude)"
EXPECTED_STRINGS = "a list of string IDs (or their integer codes)"


def expected(strings: bool) -> str:
    """What a history value should be: integer IDs, or strings for a history of string IDs."""
    return EXPECTED_STRINGS if strings else EXPECTED


class HistoryProblem(ValueError):
    """A history value that is not a list of integer IDs: ``position`` is the bad element (None: the whole)."""

    def __init__(self, what: str, position: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.position = position

    def where(self, base: str) -> str:
        """``base`` (the cell) followed by ``[position]`` when one element is at fault."""
        return base if self.position is None else f"{base}[{self.position}]"


def column_name(history: str, position: int) -> str:
    """The tensor column of one position: ``hist_items[3]``."""
    return f"{history}[{position}]"


def split_column_name(name: str) -> tuple[str, int] | None:
    """``("hist_items", 3)`` for ``"hist_items[3]"``, else None."""
    match = _POSITION.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def _element(value: Any, position: int, text_ok: bool) -> float:
    """One item of a history -> its FP64 ID; a :class:`HistoryProblem` naming the position otherwise."""
    t = type(value)
    if t is int or isinstance(value, np.integer):
        number = int(value)
        if abs(number) > MAX_EXACT_INT:
            raise HistoryProblem(f"{int_text(number)}, beyond 2^53, not an exact integer ID", position)
        return float(number)
    if isinstance(value, (float, np.floating)) and t is not bool:
        real = float(value)
        if math.isfinite(real) and real == math.floor(real) and abs(real) <= MAX_EXACT_INT:
            return real
        return _bad(value, position)
    if isinstance(value, str) and text_ok:
        text = value.strip()
        if _INTEGER_TEXT.match(text):
            number = int(text)
            if abs(number) <= MAX_EXACT_INT:
                return float(number)
            raise HistoryProblem(f"{quote(text)}, beyond 2^53, not an exact integer ID", position)
        if not text:
            raise HistoryProblem("empty, not an integer ID", position)
        separator = _OTHER_SEPARATOR.search(text)
        if separator is not None:  # "12,7,99" read with the default "|"
            sep = separator.group(1)
            raise HistoryProblem(
                f"the string {quote(text)}, not an integer ID (IDs separated by {sep!r}? the schema's "
                f'"delimiter" sets the separator of a history in text, e.g. "delimiter": {json.dumps(sep)})',
                position,
            )
    return _bad(value, position)


def _string_element(value: Any, position: int) -> str | int:
    """One item of a string history: the string itself, or an integer (a code, or a number to read as text)."""
    if isinstance(value, str):
        if not value:
            raise HistoryProblem("empty, not a string ID", position)
        return value
    if type(value) is int or isinstance(value, np.integer):
        number = int(value)
        if abs(number) > MAX_EXACT_INT:
            raise HistoryProblem(f"{int_text(number)}, beyond 2^53, not an exact integer code", position)
        return number
    if isinstance(value, (float, np.floating)) and type(value) is not bool:
        real = float(value)
        if math.isfinite(real) and real == math.floor(real) and abs(real) <= MAX_EXACT_INT:
            return int(real)
    problem = describe_bad_value(value) or repr(value)
    raise HistoryProblem(f"{problem}, not a string ID", position)


def _bad(value: Any, position: int) -> float:
    # a history's item is never missing (a shorter list is): null, and NaN, which is how pandas reads a Parquet
    # list's null item, are named alike wherever they come from (a request, a scored file, training data)
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        raise HistoryProblem("null or NaN (a missing item: send a shorter list instead), not an integer ID", position)
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        raise HistoryProblem(f"{float(value)!r}, not an integer ID", position)
    problem = describe_bad_value(value) if not isinstance(value, str) else f"the string {quote(value)}"
    raise HistoryProblem(f"{problem or type_name(value)}, not an integer ID", position)


def text_items(text: str, delimiter: str) -> list[Any]:
    """The items of a history written as text: a printed list, as ``DataFrame.to_csv`` writes a column of lists
    (JSON ``[12, 7]`` / ``["a", "b"]``, Python ``['a', 'b']``, numpy ``[12 7]`` / ``['a' 'b']`` or
    ``[np.int64(12), np.int64(7)]``), else the IDs joined by ``delimiter`` (``12|7``); blank text: none.

    Text in brackets that does not read as a list is split by ``delimiter`` like any other text."""
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] == "[" and stripped[-1] == "]":
        listed = _printed_list(stripped)
        if listed is not None:
            return listed
    return text.split(delimiter)


def _printed_list(text: str) -> list[Any] | None:
    inner = text[1:-1]
    if "," not in inner:  # numpy's array print (no commas), or a list of at most one item
        tokens = [a or b or c for a, b, c in _NUMPY_TOKEN.findall(inner)]
        return None if any("[" in t or "]" in t for t in tokens) else tokens
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(_NUMPY_SCALAR.sub(r"\1", text))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return list(value) if isinstance(value, (list, tuple)) else None


def history_values(value: Any, max_length: int, *, delimiter: str | None = None, strings: bool = False) -> list[Any]:
    """The kept IDs of one history value (at most ``max_length``, the most recent = the last ones).

    Takes a list, tuple or 1-d numpy array of integer IDs; with ``delimiter`` (text sources: CSV, a string
    column) also a delimited string (``"12|7|99"``, blank: empty), a printed list (``"[12, 7, 99]"``,
    :func:`text_items`) and a single number (a one-item history).
    ``None`` and NaN are an empty history. Raises :class:`HistoryProblem` for anything else. Returns floats;
    with ``strings`` (a history of string IDs) each item is its string, or an ``int`` where an integer was
    given (a code in a request, text in a data file: the caller decides), and delimited text is split as is.
    """
    text_ok = delimiter is not None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        if not text_ok:
            raise HistoryProblem(f"a string ({quote(value)}), expected {expected(strings)}")
        assert delimiter is not None
        items: Sequence[Any] = text_items(value if strings else value.strip(), delimiter)
    elif isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, np.ndarray) and value.ndim == 1:
        items = value.tolist()
    elif text_ok and (type(value) is int or isinstance(value, (float, np.integer, np.floating))):
        items = [value]
    else:
        raise HistoryProblem(f"{type_name(value)}, expected {expected(strings)}")
    start = max(0, len(items) - max_length)
    if strings:
        return [_string_element(items[i], i) for i in range(start, len(items))]
    return [_element(items[i], i, text_ok) for i in range(start, len(items))]


def string_codes(kept: Sequence[Any], vocabulary: Mapping[str, int] | None) -> list[float]:
    """The kept items of a string history (:func:`history_values` with ``strings``) -> their FP64 codes, as a
    string column's: the position in ``vocabulary`` (-1 when unknown), or the hash code when ``vocabulary`` is
    None (a hashed history). An integer is a code already, as in a request to a string column (a data file's
    reader turns integers into their text first: :func:`exporter.features.history.history_strings`)."""
    out: list[float] = []
    for item in kept:
        if type(item) is int:
            out.append(float(item))
            continue
        if vocabulary is not None:
            out.append(float(vocabulary.get(item, UNKNOWN_CODE)))
            continue
        try:
            out.append(float(hash_code(item)))
        except UnicodeEncodeError:
            raise HistoryProblem(f"an item {quote(item)} that is not valid Unicode text (a lone surrogate)") from None
    return out


def fill_row(out: np.ndarray, values: Sequence[float]) -> None:
    """Write the kept IDs into one row of a history's columns, NaN after them."""
    out[: len(values)] = values
    out[len(values) :] = np.nan


def expand_rows(
    rows: list[Any], groups: Mapping[str, Sequence[str]], name: str = "data", strings: Collection[str] = ()
) -> list[Any]:
    """TorchServe rows with a history as a JSON list (``{"hist_items": [12, 7, 99]}``) -> rows holding its
    expanded columns (``hist_items[0]`` ...; missing positions absent, which means no item).

    ``groups`` maps each history name to its columns in order; ``strings`` names the histories of string IDs
    (their items stay strings, or integer codes, for the columns' vocabulary to map). A row that already sends
    the expanded columns passes unchanged; a row with neither means an empty history. A bad value is a 400
    naming the row, the column and the position of the element at fault.
    """
    out: list[Any] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not any(h in row for h in groups):
            out.append(row)
            continue
        expanded = dict(row)
        for history, columns in groups.items():
            if history not in row:
                continue
            value = expanded.pop(history)
            where = f"{name}[{i}][{json.dumps(history)}]"
            if value is None:
                continue
            textual = history in strings
            try:
                kept = history_values(value, len(columns), strings=textual)
            except HistoryProblem as exc:
                tail = "" if exc.position is None else f"; expected {expected(textual)}"
                raise HandlerError(400, f"{exc.where(where)} is {exc.what}{tail}") from None
            clash = [c for c in columns if c in row]
            if clash:
                raise HandlerError(
                    400,
                    f"{name}[{i}] sends the history {json.dumps(history)} both as a list and as its column "
                    f"{json.dumps(clash[0])}; send one of the two forms",
                )
            for column, item in zip(columns, kept, strict=False):
                expanded[column] = item
        out.append(expanded)
    return out
