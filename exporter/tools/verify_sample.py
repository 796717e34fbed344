"""The sample check of ``verify``: the handler's answers to a version's sample requests against the recorded ones.

The graph runs in a child process (:class:`SampleRunner`), one per :func:`exporter.tools.verify.verify` call and
reused across its versions, so that a graph that runs too long is stopped after the sample timeout and one that
crashes or raises costs only its own version's line.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from exporter.runtime.rules import MAX_METADATA_DEPTH, nesting_depth

DEFAULT_ATOL = 1e-5
#: seconds one version's sample run may take (``verify --sample-timeout``)
DEFAULT_SAMPLE_TIMEOUT = 60.0
#: seconds the child process may take to start (imports numpy and onnxruntime)
STARTUP_TIMEOUT = 120.0


def read_json(path: Path, fail: Any) -> Any:
    """The JSON value of ``path`` (``None`` when missing or refused, each refusal passed to ``fail``)."""
    if not path.is_file():
        return None
    literals: list[str] = []

    def constant(name: str) -> float:  # NaN, Infinity, -Infinity: Python reads them, JSON (RFC 8259) has none
        literals.append(name)
        return float(name)

    try:
        value = json.loads(path.read_text(encoding="utf-8"), parse_constant=constant)
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"{path.name} is not valid JSON: {exc}")
        return None
    except RecursionError:
        value = None
        depth = MAX_METADATA_DEPTH + 1
    else:
        depth = nesting_depth(value)
    for literal in dict.fromkeys(literals):
        fail(f"{path.name} holds the literal {literal}, which is not JSON (exports write finite numbers only)")
    if literals:
        return None
    if depth > MAX_METADATA_DEPTH:
        fail(
            f"{path.name} nests objects or lists more than {MAX_METADATA_DEPTH} levels deep; "
            "an exported file has a handful: it is corrupt or not ours"
        )
        return None
    return value


def atol_of(metadata: dict[str, Any]) -> float:
    """``parity.atol`` of metadata.json, else :data:`DEFAULT_ATOL`."""
    parity = metadata.get("parity")
    atol = parity.get("atol") if isinstance(parity, dict) else None
    return float(atol) if isinstance(atol, (int, float)) and not isinstance(atol, bool) and atol > 0 else DEFAULT_ATOL


def _check_sample(vdir: Path, metadata: dict[str, Any], fail: Any) -> float | None:
    """Handler answer to sample_request.json vs sample_response.json; returns the max |difference| found."""
    from exporter.runtime.handler import HandlerError, ModelHandler

    request = read_json(vdir / "sample_request.json", fail)
    expected = read_json(vdir / "sample_response.json", fail)
    if request is None or expected is None:
        return None
    if not (isinstance(request, dict) and isinstance(request.get("data"), list) and request["data"]):
        fail('sample_request.json must be a TorchServe request {"data": [<row>, ...]} with at least one row')
        return None
    try:
        handler = ModelHandler.load(vdir)
        answer = handler.predict(request)
    except HandlerError as exc:
        fail(f"the handler cannot answer sample_request.json: {exc.message}")
        return None
    atol = atol_of(metadata)
    diffs: list[float] = []
    mismatch = _compare(expected, answer, atol, "sample_response", diffs)
    if mismatch:
        fail(f"handler answer to sample_request.json differs from sample_response.json: {mismatch}")
        return None
    return max(diffs, default=0.0)


# the Open Inference Protocol sample beside the TorchServe one
V2_SAMPLE_FILES = ("sample_request_v2.json", "sample_response_v2.json")


def _check_sample_v2(vdir: Path, metadata: dict[str, Any], fail: Any) -> float | None:
    """Handler answer to sample_request_v2.json vs sample_response_v2.json, when the pair is there.

    Versions exported before the v2 sample existed have neither file; one without the other is a problem.
    """
    from exporter.runtime.handler import HandlerError, ModelHandler

    present = [(vdir / name).is_file() for name in V2_SAMPLE_FILES]
    if not any(present):
        return None
    if not all(present):
        missing = V2_SAMPLE_FILES[present.index(False)]
        fail(f"{missing} is missing (the v2 sample request and its answer go together)")
        return None
    request = read_json(vdir / V2_SAMPLE_FILES[0], fail)
    expected = read_json(vdir / V2_SAMPLE_FILES[1], fail)
    if request is None or expected is None:
        return None
    if not (isinstance(request, dict) and isinstance(request.get("inputs"), list)):
        fail('sample_request_v2.json must be an Open Inference Protocol request {"inputs": [...]}')
        return None
    try:
        answer = ModelHandler.load(vdir).predict(request)
    except HandlerError as exc:
        fail(f"the handler cannot answer sample_request_v2.json: {exc.message}")
        return None
    diffs: list[float] = []
    mismatch = _compare(expected, answer, atol_of(metadata), "sample_response_v2", diffs)
    if mismatch:
        fail(f"handler answer to sample_request_v2.json differs from sample_response_v2.json: {mismatch}")
        return None
    return max(diffs, default=0.0)


def _compare(expected: Any, got: Any, atol: float, where: str, diffs: list[float]) -> str | None:
    """First structural or numeric difference (beyond ``atol``) between two decoded JSON answers."""
    number = (int, float)
    if isinstance(expected, bool) or isinstance(got, bool):
        return None if expected == got else f"{where}: expected {expected!r}, got {got!r}"
    if isinstance(expected, number) and isinstance(got, number):
        if not (math.isfinite(expected) and math.isfinite(got)):
            return None if expected == got else f"{where}: expected {expected!r}, got {got!r}"
        diff = abs(float(expected) - float(got))
        diffs.append(diff)
        return (
            None if diff <= atol else f"{where}: expected {expected!r}, got {got!r} (|diff| {diff:.3g} > atol {atol:g})"
        )
    if isinstance(expected, dict) and isinstance(got, dict):
        if list(expected) != list(got):
            return f"{where}: expected keys {list(expected)}, got {list(got)}"
        for key in expected:
            problem = _compare(expected[key], got[key], atol, f"{where}.{key}", diffs)
            if problem:
                return problem
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{where}: expected {len(expected)} items, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            problem = _compare(e, g, atol, f"{where}[{i}]", diffs)
            if problem:
                return problem
        return None
    return None if expected == got else f"{where}: expected {expected!r}, got {got!r}"


# ---------------------------------------------------------------------------------------------- one version
def run_samples(vdir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Both sample checks of one version: ``{"fails": [...], "diff": max |diff| or None, "v2_diff": ...}``."""
    fails: list[str] = []
    try:
        diff = _check_sample(vdir, metadata, fails.append)
        v2_diff = _check_sample_v2(vdir, metadata, fails.append)
    except Exception as exc:  # onnxruntime raises its own types for a graph that fails while it runs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fails.append(f"running the sample request raised {type(exc).__name__}: {first}".rstrip(": "))
        return {"fails": fails, "diff": None, "v2_diff": None}
    return {"fails": fails, "diff": diff, "v2_diff": v2_diff}


