"""The fast conversion of row objects (``runtime/fast_rows.py``) against the careful one it stands in for: for any
rows it either builds the very matrix the careful way builds, or leaves the request to it (so every error is
the careful way's, worded as before)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.runtime.columns import ColumnSpec, FeatureColumns
from exporter.runtime.errors import HandlerError
from exporter.runtime.fast_rows import SMALL_BATCH, hash_codes
from exporter.runtime.rules import MAX_EXACT_INT, hash_code

SPECS = [
    ColumnSpec("price"),
    ColumnSpec("age", optional=True),
    ColumnSpec("user_id", "categorical"),
    ColumnSpec("category", "categorical", vocabulary={"books": 0, "shoes": 1, "toys": 2}),
    ColumnSpec("city", "categorical", optional=True, hashed=True),
    ColumnSpec("member", "categorical", boolean=True),
    ColumnSpec("tag", "categorical", optional=True, vocabulary={"a": 0, "b": 1}),
]
COLUMNS = FeatureColumns(SPECS)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

edge_ints = st.sampled_from([0, 1, -1, MAX_EXACT_INT - 1, MAX_EXACT_INT, MAX_EXACT_INT + 1, -MAX_EXACT_INT, 2**1100])
cells = (
    edge_ints
    | st.sampled_from([math.nan, math.inf, -math.inf, 0.5, float(MAX_EXACT_INT), 2.0**60, None, True, False])
    | st.floats(-1e6, 1e6)
    | st.integers(-(10**6), 10**6)
    | edge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["books", "shoes", "toys", "unknown", "a", "b", "\ud800", "1.5"])
    | st.none()
    | st.booleans()
    | st.lists(st.integers(), max_size=2)
)
valid_row = st.fixed_dictionaries(
    {
        "price": st.floats(-1e6, 1e6) | st.integers(-(10**6), 10**6),
        "user_id": st.integers(-(10**9), 10**9),
        "category": st.sampled_from(["books", "shoes", "toys", "unknown"]) | st.integers(-1, 3),
        "member": st.booleans() | st.integers(0, 1),
    },
    optional={
        "age": st.floats(0, 99) | st.none() | st.just(math.nan),
        "city": st.sampled_from(["paris", "rome", "oslo"]),
        "tag": st.sampled_from(["a", "b", "c"]) | st.none(),
    },
)
names = st.sampled_from([s.name for s in SPECS])
#: a valid row with one cell replaced by anything (or one column dropped)
near_row = st.tuples(valid_row, names, cells, st.booleans()).map(
    lambda t: {k: v for k, v in t[0].items() if k != t[1]} if t[3] else {**t[0], t[1]: t[2]}
)
any_row = st.dictionaries(names, cells, max_size=8) | cells
#: valid rows with one near-valid row among them: the one odd cell decides whether the request is refused
few_or_many = st.lists(valid_row, min_size=0, max_size=SMALL_BATCH - 1) | st.lists(
    valid_row, min_size=SMALL_BATCH, max_size=SMALL_BATCH + 8
)
one_odd = st.tuples(few_or_many, st.integers(0, 40), near_row).map(lambda t: t[0][: t[1]] + [t[2]] + t[0][t[1] :])
row_lists = (
    one_odd
    | one_odd
    | st.lists(valid_row | valid_row | valid_row | valid_row | any_row, min_size=1, max_size=40)
    | st.lists(valid_row, min_size=1, max_size=40)
)


def _careful(rows: list[Any]) -> np.ndarray | HandlerError:
    try:
        return COLUMNS._rows_careful(rows, "data")
    except HandlerError as exc:
        return exc


@FUZZ
@given(row_lists)
def test_the_fast_way_builds_the_careful_matrix_or_steps_aside(rows: list[Any]) -> None:
    careful = _careful(rows)
    fast = COLUMNS._fast.matrix(rows)
    if isinstance(careful, HandlerError):
        assert fast is None, f"accepted what the careful way refuses: {careful.message}"
        with pytest.raises(HandlerError) as refused:
            COLUMNS.rows(rows, "data")
        assert refused.value.message == careful.message
    elif fast is not None:
        np.testing.assert_array_equal(fast, careful)  # NaN where NaN


@pytest.mark.parametrize("n", [1, SMALL_BATCH, SMALL_BATCH + 1, 300])
def test_valid_requests_take_the_fast_way_at_every_size(n: int) -> None:
    row = {"price": 9.5, "user_id": 42, "category": "shoes", "member": True, "city": "rome", "tag": None}
    rows = [dict(row, age=float(i)) if i % 2 else dict(row) for i in range(n)]
    fast = COLUMNS._fast.matrix(rows)
    assert fast is not None
    np.testing.assert_array_equal(fast, COLUMNS._rows_careful(rows, "data"))
    assert fast[0].tolist()[2:6] == [42.0, 1.0, float(hash_code("rome")), 1.0]
    assert math.isnan(fast[0, 1]) and math.isnan(fast[0, 6])


def test_hash_codes_are_cached_and_exact() -> None:
    assert hash_codes(["x", "y", "x"]) == [float(hash_code("x")), float(hash_code("y")), float(hash_code("x"))]
    with pytest.raises(UnicodeEncodeError):
        hash_codes(["\ud800"])


ODD_VALUES: list[Any] = [
    0,
    1,
    -1,
    0.5,
    MAX_EXACT_INT - 1,
    MAX_EXACT_INT,
    -MAX_EXACT_INT,
    MAX_EXACT_INT + 1,
    -MAX_EXACT_INT - 1,
    float(MAX_EXACT_INT),
    2.0**60,
    2**1100,
    math.nan,
    math.inf,
    -math.inf,
    None,
    True,
    False,
    "books",
    "unknown",
    "a",
    "1.5",
    "\ud800",
    [1],
    {"x": 1},
]


@pytest.mark.parametrize("n", [1, SMALL_BATCH + 3])
def test_every_odd_value_in_every_column_is_treated_as_the_careful_way_does(n: int) -> None:
    base = {"price": 9.5, "age": 30.0, "user_id": 42, "category": "shoes", "member": True, "city": "rome", "tag": "a"}
    for spec in SPECS:
        for value in [*ODD_VALUES, "absent"]:
            odd = {k: v for k, v in base.items() if k != spec.name}
            if value != "absent":
                odd[spec.name] = value
            rows = [dict(base) for _ in range(n - 1)] + [odd]
            careful = _careful(rows)
            fast = COLUMNS._fast.matrix(rows)
            if isinstance(careful, HandlerError):
                assert fast is None, f"{spec.name}={value!r}: accepted what the careful way refuses"
            elif fast is not None:
                np.testing.assert_array_equal(fast, careful, err_msg=f"{spec.name}={value!r}")
