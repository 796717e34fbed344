"""Ctrl-C and SIGTERM held while Optuna records a trial, delivered when the next trial starts or the search ends.

Optuna 5 stopped inside its own bookkeeping (the ``tell`` after a trial returned, the ``ask`` before the next)
leaves that trial ``RUNNING`` in the study and fails with an ``UnboundLocalError`` traceback instead of the clean
stop (exit 130 / 143, runs closed ``KILLED``) a user asked for. Those moments are short (a few database writes);
inside a trial, where the time goes, a signal acts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

#: the signals a user stops a search with
HELD = (signal.SIGINT, signal.SIGTERM)


class Gate:
    """Open while a trial runs (a signal acts at once), closed otherwise (a signal waits in ``pending``)."""

    def __init__(self, previous: dict[int, Any]) -> None:
        self.previous = previous
        self.open = False
        self.pending: tuple[int, FrameType | None] | None = None

    @contextlib.contextmanager
    def trial(self) -> Iterator[None]:
        """Around one trial's own work: a signal held since the last trial is delivered first."""
        self.open = True
        try:
            self.deliver()
            yield
        finally:
            self.open = False

    def receive(self, signum: int, frame: FrameType | None) -> None:
        if self.open:
            _call(self.previous.get(signum), signum, frame)
        else:
            self.pending = self.pending or (signum, frame)

    def deliver(self) -> None:
        if self.pending is not None:
            signum, frame = self.pending
            self.pending = None
            _call(self.previous.get(signum), signum, frame)


def _call(handler: Any, signum: int, frame: FrameType | None) -> None:
    """What the signal would have done without the gate: the earlier Python handler (KeyboardInterrupt, the
    command line's ``Terminated``), or the default action, or nothing when it was ignored."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


@contextlib.contextmanager
def held_between_trials() -> Iterator[Gate]:
    """Install the gate for a search (main thread only: elsewhere signals do not reach Python, the gate stays
    open); on the way out a held signal is delivered after the handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        gate = Gate({})
        gate.open = True
        yield gate
        return
    previous: dict[int, Any] = {int(s): signal.getsignal(s) for s in HELD}
    gate = Gate(previous)
    for s in HELD:
        signal.signal(s, gate.receive)
    try:
        yield gate
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    gate.deliver()
