"""``python -m exporter bench train``: its table and JSON from one small run per path, and its option errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO


def bench(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "bench", "train", "--work-dir", str(tmp_path / "logs"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.slow
def test_memory_streaming_and_baselines_on_one_log(tmp_path: Path) -> None:
    done = bench(tmp_path, "--rows", "4000", "--models", "xgb,deepfm", "--json", str(tmp_path / "runs.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| rows | model | path | wall s | train rows/s | peak RSS MB | quality |" in done.stdout
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    got = [(r["model"], r["path"]) for r in runs]
    assert got == [
        ("xgb", "memory"),
        ("xgb", "streaming"),
        ("deepfm", "memory"),
        ("deepfm", "streaming"),
        ("plain XGBoost", "memory"),
        ("plain PyTorch", "memory"),
    ]
    for r in runs:
        assert r["rows"] == 4000 and r["note"] == "", r
        assert 0.5 < r["quality"] <= 1.0, r  # the synthetic log's signal is learned by every run
        assert r["train_rows_per_s"] > 0 and r["peak_rss_mb"] > 50, r
    # the log is written once under --work-dir, outside the repository, and reused
    assert (tmp_path / "logs" / "clicks-4000" / "_SUCCESS").is_file()
    assert not list(REPO.glob("clicks-*"))


@pytest.mark.slow
def test_the_spark_path_runs_export_engine_spark(tmp_path: Path) -> None:
    done = bench(
        tmp_path, "--rows", "3000", "--models", "xgb", "--paths", "spark", "--baselines", "off",
        "--spark-master", "local[2]", "--json", str(tmp_path / "runs.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert run["path"] == "spark" and run["note"] == "", run
    assert 0.5 < run["quality"] <= 1.0 and run["train_rows_per_s"] > 0, run
    # the driver (the exporter's own process) apart from the run's largest process (the JVM here)
    assert 50 < run["driver_rss_mb"] <= run["peak_rss_mb"], run
    assert f"(driver {run['driver_rss_mb']:,.0f})" in done.stdout


@pytest.mark.slow
def test_history_runs_each_torch_model_with_and_without_the_column_on_one_log(tmp_path: Path) -> None:
    done = bench(tmp_path, "--rows", "3000", "--models", "xgb,mmoe", "--history", "5", "--baselines", "off",
                 "--json", str(tmp_path / "runs.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [(r["model"], r["path"]) for r in runs] == [
        ("xgb", "memory"),  # xgb takes no history: once
        ("xgb", "streaming"),
        ("mmoe", "memory"),
        ("mmoe + history", "memory"),
        ("mmoe", "streaming"),
        ("mmoe + history", "streaming"),
    ]
    assert all(r["note"] == "" and 0.5 < r["quality"] <= 1.0 for r in runs), runs
    log = tmp_path / "logs" / "clicks-3000-history5"
    frame = pd.read_parquet(log)
    assert frame["recent"].map(len).max() == 5 and frame["recent"].map(len).mean() > 1
    for _, part in frame.groupby("user_id"):  # each history holds only the user's earlier clicks
        clicked: list[int] = []
        for items, item, label in zip(part["recent"], part["item_id"], part["label"], strict=True):
            assert list(items) == clicked[-5:]
            clicked += [int(item)] if label == 1 else []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--history", "-1"], "--history takes a length from 0 (none) to 1000"),
        (["--paths", "memory,disk"], "--paths takes memory, streaming and spark"),
        (["--models", "xgb,lightgbm"], "--models: unknown lightgbm"),
        (["--rows", "10"], "--rows sizes must be at least 1000"),
        (["--rows", "1e6"], "--rows takes comma-separated integers"),
    ],
)
def test_option_mistakes_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = bench(tmp_path, *args, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "logs").exists()
