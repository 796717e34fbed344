"""The servers of ``bench peers``, each started on loopback, checked, and stopped: ours and its peers.

:class:`TorchServe` runs ``torchserve --start`` on loopback ports with its own TMPDIR and log directory, so that
several instances (a test's, a benchmark's) never share a pid file or a worker socket; :func:`wait_until_ready`
polls its management API until the model has a READY worker. The real-TorchServe test and ``bench peers`` both
start it this way, so the benchmark measures the server that the test checks.

The ``start_*`` functions start one server each for one model version and return a :class:`Running`: where the
load goes, the body it sends (the sample request's first row, in that server's request form), and the process
whose tree does the work. A server that cannot start here raises :class:`PeerUnavailable` with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.tools.serve_load import ServerProcess, descendants, terminate

#: how long TorchServe may take to start its frontend and load the model (a bound, not a measurement)
TORCHSERVE_READY_WITHIN = 240.0

#: log4j2 configuration of a quiet TorchServe: warnings and errors only, no access log or per-request metric lines
#: (as ``serve --log-level warning`` writes no line per request)
QUIET_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <RollingFile name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log"
                 filePattern="${env:LOG_LOCATION:-logs}/ts_log.%i.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="warn"/>
    <Logger name="MODEL_METRICS" level="warn"/>
    <Logger name="TS_METRICS" level="warn"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Root level="warn"><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (bound together, so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TorchServe:
    """``torchserve --start`` on loopback ports with a private TMPDIR (its pid file and worker sockets live there).

    ``workers``: ``default_workers_per_model`` (None: TorchServe's own default, one worker per core).
    ``quiet``: log warnings only (:data:`QUIET_LOG4J2`) instead of TorchServe's debug log and per-request lines.
    """

    def __init__(self, store: Path, model: str, root: Path, workers: int | None = 1, quiet: bool = False) -> None:
        self.root = root
        self.model = model
        self.inference, self.management, self.metrics = free_ports(3)
        (root / "tmp").mkdir(parents=True)
        (root / "logs").mkdir()
        self.config = root / "config.properties"
        self.config.write_text(
            f"inference_address=http://127.0.0.1:{self.inference}\n"
            f"management_address=http://127.0.0.1:{self.management}\n"
            f"metrics_address=http://127.0.0.1:{self.metrics}\n"
            + (f"default_workers_per_model={workers}\n" if workers is not None else "")
            + "install_py_dep_per_model=false\ndisable_system_metrics=true\n"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "TMPDIR": str(root / "tmp"),
            "TEMP": str(root / "tmp"),
            "LOG_LOCATION": str(root / "logs"),
            "METRICS_LOCATION": str(root / "logs"),
        }
        self.command = [
            "torchserve",
            "--start",
            "--ncs",
            "--model-store",
            str(store),
            "--models",
            f"{model}={model}.mar",
            "--disable-token-auth",
            "--ts-config",
            str(self.config),
        ]
        if quiet:
            log_config = root / "log4j2.xml"
            log_config.write_text(QUIET_LOG4J2)
            self.command += ["--log-config", str(log_config)]

    def start(self) -> None:
        """Start the frontend (it keeps running after the command returns; its output goes to a file, since
        it holds on to whatever stdout it inherits)."""
        with open(self.root / "logs" / "torchserve.out", "wb") as out:
            subprocess.run(
                self.command,
                cwd=self.root,
                env=self.env,
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )

    def pid(self) -> int | None:
        """The frontend's process id, from its pid file (None before it started or after it stopped)."""
        try:
            return int((self.root / "tmp" / ".model_server.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, within: float = 20.0) -> None:
        """``torchserve --stop`` (which signals the frontend and returns); wait up to ``within`` seconds for this
        instance's processes to end, then kill whatever of them is left."""
        frontend = self.pid()
        tree = [*descendants(frontend), frontend] if frontend is not None else []
        subprocess.run(
            ["torchserve", "--stop"],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + within
        while tree and time.monotonic() < deadline:
            tree = [pid for pid in tree if Path(f"/proc/{pid}").exists()]
            time.sleep(0.2)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # ended meanwhile
                pass

    def workers(self) -> list[str]:
        """The statuses of the model's workers, from the management API (empty when it does not answer)."""
        url = f"http://127.0.0.1:{self.management}/models/{self.model}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                described = json.loads(response.read())
            return [str(w.get("status")) for w in described[0].get("workers", [])]
        except (OSError, ValueError, IndexError, KeyError, AttributeError):
            return []

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
            for p in sorted((self.root / "logs").glob("*.*"))
        )


def wait_until_ready(server: TorchServe, within: float = TORCHSERVE_READY_WITHIN) -> None:
    """Poll the management API until one of the model's workers is READY; an :class:`ExporterError` with the end
    of TorchServe's logs when none is within ``within`` seconds."""
    deadline = time.monotonic() + within
    status: list[str] = []
    while time.monotonic() < deadline:
        status = server.workers()
        if "READY" in status:
            return
        time.sleep(1.0)
    raise ExporterError(
        f"TorchServe did not report {server.model} READY within {within:.0f} s (workers: {status})\n{server.logs()}"
    )


# ---------------------------------------------------------------------------------------------- started servers
class PeerUnavailable(Exception):
    """A server that cannot run on this machine (its software missing, or it failed to start): the reason."""


@dataclass(frozen=True)
class Sample:
    """The one request every server answers: the sample request's first row, and that row as the handler
    decodes it (the prepared float64 feature row the floor endpoint takes)."""

    model: str
    version_dir: Path
    row: dict[str, Any]
    features: list[float]

    @classmethod
    def load(cls, model: str, version_dir: Path) -> Sample:
        from exporter.runtime.handler import ModelHandler

        path = version_dir / "sample_request.json"
        try:
            row = json.loads(path.read_text())["data"][0]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ExporterError(f"{path} has no sample row to send ({type(exc).__name__}: {exc})") from None
        matrix = ModelHandler.load(version_dir).torchserve.decode({"data": [row]})
        return cls(model, version_dir, row, [float(v) for v in matrix[0]])


@dataclass
class Running:
    """A started server: where its load goes, what it is sent, whose process tree does the work, how to stop."""

    name: str
    label: str
    port: int
    path: str
    body: bytes
    pid: int
    stop: Callable[[], None]
    host: str = "127.0.0.1"


def start_ours(artifacts: Path, sample: Sample, workers: int | None) -> Running:
    """``python -m exporter serve --port 0 --log-level warning`` with ``--workers N`` (None: its default)."""
    extra = ("--workers", str(workers)) if workers is not None else ()
    try:
        server = ServerProcess(artifacts, "warning", extra)
    except ExporterError as exc:
        raise PeerUnavailable(str(exc).splitlines()[0]) from None
    found = re.search(r"(\d+) worker process", Path(server.log.name).read_text())
    count = f" ({found.group(1)})" if found and workers is None else ""
    return Running(
        "ours" if workers == 1 else "ours auto" if workers is None else f"ours {workers}",
        f"serve --workers {workers if workers is not None else 'auto' + count}",
        server.port,
        f"/predictions/{sample.model}",
        json.dumps({"data": [sample.row]}).encode(),
        server.proc.pid,
        server.stop,
        server.host,
    )


def start_torchserve(artifacts: Path, sample: Sample, root: Path, workers: int | None = None) -> Running:
    """TorchServe serving the ``.mar`` of ``python -m exporter archive`` (our handler inside TorchServe), quiet,
    with ``workers`` per model (None: TorchServe's default)."""
    for binary, why in (("java", "Java 11+ for its frontend"), ("torchserve", "pip install torchserve==0.12.0")):
        if shutil.which(binary) is None:
            raise PeerUnavailable(f"{binary} is not installed ({why})")
    from exporter.export.archive import build_archive

    store = root / "model_store"
    try:
        build_archive(f"{sample.model}/{sample.version_dir.name}", store, artifacts)
    except ExporterError as exc:
        raise PeerUnavailable(f"cannot build the archive: {str(exc).splitlines()[0]}") from None
    server = TorchServe(store, sample.model, root / "torchserve", workers=workers, quiet=True)
    try:
        server.start()
        wait_until_ready(server)
    except (ExporterError, subprocess.SubprocessError, OSError) as exc:
        server.stop()
        raise PeerUnavailable(f"TorchServe did not start: {str(exc).splitlines()[0]}") from None
    pid = server.pid()
    if pid is None:
        server.stop()
        raise PeerUnavailable("TorchServe wrote no pid file")
    return Running(
        "torchserve",
        f"TorchServe {_version('torchserve')}, {len(server.workers())} workers",
        server.inference,
        f"/predictions/{sample.model}",
        json.dumps({"data": [sample.row]}).encode(),
        pid,
        server.stop,
    )


def start_kserve(sample: Sample) -> Running:
    """KServe's ModelServer around the handler (:mod:`exporter.tools.peer_kserve`), v1 protocol."""
    (port,) = free_ports(1)
    args = ["--version-dir", str(sample.version_dir), "--name", sample.model, "--port", str(port)]
    proc, stop = _child("exporter.tools.peer_kserve", args, port)
    return Running(
        "kserve",
        f"KServe {_version('kserve')} ModelServer, 1 worker",
        port,
        f"/v1/models/{sample.model}:predict",
        json.dumps({"instances": [sample.row]}).encode(),
        proc.pid,
        stop,
    )


def start_starlette(sample: Sample) -> Running:
    """The floor: Starlette + uvicorn + onnxruntime on the prepared row (:mod:`exporter.tools.peer_starlette`)."""
    from exporter.tools.peer_starlette import PATH

    (port,) = free_ports(1)
    proc, stop = _child(
        "exporter.tools.peer_starlette", ["--version-dir", str(sample.version_dir), "--port", str(port)], port
    )
    return Running(
        "starlette",
        f"Starlette {_version('starlette')} + uvicorn + onnxruntime, prepared row",
        port,
        PATH,
        json.dumps({"inputs": [sample.features]}).encode(),
        proc.pid,
        stop,
    )


#: how long a Python peer may take to import its server and load the model
CHILD_READY_WITHIN = 120.0


def _child(module: str, args: list[str], port: int) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    """``python -m module args`` listening on ``port``: started, waited until it accepts connections."""
    log = tempfile.NamedTemporaryFile("w+b", prefix="exporter-bench-peer-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )

    def stop() -> None:
        terminate(proc)
        log.close()
        os.unlink(log.name)

    deadline = time.monotonic() + CHILD_READY_WITHIN
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = Path(log.name).read_text(errors="replace").strip().splitlines() or [f"exit code {proc.returncode}"]
            stop()
            raise PeerUnavailable(lines[-1][:300])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, stop
        except OSError:
            time.sleep(0.1)
    stop()
    raise PeerUnavailable(f"{module} did not listen on port {port} within {CHILD_READY_WITHIN:.0f} s")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"
