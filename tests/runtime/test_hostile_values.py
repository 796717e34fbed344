"""Hostile values in every column kind and every request form: lone surrogates, integers beyond 2^53, NaN in
optional columns, integer codes for string columns, the binary header's length (docs/features.md section 4,
docs/contract.md section 4)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.runtime.handler import ModelHandler
from exporter.runtime.rules import hash_code
from tests.handler_fixtures import build_artifact, weights

GENRES = ["drama", "comedy", "horror"]
SEGMENTS = ["even", "odd"]
#: column -> its ``features`` entry: one of each kind the handler reads
FEATURES: dict[str, dict[str, Any]] = {
    "price": {"kind": "numeric", "dtype": "float64"},
    "age": {"kind": "numeric", "dtype": "float64", "optional": True},
    "user_id": {"kind": "categorical", "dtype": "int64"},
    "genre": {"kind": "categorical", "dtype": "string", "oov": {"policy": "vocabulary"}},
    "tag": {"kind": "categorical", "dtype": "string", "oov": {"policy": "hash"}},
    "is_new": {"kind": "categorical", "dtype": "bool"},
    "segment": {"kind": "categorical", "dtype": "string", "optional": True, "oov": {"policy": "vocabulary"}},
    "item_id": {"kind": "categorical", "dtype": "int64", "optional": True},
}
COLUMNS = list(FEATURES)
VALID: dict[str, Any] = {
    "price": 12.5,
    "age": 30,
    "user_id": 7,
    "genre": "comedy",
    "tag": "blue",
    "is_new": True,
    "segment": "odd",
    "item_id": 3,
}
#: VALID as the codes the tensor holds
VALID_CODES = [12.5, 30.0, 7.0, 1.0, float(hash_code("blue")), 1.0, 1.0, 3.0]
BIG = 2**53


def _filling_model(k: int) -> onnx.ModelProto:
    """features [N, k] -> sigmoid((NaN -> 0) @ W) [N]: the tiny graph, filling missing values like exports do."""
    w = numpy_helper.from_array(weights(k, None), name="W")
    zero = numpy_helper.from_array(np.zeros((), dtype=np.float64), name="zero")
    nodes = [
        helper.make_node("IsNaN", ["features"], ["missing"]),
        helper.make_node("Where", ["missing", "zero", "features"], ["filled"]),
        helper.make_node("MatMul", ["filled", "W"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["predictions"]),
    ]
    graph = helper.make_graph(
        nodes,
        "filling",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", k])],
        [helper.make_tensor_value_info("predictions", TensorProto.DOUBLE, ["batch"])],
        initializer=[w, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def build_mixed(root: Path) -> Path:
    """A tiny artifact whose columns are one of each kind, with its vocab.json."""
    vdir = build_artifact(root, "mixed", fmt="scalar", columns=COLUMNS, width=None, write_sample_response=False)
    vocab = (json.dumps({"genre": GENRES, "segment": SEGMENTS}) + "\n").encode()
    (vdir / "vocab.json").write_bytes(vocab)
    digest = hashlib.sha256(vocab).hexdigest()
    model = _filling_model(len(COLUMNS)).SerializeToString()
    (vdir / "model.onnx").write_bytes(model)
    meta = json.loads((vdir / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(model).hexdigest()
    meta["features"] = [
        dict(
            {"name": c},
            **e,
            **({"vocab": {"file": "vocab.json", "sha256": digest, "key": c}} if c in ("genre", "segment") else {}),
        )
        for c, e in FEATURES.items()
    ]
    (vdir / "metadata.json").write_text(json.dumps(meta, indent=2))
    return vdir


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> ModelHandler:
    return ModelHandler.load(build_mixed(tmp_path_factory.mktemp("hostile")))


# ---------------------------------------------------------------------------------------------- the three forms
def torchserve_body(row: dict[str, Any]) -> bytes:
    return ("{" + f'"data": [{{{", ".join(f"{json.dumps(c)}: {v}" for c, v in row.items())}}}]' + "}").encode()


def v2_body(cells: list[str], n: int = 1) -> bytes:
    data = ", ".join(cells)
    return (
        f'{{"id": "r1", "inputs": [{{"name": "features", "shape": [{n}, {len(COLUMNS)}], "datatype": "FP64", '
        f'"data": [{data}]}}]}}'
    ).encode()


def binary_body(matrix: np.ndarray, datatype: str = "FP64") -> tuple[bytes, str]:
    dtype = {"FP64": "<f8", "INT64": "<i8"}[datatype]
    raw = np.ascontiguousarray(matrix, dtype=dtype).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(matrix.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return header + raw, str(len(header))


def json_cells(row: dict[str, Any]) -> dict[str, str]:
    """VALID as JSON text per column, with ``row``'s raw JSON text in place."""
    return {c: row.get(c, json.dumps(VALID[c])) for c in COLUMNS}


