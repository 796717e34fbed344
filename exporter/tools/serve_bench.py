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
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.runtime.rules import version_dirs

TARGETS = {
    "v2_at_1024": 1.5,
    "binary_at_1024": 1.5,
    "log_cost": 0.15,
    "torchserve_at_1024": 3.0,
    "http_rps": 3000.0,
    "http_p99_ms": 5.0,
}


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


@dataclass
class Cell:
    """One model x batch size."""

    model: str
    batch: int
    native_s: float | None
    ort_s: float
    torchserve_s: float
    v2_s: float
    native_note: str = ""
    binary_s: float | None = None

    def rows_per_s(self, seconds: float | None) -> float | None:
        return None if seconds is None else self.batch / seconds


@dataclass
class HttpResult:
    model: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator: str
    total: int = 0
    logging: str = "on"
    #: the server process's CPU time (user + system, all threads) per request answered
    server_cpu_us: float | None = None


@dataclass
class Results:
    cells: list[Cell] = field(default_factory=list)
    http: list[HttpResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
        categorical = frozenset(c for c, kind in zip(columns, handler.features.kinds) if kind == "categorical")
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
        native_s = time_call(lambda: native(x), min_time) if native is not None else None
        ort_s = time_call(lambda: handler.run(x), min_time)
        ts_s = time_call(lambda: handler.handle_bytes(ts_body), min_time)
        v2_s = time_call(lambda: handler.handle_bytes(v2_body), min_time)
        binary_s = time_call(lambda: handler.handle_http(bin_body, bin_header), min_time)
        cells.append(Cell(model, batch, native_s, ort_s, ts_s, v2_s, native_note, binary_s))
    return cells


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


# ---------------------------------------------------------------------------------------------- HTTP
class ServerProcess:
    """``python -m exporter serve`` on a free loopback port; its log goes to a temporary file."""

    def __init__(self, artifacts: Path, log_level: str = "info") -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="exporter-bench-serve-", delete=False)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "serve",
                "--artifacts",
                str(artifacts),
                "--port",
                "0",
                "--max-rows",
                "10000",
                "--log-level",
                log_level,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        deadline = time.time() + 120
        self.url = ""
        while time.time() < deadline:
            text = Path(self.log.name).read_text()
            match = re.search(r"listening on (http://\S+)", text)
            if match:
                self.url = match.group(1)
                break
            if self.proc.poll() is not None:
                raise ExporterError(f"serve exited with {self.proc.returncode}:\n{text[-2000:]}")
            time.sleep(0.05)
        if not self.url:
            self.stop()
            raise ExporterError("serve did not start within 120 s")
        host_port = self.url.removeprefix("http://")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()
        os.unlink(self.log.name)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process used so far (Linux /proc; None elsewhere).

    Unlike requests/s, CPU per request hardly depends on what else the machine runs at the same time.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def terminate(proc: subprocess.Popen, timeout: float = 10) -> int | None:
    """Stop a child process politely (SIGTERM), then firmly (SIGKILL) if it lingers; returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("EXPORTER_BENCH_BODY"), "rb"):read("*all")
"""


def _wrk_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ExporterError(f"cannot read wrk latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, body: bytes, seconds: float, clients: int) -> HttpResult:
    """Load ``url`` with wrk (POST of ``body``) and read requests/s and latency percentiles."""
    with tempfile.TemporaryDirectory(prefix="exporter-bench-") as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_SCRIPT)
        threads = max(1, min(clients, 2))
        proc = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{clients}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, EXPORTER_BENCH_BODY=str(body_path)),
            timeout=seconds + 60,
        )
    if proc.returncode != 0 or "Requests/sec" not in proc.stdout:
        raise ExporterError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse_wrk(proc.stdout)


def parse_wrk(out: str) -> HttpResult:
    """Requests/s, p50/p99 (``--latency``), error and request counts from wrk's report."""
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    p50 = _wrk_duration_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = _wrk_duration_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return HttpResult("", rps, p50, p99, errors, "wrk", total)


