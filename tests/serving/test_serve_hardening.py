"""Client input the server survived but answered badly.

Short error quotes, compressed bodies, slow and oversized clients.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.runtime.handler import ModelHandler
from exporter.serving.guarded_http import guarded_protocol
from exporter.serving.server import ModelRegistry, create_app
from tests.handler_fixtures import DEFAULT_COLUMNS, build_tree, sample_rows

HUGE = "k" * 200_000  # a client string far longer than any error should quote
SHORT_BODY = 2000  # bytes: an error body quoting a prefix stays well below this


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("tree") / "artifacts")


@pytest.fixture(scope="module")
def handler(tree: Path) -> ModelHandler:
    return ModelHandler.load(tree / "xgb" / "1")


def _v2(**tensor: Any) -> dict[str, Any]:
    base = {
        "name": "features",
        "shape": [1, len(DEFAULT_COLUMNS)],
        "datatype": "FP64",
        "data": [0.1] * len(DEFAULT_COLUMNS),
    }
    base.update(tensor)
    return {"inputs": [base]}


def _row(**values: Any) -> dict[str, Any]:
    row = sample_rows(DEFAULT_COLUMNS, 1)[0]
    row.update(values)
    return row


# ---------------------------------------------------------------------------------------------- quoting
BAD_BODIES = {
    "huge key": {HUGE: 1},
    "huge string value": {"data": [_row(item_ctr=HUGE)]},
    "huge input name": _v2(name=HUGE),
    "huge datatype": _v2(datatype=HUGE),
    "huge string in shape": _v2(shape=[HUGE, 7]),
    "many integers in shape": _v2(shape=list(range(50_000))),
    "huge output name": {**_v2(), "outputs": [{"name": HUGE}]},
    "huge string in v2 data": _v2(data=[HUGE] + [0.1] * (len(DEFAULT_COLUMNS) - 1)),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_error_bodies_quote_client_text_shortened(handler: ModelHandler, case: str) -> None:
    status, body = handler.handle_bytes(json.dumps(BAD_BODIES[case]).encode())
    assert status == 400, body[:300]
    assert len(body) < SHORT_BODY, (len(body), body[:300])
    message = json.loads(body)["error"]
    assert HUGE[:41] not in message
    if case not in ("many integers in shape",):
        assert "(200000 characters)" in message, message
    else:
        assert "a list of 50000 integers" in message, message


def test_a_gzip_body_given_to_the_handler_says_so(handler: ModelHandler) -> None:
    status, body = handler.handle_bytes(gzip.compress(json.dumps({"data": [_row()]}).encode()))
    assert status == 400 and "gzip-compressed" in json.loads(body)["error"]


@pytest.fixture(scope="module")
def app_client(tree: Path) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(create_app(ModelRegistry.from_artifacts(tree))) as client:
        yield client


LONG = "p" * 20_000  # a path segment (URLs are capped near 64 KiB by clients)
PATHS = {
    "model": f"/predictions/{LONG}",
    "version": f"/predictions/xgb/{LONG}",
    "metadata": f"/models/{LONG}",
    "route": f"/{LONG}",
    "encoded slash": f"/predictions/xgb%2F{LONG}",
}


@pytest.mark.parametrize("case", list(PATHS))
def test_route_and_model_names_are_quoted_shortened(app_client: Any, case: str) -> None:
    path = PATHS[case]
    response = app_client.post(path, content=b"{}") if path.startswith("/predictions") else app_client.get(path)
    assert response.status_code == 404
    assert len(response.content) < SHORT_BODY, response.content[:300]
    assert "characters)" in response.json()["error"]


def test_method_not_allowed_quotes_the_path_shortened(app_client: Any) -> None:
    response = app_client.get(f"/predictions/xgb/{LONG}")
    assert response.status_code == 405 and len(response.content) < SHORT_BODY


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_compressed_bodies_get_415_naming_the_encoding(app_client: Any, encoding: str) -> None:
    body = gzip.compress(json.dumps({"data": [_row()]}).encode())
    response = app_client.post("/predictions/xgb", content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == 415
    message = response.json()["error"]
    assert json.dumps(encoding) in message and "uncompressed" in message


def test_identity_encoding_is_accepted(app_client: Any) -> None:
    response = app_client.post(
        "/predictions/xgb", content=json.dumps({"data": [_row()]}), headers={"Content-Encoding": "identity"}
    )
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------- slow clients
class ThreadServer:
    """The real app on uvicorn with the guarded protocol, in a thread on 127.0.0.1 (short limits)."""

    def __init__(self, tree: Path, **limits: Any) -> None:
        import uvicorn

        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(ModelRegistry.from_artifacts(tree)),
            loop="uvloop",
            http=guarded_protocol(**limits),
            lifespan="off",
            log_level="critical",
            timeout_keep_alive=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def limited(tree: Path) -> Iterator[ThreadServer]:
    server = ThreadServer(tree, header_timeout=1.0, body_timeout=1.0, max_header_bytes=4096)
    yield server
    server.stop()


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (or ``limit`` seconds pass)."""
    start = time.monotonic()
    sock.settimeout(0.2)
    data = b""
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            return data, time.monotonic() - start
        data += chunk
    return data, float("inf")


