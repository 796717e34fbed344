"""The exported repository in a real Triton Inference Server (2.51, from nvidia-pytriton, Python backend).

Each config.pbtxt is served as exported except its platform line (``backend: "python"``, a generic model.py
running the same model.onnx with onnxruntime), so this checks what Triton makes of the export's configs:
every model loads and warms up, the metadata Triton reports, JSON and binary-tensor inference against the
project's handler, and dynamic batching. Skipped only when this machine cannot run the binary or pip cannot
reach the registry to build the side environment.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as tc

from exporter.handler import ModelHandler
from exporter.models import repository_names
from exporter.tools import triton_python as tp
from exporter.training.data import synthetic_dataset
from tests.triton_proto import parse_config

#: the tests that build the side environment and run tritonserver (the pure functions' tests are fast)
slow = pytest.mark.slow

MODELS = repository_names()
#: Triton's answers against the handler's, the same onnxruntime on the same rows
ATOL = 1e-6
CONCURRENT = 32
Client = tc.InferenceServerClient


@pytest.fixture(scope="module")
def side_env() -> tp.SideEnv:
    problem = tp.platform_problem()
    if problem:
        pytest.skip(problem)
    try:
        return tp.ensure_side_env()
    except tp.SideEnvError as exc:
        if exc.registry_unreachable:
            pytest.skip(f"cannot build the Triton side environment, the package registry is not reachable: {exc}")
        raise


@pytest.fixture(scope="module")
def repository(exported_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("triton") / "repository"
    assert tp.to_python_backend(exported_artifacts, dst) == sorted(MODELS)
    return dst


#: model -> (inference_count, execution_count) right after the server became ready: its warm-up runs
STARTUP_STATS: dict[str, tuple[int, int]] = {}


@pytest.fixture(scope="module")
def server(side_env: tp.SideEnv, repository: Path) -> Iterator[tp.TritonProcess]:
    with tp.running_server(side_env, repository, repository.parent / "tritonserver.log") as live:
        STARTUP_STATS.clear()
        STARTUP_STATS.update({name: _stats(live, name) for name in MODELS})
        yield live
    # the server exited on SIGTERM after unloading; a crash on shutdown would show here
    assert live.process.returncode == 0, live.log()[-3000:]


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {}


def _features(exported_artifacts: Path, name: str, rows: int = 64) -> tuple[ModelHandler, np.ndarray]:
    """The handler of ``name`` and a realistic feature matrix (synthetic rows without missing values)."""
    handler = ModelHandler.load(exported_artifacts / name / "1")
    frame = synthetic_dataset(rows * 2, 11)[handler.feature_columns].dropna().head(rows)
    matrix = handler.torchserve.decode({"data": frame.to_dict("records")})
    assert matrix.shape == (rows, handler.n_features)
    return handler, matrix


def _batched_shape(handler_out: np.ndarray) -> tuple[int, ...]:
    """Triton's answer shape: a per-row scalar ``[B]`` comes back ``[B, 1]`` (config dims [1], reshape [])."""
    return handler_out.shape if handler_out.ndim == 2 else (handler_out.shape[0], 1)


def _stats(server: tp.TritonProcess, name: str) -> tuple[int, int]:
    status, body = _get(f"{server.url}/v2/models/{name}/stats")
    assert status == 200, body
    [entry] = body["model_stats"]
    return int(entry["inference_count"]), int(entry["execution_count"])


def test_triton_view_reads_what_config_implies() -> None:
    """The scalar rule: dims [1] with reshape [] is reported [-1, 1]; unbatched configs keep dims as written."""
    config = (
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "features" data_type: TYPE_FP64 dims: [ 4 ] } ]\n'
        'output [ { name: "predictions" data_type: TYPE_FP64 dims: [ 1 ] reshape { shape: [ ] } } ]\n'
    )
    assert tp.triton_view(config) == {
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "predictions", "datatype": "FP64", "shape": [-1, 1]}],
    }
    unbatched = config.replace("max_batch_size: 8", "max_batch_size: 0").replace("dims: [ 4 ]", "dims: [ -1, 4 ]")
    assert tp.triton_view(unbatched)["inputs"][0]["shape"] == [-1, 4]
    assert tp.triton_view(unbatched)["outputs"][0]["shape"] == [1]


