"""How the handler words what it refuses: client values named by JSON type, client text quoted and shortened,
and the accepted request forms spelled out for one model (docs/contract.md section 4)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: longest piece of client text quoted in an error message (the server quotes model names the same way)
QUOTE_CHARS = 40

#: the accepted forms when the model is not known yet (a TorchServe request without a body)
FORMS_HINT = (
    'send a JSON object in one of the accepted forms: TorchServe {"data": [{"<feature column>": <number>, ...}, ...]} '
    'or Open Inference Protocol {"inputs": [{"name": "features", "shape": [<rows>, <columns>], '
    '"datatype": "FP64", "data": [...]}]}'
)


def type_name(value: Any) -> str:
    """JSON-flavoured name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def quote(text: Any) -> str:
    """Client text for an error message: JSON-quoted, shortened to a prefix and its length when long."""
    text = str(text)
    if len(text) <= QUOTE_CHARS:
        return json.dumps(text)
    return f"{json.dumps(text[:QUOTE_CHARS])}... ({len(text)} characters)"


def int_text(value: int) -> str:
    """A client's integer for an error message: its digits, or how many when there are many."""
    if abs(value) < 10**QUOTE_CHARS:
        return str(value)
    return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"


def describe_bad_value(value: Any) -> str | None:
    """Why ``value`` is not a finite number (``None`` when it is one)."""
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            f = float(value)
        except OverflowError:
            return "a number too large for FP64"
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return None
    if isinstance(value, str):
        return f"a string ({quote(value)})"
    return type_name(value)


def finite_expected(problem: str) -> str:
    """What a tensor cell should have been, given :func:`describe_bad_value`'s ``problem``."""
    if problem == "NaN":
        return "a finite number (NaN, the missing value, only in optional columns; this one is not optional)"
    return "a finite number"


def shape_text(shape: Any) -> str:
    """A client's ``shape`` for an error message: the list when it is a few integers, else what it is."""
    if type(shape) is not list:
        return type_name(shape)
    odd = next((d for d in shape if type(d) is not int), None)
    if odd is not None:
        return f"a list holding {type_name(odd)}" + (f" {quote(odd)}" if isinstance(odd, str) else "")
    return json.dumps(shape) if len(shape) < 10 else f"a list of {len(shape)} integers"


def forms_hint(columns: Sequence[str], input_name: str, placeholders: Sequence[str]) -> str:
    """The accepted request forms spelled out for one model (appended to errors about the form itself).

    ``placeholders`` says per column what it takes (``<number>``, ``<integer ID>``, ``<string>``).
    """
    shown = ", ".join(f'"{c}": {placeholders[j]}' for j, c in enumerate(columns[:3])) + (
        ", ..." if len(columns) > 3 else ""
    )
    return (
        f'send a JSON object in one of the accepted forms: TorchServe {{"data": [{{{shown}}}, ...]}} with the '
        f"{len(columns)} feature columns {', '.join(columns)}; or Open Inference Protocol "
        f'{{"inputs": [{{"name": "{input_name}", "shape": [<rows>, {len(columns)}], "datatype": "FP64", '
        f'"data": [<rows x {len(columns)} numbers, row-major>]}}]}}'
    )


def non_finite_message(out: np.ndarray, matrix: np.ndarray, columns: Sequence[str]) -> str:
    """Why an answer was refused: the model gave no finite prediction for some rows (extreme inputs)."""
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    x = matrix[first]
    extreme = [f"{columns[j]}={x[j]:.6g}" for j in np.argsort(-np.abs(x))[:3]]
    return (
        f"the model gives no finite prediction for {len(rows)} row(s), first row {first} "
        f"(largest values: {', '.join(extreme)}); the values are far outside the range the model was trained on"
    )
