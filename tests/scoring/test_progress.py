"""The scoring progress line: printed once per interval, and 100% only on the final line."""

from __future__ import annotations

import io

from exporter.scoring.progress import Progress


def test_a_short_job_prints_only_its_final_line() -> None:
    out = io.StringIO()
    progress = Progress("score deepfm", stream=out, interval=10.0)
    progress.update(500, 1.0)  # every row read at once: the job is still writing
    progress.update(500, 1.0, force=True)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "100.0%" in lines[0]


def test_only_the_final_line_says_100_percent() -> None:
    out = io.StringIO()
    progress = Progress("score deepfm", stream=out, interval=0.0)
    progress.update(1000, 1.0)
    progress.update(1000, 1.0, force=True)
    first, last = out.getvalue().splitlines()
    assert "100.0%" not in first and "99.9%" in first
    assert "100.0%" in last