async def _python_load(host: str, port: int, path: str, body: bytes, seconds: float, clients: int) -> HttpResult:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        perf = time.perf_counter
        try:
            while True:
                start = perf()
                if start >= stop_at:
                    break
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                        break
                await reader.readexactly(length)
                latencies.append(perf() - start)
                if head[9:12] != b"200":
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else float("nan")

    return HttpResult("", len(latencies) / elapsed, pct(50), pct(99), errors, "python asyncio", len(latencies))


def run_python_load(host: str, port: int, path: str, body: bytes, seconds: float, clients: int) -> HttpResult:
    """The built-in load generator: ``clients`` keep-alive connections on one event loop (uvloop if present)."""
    try:
        import uvloop

        runner = uvloop.run  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        runner = asyncio.run
    return runner(_python_load(host, port, path, body, seconds, clients))


def bench_http(
    artifacts: Path,
    models: list[str],
    seconds: float,
    clients: int,
    generator: str,
    logging_modes: tuple[str, ...] = ("on",),
) -> list[HttpResult]:
    """Requests/s and latency at batch 1 for each model against a live server, per logging mode (on/off)."""
    use_wrk = generator == "wrk" or (generator == "auto" and shutil.which("wrk") is not None)
    if generator == "wrk" and shutil.which("wrk") is None:
        raise ExporterError("--load-generator wrk: wrk is not installed (apt-get install wrk)")
    results = []
    for mode in logging_modes:
        for result in _bench_http_server(artifacts, models, seconds, clients, use_wrk, mode):
            result.logging = mode
            results.append(result)
    return results


def _bench_http_server(
    artifacts: Path, models: list[str], seconds: float, clients: int, use_wrk: bool, mode: str
) -> list[HttpResult]:
    import orjson

    server = ServerProcess(artifacts, "info" if mode == "on" else "warning")
    results = []
    try:
        for model in models:
            model_dir = artifacts / model
            vdir = version_dirs(model_dir)[-1]
            sample = json.loads((vdir / "sample_request.json").read_text())["data"]
            body = orjson.dumps({"data": sample[:1]})
            path = f"/predictions/{model}"
            cpu_before = process_cpu_seconds(server.proc.pid)
            if use_wrk:
                result = run_wrk(server.url + path, body, seconds, clients)
            else:
                result = run_python_load(server.host, server.port, path, body, seconds, clients)
            cpu_after = process_cpu_seconds(server.proc.pid)
            if cpu_before is not None and cpu_after is not None and result.total:
                result.server_cpu_us = (cpu_after - cpu_before) / result.total * 1e6
            result.model = model
            results.append(result)
    finally:
        server.stop()
    return results


