"""``serve --workers N`` (N > 1): a supervisor process and N pre-started workers on one listening socket.

The supervisor binds the socket once and starts every worker with ``multiprocessing``'s ``spawn`` context (a
fresh interpreter: it never forks a process that holds onnxruntime sessions or threads); each worker inherits
the socket and accepts on it (:func:`exporter.serving.process.worker_main`), loads the tree itself and keeps its
own live registry. The supervisor loads no model and answers no request. It

* prints the ``listening on`` line once every worker answers (a worker that cannot load the tree at startup
  stops the whole server with its message, exit 2);
* forwards SIGHUP to every worker (each rescans the tree, as ``--poll`` does on its own);
* restarts a worker that died, after a back-off (0.5 s doubling to 30 s while workers keep dying young; a
  worker that lived a minute resets it), logging its exit code or signal, and drops its live gauges from the
  metrics (``mark_process_dead``);
* on SIGTERM or SIGINT sends SIGTERM to every worker, waits for them to drain (at most
  :func:`~exporter.serving.process.drain_seconds` plus 5 s, then SIGKILL) and exits 0;
* with metrics on, creates the private ``PROMETHEUS_MULTIPROC_DIR`` every worker writes to (removed at exit),
  and serves ``--metrics-port`` itself when given.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from exporter.errors import ExporterError
from exporter.serving.process import ServeOptions, drain_seconds, worker_main

log = logging.getLogger("exporter.serve")

#: back-off before restarting a worker: first, longest, and how long a worker must live to reset it (seconds)
FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_AFTER = 0.5, 30.0, 60.0
#: how long the workers may take to load the tree at startup
STARTUP_SECONDS = 600.0


@dataclass
class _Slot:
    """One worker position: its current process, and its restart history."""

    index: int
    process: Any = None
    conn: Any = None  # the supervisor's end of the worker's "ready" pipe, until the worker reported
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """The parent of ``serve --workers N``; :meth:`run` returns the exit code."""

    def __init__(self, options: ServeOptions, sock: socket.socket, announce: Any) -> None:
        self.options = options
        self.sock = sock
        self.announce = announce  # announce(models, metrics port or None): the "listening on" line
        self.context = multiprocessing.get_context("spawn")
        self.slots = [_Slot(i) for i in range(options.workers)]
        self.metrics_dir: str | None = None
        self.signals: list[int] = []

    # ------------------------------------------------------------------ workers
    def _start(self, slot: _Slot, strict: bool) -> None:
        parent_end, child_end = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=worker_main,
            args=(self.options, self.sock, slot.index, strict, child_end, os.getpid()),
            name=f"exporter-serve-worker-{slot.index}",
            daemon=False,
        )
        process.start()
        child_end.close()
        slot.process, slot.conn, slot.started, slot.restart_at = process, parent_end, time.monotonic(), None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def run(self) -> int:
        """Start the workers, supervise them until SIGTERM/SIGINT, drain; the exit code."""
        from exporter.serving.metrics import MULTIPROC_ENV

        outer_env = os.environ.get(MULTIPROC_ENV)
        if self.options.metrics:
            self.metrics_dir = tempfile.mkdtemp(prefix="exporter-serve-metrics-")
            os.environ[MULTIPROC_ENV] = self.metrics_dir  # before any worker (or this process) imports prometheus
        else:
            os.environ.pop(MULTIPROC_ENV, None)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous_wakeup = signal.set_wakeup_fd(write_fd)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            metrics_port = None
            if self.options.metrics and self.options.metrics_port is not None:
                from exporter.serving.metrics import serve_metrics_port

                metrics_port = serve_metrics_port(self.options.host, self.options.metrics_port)[1]
            for slot in self.slots:
                self._start(slot, strict=True)
            self._await_startup(read_fd, metrics_port)
            if not self._stopping():
                self._supervise(read_fd)
        finally:
            self._stop_all()
            for s, handler in handlers.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(read_fd)
            os.close(write_fd)
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            if outer_env is None:  # as it was (serve may run inside a longer-lived process, e.g. a test)
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = outer_env
        return 0

    def _stopping(self) -> bool:
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals)

    def _await_startup(self, read_fd: int, metrics_port: int | None) -> None:
        """Wait for every worker's first report; an ExporterError with the first failure's message."""
        waiting = {slot.conn: slot for slot in self.slots}
        models = 0
        deadline = time.monotonic() + STARTUP_SECONDS
        while waiting and not self._stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExporterError(f"serve: the workers did not load the tree within {STARTUP_SECONDS:g}s")
            sentinels = {slot.process.sentinel: slot for slot in waiting.values()}
            for ready in wait([*waiting, *sentinels, read_fd], timeout=left):
                if ready == read_fd:
                    os.read(read_fd, 512)
                    continue
                if ready in waiting:
                    slot = waiting.pop(ready)
                elif sentinels[ready].conn in waiting:
                    slot = waiting.pop(sentinels[ready].conn)
                else:  # reported already; the supervising loop restarts it
                    continue
                message = _receive(slot)
                if message is None or message[0] == "error":
                    why = message[1] if message else f"worker {slot.index} ended ({_describe_exit(_exit(slot))})"
                    raise ExporterError(why)
                slot.conn.close()
                slot.conn = None
                models = message[1]
        if not self._stopping():
            self.announce(models, metrics_port)

    def _supervise(self, read_fd: int) -> None:
        """Until SIGTERM/SIGINT: forward SIGHUP, restart dead workers after their back-off."""
        while True:
            while self.signals:
                signum = self.signals.pop(0)
                if signum in (signal.SIGTERM, signal.SIGINT):
                    log.warning(
                        "%s: stopping %d workers (draining in-flight requests)",
                        signal.Signals(signum).name,
                        len(self.slots),
                    )
                    return
                for slot in self.slots:
                    if slot.process is not None and slot.process.is_alive():
                        os.kill(slot.process.pid, signal.SIGHUP)
            now = time.monotonic()
            for slot in self.slots:
                if slot.process is not None and not slot.process.is_alive():
                    self._buried(slot, now)
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot, strict=False)
                    log.warning("worker %d restarted (pid %d)", slot.index, slot.process.pid)
            waits = [s.restart_at - now for s in self.slots if s.restart_at is not None]
            sentinels = [s.process.sentinel for s in self.slots if s.process is not None]
            for ready in wait([*sentinels, read_fd], timeout=max(0.0, min(waits)) if waits else None):
                if ready == read_fd:
                    os.read(read_fd, 512)

    def _buried(self, slot: _Slot, now: float) -> None:
        """A worker died: log why, drop its gauges, schedule its restart after the back-off."""
        code = _exit(slot)
        pid = slot.process.pid
        if self.metrics_dir is not None:
            from exporter.serving.metrics import mark_process_dead

            mark_process_dead(pid)
        slot.failures = 0 if now - slot.started >= HEALTHY_AFTER else slot.failures + 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, slot.failures - 1))
        log.error("worker %d (pid %d) died: %s; restarting it in %gs", slot.index, pid, _describe_exit(code), delay)
        if slot.conn is not None:
            slot.conn.close()
        slot.process, slot.conn, slot.restart_at = None, None, now + delay

    def _stop_all(self) -> None:
        """SIGTERM to every worker, wait for them to drain (bounded), SIGKILL the rest."""
        running = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for process in running:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + drain_seconds(self.options) + 5.0
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %d did not drain in time: killed", process.pid)
                process.kill()
                process.join(5)
        for slot in self.slots:
            if slot.conn is not None:
                slot.conn.close()
        sys.stderr.flush()


def _receive(slot: _Slot) -> tuple[Any, ...] | None:
    """The worker's report, or None when it ended without one."""
    try:
        message: tuple[Any, ...] = slot.conn.recv()
        return message
    except (EOFError, OSError):
        return None


def _exit(slot: _Slot) -> int | None:
    slot.process.join(1)
    code: int | None = slot.process.exitcode
    return code