def test_triton_view_of_exported_configs() -> None:
    """What the exporter writes: a per-row scalar and a vector output, batched up to max_batch_size."""
    from exporter.export.triton import config_pbtxt

    def meta(out_shape: list[int]) -> dict[str, Any]:
        return {
            "name": "m",
            "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 7]}],
            "outputs": [{"name": "predictions", "datatype": "FP64", "shape": out_shape}],
        }

    assert tp.triton_view(config_pbtxt(meta([-1]), max_batch_size=4))["outputs"][0]["shape"] == [-1, 1]
    assert tp.triton_view(config_pbtxt(meta([-1, 3])))["outputs"][0]["shape"] == [-1, 3]
    assert tp.triton_view(config_pbtxt(meta([-1, 3])))["inputs"] == [
        {"name": "features", "datatype": "FP64", "shape": [-1, 7]}
    ]


def test_python_backend_config_changes_the_platform_line_only() -> None:
    text = 'name: "m"\n  platform: "onnxruntime_onnx"  \nmax_batch_size: 4\n# platform: "onnxruntime_onnx" said\n'
    assert tp.python_backend_config(text) == text.replace('  platform: "onnxruntime_onnx"  ', '  backend: "python"  ')
    for bad in ('name: "m"\nbackend: "python"\n', 'platform: "onnxruntime_onnx"\nplatform: "onnxruntime_onnx"\n'):
        with pytest.raises(ValueError, match="exactly one line"):
            tp.python_backend_config(bad)


