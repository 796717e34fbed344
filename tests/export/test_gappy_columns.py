"""A column with empty cells in its training rows: training fills them (the median, the OOV row), so serving and
scoring take an empty value in it the same way (the column is optional) instead of refusing the row; a column
without empty cells, or one declared by a schema, stays required."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.export import pipeline
from exporter.runtime.errors import HandlerError
from exporter.runtime.handler import ModelHandler
from exporter.scoring import ScoreOptions, score

ROWS = 2000


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(2)
    x = rng.normal(size=ROWS)
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(ROWS) < 0.1, np.nan, x),
            "city": np.where(rng.random(ROWS) < 0.05, None, rng.choice(["north", "south"], ROWS)),
            "z": rng.normal(size=ROWS),
            "outcome": np.where(rng.random(ROWS) < 1 / (1 + np.exp(-2 * x)), "yes", "no"),
        }
    )
    path = tmp_path_factory.mktemp("gappy") / "log.csv"
    frame.to_csv(path, index=False)
    return path


def export(log_csv: Path, artifacts: Path, streaming: str = "off", schema: object = None) -> Path:
    result = pipeline.run(
        pipeline.ExportParams(
            model="xgb", data_path=log_csv, label="outcome", positive_class="yes", hparams={"n_estimators": 10},
            streaming=streaming, schema=schema, artifacts=artifacts, progress=False,
        )
    )  # fmt: skip
    return Path(result.artifacts[0].path)


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_a_column_with_empty_training_cells_takes_an_empty_value(log_csv: Path, tmp_path: Path, streaming: str) -> None:
    version = export(log_csv, tmp_path / "art", streaming)
    handler = ModelHandler.load(version)
    features = {f["name"]: f for f in handler.metadata["features"]}
    assert (features["x"]["optional"], features["city"]["optional"], features["z"]["optional"]) == (True, True, False)
    row = {"x": 0.7, "city": "north", "z": 0.1}
    filled = handler.predict({"data": [{**row, "x": features["x"]["fill"]}, row]})["predictions"]
    empty = handler.predict({"data": [{**row, "x": None}, {**row, "city": None}]})["predictions"]
    unknown = handler.predict({"data": [{**row, "city": "west"}]})["predictions"]
    assert empty[0] == pytest.approx(filled[0]) and empty[1] == pytest.approx(unknown[0])  # the fill, the OOV row
    with pytest.raises(HandlerError) as err:  # z never had an empty cell: an empty value is a client's mistake
        handler.predict({"data": [{**row, "z": None}]})
    assert err.value.status == 400 and '["z"] is null' in str(err.value)


def test_scoring_the_training_table_refuses_no_row(log_csv: Path, tmp_path: Path) -> None:
    export(log_csv, tmp_path / "art")
    result = score(
        ScoreOptions(
            model="xgb", input=str(log_csv), output=str(tmp_path / "out"), artifacts=str(tmp_path / "art"),
            progress=False,
        )
    )  # fmt: skip
    assert (result.rows_read, result.rows_scored, result.rows_rejected) == (ROWS, ROWS, 0)


def test_a_declared_column_keeps_its_declaration(log_csv: Path, tmp_path: Path) -> None:
    version = export(log_csv, tmp_path / "art", schema={"x": {"kind": "numeric"}, "city": {"kind": "categorical"}})
    features = {f["name"]: f for f in ModelHandler.load(version).metadata["features"]}
    assert features["x"]["optional"] is False and not math.isnan(features["x"]["fill"])
    assert features["city"]["optional"] is False
