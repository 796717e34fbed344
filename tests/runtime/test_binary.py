"""Triton's binary tensor data extension on the v2 form, through tritonclient's own codec.

Requests are built by ``tritonclient.http.InferenceServerClient.generate_request_body`` and answers read by
``parse_response_body``, in the handler and over HTTP against ``python -m exporter serve``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as tc

from exporter.runtime.handler import ModelHandler
from tests.handler_fixtures import TINY_MODELS, build_tree, expected_output
from tests.serving.test_server import MAX_BODY, MAX_ROWS, LiveServer, assert_json_error

Client = tc.InferenceServerClient


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("binary"))


def _x(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 2.0, (n, k))


def _request(
    x: np.ndarray, datatype: str = "FP64", binary_in: bool = True, binary_out: bool | None = True, request_id: str = ""
) -> tuple[bytes, int | None]:
    inp = tc.InferInput("features", list(x.shape), datatype)
    inp.set_data_from_numpy(x.astype(tc.triton_to_np_dtype(datatype)), binary_data=binary_in)
    outputs = None if binary_out is None else [tc.InferRequestedOutput("predictions", binary_data=binary_out)]
    return Client.generate_request_body([inp], outputs=outputs, request_id=request_id)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_binary_in_binary_out(tree: Path, name: str) -> None:
    fmt, columns, width = TINY_MODELS[name]
    handler = ModelHandler.load(tree / name / "1")
    x = _x(5, len(columns))
    body, header_length = _request(x, request_id="r-1")
    assert header_length is not None and header_length < len(body)
    status, answer, rows, answer_header = handler.handle_http(body, header_length)
    assert (status, rows) == (200, 5) and answer_header is not None
    result = Client.parse_response_body(answer, header_length=answer_header)
    got = result.as_numpy("predictions")
    assert got.dtype == np.float64 and got.shape == ((5,) if width is None else (5, width))
    np.testing.assert_allclose(got, expected_output(x, fmt, width), rtol=0, atol=1e-12)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == name and response["model_version"] == "1"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == got.size * 8


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "BF16", "INT32", "INT64", "UINT8"])
def test_other_datatypes_are_cast_to_fp64(tree: Path, datatype: str) -> None:
    handler = ModelHandler.load(tree / "xgb" / "1")
    x = np.round(_x(3, 7, seed=2) * 4)  # small integers: exact in every datatype
    body, header_length = _request(x, datatype)
    status, answer, _, answer_header = handler.handle_http(body, header_length)
    assert status == 200, answer
    got = Client.parse_response_body(answer, header_length=answer_header).as_numpy("predictions")
    np.testing.assert_allclose(got, expected_output(x, "scalar", None), atol=1e-12)


def test_mixed_json_and_binary_forms(tree: Path) -> None:
    handler = ModelHandler.load(tree / "mmoe" / "1")
    x = _x(4, len(TINY_MODELS["mmoe"][1]))
    want = expected_output(x, "named_columns", 3)
    # JSON numbers in, binary out (no Inference-Header-Content-Length on the request)
    body, header_length = _request(x, binary_in=False, binary_out=True)
    assert header_length is None
    status, answer, _, answer_header = handler.handle_http(body, None)
    assert status == 200 and answer_header is not None
    np.testing.assert_allclose(
        Client.parse_response_body(answer, header_length=answer_header).as_numpy("predictions"), want, atol=1e-12
    )
    # binary in, JSON out
    body, header_length = _request(x, binary_out=False)
    status, answer, _, answer_header = handler.handle_http(body, header_length)
    assert status == 200 and answer_header is None
    out = json.loads(answer)["outputs"][0]
    assert out["shape"] == [4, 3] and "parameters" not in out
    np.testing.assert_allclose(np.array(out["data"]).reshape(4, 3), want, atol=1e-12)
    # no outputs named: tritonclient asks for every output in binary (parameters.binary_data_output)
    body, header_length = _request(x, binary_out=None)
    status, answer, _, answer_header = handler.handle_http(body, header_length)
    assert status == 200 and answer_header is not None
    # the JSON-only entry point (TorchServe, notebooks) is unchanged
    assert handler.handle_bytes(json.dumps({"data": []}))[0] == 400


def _binary_body(header: dict, payload: bytes) -> tuple[bytes, int]:
    text = json.dumps(header).encode()
    return text + payload, len(text)


def _tensor(shape: list[int], size: int, datatype: str = "FP64", **extra: object) -> dict:
    return {
        "inputs": [
            {
                "name": "features",
                "shape": shape,
                "datatype": datatype,
                "parameters": {"binary_data_size": size},
                **extra,
            }
        ]
    }


@pytest.mark.parametrize(
    "case, status, fragments",
    [
        ("short", 400, ["holds 48 bytes after the JSON header", "binary_data_size says 56"]),
        ("long", 400, ["holds 64 bytes after the JSON header"]),
        ("size", 400, ["binary_data_size is 48", "shape [1, 7] of FP64 needs 56 bytes"]),
        ("nan", 400, ['row 0, column "item_price"', "NaN"]),
        ("inf", 400, ['row 0, column "item_ctr"', "Infinity"]),
        ("big_id", 400, ["beyond 2^53"]),
        ("both", 400, ['both "data" and parameters.binary_data_size']),
        ("header_too_long", 400, ["Inference-Header-Content-Length is 100000", "up to the body's"]),
        ("header_not_a_number", 400, ['Inference-Header-Content-Length is "ten"']),
        ("torchserve", 400, ["binary tensor data comes only with the Open Inference Protocol form"]),
        ("flag", 400, ["outputs[0].parameters.binary_data must be true or false"]),
        ("rows", 413, ["accepts at most 50 rows"]),
        ("no_header", 400, ["binary_data_size needs the Inference-Header-Content-Length header"]),
        ("bad_json", 400, ["not valid JSON"]),
    ],
)
def test_binary_errors(tree: Path, case: str, status: int, fragments: list[str]) -> None:
    handler = ModelHandler.load(tree / "xgb" / "1", max_rows=MAX_ROWS)
    row = struct.pack("<7d", *([0.5] * 7))
    header_length: object
    if case == "short":
        body, header_length = _binary_body(_tensor([1, 7], 56), row[:48])
    elif case == "long":
        body, header_length = _binary_body(_tensor([1, 7], 56), row + row[:8])
    elif case == "size":
        body, header_length = _binary_body(_tensor([1, 7], 48), row[:48])
    elif case == "nan":
        body, header_length = _binary_body(_tensor([1, 7], 56), struct.pack("<7d", 0.1, 0.1, float("nan"), 1, 1, 1, 1))
    elif case == "inf":
        body, header_length = _binary_body(_tensor([1, 7], 56), struct.pack("<7d", float("inf"), 0.1, 1, 1, 1, 1, 1))
    elif case == "big_id":
        body, header_length = _binary_body(
            _tensor([1, 7], 56, "INT64"), struct.pack("<7q", 1, 2, 3, 2**53 + 1, 1, 1, 1)
        )
    elif case == "both":
        body, header_length = _binary_body(_tensor([1, 7], 56, data=[0.5] * 7), row)
    elif case == "header_too_long":
        body, header_length = _binary_body(_tensor([1, 7], 56), row)
        header_length = 100_000
    elif case == "header_not_a_number":
        body, header_length = _binary_body(_tensor([1, 7], 56), row)
        header_length = "ten"
    elif case == "torchserve":
        body, header_length = _binary_body({"data": [{"item_ctr": 1.0}]}, row)
    elif case == "flag":
        header = _tensor([1, 7], 56)
        header["outputs"] = [{"name": "predictions", "parameters": {"binary_data": "yes"}}]
        body, header_length = _binary_body(header, row)
    elif case == "rows":
        body, header_length = _binary_body(_tensor([51, 7], 51 * 56), row * 51)
    elif case == "no_header":
        body, header_length = _binary_body(_tensor([1, 7], 56), b"")
        header_length = None
    else:
        body, header_length = b"{oops" + row, 5
    got_status, answer, rows, answer_header = handler.handle_http(body, header_length)  # type: ignore[arg-type]
    assert (got_status, rows, answer_header) == (status, 0, None), answer
    message = json.loads(answer)["error"]
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ------------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[LiveServer]:
    live = LiveServer(
        ["--artifacts", str(tree), "--port", "0", "--max-rows", str(MAX_ROWS), "--max-body-bytes", str(MAX_BODY)]
    )
    yield live
    live.stop()


def test_binary_over_http(server: LiveServer) -> None:
    x = _x(6, 2, seed=5)
    body, header_length = _request(x, request_id="http")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        r = client.post(
            "/predictions/two_tower/1",
            content=body,
            headers={"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        result = Client.parse_response_body(r.content, header_length=int(r.headers["inference-header-content-length"]))
        np.testing.assert_allclose(result.as_numpy("predictions"), expected_output(x, "vector", 4), atol=1e-12)
        assert result.get_response()["id"] == "http"
        # errors keep the JSON error table
        assert_json_error(
            client.post(
                "/predictions/two_tower",
                content=body[:-8],
                headers={"Inference-Header-Content-Length": str(header_length)},
            ),
            400,
            "bytes after the JSON header",
        )
        assert_json_error(
            client.post("/predictions/two_tower", content=body, headers={"Inference-Header-Content-Length": "-3"}),
            400,
            'Inference-Header-Content-Length is "-3"',
        )
        big = np.zeros((MAX_BODY // 16 + 1, 2))
        body, header_length = _request(big)
        assert_json_error(
            client.post(
                "/predictions/two_tower", content=body, headers={"Inference-Header-Content-Length": str(header_length)}
            ),
            413,
            "too large",
        )
        # the model card's curl recipe, byte for byte: header, then struct-packed doubles
        header = json.dumps(
            {
                "inputs": [
                    {"name": "features", "shape": [1, 2], "datatype": "FP64", "parameters": {"binary_data_size": 16}}
                ],
                "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}],
            },
            separators=(",", ":"),
        )
        r = client.post(
            "/predictions/two_tower",
            content=header.encode() + struct.pack("<2d", 30.0, 1.0),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        n = int(r.headers["inference-header-content-length"])
        np.testing.assert_allclose(
            np.frombuffer(r.content[n:], "<f8"), expected_output(np.array([[30.0, 1.0]]), "vector", 4)[0]
        )


def test_the_model_cards_python_call_works(server: LiveServer, tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The card's copy-paste tritonclient snippet, run as written against a live server."""
    from exporter.export.model_card import render, sample_request_v2

    vdir = tree / "two_tower" / "1"
    meta = json.loads((vdir / "metadata.json").read_text())
    x = np.array([[30.0, 1.0], [45.0, 2.0]])
    card = render(meta, {"data": []}, {"predictions": []}, sample_request_v2(x), {"outputs": []})
    snippet = card.split("```python\n", 1)[1].split("# Triton and KServe speak", 1)[0]
    exec(compile(snippet.replace("http://127.0.0.1:8080", server.url), "model-card", "exec"), {})
    printed = capsys.readouterr().out
    got = np.array([float(v) for v in printed.replace("[", " ").replace("]", " ").split()])
    np.testing.assert_allclose(got, expected_output(x[:1], "vector", 4).ravel(), rtol=1e-6)