def send(handler: ModelHandler, body: bytes, header: str | None = None) -> tuple[int, Any]:
    status, answer, _, header_length = handler.handle_http(body, header)
    assert status < 500, (status, answer)
    if header_length is not None:
        return status, json.loads(answer[:header_length])
    return status, json.loads(answer)  # every body, error or not, is valid JSON


def assert_400(status: int, answer: Any, *fragments: str) -> None:
    assert status == 400, answer
    assert set(answer) == {"error"}
    for fragment in fragments:
        assert fragment in answer["error"], (fragment, answer["error"])


def prediction(answer: dict[str, Any]) -> float:
    if "predictions" in answer:
        return float(answer["predictions"][0])
    return float(answer["outputs"][0]["data"][0])


# ---------------------------------------------------------------------------------------------- lone surrogates
@pytest.mark.parametrize("column", ["tag", "genre", "segment", "price", "user_id", "is_new"])
def test_a_lone_surrogate_is_a_400_or_an_unknown_string_never_a_500(mixed: ModelHandler, column: str) -> None:
    status, answer = send(mixed, torchserve_body(json_cells({column: '"\\ud800"'})))
    if column in ("genre", "segment"):  # a string not in the vocabulary: the code -1, the OOV row
        assert status == 200, answer
        return
    assert_400(status, answer, f'data[0]["{column}"]', '"\\ud800"')


def test_lone_surrogates_in_keys_names_and_ids_are_answered(mixed: ModelHandler) -> None:
    row = dict(json_cells({}), **{"\\udfff": "1"})
    status, _ = send(mixed, torchserve_body(row))
    assert status == 200  # extra keys are ignored
    status, answer = send(mixed, torchserve_body({c: v for c, v in json_cells({}).items() if c != "price"}))
    assert_400(status, answer, '"price"')
    status, answer = send(mixed, b'{"\\ud800": 1}')
    assert_400(status, answer, '"\\ud800"')
    body = v2_body([json.dumps(v) for v in VALID_CODES]).replace(b'"r1"', b'"\\ud800"')
    assert_400(*send(mixed, body), '"id"')
    status, answer = send(mixed, body.replace(b'"features"', b'"\\udc00x"'))
    assert status == 400 and "error" in answer
    status, answer = send(mixed, v2_body([json.dumps(v) for v in VALID_CODES]).replace(b'"FP64"', b'"\\ud800"'))
    assert_400(status, answer, '"\\ud800"')


def test_an_error_message_holding_a_lone_surrogate_is_still_json() -> None:
    from exporter.runtime.errors import HandlerError

    body = HandlerError(400, "bad \ud800 text").to_bytes()
    assert json.loads(body) == {"error": "bad \ud800 text"}


# ---------------------------------------------------------------------------------------------- beyond 2^53
@pytest.mark.parametrize("column", ["user_id", "item_id", "genre", "tag", "is_new"])
@pytest.mark.parametrize("value", [BIG + 1, -(BIG + 1), 2**63, BIG + 3])
def test_an_integer_id_beyond_2_53_is_refused_in_every_json_form(mixed: ModelHandler, column: str, value: int) -> None:
    status, answer = send(mixed, torchserve_body(json_cells({column: str(value)})))
    assert_400(status, answer, f'data[0]["{column}"]', "2^53")
    cells = [json.dumps(v) for v in VALID_CODES]
    cells[COLUMNS.index(column)] = str(value)
    status, answer = send(mixed, v2_body(cells))
    assert_400(status, answer, f'column "{column}"', "2^53")
    # nested data and the JSON data of the binary form take the same rule
    nested = v2_body(["[" + ", ".join(cells) + "]"])
    assert_400(*send(mixed, nested), f'column "{column}"', "2^53")


