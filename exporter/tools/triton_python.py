"""A real Triton Inference Server for an exported repository, through Triton's Python backend.

The exported repository asks for Triton's onnxruntime backend (``platform: "onnxruntime_onnx"``), which is not
available as a package. The ``nvidia-pytriton`` wheel ships a real ``tritonserver`` binary with only the
Python backend, whose stub needs ``numpy<2`` while the project uses numpy 2. So this module

* builds a side virtual environment (:func:`ensure_side_env`) holding that wheel, ``numpy<2`` and the project's
  onnxruntime version, once per cache directory;
* copies an exported repository for the Python backend (:func:`to_python_backend`): each ``config.pbtxt``
  keeps every line but the platform one, and a generic ``model.py`` runs the version's ``model.onnx``, merging
  the requests of one call into one onnxruntime run the way the onnxruntime backend does;
* starts and stops ``tritonserver`` on loopback (:func:`start_server`, :class:`TritonProcess`);
* re-exports :func:`exporter.export.triton.triton_view`: what Triton reports as a model's inputs and outputs
  for a config (metadata.json records it as ``"triton"``).

The binary is launched the way pytriton launches it: its libraries from ``nvidia_pytriton.libs`` on
``LD_LIBRARY_PATH``, the stub for the environment's Python copied beside ``libtriton_python.so``, and the side
environment's ``bin`` first on ``PATH`` so the stub's embedded interpreter finds that environment.

Use::

    env = ensure_side_env()                       # about 20 s the first time, then reused
    to_python_backend("artifacts", "/tmp/triton-repo")
    with running_server(env, "/tmp/triton-repo", "/tmp/triton.log") as server:
        ...                                       # server.url: http://127.0.0.1:<port>/v2/...
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from exporter.export.triton import triton_view  # noqa: F401  (re-exported: the export computes Triton's view)
from exporter.runtime.rules import is_version_name
from exporter.tools.peer_servers import free_ports

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
#: the Python backend stub of pytriton 0.7 is built against numpy 1
NUMPY_REQUIREMENT = "numpy<2"
#: onnxruntime >= 1.19 wheels are built against numpy 2 and still run with numpy >= 1.21.6
FALLBACK_ONNXRUNTIME = "1.31.1"
#: the wheel's tag: manylinux_2_35_x86_64
MIN_GLIBC = (2, 35)
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "recsys-onnx-exporter" / "triton-env"
MODEL_FILE = "model.py"
_COMPLETE = "complete.json"
_PLATFORM_LINE = 'platform: "onnxruntime_onnx"'
_BACKEND_LINE = 'backend: "python"'
#: pip messages that mean the registry could not be reached; without one of them, "no matching distribution"
#: is a wrong requirement, not a network problem
_UNREACHABLE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
)


class SideEnvError(RuntimeError):
    """The side environment could not be built; ``registry_unreachable`` tells a network cause apart."""

    def __init__(self, message: str, *, registry_unreachable: bool = False) -> None:
        super().__init__(message)
        self.registry_unreachable = registry_unreachable


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready in time; the message holds the end of its log."""


@dataclass(frozen=True)
class SideEnv:
    """Where the side environment's pieces are."""

    root: Path
    python: Path
    tritonserver: Path
    backend_directory: Path
    cache_directory: Path
    libs: Path

    def server_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for tritonserver: its libraries and libpython found, the side env's python first."""
        env = dict(os.environ if base is None else base)
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(name, None)  # the stub must see the side env only, never the project's numpy 2
        libpython = sysconfig.get_config_var("LIBDIR") or ""
        paths = (
            [str(self.libs)]
            + ([libpython] if libpython else [])
            + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        )
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        env["PATH"] = f"{self.python.parent}:{env.get('PATH', '')}"
        return env


def platform_problem() -> str | None:
    """Why this machine cannot run the wheel's binary (not x86-64 Linux with glibc >= 2.35), else None."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return (
            f"tritonserver from {PYTRITON_REQUIREMENT} needs x86-64 Linux, this is {sys.platform}/{platform.machine()}"
        )
    libc, version = platform.libc_ver()
    try:
        found = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        found = ()
    if libc != "glibc" or found < MIN_GLIBC:
        want = ".".join(map(str, MIN_GLIBC))
        return f"tritonserver from {PYTRITON_REQUIREMENT} needs glibc >= {want}, this is {libc or 'no glibc'} {version}"
    return None


def onnxruntime_requirement() -> str:
    """The project's own onnxruntime version, so Triton's answers differ from the handler's only by batching."""
    try:
        return f"onnxruntime=={metadata.version('onnxruntime')}"
    except metadata.PackageNotFoundError:
        return f"onnxruntime=={FALLBACK_ONNXRUNTIME}"


