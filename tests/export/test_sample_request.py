"""The sample request an export writes: held-out rows the handler accepts, even when the table has gaps in columns
declared required (an undeclared column with gaps is optional: an empty value is what training saw)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from exporter.export import pipeline
from exporter.runtime.handler import ModelHandler

ROWS = 600


def gappy_table(complete_every: int = 0) -> pd.DataFrame:
    """Numeric columns a and b empty on alternate rows (so no row has both), c always present, a column empty in
    every row; with ``complete_every`` every that-many-th row has both a and b."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=ROWS), rng.normal(size=ROWS)
    even = np.arange(ROWS) % 2 == 0
    a[even], b[~even] = np.nan, np.nan
    if complete_every:
        full = np.arange(ROWS) % complete_every == 1
        a[full], b[full] = 1.0 + np.arange(full.sum()), -1.0 - np.arange(full.sum())
    return pd.DataFrame(
        {
            "a": a,
            "b": b,
            "c": rng.normal(size=ROWS),
            "empty": np.nan,
            "outcome": np.where(rng.random(ROWS) < 0.5, "yes", "no"),
        }
    )


def export(tmp_path: Path, table: pd.DataFrame) -> tuple[pipeline.RunResult, dict, Path]:
    data = tmp_path / "log.csv"
    table.to_csv(data, index=False)
    result = pipeline.run(
        pipeline.ExportParams(
            model="xgb",
            data_path=data,
            label="outcome",
            positive_class="yes",
            hparams={"n_estimators": 5},
            # declared: a, b and c are required although a and b have empty cells
            schema={
                "a": {"kind": "numeric"},
                "b": {"kind": "numeric"},
                "c": {"kind": "numeric"},
                "empty": {"kind": "numeric", "fill": 0.0, "optional": True},
            },
            artifacts=tmp_path / "artifacts",
            progress=False,
        )
    )
    version = Path(result.artifacts[0].path)
    return result, json.loads((version / "sample_request.json").read_text()), version


def test_no_complete_row_still_gives_a_request_the_handler_answers(tmp_path: Path) -> None:
    result, request, version = export(tmp_path, gappy_table())
    rows = request["data"]
    assert len(rows) == 3
    for row in rows:
        assert all(isinstance(row[c], float) for c in ("a", "b", "c")), row  # required columns filled in
        assert row["empty"] is None  # an optional column may stay empty
    held = result.prepared.heldout
    # each row keeps its own values where it has them; a gap gets a value the column holds in the held-out rows
    for c in ("a", "b"):
        present = set(held[c].dropna().tolist())
        assert all(row[c] in present for row in rows)
    answer = ModelHandler.load(version).predict(request)
    assert answer == json.loads((version / "sample_response.json").read_text())
    assert len(answer["predictions"]) == 3


def test_complete_rows_are_preferred_in_held_out_order(tmp_path: Path) -> None:
    result, request, _ = export(tmp_path, gappy_table(complete_every=7))
    held = result.prepared.heldout
    complete = held[held[["a", "b", "c"]].notna().all(axis=1)].head(3)
    assert len(complete) == 3
    assert [row["a"] for row in request["data"]] == complete["a"].tolist()
    assert [row["b"] for row in request["data"]] == complete["b"].tolist()