@pytest.mark.parametrize("value", [BIG, -BIG, BIG - 1])
def test_integer_ids_up_to_2_53_are_accepted_exactly(mixed: ModelHandler, value: int) -> None:
    ts = send(mixed, torchserve_body(json_cells({"user_id": str(value)})))
    cells = [json.dumps(v) for v in VALID_CODES]
    cells[COLUMNS.index("user_id")] = str(value)
    v2 = send(mixed, v2_body(cells))
    matrix = np.array([VALID_CODES], dtype=np.int64)
    matrix[0, COLUMNS.index("user_id")] = value
    matrix[0, COLUMNS.index("price")] = 12
    binary = send(mixed, *binary_body(matrix, "INT64"))
    assert ts[0] == v2[0] == binary[0] == 200
    assert prediction(ts[1]) == prediction(v2[1])


def test_the_same_id_in_many_rows_is_checked_in_each(mixed: ModelHandler) -> None:
    rows = [dict(VALID, user_id=BIG) for _ in range(5)] + [dict(VALID, user_id=BIG + 1)]
    status, answer = send(mixed, json.dumps({"data": rows}).encode())
    assert_400(status, answer, 'data[5]["user_id"]', "9007199254740993")


# ---------------------------------------------------------------------------------------------- string codes
@pytest.mark.parametrize("column", ["genre", "segment", "tag"])
@pytest.mark.parametrize("code", [0, 2, -1, 99])
def test_an_integer_for_a_string_column_is_its_code_in_every_form(mixed: ModelHandler, column: str, code: int) -> None:
    j = COLUMNS.index(column)
    codes = list(VALID_CODES)
    codes[j] = float(code)
    ts = send(mixed, torchserve_body(json_cells({column: str(code)})))
    v2 = send(mixed, v2_body([json.dumps(v) for v in codes]))
    binary = send(mixed, *binary_body(np.array([codes])))
    expected = float(mixed.run(np.array([codes]))[0])
    assert ts[0] == v2[0] == binary[0] == 200
    assert prediction(ts[1]) == prediction(v2[1]) == prediction(binary[1]) == expected
    if code in (0, 2) and column == "genre":  # the string and its code are the same cell
        named = send(mixed, torchserve_body(json_cells({column: json.dumps(GENRES[code])})))
        assert prediction(named[1]) == expected


# ---------------------------------------------------------------------------------------------- NaN
@pytest.mark.parametrize("column", ["age", "segment", "item_id"])
def test_nan_is_the_missing_value_of_an_optional_column_in_every_form(mixed: ModelHandler, column: str) -> None:
    j = COLUMNS.index(column)
    codes = list(VALID_CODES)
    codes[j] = math.nan
    expected = float(mixed.run(np.array([codes]))[0])
    results = [
        send(mixed, torchserve_body(json_cells({column: "NaN"}))),
        send(mixed, torchserve_body(json_cells({column: "null"}))),
        send(mixed, v2_body(["NaN" if math.isnan(v) else json.dumps(v) for v in codes])),
        send(mixed, *binary_body(np.array([codes]))),
    ]
    for status, answer in results:
        assert status == 200, answer
        assert prediction(answer) == expected


@pytest.mark.parametrize("column", ["price", "user_id", "genre", "tag", "is_new"])
def test_nan_in_a_required_column_is_a_400_naming_it(mixed: ModelHandler, column: str) -> None:
    j = COLUMNS.index(column)
    codes = list(VALID_CODES)
    codes[j] = math.nan
    assert_400(*send(mixed, torchserve_body(json_cells({column: "NaN"}))), f'data[0]["{column}"]', "NaN")
    cells = ["NaN" if math.isnan(v) else json.dumps(v) for v in codes]
    assert_400(*send(mixed, v2_body(cells)), f'column "{column}"', "NaN", "not optional")
    assert_400(*send(mixed, *binary_body(np.array([codes]))), f'column "{column}"', "NaN", "not optional")


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity"])
def test_infinity_stays_refused_even_in_optional_columns(mixed: ModelHandler, literal: str) -> None:
    codes = [json.dumps(v) for v in VALID_CODES]
    codes[COLUMNS.index("age")] = literal
    assert_400(*send(mixed, v2_body(codes)), 'column "age"', "Infinity")
    assert_400(*send(mixed, torchserve_body(json_cells({"age": literal}))), 'data[0]["age"]', "Infinity")


