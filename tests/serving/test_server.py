"""``python -m exporter serve`` as a live process, driven over real HTTP on a loopback port."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.tools.serve_bench import terminate
from tests.handler_fixtures import DEFAULT_COLUMNS, REPO, TINY_MODELS, build_tree, sample_rows, spec_validator

pytestmark = pytest.mark.slow

INFERENCE_RESPONSE = spec_validator("inference_response")
ERROR_RESPONSE = spec_validator("inference_error_response")
MAX_ROWS = 50
MAX_BODY = 64 * 1024


class LiveServer:
    """A ``python -m exporter serve`` subprocess; stderr is collected line by line."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if "--workers" not in args:
            # one process unless a test asks for more: these tests read one process's request log in order
            args = [*args, "--workers", "1"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "serve", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.url = ""
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                match = re.search(r"listening on (http://\S+)", line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        ready.wait(60)
        if not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines))
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)

    def settled_mark(self, client: httpx.Client) -> int:
        """A log position after every earlier request's line: logs of earlier tests may still be in flight,
        so send a uniquely named request and wait for its own line (the server logs in request order)."""
        token = f"sync-{uuid.uuid4().hex}"
        client.get(f"/models/{token}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for i in range(len(self.lines) - 1, -1, -1):
                if token in self.lines[i]:
                    return i + 1
            time.sleep(0.01)
        raise AssertionError(f"the server never logged {token}")

    def log_since(self, mark: int, expected: int) -> list[str]:
        """Log lines after ``mark``, once at least ``expected`` arrived (the server logs after answering)."""
        deadline = time.monotonic() + 10
        while len(self.lines) - mark < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and no more than expected
        return self.lines[mark:]

    def raw(self, request: bytes) -> tuple[int, bytes]:
        """Send raw bytes (no client-side path normalisation) and read the whole answer."""
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            sock.sendall(request)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        response = b"".join(chunks)
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def stop(self) -> int:
        return terminate(self.proc)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[LiveServer]:
    live = LiveServer(
        ["--artifacts", str(tree), "--port", "0", "--max-rows", str(MAX_ROWS), "--max-body-bytes", str(MAX_BODY)]
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def assert_json_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    ERROR_RESPONSE.validate(answer)
    assert set(answer) == {"error"} and isinstance(answer["error"], str)
    for fragment in fragments:
        assert fragment in answer["error"], (fragment, answer["error"])


# ------------------------------------------------------------------------------------------- routes
def test_ping_and_model_listing(client: httpx.Client, tree: Path) -> None:
    assert client.get("/ping").json() == {"status": "Healthy"}
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == set(TINY_MODELS)
    assert models["xgb"]["versions"] == ["1", "2"] and models["xgb"]["latest_version"] == "2"
    assert client.get("/models/mmoe").json() == json.loads((tree / "mmoe" / "1" / "metadata.json").read_text())


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_sample_requests_get_the_exported_sample_responses(client: httpx.Client, tree: Path, name: str) -> None:
    vdir = tree / name / "1"
    response = client.post(f"/predictions/{name}/1", content=(vdir / "sample_request.json").read_bytes())
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == json.loads((vdir / "sample_response.json").read_text())


def test_v2_body_and_version_routing(client: httpx.Client) -> None:
    x = [0.5] * 14
    body = {"id": "abc", "inputs": [{"name": "features", "shape": [2, 7], "datatype": "FP64", "data": x}]}
    latest = client.post("/predictions/xgb", json=body).json()
    pinned = client.post("/predictions/xgb/1", json=body).json()
    for answer in (latest, pinned):
        INFERENCE_RESPONSE.validate(answer)
        assert answer["id"] == "abc" and answer["model_name"] == "xgb"
    assert latest["model_version"] == "2" and pinned["model_version"] == "1"


def test_one_log_line_per_request(server: LiveServer, client: httpx.Client) -> None:
    mark = server.settled_mark(client)
    client.post("/predictions/two_tower", json={"data": sample_rows(["user_age", "user_gender"], 3)})
    client.post("/predictions/two_tower", content=b"nope")
    client.get("/ping")
    lines = server.log_since(mark, 3)
    assert len(lines) == 3, lines
    assert re.search(r"model=two_tower version=1 rows=3 status=200 time_ms=\d+\.\d+", lines[0]), lines[0]
    assert re.search(r"model=two_tower version=1 rows=0 status=400 time_ms=", lines[1]), lines[1]
    assert "/ping status=200" in lines[2]


def test_log_lines_cannot_be_forged_through_the_path(server: LiveServer, client: httpx.Client) -> None:
    mark = server.settled_mark(client)
    status, _ = server.raw(
        b"POST /predictions/x%0aFORGED HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    assert status == 404
    lines = server.log_since(mark, 1)
    assert len(lines) == 1 and "POST /predictions/x%0aFORGED model=- version=- rows=0 status=404" in lines[0]


# ------------------------------------------------------------------------------------------- errors
def test_client_errors_over_http(client: httpx.Client) -> None:
    assert_json_error(client.post("/predictions/xgb", content=b"{oops"), 400, "not valid JSON", '"data"', '"inputs"')
    assert_json_error(client.post("/predictions/xgb", json=[1, 2]), 400, "must be a JSON object")
    assert_json_error(client.post("/predictions/xgb", json={"rows": []}), 400, "neither")
    assert_json_error(client.post("/predictions/xgb", json={"data": {}}), 400, '"data" must be a list')
    assert_json_error(client.post("/predictions/xgb", json={"data": []}), 400, "empty")
    rows = sample_rows(DEFAULT_COLUMNS, 3)
    del rows[1]["item_price"]
    assert_json_error(client.post("/predictions/xgb", json={"data": rows}), 400, "data[1]", '"item_price"')
    rows = sample_rows(DEFAULT_COLUMNS, 2)
    rows[1]["user_gender"] = None
    assert_json_error(client.post("/predictions/xgb", json={"data": rows}), 400, 'data[1]["user_gender"]', "null")
    bad_shape = {"inputs": [{"name": "features", "shape": [2, 6], "datatype": "FP64", "data": [1.0] * 12}]}
    assert_json_error(client.post("/predictions/xgb", json=bad_shape), 400, "[<rows>, 7]")
    bad_type = {"inputs": [{"name": "features", "shape": [1, 7], "datatype": "BYTES", "data": ["a"] * 7}]}
    assert_json_error(client.post("/predictions/xgb", json=bad_type), 400, '"BYTES"')
    nan_body = json.dumps({"data": [dict(sample_rows(DEFAULT_COLUMNS, 1)[0], item_cvr=float("nan"))]})
    assert_json_error(client.post("/predictions/xgb", content=nan_body), 400, 'data[0]["item_cvr"]', "NaN")


@pytest.mark.parametrize(
    "path",
    [
        "/predictions/nope",
        "/predictions/xgb/3",
        "/predictions/xgb/01",
        "/predictions/%2e%2e",
        "/predictions/%2E%2E/xgb",
        "/predictions/..",
        "/predictions/../xgb",
        "/predictions/../../etc/passwd",
        "/predictions/xgb/..",
        "/predictions/xgb%2F1",
        "/predictions/..%2F..%2Fetc%2Fpasswd",
        "/predictions/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/predictions/xgb/1/model.onnx",
        "/predictions/xgb/",
        "/predictions/",
        "/predictions/xgb%00",
        "/models/%2e%2e",
        "/models/xgb%2F1",
    ],
)
def test_unknown_models_and_traversal_attempts_are_404(server: LiveServer, path: str) -> None:
    method = "GET" if path.startswith("/models") else "POST"
    status, body = server.raw(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode()
    )
    assert status == 404, body
    answer = json.loads(body)
    ERROR_RESPONSE.validate(answer)
    assert isinstance(answer["error"], str) and "root:" not in answer["error"]


def test_nothing_under_v2(client: httpx.Client) -> None:
    assert_json_error(client.get("/v2/health/ready"), 404, "no route")
    assert_json_error(client.post("/v2/models/xgb/infer", json={}), 404, "no route")
    assert_json_error(client.get("/v2/models/xgb"), 404)


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/predictions/xgb"),
        ("PUT", "/predictions/xgb/1"),
        ("DELETE", "/predictions/xgb"),
        ("POST", "/ping"),
        ("POST", "/models"),
        ("DELETE", "/models/xgb"),
    ],
)
def test_wrong_method_is_405(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path)
    assert_json_error(response, 405, method)
    assert "allow" in response.headers


def test_bodies_and_row_counts_above_the_limits_are_413(server: LiveServer, client: httpx.Client) -> None:
    rows = sample_rows(DEFAULT_COLUMNS, MAX_ROWS + 1)
    assert_json_error(client.post("/predictions/xgb", json={"data": rows}), 413, f"at most {MAX_ROWS} rows")
    v2 = {
        "inputs": [
            {"name": "features", "shape": [MAX_ROWS + 1, 7], "datatype": "FP64", "data": [0.5] * 7 * (MAX_ROWS + 1)}
        ]
    }
    assert_json_error(client.post("/predictions/xgb", json=v2), 413, "rows")
    big = b'{"data": [' + b" " * MAX_BODY + b"]}"
    assert_json_error(client.post("/predictions/xgb", content=big), 413, "too large", str(MAX_BODY))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"data": ['
        for _ in range(MAX_BODY // 4096 + 2):
            yield b" " * 4096
        yield b"]}"

    assert_json_error(client.post("/predictions/xgb", content=chunks()), 413, "too large")
    # a lying Content-Length is refused before a byte of the body is read
    status, body = server.raw(
        b"POST /predictions/xgb HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n{}"
    )
    assert status == 413 and "too large" in json.loads(body)["error"]
    assert client.get("/ping").status_code == 200


def test_server_keeps_answering_whatever_clients_send(server: LiveServer, client: httpx.Client) -> None:
    rng = random.Random(0)
    for _ in range(100):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        response = client.post(f"/predictions/{rng.choice(list(TINY_MODELS))}", content=junk)
        assert response.status_code == 400 and isinstance(response.json()["error"], str)
    for junk in (b"\x16\x03\x01\x00\xa5\x01\x00\x00", b"GARBAGE\r\n\r\n", b"GET /ping HTTP/9.9\r\n\r\n"):
        status, _ = server.raw(junk)  # not HTTP: uvicorn answers 400 and closes the connection
        assert status == 400
    # a client that stalls mid-request (or mid-body) does not hold up anyone else
    with (
        socket.create_connection((server.host, server.port), timeout=5) as stalled_headers,
        socket.create_connection((server.host, server.port), timeout=5) as stalled_body,
    ):
        stalled_headers.sendall(b"POST /predictions/xgb HTTP/1.1\r\n" + b"X" * 70000)
        stalled_body.sendall(b'POST /predictions/xgb HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"data"')
        assert client.get("/ping").json() == {"status": "Healthy"}
        assert client.post("/predictions/xgb", json={"data": sample_rows(DEFAULT_COLUMNS, 1)}).status_code == 200
    assert server.proc.poll() is None


def test_concurrent_clients(client: httpx.Client, server: LiveServer) -> None:
    rows = sample_rows(DEFAULT_COLUMNS, 1)
    errors: list[Any] = []

    def worker() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for _ in range(25):
                r = c.post("/predictions/mmoe", json={"data": rows})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------------------------------------- startup
def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "serve", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_broken_artifacts_stop_the_server_with_a_clear_error(tree: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(tree / "xgb", tmp_path / "xgb")
    model = tmp_path / "xgb" / "2" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    proc = run_serve("--artifacts", str(tmp_path), "--port", "0")
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "sha256" in proc.stderr and str(model) in proc.stderr
    proc = run_serve("--artifacts", str(tmp_path / "missing"), "--port", "0")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


# ------------------------------------------------------------------------------------------- real artifacts
def test_serving_real_exported_artifacts(exported_artifacts: Path) -> None:
    """Every exported model answers its own sample request with its sample response, in both forms."""
    live = LiveServer(["--artifacts", str(exported_artifacts), "--port", "0"])
    try:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            assert c.get("/ping").json() == {"status": "Healthy"}
            names = {m["name"] for m in c.get("/models").json()["models"]}
            assert names == {"xgb", "deepfm", "mmoe", "two_tower", "two_tower_item"}
            for name in sorted(names):
                vdir = exported_artifacts / name / "1"
                meta = json.loads((vdir / "metadata.json").read_text())
                request = json.loads((vdir / "sample_request.json").read_text())
                expected = json.loads((vdir / "sample_response.json").read_text())
                answer = c.post(f"/predictions/{name}", json=request)
                assert answer.status_code == 200, answer.text
                assert answer.json() == expected
                cols = meta["feature_columns"]
                vocab = json.loads((vdir / "vocab.json").read_text()) if (vdir / "vocab.json").is_file() else {}
                # the v2 form takes codes: a string category as its position in vocab.json
                flat = [
                    float(vocab[col].index(row[col]) if col in vocab else row[col])
                    for row in request["data"]
                    for col in cols
                ]
                v2 = c.post(
                    f"/predictions/{name}/1",
                    json={
                        "id": name,
                        "inputs": [
                            {
                                "name": "features",
                                "shape": [len(request["data"]), len(cols)],
                                "datatype": "FP64",
                                "data": flat,
                            }
                        ],
                    },
                )
                INFERENCE_RESPONSE.validate(v2.json())
                out = v2.json()["outputs"][0]
                assert out["shape"] == [len(request["data"])] + meta["outputs"][0]["shape"][1:]
                # a row with only the first column: the first required one of the others is named (a column with
                # empty training cells is optional and may be left out)
                required = [f["name"] for f in meta["features"] if not f["optional"] and f["name"] != cols[0]]
                assert required, name
                missing = c.post(f"/predictions/{name}", json={"data": [{cols[0]: 1.0}]})
                assert_json_error(missing, 400, "data[0]", f'"{required[0]}"')
            # a body above 256 KiB is answered in a worker thread: same answer as in the event loop
            rows = json.loads((exported_artifacts / "xgb" / "1" / "sample_request.json").read_text())["data"] * 700
            big, small = (
                c.post("/predictions/xgb", json={"data": rows}),
                c.post("/predictions/xgb", json={"data": rows[:3]}),
            )
            assert big.status_code == 200 and len(big.content) > 0 and len(json.dumps({"data": rows})) > 256 * 1024
            assert big.json()["predictions"][:3] == small.json()["predictions"]
            assert len(big.json()["predictions"]) == len(rows)
    finally:
        live.stop()
