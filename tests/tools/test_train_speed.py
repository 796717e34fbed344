"""benchmarks/train_speed.py: each configuration in its own process, at the batch sizes asked for, with the threads
the run really used (``auto``: the exporter's default for that batch)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_train_speed_runs_each_configuration_at_each_batch_size_and_records_the_threads_used(tmp_path):
    out = tmp_path / "speed.jsonl"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_speed.py"), "--models", "deepfm", "--rows", "3000"]
    cmd += ["--configs", "float32:auto", "float32:2", "--batch-sizes", "32", "64", "--json", str(out)]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["config"], r["batch_size"], r["threads"]) for r in runs] == [
        ("float32:auto", 32, 1),
        ("float32:2", 32, 2),
        ("float32:auto", 64, 1),
        ("float32:2", 64, 2),
    ]
    assert all(r["rows_per_s"] > 0 and 0.0 <= r["value"] <= 1.0 for r in runs)
    assert "batch    32 threads  1" in result.stdout
