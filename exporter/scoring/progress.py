"""Progress of a scoring job on stderr: rows, rows/s and ETA.

On a terminal one line is redrawn a few times a second; otherwise (a log file, CI) a plain line is
printed every ``interval`` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Call :meth:`update` with rows done (and the fraction done when the total is known); :meth:`close` at the end."""

    def __init__(
        self, label: str, enabled: bool = True, stream: TextIO | None = None, interval: float | None = None
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.25 if self.tty else 10.0)
        self.start = time.perf_counter()
        #: the first line comes one interval in, so a short job prints only its final line
        self._last = self.start
        self._drawn = False

    def line(self, rows: int, fraction: float | None, rejected: int = 0, extra: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        rate = rows / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {rows:,} rows  {rate:,.0f} rows/s"
        if fraction is not None and 0 < fraction <= 1:
            text += f"  {100 * fraction:5.1f}%  ETA {_fmt_seconds(elapsed * (1 - fraction) / fraction)}"
        if rejected:
            text += f"  {rejected:,} rejected"
        return text + (f"  {extra}" if extra else "")

    def update(
        self, rows: int, fraction: float | None = None, rejected: int = 0, extra: str = "", force: bool = False
    ) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if not force and fraction is not None:
            # work is still under way after the last row is read (writing, the index, the commit): only the
            # final, forced line may say 100%
            fraction = min(fraction, 0.999)
        text = self.line(rows, fraction, rejected, extra)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
