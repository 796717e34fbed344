"""A model that never finishes (a valid graph, its sha256 recorded) must not stop ``serve``: predictions run in
bounded worker threads with a deadline, so /ping and the other models keep answering."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.serving.workers import Busy, Expired, WorkerPool
from tests.handler_fixtures import DEFAULT_COLUMNS, build_artifact, build_tree, sample_rows
from tests.serving.test_server import LiveServer, assert_json_error


def endless_model(n_features: int) -> onnx.ModelProto:
    """features [N, n] -> predictions [N] through a ``Loop`` of 2^62 iterations: valid, and never ends."""
    value = [("i", TensorProto.INT64, []), ("cond_in", TensorProto.BOOL, []), ("v_in", TensorProto.DOUBLE, ["batch"])]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info(*spec) for spec in value],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.DOUBLE, ["batch"]),
        ],
    )
    nodes = [
        helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [2**62])),
        helper.make_node("Constant", [], ["go"], value=helper.make_tensor("g", TensorProto.BOOL, [], [True])),
        helper.make_node("ReduceSum", ["features", "axes"], ["s"], keepdims=0),
        helper.make_node("Loop", ["trips", "go", "s"], ["predictions"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "endless",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", n_features])],
        [helper.make_tensor_value_info("predictions", TensorProto.DOUBLE, ["batch"])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def write_endless(tree: Path, name: str = "endless") -> Path:
    """A version of ``name`` whose model.onnx is :func:`endless_model`, with its sha256 in metadata.json."""
    vdir = build_artifact(tree, name, write_sample_response=False)
    model_bytes = endless_model(len(DEFAULT_COLUMNS)).SerializeToString()
    (vdir / "model.onnx").write_bytes(model_bytes)
    metadata = json.loads((vdir / "metadata.json").read_text())
    metadata["sha256"] = hashlib.sha256(model_bytes).hexdigest()
    (vdir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return vdir


@pytest.mark.slow
def test_a_model_that_never_answers_gets_504_and_stops_nothing_else(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "artifacts")
    write_endless(tree)
    server = LiveServer(["--artifacts", str(tree), "--port", "0", "--request-timeout", "1", "--model-concurrency", "1"])
    body = {"data": sample_rows(DEFAULT_COLUMNS, 1)}
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert_json_error(client.post("/predictions/endless", json=body), 504, '"endless"', "within 1s")
            assert client.get("/ping").json() == {"status": "Healthy"}
            assert client.post("/predictions/xgb", json=body).status_code == 200
            # the stuck run still holds the model's one thread: refused after the deadline, the others unaffected
            assert_json_error(client.post("/predictions/endless", json=body), 503, "endless", "--model-concurrency")
            assert client.post("/predictions/mmoe", json=body).status_code == 200
            assert client.get("/models").status_code == 200
            mark = server.settled_mark(client)
            client.post("/predictions/endless/1", json=body)
            lines = server.log_since(mark, 1)
            assert any("model=endless" in line and "status=503" in line for line in lines), lines
    finally:
        server.stop()


def test_the_pool_waits_for_a_thread_within_the_deadline_then_refuses() -> None:
    release = threading.Event()

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(1000):  # bounded: 10 s
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")

    async def scenario() -> None:
        pool = WorkerPool(size=2, per_model=1)
        first = asyncio.ensure_future(pool.run("a", 10, release.wait, 10))
        await until(lambda: pool.running("a") == 1)
        with pytest.raises(Busy, match="model 'a' had all its 1 worker threads busy"):
            await pool.run("a", 0.1, release.wait, 10)
        second = asyncio.ensure_future(pool.run("b", 10, release.wait, 10))
        await until(lambda: pool.running("b") == 1)
        with pytest.raises(Busy, match="all 2 worker threads were busy"):
            await pool.run("c", 0.1, sum, [1])
        queued = asyncio.ensure_future(pool.run("c", 10, sum, [1, 2]))  # waits for a thread, within its deadline
        release.set()
        assert await first is True and await second is True and await queued == 3
        with pytest.raises(Expired):
            await pool.run("d", 0.1, time.sleep, 0.5)
        assert pool.running("d") == 1  # the run goes on after its request gave up, and holds its thread
        await until(lambda: pool.running("d") == 0)
        with pytest.raises(ValueError):
            await pool.run("c", 10, int, "x")

    try:
        asyncio.run(scenario())
    finally:
        release.set()
