"""Hostile values over real HTTP: the live server (uvicorn, the guarded protocol, the app) answers each with a
status below 500 and a JSON body, and keeps answering (docs/reliability.md, docs/contract.md section 5)."""

from __future__ import annotations

import http.client
import itertools
import json
from collections.abc import Iterator

import pytest

from tests.runtime.test_hostile_values import (
    COLUMNS,
    HOSTILE,
    VALID_CODES,
    build_mixed,
    json_cells,
    torchserve_body,
    v2_body,
)
from tests.serving.test_serve_hardening import ThreadServer

#: HOSTILE plus the strings it lacks: empty, and far longer than any vocabulary entry
CELLS = [*HOSTILE, '""', json.dumps("x" * 100_000)]
#: whole bodies no column value produces: bytes that are not UTF-8, a surrogate's UTF-8 bytes, cut-off JSON
RAW_BODIES = [
    b"",
    b"\xff\xfe\x00",
    b'{"data": [{"tag": "\xed\xa0\x80"}]}',
    b'{"data": [{"genre": "\xc3"}]}',
    b'{"data": [{"price": 1',
    b'{"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP64", "data": [1, 2',
    b"[" * 100_000,
    b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"null",
    b'"\\ud800"',
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("fuzz")
    build_mixed(root)
    live = ThreadServer(root)
    assert live.server.started
    yield live
    live.stop()


class Client:
    """One keep-alive connection to the server, reopened when the server closes it."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.sent = 0

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.sent += 1
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()  # the server closed an idle keep-alive connection: send again on a new one
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        return response.status, response.read()

    def check(self, path: str, body: bytes) -> int:
        status, raw = self.request("POST", path, body)
        what = (path, body[:200], status, raw[:500])
        assert status < 500, what
        answer = json.loads(raw)  # every answer is JSON, whatever was sent
        if status != 200:
            assert 400 <= status < 500, what
            assert isinstance(answer, dict) and isinstance(answer.get("error"), str), what
        return status


def test_hostile_values_in_every_column_and_form_over_http(server: ThreadServer) -> None:
    client = Client(server.port)
    statuses = set()
    for j, cell in itertools.product(range(len(COLUMNS)), CELLS):
        cells = [json.dumps(v) for v in VALID_CODES]
        cells[j] = cell
        statuses.add(client.check("/predictions/mixed", torchserve_body(json_cells({COLUMNS[j]: cell}))))
        statuses.add(client.check("/predictions/mixed/1", v2_body(cells)))
    for body in RAW_BODIES:
        for path in ("/predictions/mixed", "/predictions/mixed/1"):
            statuses.add(client.check(path, body))
    assert statuses >= {200, 400}  # the product holds accepted values too: the server really scored
    assert client.sent < 700
    status, raw = Client(server.port).request("GET", "/ping")
    assert status == 200 and "status" in json.loads(raw)