def side_requirements() -> list[str]:
    """What the side environment installs (the wheel itself without its proxy-only dependencies)."""
    return [PYTRITON_REQUIREMENT, NUMPY_REQUIREMENT, onnxruntime_requirement()]


def _env_key() -> str:
    """One environment per Python version and requirement set (a changed pin builds a new one)."""
    tag = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    digest = hashlib.sha256(json.dumps([tag, *side_requirements()]).encode()).hexdigest()[:12]
    return f"{tag}-{digest}"


def _locate(root: Path, python: Path) -> SideEnv:
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    server = site / "pytriton" / "tritonserver"
    return SideEnv(
        root=root,
        python=python,
        tritonserver=server / "bin" / "tritonserver",
        backend_directory=server / "backends",
        cache_directory=server / "caches",
        libs=site / "nvidia_pytriton.libs",
    )


def _pip(python: Path, args: list[str], timeout: float) -> None:
    cmd = [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check", *args]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SideEnvError(
            f"pip did not finish within {timeout:.0f} s: {' '.join(cmd)}", registry_unreachable=True
        ) from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SideEnvError(
            f"pip failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}",
            registry_unreachable=any(m in done.stdout + done.stderr for m in _UNREACHABLE),
        )


def _build(root: Path, timeout: float) -> SideEnv:
    """Create the venv at ``root``, install the requirements and put the stub beside the Python backend."""
    deadline = time.monotonic() + timeout
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, text=True, timeout=timeout
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = exc.stderr if isinstance(exc.stderr, str) else ""
        raise SideEnvError(f"{sys.executable} -m venv {root} failed: {exc}\n{detail}".rstrip()) from exc
    python = root / "bin" / "python"
    # the wheel's own dependencies (tritonclient, grpcio, pyzmq, ...) serve pytriton's proxy, not the binary
    _pip(python, ["--no-deps", PYTRITON_REQUIREMENT], max(1.0, deadline - time.monotonic()))
    _pip(python, [NUMPY_REQUIREMENT, onnxruntime_requirement()], max(1.0, deadline - time.monotonic()))
    env = _locate(root, python)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = env.tritonserver.parents[1] / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise SideEnvError(f"{PYTRITON_REQUIREMENT} has no Python backend stub for Python {version} ({stub})")
    # pytriton copies the stub the same way; the stub's RPATH ($ORIGIN/../../../../nvidia_pytriton.libs) holds there
    target = env.backend_directory / "python" / stub.name
    shutil.copy2(stub, target)
    target.chmod(0o755)
    return env


def ensure_side_env(cache_dir: str | os.PathLike[str] | None = None, *, timeout: float = 900.0) -> SideEnv:
    """The side environment under ``cache_dir``, built once and reused when complete.

    Concurrent callers (two test sessions) serialise on a lock file; an incomplete directory left by a killed
    build is removed and rebuilt. Raises :class:`SideEnvError` when pip fails or takes longer than ``timeout``.
    """
    problem = platform_problem()
    if problem:
        raise SideEnvError(problem)
    base = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    base.mkdir(parents=True, exist_ok=True)
    root = base / _env_key()
    with open(base / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = root / _COMPLETE
        if marker.is_file():
            env = _locate(root, root / "bin" / "python")
            if (
                env.tritonserver.is_file()
                and (env.backend_directory / "python" / "triton_python_backend_stub").is_file()
            ):
                return env
        shutil.rmtree(root, ignore_errors=True)
        env = _build(root, timeout)
        marker.write_text(json.dumps({"requirements": side_requirements(), "created": time.time()}))
        return env


# ----------------------------------------------------------------------------------- repository conversion
MODEL_PY = '''\
"""Generic Triton Python-backend model: the version's model.onnx through onnxruntime.

Written by exporter.tools.triton_python. The requests of one execute() call are stacked into one matrix and run
once, as Triton's onnxruntime backend does with a dynamically batched call, then split back per request.
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("EXPORTER_ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(here, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        print(f"exporter-python-model: {args['model_name']} numpy {np.__version__} onnxruntime {ort.__version__} "
              f"python {sys.executable} threads {options.intra_op_num_threads}", flush=True)

    def execute(self, requests):
        parts = [pb_utils.get_input_tensor_by_name(r, "features").as_numpy() for r in requests]
        rows = [p.shape[0] for p in parts]
        matrix = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float64)
        result = self.session.run(["predictions"], {"features": matrix})[0]
        responses, start = [], 0
        for n in rows:
            piece = np.ascontiguousarray(result[start:start + n])
            start += n
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("predictions", piece)]))
        return responses
'''


def python_backend_config(config_text: str) -> str:
    """``config_text`` with its one ``platform: "onnxruntime_onnx"`` line made ``backend: "python"``."""
    lines = config_text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == _PLATFORM_LINE]
    if len(hits) != 1:
        raise ValueError(f"expected exactly one line {_PLATFORM_LINE!r} in config.pbtxt, found {len(hits)}")
    i = hits[0]
    lines[i] = lines[i].replace(_PLATFORM_LINE, _BACKEND_LINE)
    return "".join(lines)


