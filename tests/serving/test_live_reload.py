"""``serve --poll`` and SIGHUP: versions come and go while the server answers, and a broken one never
takes down what is serving. Under load: 8 keep-alive clients on loopback, bounded in time and count."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from exporter.serving.live_registry import LiveRegistry, ModelRegistry, scan
from tests.handler_fixtures import build_artifact, build_tree, sample_rows
from tests.serving.test_server import LiveServer

CLIENTS = 8
LOAD_SECONDS = 6.0
MAX_REQUESTS = 40_000


def publish(tree: Path, name: str, version: str, staging: Path, *, break_sha: bool = False) -> Path:
    """Write a version elsewhere, then rename it into place whole (as export does)."""
    vdir = build_artifact(staging, name, version=version)
    if break_sha:
        model = vdir / "model.onnx"
        model.write_bytes(model.read_bytes() + b"\0")
    target = tree / name / version
    os.rename(vdir, target)
    return target


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def models(server: LiveServer) -> dict:
    import httpx

    return httpx.get(f"{server.url}/models", timeout=10).json()


def served(server: LiveServer, name: str) -> dict:
    return next(m for m in models(server)["models"] if m["name"] == name)


# ------------------------------------------------------------------------------------------------ in-process
def test_scan_reuses_loaded_versions_and_isolates_failures(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "artifacts")
    first = ModelRegistry.from_artifacts(tree)
    live = LiveRegistry(first, tree)
    publish(tree, "xgb", "3", tmp_path / "staging", break_sha=True)
    shutil.rmtree(tree / "xgb" / "1")
    second = live.reload("test")
    assert sorted(second.versions["xgb"]) == ["2"] and second.latest["xgb"].version == "2"
    assert second.versions["mmoe"]["1"] is first.versions["mmoe"]["1"]  # unchanged versions are not reloaded
    (failure,) = second.describe()["failed"]
    assert failure["name"] == "xgb" and failure["version"] == "3" and "sha256" in failure["error"]
    # a fixed version (a new directory in its place) is loaded on the next scan
    shutil.rmtree(tree / "xgb" / "3")
    publish(tree, "xgb", "3", tmp_path / "staging2")
    third = live.reload("test")
    assert third.latest["xgb"].version == "3" and third.describe()["failed"] == []
    # the tree vanishing does not empty the server
    shutil.rmtree(tree)
    assert live.reload("test") is third and live.current is third
    with pytest.raises(Exception, match="does not exist"):
        scan(tree)


# ------------------------------------------------------------------------------------------------ under load
async def _load(
    host: str,
    port: int,
    stop_at: float,
    counts: dict[str, int],
    statuses: dict[int, int],
    versions_seen: set[str],
    failures: list[str],
) -> None:
    """One keep-alive client alternating latest-version and pinned-version v2 requests until ``stop_at``."""
    x = [0.5] * 7
    bodies = {}
    for path in ("/predictions/xgb", "/predictions/xgb/2"):
        body = json.dumps({"inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP64", "data": x}]}).encode()
        bodies[path] = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    reader, writer = await asyncio.open_connection(host, port)
    try:
        i = 0
        while time.monotonic() < stop_at and counts["sent"] < MAX_REQUESTS:
            path = "/predictions/xgb" if i % 2 == 0 else "/predictions/xgb/2"
            i += 1
            counts["sent"] += 1
            writer.write(bodies[path])
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await asyncio.wait_for(reader.readexactly(length), 10)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                failures.append(f"{path}: no answer ({type(exc).__name__})")
                return
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            counts["answered"] += 1
            if status == 200:
                versions_seen.add(json.loads(body)["model_version"])
            elif not (status == 404 and path.endswith("/2")):
                failures.append(f"{path}: {status} {body[:200]!r}")
    finally:
        writer.close()


def test_reload_under_load_drops_nothing(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "artifacts")  # xgb 1 and 2, mmoe 1, two_tower 1
    server = LiveServer(["--artifacts", str(tree), "--port", "0", "--poll", "0.3"])
    counts = {"sent": 0, "answered": 0}
    statuses: dict[int, int] = {}
    versions_seen: set[str] = set()
    failures: list[str] = []

    async def scenario() -> None:
        stop_at = time.monotonic() + LOAD_SECONDS
        clients = [
            asyncio.create_task(_load(server.host, server.port, stop_at, counts, statuses, versions_seen, failures))
            for _ in range(CLIENTS)
        ]
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.5)
        # a new version (picked up by polling), a broken one, then removal of a version in use, by SIGHUP
        await loop.run_in_executor(None, publish, tree, "xgb", "3", tmp_path / "s3")
        await loop.run_in_executor(None, wait_for, lambda: served(server, "xgb")["latest_version"] == "3")
        await loop.run_in_executor(None, lambda: publish(tree, "xgb", "4", tmp_path / "s4", break_sha=True))
        os.kill(server.proc.pid, signal.SIGHUP)
        await loop.run_in_executor(None, wait_for, lambda: models(server)["failed"] != [])
        await loop.run_in_executor(None, shutil.rmtree, tree / "xgb" / "2")
        os.kill(server.proc.pid, signal.SIGHUP)
        await loop.run_in_executor(None, wait_for, lambda: served(server, "xgb")["versions"] == ["1", "3"])
        await asyncio.gather(*clients)

    try:
        asyncio.run(scenario())
        listing = models(server)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    log = "\n".join(server.lines)
    assert failures == [], failures[:5]
    assert counts["answered"] == counts["sent"] > 1000, counts  # every request answered
    assert not any(status >= 500 for status in statuses), statuses
    assert statuses.get(404, 0) > 0 and statuses[200] > counts["sent"] / 2  # pinned v2 after its removal: 404
    assert {"2", "3"} <= versions_seen and "4" not in versions_seen
    xgb = next(m for m in listing["models"] if m["name"] == "xgb")
    assert xgb["versions"] == ["1", "3"] and xgb["latest_version"] == "3"
    (failed,) = listing["failed"]
    assert (failed["name"], failed["version"]) == ("xgb", "4") and "sha256" in failed["error"]
    assert "reload (poll): loaded xgb/3" in log and "xgb/4 failed to load and is not served" in log
    assert "reload (SIGHUP): removed xgb/2" in log
    assert alive, log[-2000:]


def test_sighup_without_poll_and_mmoe_answers_during_reload(tmp_path: Path) -> None:
    import httpx

    tree = build_tree(tmp_path / "artifacts")
    server = LiveServer(["--artifacts", str(tree), "--port", "0"])
    try:
        publish(tree, "two_tower", "2", tmp_path / "s")
        time.sleep(0.5)
        assert served(server, "two_tower")["versions"] == ["1"]  # no polling: nothing changes by itself
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for(lambda: served(server, "two_tower")["versions"] == ["1", "2"])
        r = httpx.post(
            f"{server.url}/predictions/two_tower", json={"data": sample_rows(["user_age", "user_gender"], 1)}
        )
        assert r.status_code == 200 and len(r.json()["predictions"]) == 4
        assert server.proc.poll() is None  # SIGHUP reloads, it does not end the process
    finally:
        server.stop()
