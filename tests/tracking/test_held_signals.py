"""A stop between two trials waits for the next trial (or the search's end); inside a trial it acts at once."""

from __future__ import annotations

import signal

import pytest

from exporter.tracking.held_signals import held_between_trials


@pytest.fixture(autouse=True)
def python_ctrl_c():
    """Ctrl-C as Python's own handler takes it (an earlier test may have left, e.g., Spark's)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_between_trials_is_held_until_the_next_trial_starts() -> None:
    ran: list[str] = []
    with held_between_trials() as gate:
        signal.raise_signal(signal.SIGINT)  # while Optuna would be recording the last trial
        ran.append("bookkeeping finished")
        with pytest.raises(KeyboardInterrupt):
            with gate.trial():
                ran.append("trial ran")
    assert ran == ["bookkeeping finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_ctrl_c_inside_a_trial_acts_at_once() -> None:
    ran: list[str] = []
    with held_between_trials() as gate, pytest.raises(KeyboardInterrupt):
        with gate.trial():
            signal.raise_signal(signal.SIGINT)
            ran.append("went on")
    assert ran == []


def test_a_stop_held_after_the_last_trial_is_delivered_when_the_search_ends() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with held_between_trials():
            signal.raise_signal(signal.SIGTERM)
            assert seen == []  # held
        assert seen == [signal.SIGTERM]  # the earlier handler (the command line's) ran once the search ended
    finally:
        signal.signal(signal.SIGTERM, previous)