# ---------------------------------------------------------------------------------------------- header length
@pytest.mark.parametrize("text", [" +0012 ", "+12", "1_0", "١٢", " 12", "12 ", "-12", "0x10", "1e2", ""])
def test_the_header_length_takes_ascii_digits_only(mixed: ModelHandler, text: str) -> None:
    body, header = binary_body(np.array([VALID_CODES]))
    status, answer = send(mixed, body, text)
    assert_400(status, answer, "Inference-Header-Content-Length", json.dumps(text))
    assert send(mixed, body, header)[0] == 200
    assert send(mixed, body, "0" + header)[0] == 200  # leading zeros are still ASCII digits


def test_the_server_passes_the_header_as_sent(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from exporter.serving.server import ModelRegistry, create_app

    build_mixed(tmp_path)
    body, header = binary_body(np.array([VALID_CODES]))
    with TestClient(create_app(ModelRegistry.from_artifacts(tmp_path))) as client:
        for text, status in [(f" +{header} ", 400), (header[:1] + "_" + header[1:], 400), (header, 200)]:
            response = client.post(
                "/predictions/mixed", content=body, headers={"Inference-Header-Content-Length": text}
            )
            assert response.status_code == status, (text, response.content)
        response = client.post(
            "/predictions/mixed", content=body, headers={"Inference-Header-Content-Length": b"\xff1"}
        )
        assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]
        # a model name that is not valid UTF-8 or holds a surrogate's bytes: a 404 that is valid JSON
        for path in ["/predictions/%ED%A0%80", "/predictions/mixed/%ED%A0%80", "/predictions/%FF"]:
            response = client.post(path, content=torchserve_body(json_cells({"tag": '"\\ud800"'})))
            assert response.status_code == 404 and "error" in json.loads(response.content)
        response = client.post("/predictions/mixed", content=torchserve_body(json_cells({"tag": '"\\ud800"'})))
        assert response.status_code == 400 and '"\\ud800"' in response.json()["error"]


# ---------------------------------------------------------------------------------------------- the fuzz
HOSTILE = [
    '"\\ud800"',
    '"\\udfff\\ud800"',
    str(BIG + 1),
    str(-(BIG + 1)),
    str(BIG - 1),
    str(2**63),
    str(2**64 + 1),
    str(-(2**63) - 1),
    "1" + "0" * 400,
    "1e308",
    "-1e308",
    "9007199254740993.0",
    "true",
    "false",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "[]",
    '[["\\ud800"]]',
    '{"a": [1, {"b": null}]}',
    '"drama"',
    "0",
    "-1",
    "12.5",
]


def _forms(j: int, cell: str) -> list[tuple[bytes, str | None]]:
    cells = [json.dumps(v) for v in VALID_CODES]
    cells[j] = cell
    tensor = v2_body(cells)
    header = tensor  # the v2 JSON request sent as a binary request's header with no binary data
    return [
        (torchserve_body(json_cells({COLUMNS[j]: cell})), None),
        (tensor, None),
        (header, str(len(header))),
        (v2_body(["[" + ", ".join(cells) + "]"]), None),
    ]


@pytest.mark.parametrize(("j", "cell"), list(itertools.product(range(len(COLUMNS)), HOSTILE)))
def test_fuzz_every_column_kind_every_form(mixed: ModelHandler, j: int, cell: str) -> None:
    for body, header in _forms(j, cell):
        status, answer = send(mixed, body, header)  # asserts < 500 and valid JSON
        if status != 200:
            assert set(answer) == {"error"} and isinstance(answer["error"], str)
    # the binary form: the same value where FP64 can hold it
    try:
        value = float(json.loads(cell))
    except (TypeError, ValueError, OverflowError):  # not a number FP64 holds: no binary form
        return
    codes = list(VALID_CODES)
    codes[j] = value
    status, answer = send(mixed, *binary_body(np.array([codes])))
    if status != 200:
        assert set(answer) == {"error"}
