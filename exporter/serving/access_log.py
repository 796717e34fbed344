"""``serve``'s one line per request, written off the request path.

Formatting a ``logging`` record and writing it to stderr costs tens of microseconds per request, as much as
answering a batch-1 request. Here the request path only appends a tuple to a deque (thread-safe, no lock, no
formatting); a background thread wakes every ``interval`` seconds, formats what arrived and writes it with
one ``write`` and one ``flush``. Lines keep request order and the ``logging`` layout of every other line
(``<asctime> INFO exporter.serve: <message>``); :meth:`AccessLog.close` writes what is left at shutdown.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

LOGGER_NAME = "exporter.serve"


class AccessLog:
    """Buffered per-request log lines; ``add`` is what the request path calls."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.05) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._stop = threading.Event()
        self._stamp_second = -1
        self._stamp_text = ""
        self._thread = threading.Thread(target=self._run, name="exporter-access-log", daemon=True)
        self._thread.start()

    @property
    def add(self) -> Callable[[tuple[Any, ...]], None]:
        """``add((time.time(), format_string, *args))``: queue one line (``format_string % args``)."""
        return self._pending.append

    def _stamp(self, t: float) -> str:
        second = int(t)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp_text},{int((t - second) * 1000):03d} INFO {LOGGER_NAME}: "

    def flush(self) -> None:
        """Format and write every queued line (called by the background thread, and at close)."""
        pending = self._pending
        lines = []
        while pending:
            t, fmt, *args = pending.popleft()
            try:
                lines.append(self._stamp(t) + (fmt % tuple(args)) + "\n")
            except (TypeError, ValueError) as exc:  # a bad record must not stop the log
                lines.append(self._stamp(t) + f"unloggable record {fmt!r}: {exc}\n")
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed: nothing to log to

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
        self.flush()

    def close(self) -> None:
        """Stop the background thread after writing what is queued."""
        self._stop.set()
        self._thread.join(timeout=5)
