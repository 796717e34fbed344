"""The HTTP half of ``python -m exporter bench``: a live ``serve`` process under load.

The load comes from ``wrk`` when installed, else from a built-in asyncio load generator: batch 1 requests over
keep-alive connections on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.runtime.rules import version_dirs
from exporter.tools.bench_results import HttpResult


class ServerProcess:
    """``python -m exporter serve`` on a free loopback port; its log goes to a temporary file."""

    def __init__(self, artifacts: Path, log_level: str = "info", extra: tuple[str, ...] = ("--workers", "1")) -> None:
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
                *extra,
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


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process and of all its descendants (``serve --workers N``: the supervisor and workers;
    TorchServe: the Java frontend and its Python workers)."""
    total = process_cpu_seconds(pid)
    if total is None:
        return None
    return total + sum(process_cpu_seconds(child) or 0.0 for child in descendants(pid))


def descendants(pid: int) -> list[int]:
    """The ids of every live descendant of ``pid`` (children, their children, ...), read from Linux /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(parents.get(child, []))
    return found


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


def _find(pattern: str, out: str) -> re.Match[str]:
    """The first match of ``pattern`` (multiline) in wrk's report; an error naming it when wrk printed none."""
    match = re.search(pattern, out, re.M)
    if match is None:
        raise ExporterError(f"cannot read wrk's report: nothing matches {pattern!r} in:\n{out[-2000:]}")
    return match


def parse_wrk(out: str) -> HttpResult:
    """Requests/s, p50/p99 (``--latency``), error and request counts from wrk's report."""
    rps = float(_find(r"Requests/sec:\s*([\d.]+)", out).group(1))
    p50 = _wrk_duration_ms(_find(r"^\s*50%\s+(\S+)", out).group(1))
    p99 = _wrk_duration_ms(_find(r"^\s*99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    total = int(_find(r"(\d+) requests in", out).group(1))
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
    runner: Callable[[Coroutine[Any, Any, HttpResult]], HttpResult]
    try:
        import uvloop

        runner = uvloop.run
    except (ImportError, AttributeError):  # no uvloop, or one older than uvloop.run
        runner = asyncio.run
    return runner(_python_load(host, port, path, body, seconds, clients))


def wants_wrk(generator: str) -> bool:
    """Whether ``--load-generator`` (auto, wrk, python) means wrk; wrk asked for but not installed is an error."""
    if generator == "wrk" and shutil.which("wrk") is None:
        raise ExporterError("--load-generator wrk: wrk is not installed (apt-get install wrk)")
    return generator == "wrk" or (generator == "auto" and shutil.which("wrk") is not None)


def bench_http(
    artifacts: Path,
    models: list[str],
    seconds: float,
    clients: int,
    generator: str,
    logging_modes: tuple[str, ...] = ("on",),
) -> list[HttpResult]:
    """Requests/s and latency at batch 1 for each model against a live server, per logging mode (on/off)."""
    use_wrk = wants_wrk(generator)
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
            result = load_once(server.host, server.port, path, body, seconds, clients, use_wrk, server.proc.pid)
            result.model = model
            results.append(result)
    finally:
        server.stop()
    return results


#: the scaling rows: (``--workers``, metrics on), alternated so that a change of machine load hits all alike
SCALING_RUNS = ((1, True), (2, True), (1, False), (2, False))
#: rows per request of the scaling rows
SCALING_BATCHES = (1, 1024)


def bench_scaling(
    artifacts: Path, model: str, seconds: float, clients: int, generator: str, workers: int = 2
) -> list[HttpResult]:
    """Requests/s of ``model`` with ``--workers 1`` and ``workers``, metrics on and off, at batch 1 and 1024
    (TorchServe body, request log off: the processes and the metrics are what is compared)."""
    import orjson

    use_wrk = wants_wrk(generator)
    vdir = version_dirs(artifacts / model)[-1]
    sample = json.loads((vdir / "sample_request.json").read_text())["data"]
    bodies = {b: orjson.dumps({"data": [sample[i % len(sample)] for i in range(b)]}) for b in SCALING_BATCHES}
    results = []
    for n, metrics in ((1 if w == 1 else workers, m) for w, m in SCALING_RUNS):
        extra = ("--workers", str(n), "--max-body-bytes", str(64 << 20)) + (() if metrics else ("--no-metrics",))
        server = ServerProcess(artifacts, "warning", extra)
        try:
            for batch, body in bodies.items():
                result = load_once(
                    server.host, server.port, f"/predictions/{model}", body, seconds, clients, use_wrk, server.proc.pid
                )
                result.model, result.workers, result.metrics, result.batch = model, n, "on" if metrics else "off", batch
                results.append(result)
        finally:
            server.stop()
    return results


def load_once(
    host: str, port: int, path: str, body: bytes, seconds: float, clients: int, use_wrk: bool, pid: int
) -> HttpResult:
    """One load run of POST ``body`` to ``http://host:port/path``, with the CPU per request of the process tree
    rooted at ``pid`` (the server: whichever of its processes did the work)."""
    cpu_before = tree_cpu_seconds(pid)
    if use_wrk:
        result = run_wrk(f"http://{host}:{port}{path}", body, seconds, clients)
    else:
        result = run_python_load(host, port, path, body, seconds, clients)
    cpu_after = tree_cpu_seconds(pid)
    if cpu_before is not None and cpu_after is not None and result.total:
        result.server_cpu_us = (cpu_after - cpu_before) / result.total * 1e6
    return result