def _slowloris(port: int, payload: bytes, interval: float, max_steps: int) -> tuple[bytes, int, float]:
    """Send ``payload`` one byte per ``interval`` (at most ``max_steps`` bytes); returns what the server
    answered, how many bytes went out before the connection closed, and after how many seconds."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(interval)
        answer = b""
        for sent, byte in enumerate(payload[:max_steps]):
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return answer, sent, time.monotonic() - start
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return answer, sent, time.monotonic() - start
            if not chunk:
                return answer, sent, time.monotonic() - start
            answer += chunk
        rest, _ = _read_until_closed(sock, 3.0)
        return answer + rest, max_steps, time.monotonic() - start


def test_slowloris_headers_are_cut_off(limited: ThreadServer) -> None:
    request = b"POST /predictions/xgb HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    answer, sent, seconds = _slowloris(limited.port, request, interval=0.05, max_steps=len(request))
    assert sent < len(request), "the whole slow request went through: no header timeout"
    assert seconds < 5, seconds
    assert answer.startswith(b"HTTP/1.1 408") and b"request headers not received within 1s" in answer


def test_a_silent_connection_is_closed(limited: ThreadServer) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        data, seconds = _read_until_closed(sock, 5.0)
    assert data == b"" and seconds < 4


def test_a_trickled_body_is_cut_off_with_408(limited: ThreadServer) -> None:
    body = json.dumps({"data": [_row()]}).encode()
    head = (
        b"POST /predictions/xgb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(head)
        sent = 0
        start = time.monotonic()
        closed = False
        while sent < len(body) and time.monotonic() - start < 5:
            try:
                sock.sendall(body[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            time.sleep(0.05)
        data, _ = _read_until_closed(sock, 3.0)
    assert sent < len(body) or closed
    assert data.startswith(b"HTTP/1.1 408") and b"request body not received within 1s" in data


def test_oversized_headers_get_431(limited: ThreadServer) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        try:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, seconds = _read_until_closed(sock, 5.0)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert b"exceed 4096 bytes" in data


def test_normal_and_keep_alive_requests_still_work(limited: ThreadServer) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{limited.port}") as client:
        for _ in range(3):
            assert client.post("/predictions/xgb", json={"data": [_row()]}).status_code == 200
            time.sleep(0.6)  # idle between requests, below keep-alive; the header clock restarts per request
        assert client.get("/ping").json() == {"status": "Healthy"}


@pytest.mark.slow
def test_serve_command_cuts_off_a_slowloris_client(tree: Path) -> None:
    """The real ``serve`` command, defaults but a 1 s header timeout: a byte every 0.2 s is cut off."""
    from tests.serving.test_server import LiveServer

    server = LiveServer(["--artifacts", str(tree), "--port", "0", "--header-timeout", "1", "--log-level", "warning"])
    try:
        request = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
        answer, sent, seconds = _slowloris(server.port, request, interval=0.2, max_steps=len(request))
        assert sent < 30 and seconds < 8, (sent, seconds)
        assert answer.startswith(b"HTTP/1.1 408")
        assert server.proc.poll() is None  # and the server keeps serving
        import httpx

        assert httpx.get(f"{server.url}/ping").status_code == 200
    finally:
        server.stop()
