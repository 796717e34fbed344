"""``serve --workers 2`` as live processes: a worker killed with SIGKILL is replaced while the other keeps
answering, /metrics adds every worker up, SIGTERM drains a request in flight, a broken tree stops startup."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.handler_fixtures import DEFAULT_COLUMNS, REPO, build_tree, sample_rows
from tests.serving.test_server import LiveServer

pytestmark = pytest.mark.slow


def worker_pids(supervisor: int) -> set[int]:
    """The serving workers of a supervisor: its children started by multiprocessing's spawn (not its tracker)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == str(supervisor) and b"spawn_main" in cmdline:
            found.add(int(stat.parent.name))
    return found


def wait_for(condition, what: str, seconds: float = 60.0):  # noqa: ANN001, ANN201 - a test helper
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def counted(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("workers"))


def test_a_killed_worker_is_replaced_and_the_other_keeps_answering(tree: Path) -> None:
    server = LiveServer(["--artifacts", str(tree), "--port", "0", "--workers", "2", "--log-level", "warning"])
    body = {"data": sample_rows(DEFAULT_COLUMNS, 1)}
    outcomes: list[str] = []  # "200", another status, or the transport error's class name
    stop = threading.Event()

    def load() -> None:
        # one request at a time on a fresh connection each: at most one is in flight on the killed worker
        with httpx.Client(base_url=server.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not stop.is_set():
                try:
                    outcomes.append(str(c.post("/predictions/xgb", json=body).status_code))
                except httpx.TransportError as exc:
                    outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        before = wait_for(lambda: len(worker_pids(server.proc.pid)) == 2 and worker_pids(server.proc.pid), "2 workers")
        for t in threads:
            t.start()
        wait_for(lambda: len(outcomes) >= 50, "requests before the kill")
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        at_kill = len(outcomes)
        after = wait_for(
            lambda: len(pids := worker_pids(server.proc.pid)) == 2 and victim not in pids and pids, "a new worker"
        )
        wait_for(lambda: len(outcomes) >= at_kill + 200, "requests after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        failures = [o for o in outcomes if o != "200"]
        # no 5xx ever; a transport error only for a request in flight on the killed worker (one per load thread)
        assert not [o for o in failures if o.isdigit()], failures
        assert len(failures) <= len(threads), failures
        assert len(after & before) == 1
        assert any(f"(pid {victim}) died: killed by signal SIGKILL" in line for line in server.lines), server.lines
        assert any("restarted (pid" in line for line in server.lines), server.lines
        # every worker's counts are added up (each flushes them within half a second), the killed one's included
        # but for what it had not flushed yet; the loaded gauge counts live workers only
        answered, after_kill = outcomes.count("200"), outcomes[at_kill:].count("200")

        def answered_counted() -> float:
            return counted(server.url, "exporter_requests_total", model="xgb", status="2xx")

        wait_for(lambda: answered_counted() >= after_kill, "the requests answered since the kill counted")
        total = answered_counted()
        assert after_kill <= total <= answered, (after_kill, total, answered)
        assert counted(server.url, "exporter_model_versions_loaded") == 4
        # an oversized header is refused (431) and counted, whichever worker took it
        status, _ = server.raw(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        assert status == 431
        assert counted(server.url, "exporter_rejected_requests_total", reason="headers_too_large") == 1
        for _ in range(10):  # every worker answers the probes
            assert httpx.get(f"{server.url}/health/ready", timeout=10).json()["status"] == "ready"
    finally:
        assert server.stop() == 0
    assert any("SIGTERM: stopping 2 workers" in line for line in server.lines), server.lines


def test_metrics_port_apart_and_sigterm_drains_a_request_in_flight(tree: Path) -> None:
    server = LiveServer(["--artifacts", str(tree), "--port", "0", "--workers", "2", "--metrics-port", "0"])
    (line,) = [line for line in server.lines if "listening on" in line]
    port = re.search(r"metrics on port (\d+)", line)
    assert port, line
    metrics_url = f"http://{server.host}:{port.group(1)}"
    body = {"data": sample_rows(DEFAULT_COLUMNS, 1)}
    assert httpx.post(f"{server.url}/predictions/xgb", json=body).status_code == 200
    wait_for(lambda: counted(metrics_url, "exporter_requests_total", model="xgb", status="2xx") == 1, "one request")
    assert httpx.get(f"{server.url}/metrics").status_code == 404  # served apart, not on the main port
    payload = json.dumps({"data": sample_rows(DEFAULT_COLUMNS, 2)}).encode()
    head = (
        f"POST /predictions/xgb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((server.host, server.port), timeout=30) as sock:
            sock.sendall(head + payload[:10])  # the request is in flight: headers and part of its body
            time.sleep(0.5)  # a worker has accepted it and reads the body
            server.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: any("SIGTERM: stopping" in line for line in server.lines), "the supervisor's stop line")
            time.sleep(0.5)  # the workers got SIGTERM and drain
            sock.sendall(payload[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 10:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b'"predictions"' in answer
        assert server.proc.wait(60) == 0
    finally:
        server.stop()


def test_a_broken_tree_stops_every_worker_at_startup(tree: Path, tmp_path: Path) -> None:
    broken = build_tree(tmp_path / "broken")
    (broken / "mmoe" / "1" / "model.onnx").write_bytes(b"tampered")
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--artifacts", str(broken), "--port", "0", "--workers", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert done.returncode == 2, done.stderr
    assert "sha256" in done.stderr and "Traceback" not in done.stderr
    assert "listening on" not in done.stderr


def test_one_process_serves_its_metrics_on_a_port_apart(tree: Path) -> None:
    server = LiveServer(["--artifacts", str(tree), "--port", "0", "--workers", "1", "--metrics-port", "0"])
    try:
        (line,) = [line for line in server.lines if "listening on" in line]
        assert "1 worker process: --workers 1" in line
        port = re.search(r"metrics on port (\d+)", line)
        assert port, line
        metrics_url = f"http://{server.host}:{port.group(1)}"
        assert worker_pids(server.proc.pid) == set()  # no supervisor, no worker processes
        body = {"data": sample_rows(DEFAULT_COLUMNS, 1)}
        assert httpx.post(f"{server.url}/predictions/mmoe", json=body).status_code == 200
        wait_for(lambda: counted(metrics_url, "exporter_requests_total", model="mmoe", status="2xx") == 1, "counted")
        assert httpx.get(f"{server.url}/metrics").status_code == 404
    finally:
        assert server.stop() == 0
