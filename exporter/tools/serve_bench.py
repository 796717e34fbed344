"""``python -m exporter bench``: what the handler and the HTTP server cost, next to raw onnxruntime.

For every model and batch size it measures, in one process and one run:

* the native model's predict (xgboost ``inplace_predict``, torch eager in ``inference_mode``),
* raw onnxruntime ``session.run`` on a ready float64 array (the same session the handler uses),
* the handler on a TorchServe body and on an Open Inference Protocol body (bytes in, bytes out), the latter
  also with Triton's binary tensor data extension (raw FP64 bytes in and out),

as rows/s and as a ratio to raw onnxruntime; then, over HTTP on loopback against a live
``python -m exporter serve``, requests/s and p50/p99 latency at batch 1 with N concurrent keep-alive
clients (``wrk`` when installed, else a built-in asyncio load generator). Timings are medians of repeated
runs; nothing here asserts on them: the tables are the result.

This module is the in-process half; the HTTP load is :mod:`exporter.tools.serve_load`, the tables and targets
:mod:`exporter.tools.bench_report`, the measured values :mod:`exporter.tools.bench_results`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExporterError
from exporter.tools.bench_report import TARGETS, environment, render, targets
from exporter.tools.bench_results import Cell, HttpResult, Results
from exporter.tools.serve_load import (
    ServerProcess,
    bench_http,
    bench_scaling,
    parse_wrk,
    process_cpu_seconds,
    run_python_load,
    run_wrk,
    terminate,
)

if TYPE_CHECKING:  # pragma: no cover
    from exporter.runtime.handler import ModelHandler

#: the rest of the bench lives in its parts: results as data, HTTP load, the report (importable from here)
__all__ = [
    "TARGETS",
    "Cell",
    "HttpResult",
    "Results",
    "ServerProcess",
    "bench_http",
    "bench_model",
    "bench_scaling",
    "binary_body",
    "environment",
    "make_rows",
    "parse_wrk",
    "process_cpu_seconds",
    "render",
    "run_python_load",
    "run_wrk",
    "targets",
    "terminate",
    "time_call",
]


# ---------------------------------------------------------------------------------------------- timing
def time_call(fn: Callable[[], Any], min_time: float) -> float:
    """Median seconds per call of ``fn`` over repeated batches of calls lasting at least ``min_time`` in total."""
    fn()  # warm-up
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= 0.01 or calls >= 1 << 16:
            break
        calls *= 2
    samples = [elapsed / calls]
    deadline = time.perf_counter() + min_time
    while len(samples) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
        if len(samples) >= 200:
            break
    return statistics.median(samples)


# ---------------------------------------------------------------------------------------------- inputs
def make_rows(
    sample_rows: list[dict[str, Any]], columns: list[str], n: int, seed: int = 0, keep: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """``n`` plausible rows: sample_request rows resampled, floats jittered; integers, strings and the ``keep``
    columns (categorical: IDs and codes must stay what they are) taken whole from a sample row."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = sample_rows[i % len(sample_rows)]
        row: dict[str, Any] = {}
        for c in columns:
            value = base[c]
            if isinstance(value, (int, str)) or value is None or c in keep:
                row[c] = sample_rows[int(rng.integers(len(sample_rows)))][c]
            else:
                row[c] = float(value) * float(rng.uniform(0.8, 1.2))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- in-process
def _native(model: str, vdir: Path) -> tuple[Callable[[Any], Any] | None, str]:
    try:
        from exporter.models import get_spec

        spec = get_spec(model)
        predict = spec.native_predictor(vdir)
    except Exception as exc:  # noqa: BLE001 - any framework error (XGBoostError, RuntimeError...) means "n/a"
        first_line = (str(exc).strip().splitlines() or [""])[0][:160]
        return None, f"{type(exc).__name__}: {first_line}"
    if spec.framework == "torch":
        import torch

        def eager(x: Any) -> Any:
            with torch.inference_mode():
                return predict(x)

        return eager, f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    return predict, spec.framework


def bench_model(model: str, vdir: Path, batch_sizes: list[int], min_time: float) -> list[Cell]:
    """In-process measurements of one model version for every batch size."""
    import orjson

    from exporter.runtime.handler import ModelHandler

    handler = ModelHandler.load(vdir, max_rows=max(batch_sizes + [10_000]))
    columns = handler.feature_columns
    sample = json.loads((vdir / "sample_request.json").read_text())["data"]
    native, native_note = _native(model, vdir)
    cells = []
    for batch in batch_sizes:
        categorical = frozenset(
            c for c, kind in zip(columns, handler.features.kinds, strict=True) if kind == "categorical"
        )
        rows = make_rows(sample, columns, batch, seed=batch, keep=categorical)
        x = handler.torchserve.decode({"data": rows})  # strings as their vocabulary codes, as a v2 client sends
        ts_body = orjson.dumps({"data": rows})
        v2_body = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": handler.input_name,
                        "shape": [batch, len(columns)],
                        "datatype": "FP64",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
        for body in (ts_body, v2_body):
            status, answer = handler.handle_bytes(body)
            if status != 200:
                raise ExporterError(f"bench request for {model} failed with {status}: {answer[:300]!r}")
        bin_body, bin_header = binary_body(handler.input_name, handler.output_name, x)
        status, answer, _, answer_header = handler.handle_http(bin_body, bin_header)
        if status != 200 or answer_header is None:
            raise ExporterError(f"bench binary request for {model} failed with {status}: {answer[:300]!r}")
        timed = _Timed(handler, native, x, ts_body, v2_body, bin_body, bin_header)
        cells.append(timed.cell(model, batch, native_note, min_time))
    return cells


@dataclass(frozen=True)
class _Timed:
    """One batch's inputs, ready: what each timed call runs (fixed here, not read from a loop's variables)."""

    handler: ModelHandler
    native: Callable[[Any], Any] | None
    x: Any
    ts_body: bytes
    v2_body: bytes
    bin_body: bytes
    bin_header: int

    def cell(self, model: str, batch: int, native_note: str, min_time: float) -> Cell:
        """Time the native model, raw onnxruntime and the handler on each body form."""
        native, handler = self.native, self.handler
        native_s = time_call(lambda: native(self.x), min_time) if native is not None else None
        ort_s = time_call(lambda: handler.run(self.x), min_time)
        ts_s = time_call(lambda: handler.handle_bytes(self.ts_body), min_time)
        v2_s = time_call(lambda: handler.handle_bytes(self.v2_body), min_time)
        binary_s = time_call(lambda: handler.handle_http(self.bin_body, self.bin_header), min_time)
        return Cell(model, batch, native_s, ort_s, ts_s, v2_s, native_note, binary_s)


def binary_body(input_name: str, output_name: str, x: Any) -> tuple[bytes, int]:
    """A v2 request with ``x`` as binary tensor data, asking for a binary answer: (body, JSON header length)."""
    import numpy as np
    import orjson

    data = np.ascontiguousarray(x, dtype="<f8").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(x.shape),
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
    )
    return header + data, len(header)
