"""The embedded handler: both request forms, every prediction format, every documented error, loading checks."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from exporter.runtime.handler import ArtifactError, HandlerError, ModelHandler
from tests.handler_fixtures import (
    DEFAULT_COLUMNS,
    MMOE_OUTPUTS,
    TINY_MODELS,
    build_artifact,
    build_tree,
    expected_output,
    sample_rows,
    spec_validator,
    tiny_model,
)

INFERENCE_RESPONSE = spec_validator("inference_response")
ERROR_RESPONSE = spec_validator("inference_error_response")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def handlers(tree: Path) -> dict[str, ModelHandler]:
    return {name: ModelHandler.load(tree / name) for name in TINY_MODELS}


def rows_matrix(rows: list[dict[str, Any]], columns: list[str]) -> np.ndarray:
    return np.array([[float(r[c]) for c in columns] for r in rows])


def call(handler: ModelHandler, payload: Any) -> tuple[int, Any]:
    raw = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    status, body = handler.handle_bytes(raw)
    assert isinstance(body, bytes)
    return status, orjson.loads(body)


def assert_error(status: int, answer: Any, expected_status: int, *fragments: str) -> None:
    assert status == expected_status, answer
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"]
    ERROR_RESPONSE.validate(answer)
    for fragment in fragments:
        assert fragment in answer["error"], (fragment, answer["error"])


# ------------------------------------------------------------------------------------------- success
@pytest.mark.parametrize("name", list(TINY_MODELS))
@pytest.mark.parametrize("n_rows", [1, 3, 257])
def test_torchserve_form_answers_per_prediction_format(
    handlers: dict[str, ModelHandler], name: str, n_rows: int
) -> None:
    handler = handlers[name]
    fmt, columns, width = TINY_MODELS[name]
    rows = sample_rows(columns, n_rows, seed=n_rows)
    for row in rows:
        row["extra_key_is_ignored"] = "anything"
    status, answer = call(handler, {"data": rows})
    assert status == 200, answer
    assert set(answer) == {"predictions"}
    expected = expected_output(rows_matrix(rows, columns), fmt, width)
    predictions = answer["predictions"]
    if fmt == "scalar":
        assert isinstance(predictions, list) and len(predictions) == n_rows
        assert all(isinstance(p, float) for p in predictions)
        np.testing.assert_allclose(predictions, expected, rtol=1e-12)
    elif fmt == "named_columns":
        assert len(predictions) == n_rows
        assert all(list(p) == MMOE_OUTPUTS for p in predictions)
        got = np.array([[p[c] for c in MMOE_OUTPUTS] for p in predictions])
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    else:
        if n_rows == 1:  # one row: the vector itself, flat
            assert len(predictions) == width and all(isinstance(v, float) for v in predictions)
            np.testing.assert_allclose(predictions, expected[0], rtol=1e-12)
        else:  # several rows: a list of vectors
            assert len(predictions) == n_rows and all(len(v) == width for v in predictions)
            np.testing.assert_allclose(predictions, expected, rtol=1e-12)


@pytest.mark.parametrize("name", list(TINY_MODELS))
@pytest.mark.parametrize("nested", [False, True])
def test_v2_form_answers_validate_against_spec(handlers: dict[str, ModelHandler], name: str, nested: bool) -> None:
    handler = handlers[name]
    fmt, columns, width = TINY_MODELS[name]
    x = rows_matrix(sample_rows(columns, 5, seed=3), columns)
    data = x.tolist() if nested else x.ravel().tolist()
    request = {
        "id": "req-42",
        "parameters": {"trace": "yes"},
        "inputs": [{"name": "features", "shape": [5, len(columns)], "datatype": "FP64", "data": data}],
        "outputs": [{"name": "predictions"}],
    }
    status, answer = call(handler, request)
    assert status == 200, answer
    INFERENCE_RESPONSE.validate(answer)
    assert answer["model_name"] == name
    assert answer["model_version"] == handler.version
    assert answer["id"] == "req-42"
    (out,) = answer["outputs"]
    assert out["name"] == "predictions" and out["datatype"] == "FP64"
    assert out["shape"] == ([5] if width is None else [5, width])
    expected = expected_output(x, fmt, width)
    np.testing.assert_allclose(np.array(out["data"]).reshape(expected.shape), expected, rtol=1e-12)
    assert len(out["data"]) == expected.size  # flat, row-major


def test_v2_without_id_or_outputs_and_with_integer_datatypes(handlers: dict[str, ModelHandler]) -> None:
    handler = handlers["xgb"]
    ints = list(range(14))
    for datatype in ("INT64", "FP32", "UINT8"):
        status, answer = call(
            handler, {"inputs": [{"name": "features", "shape": [2, 7], "datatype": datatype, "data": ints}]}
        )
        assert status == 200, answer
        assert "id" not in answer
        INFERENCE_RESPONSE.validate(answer)
        expected = expected_output(np.array(ints, dtype=float).reshape(2, 7), "scalar", None)
        np.testing.assert_allclose(answer["outputs"][0]["data"], expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("datatype", "value", "expected"),
    [("INT8", 300, "from -128 to 127"), ("UINT8", -1, "from 0 to 255"), ("INT32", 2.5, "from -2147483648 to")],
)
def test_v2_integer_datatypes_refuse_values_outside_them(
    handlers: dict[str, ModelHandler], datatype: str, value: float, expected: str
) -> None:
    """An INT8 tensor holding 300 is no valid tensor (Triton refuses it): a 400 naming the cell and the range."""
    data = list(range(14))
    data[9] = value  # row 1, the third column
    status, answer = call(
        handlers["xgb"], {"inputs": [{"name": "features", "shape": [2, 7], "datatype": datatype, "data": data}]}
    )
    assert status == 400
    column = handlers["xgb"].feature_columns[2]
    assert f'row 1, column "{column}" is {value:g}, not a {datatype}; expected an integer {expected}' in answer["error"]


def test_both_forms_give_the_same_numbers(handlers: dict[str, ModelHandler]) -> None:
    handler = handlers["mmoe"]
    rows = sample_rows(DEFAULT_COLUMNS, 4)
    _, ts = call(handler, {"data": rows})
    x = rows_matrix(rows, DEFAULT_COLUMNS)
    _, v2 = call(
        handler, {"inputs": [{"name": "features", "shape": [4, 7], "datatype": "FP64", "data": x.ravel().tolist()}]}
    )
    from_ts = [p[c] for p in ts["predictions"] for c in MMOE_OUTPUTS]
    assert from_ts == v2["outputs"][0]["data"]


def test_notebook_two_lines_and_sample_response(tree: Path) -> None:
    vdir = tree / "mmoe" / "1"
    request = json.loads((vdir / "sample_request.json").read_text())
    answer = ModelHandler.load(f"{vdir}").predict(request)
    assert answer == json.loads((vdir / "sample_response.json").read_text())


def test_predict_accepts_numpy_and_big_python_numbers(handlers: dict[str, ModelHandler]) -> None:
    handler = handlers["xgb"]
    row = {c: np.float64(0.5) for c in DEFAULT_COLUMNS}
    row["user_age"] = np.int64(30)
    row["user_gender"] = 10**30  # valid finite number, beyond int64
    answer = handler.predict({"data": [row]})
    x = np.array([[0.5, 0.5, 0.5, 30.0, 1e30, 0.5, 0.5]])
    np.testing.assert_allclose(answer["predictions"], expected_output(x, "scalar", None), rtol=1e-12)


def test_handle_bytes_accepts_bytes_like_and_str(handlers: dict[str, ModelHandler]) -> None:
    handler = handlers["two_tower"]
    body = json.dumps({"data": [{"user_age": 30, "user_gender": 1}]})
    answers = {
        handler.handle_bytes(b) for b in (body, body.encode(), bytearray(body.encode()), memoryview(body.encode()))
    }
    assert len(answers) == 1 and answers.pop()[0] == 200


# ------------------------------------------------------------------------------------------- errors
GOOD_ROW = dict(zip(DEFAULT_COLUMNS, [0.1, 0.01, 50.0, 30, 1, 3.0, 50.0], strict=True))


def with_value(row_index: int, column: str, raw_value: str) -> bytes:
    """A 3-row TorchServe body whose data[row_index][column] is the raw JSON text ``raw_value``."""
    rows = [dict(GOOD_ROW) for _ in range(3)]
    rows[row_index][column] = "__MARK__"
    return json.dumps({"data": rows}).replace('"__MARK__"', raw_value).encode()


def v2(**tensor: Any) -> dict[str, Any]:
    base = {"name": "features", "shape": [1, 7], "datatype": "FP64", "data": [0.5] * 7}
    base.update(tensor)
    return {"inputs": [base]}


FORMS = ('"data"', '"inputs"', "TorchServe", "Open Inference Protocol")

ERROR_CASES: list[tuple[str, Any, int, tuple[str, ...]]] = [
    # body not JSON, JSON not an object, neither data nor inputs: says which forms are accepted
    ("not json", b"{not json", 400, ("not valid JSON",) + FORMS),
    ("binary garbage", b"\xff\xfe\x00garbage", 400, ("not valid JSON",) + FORMS),
    ("empty body", b"", 400, ("not valid JSON",) + FORMS),
    ("json array", [GOOD_ROW], 400, ("must be a JSON object", "got a list") + FORMS),
    ("json number", 3, 400, ("must be a JSON object",) + FORMS),
    ("neither key", {"instances": [GOOD_ROW]}, 400, ("neither", '"instances"') + FORMS),
    ("both keys", {"data": [GOOD_ROW], "inputs": []}, 400, ("both",)),
    # data not a list, a row not an object, empty data: with the row index
    ("data not list", {"data": GOOD_ROW}, 400, ('"data" must be a list', "got an object")),
    ("data string", {"data": "1,2,3"}, 400, ('"data" must be a list', "got a string")),
    ("row not object", {"data": [GOOD_ROW, [1, 2, 3]]}, 400, ("data[1]", "got a list")),
    ("first row not object", {"data": ["x"]}, 400, ("data[0]", "got a string")),
    ("empty data", {"data": []}, 400, ('"data" is empty', "data[0]")),
    # missing feature: names the column(s) and the row
    (
        "missing feature",
        {"data": [GOOD_ROW, GOOD_ROW, {k: v for k, v in GOOD_ROW.items() if k != "user_age"}]},
        400,
        ("data[2]", '"user_age"', "missing"),
    ),
    ("missing features", {"data": [{"item_ctr": 0.1}]}, 400, ("data[0]", '"item_cvr"', '"cross_gender_x_price"')),
    # value NaN, Infinity, string, boolean, null: names the column and the row
    ("nan", with_value(1, "item_cvr", "NaN"), 400, ('data[1]["item_cvr"]', "NaN")),
    ("infinity", with_value(2, "item_price", "Infinity"), 400, ('data[2]["item_price"]', "Infinity")),
    ("-infinity", with_value(0, "user_age", "-Infinity"), 400, ('data[0]["user_age"]', "-Infinity")),
    ("overflowing number", with_value(0, "user_age", "1e999"), 400, ('data[0]["user_age"]', "Infinity")),
    ("string", with_value(1, "item_ctr", '"0.5"'), 400, ('data[1]["item_ctr"]', "string")),
    ("boolean", with_value(2, "user_gender", "true"), 400, ('data[2]["user_gender"]', "boolean")),
    ("null", with_value(0, "cross_age_x_ctr", "null"), 400, ('data[0]["cross_age_x_ctr"]', "null")),
    ("nested list value", with_value(1, "item_ctr", "[0.5]"), 400, ('data[1]["item_ctr"]', "list")),
    # v2: unknown input name, shape not 2-D or wrong width, data length, BYTES/BOOL, unknown output
    ("v2 inputs not list", {"inputs": {"name": "features"}}, 400, ('"inputs" must be a list', '"features"')),
    ("v2 two inputs", {"inputs": [v2()["inputs"][0]] * 2}, 400, ("2 tensors", '"features"')),
    ("v2 input not object", {"inputs": [[0.5] * 7]}, 400, ("inputs[0] must be an object",)),
    (
        "v2 missing datatype",
        {"inputs": [{"name": "features", "shape": [1, 7], "data": [0.5] * 7}]},
        400,
        ('missing "datatype"',),
    ),
    ("v2 unknown input", v2(name="input0"), 400, ('"input0"', "unknown input", '"features"')),
    ("v2 shape 1-D", v2(shape=[7]), 400, ("inputs[0].shape is [7]", "2-D", "[<rows>, 7]")),
    ("v2 shape 3-D", v2(shape=[1, 1, 7]), 400, ("inputs[0].shape", "2-D")),
    ("v2 wrong width", v2(shape=[1, 6], data=[0.5] * 6), 400, ("inputs[0].shape is [1, 6]", "7 columns")),
    ("v2 zero rows", v2(shape=[0, 7], data=[]), 400, ("at least 1 row",)),
    ("v2 shape not ints", v2(shape=["1", 7]), 400, ("inputs[0].shape",)),
    ("v2 data too short", v2(data=[0.5] * 6), 400, ("holds 6 values", "needs 7")),
    ("v2 data too long", v2(shape=[2, 7], data=[0.5] * 15), 400, ("holds 15 values", "needs 14")),
    ("v2 ragged nested", v2(shape=[2, 7], data=[[0.5] * 7, [0.5] * 6]), 400, ("row 1 holds 6 values",)),
    ("v2 data not list", v2(data="0.5"), 400, ("inputs[0].data must be a list",)),
    ("v2 BYTES", v2(datatype="BYTES", data=["a"] * 7), 400, ('"BYTES"', "not supported", "FP64")),
    ("v2 BOOL", v2(datatype="BOOL", data=[True] * 7), 400, ('"BOOL"', "not supported", "FP64")),
    ("v2 unknown datatype", v2(datatype="FP128"), 400, ('"FP128"', "not supported")),
    ("v2 string value", v2(shape=[2, 7], data=[0.5] * 8 + ["x"] + [0.5] * 5), 400, ("row 1", '"item_cvr"', "string")),
    ("v2 null value", v2(data=[0.5] * 6 + [None]), 400, ("row 0", '"cross_gender_x_price"', "null")),
    ("v2 bool value", v2(data=[0.5] * 3 + [True] + [0.5] * 3), 400, ("row 0", '"user_age"', "boolean")),
    (
        "v2 unknown output",
        dict(v2(), outputs=[{"name": "probabilities"}]),
        400,
        ('"probabilities"', "unknown output", '"predictions"'),
    ),
    ("v2 output not object", dict(v2(), outputs=["predictions"]), 400, ("outputs[0]", '"predictions"')),
    ("v2 id not string", dict(v2(), id=42), 400, ('"id" must be a string',)),
    ("v2 parameters not object", dict(v2(), parameters=[1]), 400, ('"parameters" must be an object',)),
]


@pytest.mark.parametrize("payload, status, fragments", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_table(handlers: dict[str, ModelHandler], payload: Any, status: int, fragments: tuple[str, ...]) -> None:
    got_status, answer = call(handlers["xgb"], payload)
    assert_error(got_status, answer, status, *fragments)
    if not isinstance(payload, bytes):
        with pytest.raises(HandlerError) as info:
            handlers["xgb"].predict(payload)
        assert info.value.status == status


def test_v2_nan_literal_names_row_and_column(handlers: dict[str, ModelHandler]) -> None:
    body = (
        b'{"inputs": [{"name": "features", "shape": [2, 7], "datatype": "FP64", '
        b'"data": [1,2,3,4,5,6,7,1,2,NaN,4,5,6,7]}]}'
    )
    assert_error(*call(handlers["xgb"], body), 400, "row 1", '"item_price"', "NaN")


def test_lone_surrogate_id_is_400_not_a_crash(handlers: dict[str, ModelHandler]) -> None:
    # NaN sends the body through the lenient parser, which accepts lone surrogates that orjson cannot write back
    body = (
        b'{"id": "\\ud800", "inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP64", '
        b'"data": [1,2,3,4,5,6,7]}], "x": NaN}'
    )
    assert_error(*call(handlers["xgb"], body), 400, '"id" is not valid Unicode')


def test_boolean_among_floats_is_not_coerced(handlers: dict[str, ModelHandler]) -> None:
    # numpy would silently turn true into 1.0: the handler must not
    rows = [dict(GOOD_ROW) for _ in range(50)]
    rows[37]["item_ctr"] = False
    assert_error(*call(handlers["xgb"], {"data": rows}), 400, 'data[37]["item_ctr"]', "boolean (false)")


@pytest.mark.parametrize("form", ["torchserve", "v2"])
def test_rows_above_the_limit_are_413(tree: Path, form: str) -> None:
    handler = ModelHandler.load(tree / "xgb", max_rows=5)
    ok = {"data": [GOOD_ROW] * 5}
    assert call(handler, ok)[0] == 200
    if form == "torchserve":
        payload: dict[str, Any] = {"data": [GOOD_ROW] * 6}
    else:
        payload = v2(shape=[6, 7], data=[0.5] * 42)
    assert_error(*call(handler, payload), 413, "6 rows", "at most 5")


# ------------------------------------------------------------------------------------------- loading
def copy_version(tree: Path, tmp_path: Path, name: str = "xgb") -> Path:
    dst = tmp_path / name / "1"
    shutil.copytree(tree / name / "1", dst)
    shutil.copy(tree / name / "config.pbtxt", tmp_path / name / "config.pbtxt")
    return dst


def test_tampered_model_is_refused_before_a_session_exists(tree: Path, tmp_path: Path) -> None:
    vdir = copy_version(tree, tmp_path)
    data = bytearray((vdir / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (vdir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 of .*model.onnx.* but metadata.json records"):
        ModelHandler.load(vdir)


@pytest.mark.parametrize("missing", ["model.onnx", "metadata.json"])
def test_missing_files_are_reported(tree: Path, tmp_path: Path, missing: str) -> None:
    vdir = copy_version(tree, tmp_path)
    (vdir / missing).unlink()
    with pytest.raises(ArtifactError, match=missing.replace(".", r"\.")):
        ModelHandler.load(vdir)


def test_unusable_metadata_is_reported(tree: Path, tmp_path: Path) -> None:
    vdir = copy_version(tree, tmp_path)
    (vdir / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not readable JSON"):
        ModelHandler.load(vdir)
    meta = json.loads((tree / "xgb" / "1" / "metadata.json").read_text())
    meta["prediction_format"] = "probabilities"
    meta["model_file"] = "../../etc/passwd"
    (vdir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as info:
        ModelHandler.load(vdir)
    assert "prediction_format" in str(info.value) and "plain file name" in str(info.value)


def test_graph_that_disagrees_with_metadata_is_refused(tmp_path: Path) -> None:
    vdir = build_artifact(tmp_path, "xgb", write_sample_response=False)
    model = tiny_model(6, "scalar", None)  # 6 inputs, metadata says 7
    raw = model.SerializeToString()
    (vdir / "model.onnx").write_bytes(raw)
    meta = json.loads((vdir / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(raw).hexdigest()
    (vdir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"metadata expects \[batch, 7\]"):
        ModelHandler.load(vdir)


def test_model_directory_loads_the_highest_version(tree: Path, tmp_path: Path) -> None:
    assert ModelHandler.load(tree / "xgb").version == "2"  # .staging-123 is ignored
    assert ModelHandler.load(tree / "xgb" / "1").version == "1"
    with pytest.raises(ArtifactError, match="no metadata.json and no version"):
        ModelHandler.load(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        ModelHandler.load(tmp_path / "nope")


def test_named_columns_encoding_equals_the_plain_json_encoding(tree: Path, tmp_path: Path) -> None:
    vdir = copy_version(tree, tmp_path, "mmoe")
    meta = json.loads((vdir / "metadata.json").read_text())
    meta["output_columns"] = ['c"1', "watch time", "gmv\u00e9"]  # names that need JSON escaping
    (vdir / "metadata.json").write_text(json.dumps(meta))
    handler = ModelHandler.load(vdir)
    rng = np.random.default_rng(0)
    for out in (
        rng.normal(size=(1, 3)),
        rng.normal(size=(257, 3)) * 1e6,
        np.array([[np.nan, np.inf, -0.0], [1e300, -1e-300, 5.0]]),
    ):
        plain = orjson.dumps({"predictions": [dict(zip(meta["output_columns"], r, strict=True)) for r in out.tolist()]})
        assert handler.torchserve.encode_named(out) == plain


# ------------------------------------------------------------------------------------------- one path
def test_every_entry_point_answers_through_answer(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict, handle_bytes, handle_request, handle_http and TorchServe's handle all take ModelHandler.answer."""
    from exporter.runtime import torchserve_entry

    handler = ModelHandler.load(tree / "xgb")
    calls: list[str] = []
    real = handler.answer

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("answer")
        return real(*args, **kwargs)

    monkeypatch.setattr(handler, "answer", counting)
    monkeypatch.setattr(torchserve_entry, "_service", handler)
    body = json.dumps({"data": sample_rows(DEFAULT_COLUMNS, 2)})
    expected = handler.predict(json.loads(body))
    assert orjson.loads(handler.handle_bytes(body)[1]) == expected
    assert orjson.loads(handler.handle_request(body)[1]) == expected
    assert orjson.loads(handler.handle_http(body.encode(), None)[1]) == expected
    answers = torchserve_entry.handle([{"body": body.encode()}, {"body": json.loads(body)}], None)
    assert [orjson.loads(a) for a in answers] == [expected, expected]
    assert calls == ["answer"] * 6


@pytest.mark.parametrize("entry", ["handle_bytes", "handle_http", "handle_http binary"])
def test_a_v2_request_is_validated_once(tree: Path, monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    handler = ModelHandler.load(tree / "xgb")
    checks: list[bool] = []
    real = handler.v2.check

    def counting(payload: Any, binary: bool = False) -> Any:
        checks.append(binary)
        return real(payload, binary)

    monkeypatch.setattr(handler.v2, "check", counting)
    x = np.arange(14, dtype=np.float64).reshape(2, 7) / 10
    tensor = {"name": "features", "shape": [2, 7], "datatype": "FP64"}
    if entry == "handle_http binary":
        header = json.dumps({"inputs": [dict(tensor, parameters={"binary_data_size": x.nbytes})]}).encode()
        status, answer, rows, _ = handler.handle_http(header + x.tobytes(), len(header))
    else:
        body = json.dumps({"inputs": [dict(tensor, data=x.ravel().tolist())]})
        status, answer = handler.handle_bytes(body) if entry == "handle_bytes" else handler.handle_http(body)[:2]
    assert status == 200, answer
    np.testing.assert_allclose(orjson.loads(answer)["outputs"][0]["data"], expected_output(x, "scalar", None))
    assert len(checks) == 1
