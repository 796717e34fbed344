"""Every answer has its request-log line (unexpected 500s included), and every error body is JSON, even the 400
to bytes that are not HTTP at all."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from exporter.serving.server import ModelRegistry, create_app
from tests.handler_fixtures import DEFAULT_COLUMNS, build_tree, sample_rows
from tests.serving.test_serve_hardening import ThreadServer, _read_until_closed


class _Lines:
    """Stands in for AccessLog: keeps the queued lines, formatted."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.add = self.records.append

    def text(self) -> list[str]:
        return [fmt % tuple(args) for _t, fmt, *args in self.records]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("logged") / "artifacts")


def _client(registry: ModelRegistry, lines: _Lines) -> Any:
    from starlette.testclient import TestClient

    return TestClient(create_app(registry, access_log=lines), raise_server_exceptions=False)  # type: ignore[arg-type]


def test_an_unexpected_error_in_a_prediction_is_a_logged_json_500(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry.from_artifacts(tree)

    def broken(*_args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(registry.versions["xgb"]["2"], "run", broken)  # onnxruntime raising mid-run
    lines = _Lines()
    with _client(registry, lines) as client:
        response = client.post("/predictions/xgb", json={"data": sample_rows(DEFAULT_COLUMNS, 1)})
        assert response.status_code == 500 and response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "internal server error: RuntimeError"}
    assert any("model=xgb version=2" in line and "status=500" in line for line in lines.text()), lines.text()


def test_an_unexpected_error_in_another_route_is_a_logged_json_500(tree: Path) -> None:
    registry = ModelRegistry.from_artifacts(tree)
    registry.metadata_bodies = None  # type: ignore[assignment]  # GET /models/{name} now raises AttributeError
    lines = _Lines()
    with _client(registry, lines) as client:
        response = client.get("/models/xgb")
        assert response.status_code == 500 and response.json()["error"].startswith("internal server error")
    assert any(line.startswith("GET /models/xgb status=500") for line in lines.text()), lines.text()


@pytest.fixture(scope="module")
def live(tree: Path) -> Any:
    server = ThreadServer(tree, header_timeout=5.0, body_timeout=5.0, max_header_bytes=4096)
    yield server
    server.stop()


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n", b"GET / HTTP/9.9 x\r\n\r\n"])
def test_bytes_that_are_not_http_get_a_json_400_that_is_logged(live: Any, garbage: bytes) -> None:
    # a handler on the server's own logger: `serve` turns its propagation off, so pytest's caplog (on the root
    # logger) sees nothing once any test in the session has run the serve command
    logger = logging.getLogger("exporter.serve")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.sendall(garbage)
            data, _ = _read_until_closed(sock, 5.0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"content-type: application/json" in head.lower()
    assert "not valid HTTP/1.1" in json.loads(body)["error"]
    assert any("status=400" in r.getMessage() for r in records), [r.getMessage() for r in records]
