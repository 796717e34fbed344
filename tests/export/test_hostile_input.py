"""Hostile data and options: one line and exit 2 before any training, never a traceback or an allocation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from exporter.training import data as D
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # every case runs the CLI in a child process


def _refused(tmp_path: Path, *args: str) -> str:
    result = run_cli("export", *args, "--artifacts", str(tmp_path / "artifacts"), "--quiet", timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())
    return lines[0]


def test_a_huge_value_in_a_held_out_row_is_refused(tmp_path: Path) -> None:
    """The plan's statistics come from the training rows; a held-out 1e308 used to make deepfm's AUC crash."""
    df = D.synthetic_dataset(400, 1)
    path = tmp_path / "huge.csv"
    # the split hashes each row's content: the changed row must still be a test row in the file the export reads
    for row in range(len(df)):
        trial = df.copy()
        trial.loc[row, "item_price"] = 1e308
        trial.to_csv(path, index=False)
        if row in set(D.three_way_split(D.read_table(path), seed=0)[2].tolist()):
            break
    else:
        pytest.fail("no row stays in the test split with the huge value")
    line = _refused(tmp_path, "deepfm", "--data", str(path))
    assert "'item_price'" in line and f"row {row + 1}" in line and "1e+308" in line and "1e+20" in line, line


def test_a_timestamp_feature_column_is_refused_naming_it(tmp_path: Path) -> None:
    df = D.synthetic_dataset(300, 1)
    df["seen_at"] = pd.date_range("2024-01-01", periods=len(df), freq="min")
    df.to_parquet(tmp_path / "ts.parquet")
    line = _refused(tmp_path, "xgb", "--data", str(tmp_path / "ts.parquet"), "--feature-columns", "item_ctr,seen_at")
    assert "'seen_at'" in line and "datetime64" in line and "numbers, integer IDs, strings or booleans" in line, line


def test_a_deeply_nested_schema_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    line = _refused(tmp_path, "xgb", "--schema", str(path))
    assert str(path) in line and "nested too deeply" in line, line


def test_a_deeply_nested_feature_meta_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text('{"feature_columns": ' + "[" * 100_000 + "]" * 100_000 + "}")
    line = _refused(tmp_path, "xgb", "--feature-meta", str(path))
    assert str(path) in line and "nested too deeply" in line, line


def test_rows_beyond_the_synthetic_bound_are_refused(tmp_path: Path) -> None:
    line = _refused(tmp_path, "xgb", "--rows", str(10**12))
    assert f"{D.MAX_SYNTHETIC_ROWS:,}" in line and str(10**12) in line, line