class SampleRunner:
    """A child process answering :func:`run_samples` jobs, one JSON line each way; a job that takes longer than
    ``timeout`` seconds ends the child (the next job starts a new one)."""

    def __init__(self, timeout: float = DEFAULT_SAMPLE_TIMEOUT) -> None:
        self.timeout = timeout
        self._child: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def __enter__(self) -> SampleRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the child process (it is idle or stuck: either way it is killed, never left running)."""
        child, self._child, self._buffer = self._child, None, b""
        if child is not None:
            if child.poll() is None:
                child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()

    def run(self, vdir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
        """:func:`run_samples` in the child, or a result whose one fail says why the child gave no answer."""
        try:
            child = self._start()
            assert child.stdin is not None
            child.stdin.write(json.dumps({"vdir": str(vdir), "metadata": metadata}).encode("utf-8") + b"\n")
            child.stdin.flush()
            line = self._read_line(self.timeout)
        except OSError as exc:  # the child could not start, or ended before it read the job
            self.close()
            return _failed(f"the sample run could not be started: {exc}")
        if line is None:
            code = self._child.poll() if self._child is not None else None
            self.close()
            if code is None:
                return _failed(
                    f"the sample run did not finish within {self.timeout:g} s (verify --sample-timeout); it was "
                    "stopped: the graph runs too long on the sample rows"
                )
            return _failed(f"the sample run ended the checking process (exit code {code}): the graph crashes")
        return dict(json.loads(line))

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self.close()
        package_parent = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}  # the child imports this copy of the package
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        if self._read_line(STARTUP_TIMEOUT) != "ready":
            self.close()
            raise OSError(f"the checking process ({sys.executable} -m {__name__}) did not start")
        return self._child

    def _read_line(self, timeout: float) -> str | None:
        """One line from the child within ``timeout`` seconds; ``None`` on timeout or when the child ended."""
        assert self._child is not None and self._child.stdout is not None
        fd = self._child.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8")


def _failed(message: str) -> dict[str, Any]:
    return {"fails": [message], "diff": None, "v2_diff": None}


def _serve(jobs: IO[str], answers: IO[str]) -> None:
    """The child's loop: one job line in, one answer line out, until its input closes."""
    import exporter.runtime.handler  # noqa: F401  (imported before "ready": the timeout covers the run only)

    answers.write("ready\n")
    answers.flush()
    for line in jobs:
        job = json.loads(line)
        answers.write(json.dumps(run_samples(Path(job["vdir"]), job["metadata"])) + "\n")
        answers.flush()


if __name__ == "__main__":
    _answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout = sys.stderr  # anything else printed stays off the answer channel
    _serve(sys.stdin, _answers)
