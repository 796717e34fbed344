"""How the feature columns of a table are chosen when the user names none."""

from __future__ import annotations

import pandas as pd
import pytest

from exporter.errors import ExporterError
from exporter.training import inputs as I

DEFAULTS = ["user_id", "item_id", "price", "age"]


def _choose(columns: list[str]) -> tuple[list[str], str]:
    frame = pd.DataFrame({c: [1, 2] for c in columns})
    return I.choose_columns(frame, DEFAULTS, None, None, ["label"], source="data log.parquet")


def test_every_column_but_the_label_and_a_note_that_counts_the_defaults_held() -> None:
    columns, note = _choose(["user_id", "x", "y", "label"])
    assert columns == ["user_id", "x", "y"]
    assert note.startswith("the data has 1 of the 4 default columns (fewer than half): every column but the label(s)")
    assert _choose(["x", "label"])[1].startswith("the data has none of the default columns")


@pytest.mark.parametrize(("name", "said"), [("", "an empty name"), ("  ", "a name of only spaces ('  ')")])
def test_a_column_without_a_name_is_refused_naming_its_position(name: str, said: str) -> None:
    with pytest.raises(ExporterError) as info:
        _choose(["user_id", name, "label"])
    assert str(info.value).startswith(f"data log.parquet: column 2 of 3 has {said}: ")
    assert "--feature-columns" in str(info.value)
