"""``GET /metrics`` (Prometheus text, parsed with prometheus_client's own parser), the Kubernetes probes
``/health/live`` and ``/health/ready``, and the event-loop fast path of :meth:`WorkerPool.predict` (in process)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.serving.live_registry import LiveRegistry, ModelRegistry
from exporter.serving.metrics import REJECT_REASONS, Metrics
from exporter.serving.server import create_app
from exporter.serving.workers import INLINE_AFTER, INLINE_MAX_ROWS, WorkerPool
from tests.handler_fixtures import DEFAULT_COLUMNS, build_artifact, build_tree, sample_rows

MAX_ROWS = 20


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def requests_total(text: str, **labels: str) -> float:
    """Sum of ``exporter_requests_total`` over the samples matching ``labels``."""
    return sum(
        value
        for (name, got), value in samples(text).items()
        if name == "exporter_requests_total" and all((k, v) in got for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("metrics"))


@pytest.fixture
def client(tree: Path) -> Iterator[Any]:
    from starlette.testclient import TestClient

    registry = ModelRegistry.from_artifacts(tree, max_rows=MAX_ROWS)
    with TestClient(create_app(registry, metrics=Metrics()), raise_server_exceptions=False) as c:
        yield c


def test_metrics_parse_and_count_answers_by_model_version_form_and_status(client: Any) -> None:
    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f.type for f in text_string_to_metric_families(before.text)}
    assert families["exporter_requests"] == "counter"
    assert families["exporter_request_duration_seconds"] == "histogram"
    assert families["exporter_inference_duration_seconds"] == "histogram"
    assert families["exporter_request_rows"] == "histogram"
    assert families["exporter_rejected_requests"] == "counter"
    assert families["exporter_reloads"] == "counter"
    assert families["exporter_model_versions_loaded"] == "gauge"
    assert families["exporter_model_versions_failed"] == "gauge"
    assert samples(before.text)[("exporter_model_versions_loaded", ())] == 4  # xgb 1 and 2, mmoe, two_tower
    assert requests_total(before.text) == 0

    rows = sample_rows(DEFAULT_COLUMNS, 3)
    assert client.post("/predictions/xgb", json={"data": rows}).status_code == 200
    assert client.post("/predictions/xgb/1", json={"data": rows}).status_code == 200
    v2 = {"inputs": [{"name": "features", "shape": [1, len(DEFAULT_COLUMNS)], "datatype": "FP64", "data": [0.5] * 7}]}
    assert client.post("/predictions/mmoe", json=v2).status_code == 200
    assert client.post("/predictions/xgb", content=b"{not json").status_code == 400
    assert client.post("/predictions/xgb", json={"data": sample_rows(DEFAULT_COLUMNS, MAX_ROWS + 1)}).status_code == 413
    assert client.post("/predictions/xgb/7", json={"data": rows}).status_code == 404

    text = client.get("/metrics").text
    assert requests_total(text, model="xgb", version="2", form="torchserve", status="2xx") == 1  # the latest
    assert requests_total(text, model="xgb", version="1", form="torchserve", status="2xx") == 1
    assert requests_total(text, model="mmoe", version="1", form="v2_json", status="2xx") == 1
    assert requests_total(text, model="xgb", version="2", form="unknown", status="4xx") == 2  # 400 and 413
    assert requests_total(text, model="xgb", version="unknown", status="4xx") == 1  # a version it does not have
    assert requests_total(text) == 6
    found = samples(text)
    assert found[("exporter_request_rows_count", (("model", "xgb"),))] == 2  # answered requests only
    assert found[("exporter_request_rows_sum", (("model", "xgb"),))] == 6
    assert found[("exporter_inference_duration_seconds_count", (("model", "xgb"),))] == 2
    assert found[("exporter_request_duration_seconds_count", (("model", "xgb"),))] == 5
    assert found[("exporter_rejected_requests_total", (("reason", "too_many_rows"),))] == 1
    assert found[("exporter_rejected_requests_total", (("reason", "body_too_large"),))] == 0
    assert {dict(labels)["reason"] for name, labels in found if name == "exporter_rejected_requests_total"} == set(
        REJECT_REASONS
    )


def test_unknown_model_names_do_not_create_series(client: Any) -> None:
    rows = sample_rows(DEFAULT_COLUMNS, 1)
    assert client.post(f"/predictions/nope-{uuid.uuid4().hex}", json={"data": rows}).status_code == 404
    first = samples(client.get("/metrics").text)
    for _ in range(25):
        name = uuid.uuid4().hex
        assert client.post(f"/predictions/{name}", json={"data": rows}).status_code == 404
        assert client.post(f"/predictions/{name}/{name}", json={"data": rows}).status_code == 404
    text = client.get("/metrics").text
    assert set(samples(text)) == set(first)  # the same series, only their values moved
    models = {dict(labels).get("model") for name, labels in samples(text) if "model" in dict(labels)}
    assert models <= {"xgb", "mmoe", "two_tower", "unknown"}
    assert requests_total(text, model="unknown", version="unknown", status="4xx") == 51


def test_no_metrics_means_no_route(tree: Path) -> None:
    from starlette.testclient import TestClient

    with TestClient(create_app(ModelRegistry.from_artifacts(tree))) as c:
        assert c.get("/metrics").status_code == 404
        assert c.get("/health/live").json() == {"status": "alive"}


def test_probes_say_which_versions_failed_to_load(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    tree = build_tree(tmp_path / "artifacts")
    live = LiveRegistry(ModelRegistry.from_artifacts(tree), tree)
    metrics = Metrics()
    with TestClient(create_app(live, metrics=metrics)) as c:
        ready = c.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert "xgb/1" in ready.json()["loaded"]
        broken = build_artifact(tree, "xgb", version="3")
        (broken / "model.onnx").write_bytes(b"not a model")  # its sha256 no longer matches
        before = live.current
        metrics.reloaded("SIGHUP", before, live.reload("SIGHUP"))
        ready = c.get("/health/ready")
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["status"] == "not ready" and "xgb/1" in body["loaded"]
        assert [(f["name"], f["version"]) for f in body["failed"]] == [("xgb", "3")]
        assert "sha256" in body["failed"][0]["error"]
        assert c.get("/health/live").status_code == 200  # alive all along: a restart would not fix a bad file
        assert c.post("/predictions/xgb", json={"data": sample_rows(DEFAULT_COLUMNS, 1)}).status_code == 200
        found = samples(c.get("/metrics").text)
        assert found[("exporter_model_versions_failed", ())] == 1
        assert found[("exporter_reloads_total", (("outcome", "swapped"), ("trigger", "SIGHUP")))] == 1


# ---------------------------------------------------------------------------------------------- the fast path
def test_a_model_runs_on_the_event_loop_only_once_proven_fast() -> None:
    seen: list[bool] = []
    slow = threading.Event()

    def run(x: int) -> int:
        seen.append(threading.current_thread() is threading.main_thread())
        if slow.is_set():  # 5 ms of this thread's CPU time: above the threshold below, whatever the machine's load
            end = time.thread_time() + 0.005
            while time.thread_time() < end:
                pass
        return x + 1

    async def scenario() -> None:
        # a generous threshold while the model proves fast (no run of a trivial function can miss it)
        pool = WorkerPool(size=2, per_model=2, inline_seconds=5.0)
        for i in range(INLINE_AFTER):
            answer, seconds = await pool.predict("m", 1000, run, i, 1)
            assert answer == i + 1 and seconds >= 0
        assert not any(seen)  # a model seen for the first time runs in threads until it proved fast
        seen.clear()
        await pool.predict("m", 1000, run, 0, 1)
        await pool.predict("m", 1000, run, 0, INLINE_MAX_ROWS + 1)  # a large batch: always a thread
        assert seen == [True, False]
        pool.inline_seconds = 0.001
        slow.set()
        seen.clear()
        await pool.predict("m", 1000, run, 0, 1)  # on the loop, but slow: the model goes back to the threads
        await pool.predict("m", 1000, run, 0, 1)
        assert seen == [True, False]

    asyncio.run(scenario())


def test_inline_off_keeps_every_run_in_a_thread() -> None:
    seen: list[bool] = []

    def run(x: int) -> int:
        seen.append(threading.current_thread() is threading.main_thread())
        return x

    async def scenario() -> None:
        pool = WorkerPool(inline_seconds=0)
        for i in range(INLINE_AFTER * 2):
            await pool.predict("m", 10, run, i, 1)

    asyncio.run(scenario())
    assert seen and not any(seen)