# ---------------------------------------------------------------------------------------------- report
def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100_000:
        return f"{value / 1e6:.2f}M"
    if value >= 1000:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def render(results: Results) -> str:
    """The tables as Markdown."""
    lines = [
        "| model | batch | native rows/s | ORT rows/s | ORT vs native | TorchServe body rows/s (x ORT) | v2 body rows/s (x ORT) "
        "| v2 binary rows/s (x ORT) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results.cells:
        speedup = f"{c.native_s / c.ort_s:.1f}x faster" if c.native_s is not None else "n/a"
        if c.native_s is not None and c.native_s < c.ort_s:
            speedup = f"{c.ort_s / c.native_s:.1f}x slower"
        lines.append(
            f"| {c.model} | {c.batch} | {_fmt_rate(c.rows_per_s(c.native_s))} | {_fmt_rate(c.rows_per_s(c.ort_s))} | "
            f"{speedup} | {_fmt_rate(c.rows_per_s(c.torchserve_s))} ({c.torchserve_s / c.ort_s:.2f}x) | "
            f"{_fmt_rate(c.rows_per_s(c.v2_s))} ({c.v2_s / c.ort_s:.2f}x) | "
            + (f"{_fmt_rate(c.rows_per_s(c.binary_s))} ({c.binary_s / c.ort_s:.2f}x) |" if c.binary_s else "n/a |")
        )
    if results.http:
        lines += [
            "",
            f"HTTP on loopback, batch 1 (TorchServe body), load generator: {results.http[0].generator}",
            "",
            "| model | request log | requests/s | p50 ms | p99 ms | server CPU us/request | errors | requests |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for h in results.http:
            cpu = f"{h.server_cpu_us:.1f}" if h.server_cpu_us is not None else "n/a"
            lines.append(
                f"| {h.model} | {h.logging} | {h.requests_per_s:,.0f} | {h.p50_ms:.2f} | {h.p99_ms:.2f} | "
                f"{cpu} | {h.errors} | {h.total:,} |"
            )
    return "\n".join(lines)


def targets(results: Results) -> list[str]:
    """The speed targets (:data:`TARGETS`), each marked met or missed with the measured value."""
    out = []
    big = [c for c in results.cells if c.batch == 1024]
    for c in big:
        v2, ts = c.v2_s / c.ort_s, c.torchserve_s / c.ort_s
        out.append(
            f"[{'met' if v2 <= TARGETS['v2_at_1024'] else 'MISSED'}] {c.model}: v2 body at batch 1024 is "
            f"{v2:.2f}x raw ORT (target <= {TARGETS['v2_at_1024']}x)"
        )
        out.append(
            f"[{'met' if ts <= TARGETS['torchserve_at_1024'] else 'MISSED'}] {c.model}: TorchServe body at batch "
            f"1024 is {ts:.2f}x raw ORT (target <= {TARGETS['torchserve_at_1024']}x)"
        )
        if c.binary_s is not None:
            b = c.binary_s / c.ort_s
            out.append(
                f"[{'met' if b <= TARGETS['binary_at_1024'] else 'MISSED'}] {c.model}: v2 binary at batch 1024 "
                f"is {b:.2f}x raw ORT (target <= {TARGETS['binary_at_1024']}x)"
            )
    for c in (c for c in results.cells if c.batch == 1):
        if c.native_s is None:
            out.append(f"[n/a] {c.model}: native model not available ({c.native_note})")
        else:
            ok = c.ort_s < c.native_s
            out.append(
                f"[{'met' if ok else 'MISSED'}] {c.model}: at batch 1 ORT takes {c.ort_s * 1e6:.1f} us, "
                f"native {c.native_s * 1e6:.1f} us (target: ORT faster)"
            )
    by_mode = {(h.model, h.logging): h for h in results.http}
    for model in sorted({h.model for h in results.http}):
        on, off = by_mode.get((model, "on")), by_mode.get((model, "off"))
        if on is not None and off is not None and off.requests_per_s > 0:
            cost = 1 - on.requests_per_s / off.requests_per_s
            cpu = ""
            if on.server_cpu_us is not None and off.server_cpu_us is not None:
                cpu = f"; server CPU {on.server_cpu_us:.1f} vs {off.server_cpu_us:.1f} us/request"
            out.append(
                f"[{'met' if cost <= TARGETS['log_cost'] else 'MISSED'}] {model} over HTTP: per-request log "
                f"line costs {cost:.1%} of req/s ({on.requests_per_s:,.0f} on vs {off.requests_per_s:,.0f} off{cpu}; "
                f"target <= {TARGETS['log_cost']:.0%})"
            )
    for h in results.http:
        if h.model == "xgb":
            ok = h.requests_per_s >= TARGETS["http_rps"] and h.p99_ms < TARGETS["http_p99_ms"] and h.errors == 0
            out.append(
                f"[{'met' if ok else 'MISSED'}] xgb over HTTP (request log {h.logging}): "
                f"{h.requests_per_s:,.0f} req/s, p99 {h.p99_ms:.2f} ms, "
                f"{h.errors} errors (target >= 3,000 req/s, p99 < 5 ms)"
            )
    return out


def _environment() -> str:
    import numpy as np
    import onnxruntime

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    parts = [
        f"{os.cpu_count()} CPUs (load average {load})",
        f"Python {sys.version.split()[0]}",
        f"onnxruntime {onnxruntime.__version__}",
        f"numpy {np.__version__}",
        f"ORT intra-op threads {os.environ.get('EXPORTER_ORT_THREADS', '1')}",
    ]
    try:
        import torch

        parts.append(
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"
        )
    except ImportError:
        pass
    try:
        import xgboost

        parts.append(f"xgboost {xgboost.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)