def test_binary_categorical_ids_are_checked_like_json(exported_artifacts: Path) -> None:
    """An ID column must hold integers: a binary 1.5 is refused exactly as the JSON v2 form refuses it."""
    vdir = exported_artifacts / "xgb" / "1"
    handler = ModelHandler.load(vdir)
    meta = json.loads((vdir / "metadata.json").read_text())
    ids = [f["name"] for f in meta.get("features", []) if f.get("kind") == "categorical"]
    if not ids:
        pytest.skip("this export has no categorical column")
    v2 = json.loads((vdir / "sample_request_v2.json").read_text())
    x = np.array(v2["inputs"][0]["data"], dtype=np.float64).reshape(v2["inputs"][0]["shape"])
    body, header_length = _request(x)
    status, answer, _, answer_header = handler.handle_http(body, header_length)
    assert status == 200  # the sample rows themselves are fine
    expected = json.loads((vdir / "sample_response_v2.json").read_text())["outputs"][0]["data"]
    np.testing.assert_allclose(
        Client.parse_response_body(answer, header_length=answer_header).as_numpy("predictions"), expected, atol=1e-12
    )
    col = meta["feature_columns"].index(ids[0])
    x[1, col] += 0.5
    body, header_length = _request(x)
    status, answer, _, _ = handler.handle_http(body, header_length)
    assert status == 400 and f'row 1, column "{ids[0]}"' in json.loads(answer)["error"], answer
    assert "not an integer ID" in json.loads(answer)["error"]
