"""Training progress: tqdm on stderr in a terminal, one line updated in place inside a Jupyter notebook.

tqdm writing to a notebook's stderr leaves a dozen pink lines per run (each refresh that is not a
carriage return on a terminal becomes a new line); its widget display needs ipywidgets, which this project
does not install. :class:`LineProgress` shows the same facts in one ``text/plain`` output that is
updated in place (an IPython display handle), and in an executed report it is one final line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

#: seconds between two refreshes of the notebook line (the last update always shows)
MIN_INTERVAL = 0.5
BAR_WIDTH = 24


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (a notebook, JupyterLab, papermill), not a terminal."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipykernel always brings IPython
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LineProgress:
    """A progress bar for notebooks: ``desc ████░░ 45% 135/300 steps 2.1s epoch=3 loss=0.4512``, one line."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "step",
        *,
        display: Any = None,
        clock: Any = time.monotonic,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        if display is None:
            from IPython.display import display
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.postfix = ""
        self._clock = clock
        self._start = clock()
        self._shown_at = float("-inf")
        self._min_interval = min_interval
        self._handle = display({"text/plain": self.text()}, raw=True, display_id=True)

    def text(self) -> str:
        share = self.n / self.total if self.total else 1.0
        filled = int(round(share * BAR_WIDTH))
        bar = "\u2588" * filled + "\u2591" * (BAR_WIDTH - filled)
        line = f"{self.desc} {bar} {share:4.0%} {self.n}/{self.total} {self.unit}s {self._clock() - self._start:.1f}s"
        return f"{line}  {self.postfix}" if self.postfix else line

    def refresh(self) -> None:
        self._shown_at = self._clock()
        if self._handle is not None:
            self._handle.update({"text/plain": self.text()}, raw=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.total or self._clock() - self._shown_at >= self._min_interval:
            self.refresh()

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())
        if refresh and self._clock() - self._shown_at >= self._min_interval:
            self.refresh()

    def close(self) -> None:
        self.refresh()


@contextlib.contextmanager
def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "step") -> Iterator[Any]:
    """The right progress display for where the code runs (nothing when ``enabled`` is false)."""
    if enabled and in_notebook():
        bar = LineProgress(total, desc, unit)
        try:
            yield bar
        finally:
            bar.close()
        return
    from tqdm import tqdm

    with tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, mininterval=0.5, leave=False
    ) as bar:
        yield bar