@slow
def test_a_model_that_cannot_load_stops_the_server_with_its_log(
    side_env: tp.SideEnv, exported_artifacts: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repository"
    tp.to_python_backend(exported_artifacts, repo)
    (repo / "xgb" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(tp.TritonStartError, match="exited with code") as caught:
        tp.start_server(side_env, repo, tmp_path / "log.txt", ready_timeout=120)
    assert "failed to load 'xgb' version 1" in str(caught.value)


@slow
def test_conversion_changes_only_the_platform_line(exported_artifacts: Path, repository: Path) -> None:
    for name in MODELS:
        before = (exported_artifacts / name / "config.pbtxt").read_text().splitlines()
        after = (repository / name / "config.pbtxt").read_text().splitlines()
        assert len(before) == len(after)
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert changed == [('platform: "onnxruntime_onnx"', 'backend: "python"')]
        assert (repository / name / "1" / "model.py").is_file()
        assert sorted(p.name for p in (repository / name / "warmup").iterdir()) == sorted(
            p.name for p in (exported_artifacts / name / "warmup").iterdir()
        )


@slow
@pytest.mark.parametrize("name", MODELS)
def test_model_loads_and_warms_up(server: tp.TritonProcess, repository: Path, name: str) -> None:
    status, body = _get(f"{server.url}/v2/models/{name}/ready")
    assert status == 200, body
    # the stub ran in the side environment (numpy 1), not the project's numpy 2
    assert f"exporter-python-model: {name} numpy 1." in server.log()
    # Triton runs a warm-up sample of batch_size B as B one-row requests in one execution, and counts them
    samples = parse_config((repository / name / "config.pbtxt").read_text()).model_warmup
    assert [s.batch_size for s in samples] == [1, 1024]
    assert STARTUP_STATS[name] == (sum(s.batch_size for s in samples), len(samples))


@slow
@pytest.mark.parametrize("name", MODELS)
def test_metadata_is_what_the_config_implies(server: tp.TritonProcess, exported_artifacts: Path, name: str) -> None:
    status, body = _get(f"{server.url}/v2/models/{name}")
    assert status == 200, body
    view = tp.triton_view((exported_artifacts / name / "config.pbtxt").read_text())
    assert {"inputs": body["inputs"], "outputs": body["outputs"]} == view
    # metadata.json tells the truth for Triton too: its "triton" object is what Triton's endpoint reports
    metadata = json.loads((exported_artifacts / name / "1" / "metadata.json").read_text())
    assert {"inputs": body["inputs"], "outputs": body["outputs"]} == metadata["triton"]
    assert body["name"] == name and body["versions"] == ["1"] and body["platform"] == "python"


@slow
@pytest.mark.parametrize("name", MODELS)
def test_json_inference_matches_the_handler(server: tp.TritonProcess, exported_artifacts: Path, name: str) -> None:
    handler, x = _features(exported_artifacts, name)
    want = handler.run(x)
    request = {
        "id": "j",
        "inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP64", "data": x.reshape(-1).tolist()}],
    }
    status, answer, _ = _post(
        f"{server.url}/v2/models/{name}/infer", json.dumps(request).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, answer[:2000]
    [out] = json.loads(answer)["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("predictions", "FP64", list(_batched_shape(want)))
    got = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=ATOL)


@slow
@pytest.mark.parametrize("name", MODELS)
def test_binary_inference_matches_the_handler(server: tp.TritonProcess, exported_artifacts: Path, name: str) -> None:
    handler, x = _features(exported_artifacts, name, rows=50)
    want = handler.run(x)
    inp = tc.InferInput("features", list(x.shape), "FP64")
    inp.set_data_from_numpy(x, binary_data=True)
    body, header_length = Client.generate_request_body(
        [inp], outputs=[tc.InferRequestedOutput("predictions", binary_data=True)], request_id="b"
    )
    assert header_length is not None
    status, answer, headers = _post(
        f"{server.url}/v2/models/{name}/infer",
        body,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)},
    )
    assert status == 200, answer[:2000]
    result = Client.parse_response_body(answer, header_length=int(headers["inference-header-content-length"]))
    got = result.as_numpy("predictions")
    assert got.dtype == np.float64 and got.shape == _batched_shape(want)
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == got.size * 8
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=ATOL)


@slow
@pytest.mark.parametrize("name", MODELS)
def test_dynamic_batching_merges_concurrent_requests(
    server: tp.TritonProcess, exported_artifacts: Path, name: str
) -> None:
    handler, x = _features(exported_artifacts, name, rows=CONCURRENT)
    inferences_before, executions_before = _stats(server, name)
    start = threading.Barrier(CONCURRENT)

    def one(i: int) -> np.ndarray:
        request = json.dumps(
            {"inputs": [{"name": "features", "shape": [1, x.shape[1]], "datatype": "FP64", "data": x[i].tolist()}]}
        ).encode()
        start.wait(timeout=60)
        status, answer, _ = _post(f"{server.url}/v2/models/{name}/infer", request, {"Content-Type": "application/json"})
        assert status == 200, answer[:2000]
        [out] = json.loads(answer)["outputs"]
        return np.asarray(out["data"], dtype=np.float64)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        got = np.stack(list(pool.map(one, range(CONCURRENT))))
    inferences, executions = _stats(server, name)
    assert inferences - inferences_before == CONCURRENT
    assert 0 < executions - executions_before < CONCURRENT, (
        f"{name}: {CONCURRENT} concurrent requests ran in {executions - executions_before} executions"
    )

    # Triton ran the rows merged into larger onnxruntime calls; the handler one row per call
    one_by_one = np.stack([handler.run(x[i : i + 1]).reshape(-1) for i in range(CONCURRENT)])
    diff = float(np.max(np.abs(got - one_by_one)))
    print(
        f"{name}: {CONCURRENT} requests in {executions - executions_before} executions, "
        f"max |triton batched - handler batch-1| = {diff:.3e}"
    )
    assert diff <= ATOL