def to_python_backend(src_repo: str | os.PathLike[str], dst_repo: str | os.PathLike[str]) -> list[str]:
    """Copy an exported repository to ``dst_repo`` for the Python backend; returns the model names.

    Everything is copied as is (warm-up files included) except each model's ``config.pbtxt`` platform line,
    and every version directory holding a ``model.onnx`` gets :data:`MODEL_PY` as ``model.py``.
    """
    src, dst = Path(src_repo), Path(dst_repo)
    shutil.copytree(src, dst)
    models = []
    for config in sorted(dst.glob("*/config.pbtxt")):
        config.write_text(python_backend_config(config.read_text()))
        for onnx_file in config.parent.glob("*/model.onnx"):
            if is_version_name(onnx_file.parent.name):
                (onnx_file.parent / MODEL_FILE).write_text(MODEL_PY)
        models.append(config.parent.name)
    return models


# ------------------------------------------------------------------------------------- the server process
@dataclass
class TritonProcess:
    """A running tritonserver: its HTTP base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (Triton unloads models, ends its stubs and exits); after ``timeout`` SIGKILL to the server's
        own process group (started as a new session: the server and its stubs only). Returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        return int(self.process.returncode)


def server_command(env: SideEnv, repository: Path, http_port: int, log_verbose: int = 0) -> list[str]:
    """tritonserver serving ``repository`` over HTTP on 127.0.0.1 only (gRPC and metrics off).

    ``log_verbose=1`` also logs each warm-up sample Triton runs, and every request (megabytes for a warm-up
    of 1024 rows); the statistics endpoint counts warm-up runs either way.
    """
    return [
        str(env.tritonserver),
        f"--model-repository={repository}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        f"--backend-directory={env.backend_directory}",
        f"--cache-directory={env.cache_directory}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--exit-timeout-secs=10",
        f"--log-verbose={int(log_verbose)}",
    ]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_server(
    env: SideEnv,
    repository: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    *,
    ready_timeout: float = 180.0,
    extra_env: dict[str, str] | None = None,
    log_verbose: int = 0,
) -> TritonProcess:
    """Start tritonserver and wait until ``/v2/health/ready`` (every model loaded and warmed up).

    ``extra_env`` reaches the stubs too (``EXPORTER_ORT_THREADS`` sets model.py's onnxruntime threads). Raises
    :class:`TritonStartError` with the log's errors if it exits or is not ready within ``ready_timeout`` seconds;
    the process is stopped then.
    """
    (port,) = free_ports(1)
    log = Path(log_path)
    proc_env = env.server_env()
    proc_env.update(extra_env or {})
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            server_command(env, Path(repository).resolve(), port, log_verbose),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=proc_env,
            start_new_session=True,
        )
    server = TritonProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _ready(server.url):
            return server
        time.sleep(0.25)
    exited = process.poll() is not None
    code = server.stop()
    state = f"exited with code {code}" if exited else f"was not ready within {ready_timeout:.0f} s"
    raise TritonStartError(f"tritonserver {state}; its errors and last lines ({log}):\n{log_summary(server.log())}")


def log_summary(text: str, tail: int = 5, width: int = 600) -> str:
    """The error lines of a (verbose) Triton log and its last lines, each cut to ``width`` characters.

    Triton prefixes errors with ``E<month><day>``; the CUDA notice of a machine without a GPU is left out.
    """
    lines = text.splitlines()
    errors = [ln for ln in lines if re.match(r"E\d{4} ", ln) and "CudaDriverHelper" not in ln]
    picked = errors + [ln for ln in lines[-tail:] if ln not in errors]
    return "\n".join(ln if len(ln) <= width else ln[:width] + " ..." for ln in picked)


@contextlib.contextmanager
def running_server(
    env: SideEnv, repository: str | os.PathLike[str], log_path: str | os.PathLike[str], **kwargs: Any
) -> Iterator[TritonProcess]:
    """:func:`start_server` as a context manager that always stops the server."""
    server = start_server(env, repository, log_path, **kwargs)
    try:
        yield server
    finally:
        server.stop()
