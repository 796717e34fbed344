"""two_tower warns about an item-tower column that is not a property of the item (it differs between one item's
rows): the catalogue embeds each item from one row, so such a column trains the item tower on values it is never
served, and retrieval collapses without an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.export import pipeline
from exporter.models.two_tower import towers as TW
from exporter.training import data as D


def _items(varying: int, repeated: int = 20) -> pd.DataFrame:
    """``repeated`` items of three rows each; ``price`` differs within the first ``varying`` of them."""
    rows = []
    for item in range(repeated):
        for k in range(3):
            price = 10.0 + item + (k if item < varying else 0)
            rows.append({"item_id": item, "price": price, "hour": (item * 3 + k) % 24})
    rows.append({"item_id": 999, "price": 1.0, "hour": 5})  # seen once: not counted either way
    return pd.DataFrame(rows)


def test_a_column_that_differs_within_most_items_is_warned_about_with_its_share():
    found = TW.varying_item_columns(_items(varying=0), ["item_id", "price", "hour"])
    assert [(w["column"], w["reason"]) for w in found] == [("hour", TW.VARIES_WITHIN_ITEM)]
    message = found[0]["message"]
    assert "20 of the 20 items seen more than once (100%)" in message
    assert "item_id" in message and '"tower": "user"' in message and "--exclude-columns hour" in message


def test_the_threshold_is_a_tenth_of_the_repeated_items():
    assert [w["column"] for w in TW.varying_item_columns(_items(varying=1), ["item_id", "price"])] == []
    warned = TW.varying_item_columns(_items(varying=2), ["item_id", "price"])
    assert [w["column"] for w in warned] == ["price"] and "2 of the 20 items" in warned[0]["message"]


def test_a_missing_cell_is_not_a_difference_and_lists_and_id_less_towers_are_not_checked():
    frame = _items(varying=0)
    frame.loc[frame.index % 3 == 1, "price"] = np.nan  # the first value is what the catalogue keeps
    frame["recent"] = [[i, i + 1] for i in range(len(frame))]  # a history: per row by nature
    assert [w["column"] for w in TW.varying_item_columns(frame, ["item_id", "price", "recent"])] == []
    # no ID column: an item is all of its tower's columns together, which cannot differ within it
    assert TW.varying_item_columns(frame, ["price", "hour"]) == []
    assert TW.varying_item_columns(frame.iloc[:0], ["item_id", "hour"]) == []


@pytest.fixture(scope="module")
def log_with_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic log (its item_* columns are properties of the item) with a context column per row."""
    frame = D.synthetic_dataset(3000, seed=2).drop(columns=["watch_time", "gmv"])
    frame["hour"] = np.random.default_rng(0).integers(0, 24, len(frame))
    root = tmp_path_factory.mktemp("context")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / "part-0.parquet")
    return root


COLUMNS = ["user_id", "user_age", "item_id", "item_price", "item_category", "hour", "cross_age_x_ctr"]


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_in_memory_and_streamed_runs_warn_about_per_row_columns_in_the_item_tower(
    log_with_context, tmp_path, streaming
):
    params = pipeline.ExportParams(
        "two_tower", data_path=log_with_context, feature_columns=COLUMNS, streaming=streaming,
        artifacts=tmp_path, progress=False,
    )  # fmt: skip
    found = {w["column"]: w["reason"] for w in pipeline.prepare(params).column_warnings}
    # hour and the per-pair cross column reach the item tower by name; item_price is the item's own, user_age is
    # the user tower's (user_*)
    assert found == {"hour": TW.VARIES_WITHIN_ITEM, "cross_age_x_ctr": TW.VARIES_WITHIN_ITEM}
    # given to the user tower, hour is no longer the item's concern
    moved = pipeline.ExportParams(
        "two_tower", data_path=log_with_context, feature_columns=COLUMNS, streaming=streaming, artifacts=tmp_path,
        progress=False, hparams={"user_columns": ["user_id", "user_age", "hour", "cross_age_x_ctr"]},
    )  # fmt: skip
    assert pipeline.prepare(moved).column_warnings == []


def test_other_models_do_not_warn_about_per_row_columns(log_with_context, tmp_path):
    params = pipeline.ExportParams(
        "deepfm", data_path=log_with_context, feature_columns=COLUMNS, artifacts=tmp_path, progress=False
    )
    assert pipeline.prepare(params).column_warnings == []


def test_the_warning_reaches_metadata_and_the_summary(log_with_context, tmp_path):
    from exporter.tools import summary

    params = pipeline.ExportParams(
        "two_tower", data_path=log_with_context, feature_columns=COLUMNS, artifacts=tmp_path, progress=False,
        hparams={"max_epochs": 1},
    )  # fmt: skip
    result = pipeline.run(params)
    for artifact in result.artifacts:  # the user tower's and the item tower's metadata alike
        warned = {w["column"] for w in artifact.metadata["training"]["column_warnings"]}
        assert warned == {"hour", "cross_age_x_ctr"}, artifact.name
    text = summary.format_result(result)
    assert "WARNING: column 'hour' feeds the item tower but is not a property of the item" in text
    card = (Path(result.artifacts[1].path) / "README.md").read_text()
    assert "column 'hour' feeds the item tower" in card
