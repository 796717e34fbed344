"""Property tests: whatever a client sends, the handler answers 200 or a 4xx with an ``error`` string."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.runtime.handler import HandlerError, ModelHandler
from tests.handler_fixtures import DEFAULT_COLUMNS, TINY_MODELS, build_artifact, spec_validator

INFERENCE_RESPONSE = spec_validator("inference_response")
ERROR_RESPONSE = spec_validator("inference_error_response")
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory) -> list[ModelHandler]:
    root = tmp_path_factory.mktemp("fuzz")
    return [ModelHandler.load(build_artifact(root, name), max_rows=50) for name in TINY_MODELS]


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=30,
)
numbers = st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6) | st.floats(allow_nan=True, allow_infinity=True)
cell = numbers | scalars  # mostly valid numbers, sometimes anything
columns = st.sampled_from(DEFAULT_COLUMNS + ["user_id", "other"])
rows = st.lists(st.dictionaries(columns, cell, max_size=9) | json_values, max_size=60)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["features", "input0", ""]) | json_values,
        "shape": st.lists(st.integers(-2, 60), max_size=3) | json_values,
        "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL", "fp64"]) | json_values,
        "data": st.lists(cell, max_size=60) | st.lists(st.lists(cell, max_size=8), max_size=8) | json_values,
        "parameters": json_values,
    },
)
# near-valid requests, so that deep validation paths and successes are exercised too
finite = st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6)
mostly_finite = finite | finite | finite | finite | cell
near_row = st.fixed_dictionaries({c: mostly_finite for c in DEFAULT_COLUMNS}, optional={"other": json_values})
near_rows = st.fixed_dictionaries({"data": st.lists(near_row, min_size=1, max_size=55)})


def _near_v2(n: int) -> st.SearchStrategy[dict[str, Any]]:
    flat = st.lists(mostly_finite, min_size=n * 7, max_size=n * 7)
    nested = st.lists(st.lists(mostly_finite, min_size=7, max_size=7), min_size=n, max_size=n)
    one = st.fixed_dictionaries(
        {
            "name": st.just("features") | st.just("features") | st.text(max_size=3),
            "shape": st.just([n, 7]) | st.just([n, 7]) | st.lists(st.integers(-1, 60), max_size=3),
            "datatype": st.sampled_from(["FP64", "FP64", "FP32", "INT32", "UINT8", "BOOL", "BYTES"]),
            "data": flat | flat | nested,
        }
    )
    return st.fixed_dictionaries(
        {"inputs": st.tuples(one).map(list)},
        optional={"id": st.text(max_size=5), "outputs": st.just([{"name": "predictions"}])},
    )


near_v2 = st.integers(1, 55).flatmap(_near_v2)
requests = (
    near_rows
    | near_v2
    | json_values
    | st.fixed_dictionaries({"data": rows})
    | st.fixed_dictionaries(
        {"inputs": st.lists(tensor, max_size=2) | json_values},
        optional={
            "id": json_values,
            "parameters": json_values,
            "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["predictions", "x"])}), max_size=2)
            | json_values,
        },
    )
)


def check_answer(status: int, body: bytes) -> None:
    assert status == 200 or 400 <= status < 500, (status, body)
    answer = orjson.loads(body)
    assert isinstance(answer, dict)
    if status == 200:
        assert ("predictions" in answer) != ("outputs" in answer)
        if "outputs" in answer:
            INFERENCE_RESPONSE.validate(answer)
        assert all(math.isfinite(v) for v in _leaves(answer) if isinstance(v, float))
    else:
        assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"]
        ERROR_RESPONSE.validate(answer)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


@FUZZ
@given(payload=requests, which=st.integers(0, len(TINY_MODELS) - 1))
def test_random_json_requests(handlers: list[ModelHandler], payload: Any, which: int) -> None:
    handler = handlers[which]
    body = json.dumps(payload).encode()  # json.dumps writes NaN/Infinity literals, as Python clients do
    status, answer = handler.handle_bytes(body)
    check_answer(status, answer)
    try:
        decoded = handler.predict(payload)
    except HandlerError as exc:
        assert exc.status == status and orjson.loads(answer)["error"] == exc.message
    else:
        assert status == 200 and decoded == orjson.loads(answer)


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes(handlers: list[ModelHandler], body: bytes) -> None:
    check_answer(*handlers[0].handle_bytes(body))


@FUZZ
@given(
    prefix=st.sampled_from([b'{"data": [', b'{"inputs": [{"name": "features", "shape": [1, 7], "data": [']),
    junk=st.binary(max_size=80),
)
def test_truncated_and_corrupted_bodies(handlers: list[ModelHandler], prefix: bytes, junk: bytes) -> None:
    check_answer(*handlers[0].handle_bytes(prefix + junk))


def test_deeply_nested_bodies_are_400(handlers: list[ModelHandler]) -> None:
    for body in (
        b"[" * 100_000,
        b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP64", "data": '
        + b"[" * 900
        + b"1"
        + b"]" * 900
        + b"}]}",
    ):
        status, answer = handlers[0].handle_bytes(body)
        check_answer(status, answer)
        assert status == 400
