"""``--positive-class`` over a table read in parts (streamed chunks, Spark batches): each part may hold one of the
two values; the whole column is checked once, with the errors of a table read whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from exporter.errors import ExporterError
from exporter.training import inputs as I


def labels(values: list[object], *, partial: bool) -> np.ndarray:
    frame = pd.DataFrame({"outcome": values})
    return I.binary_labels(frame, "outcome", source="data file x", positive="yes", partial=partial)


def test_a_part_may_hold_only_one_of_the_two_values() -> None:
    assert labels(["no", "no"], partial=True).tolist() == [0.0, 0.0]
    assert labels(["yes", " yes "], partial=True).tolist() == [1.0, 1.0]
    assert labels(["no", "yes", "no"], partial=True).tolist() == [0.0, 1.0, 0.0]
    # read whole, a column without the positive class is an error naming what it holds
    with pytest.raises(ExporterError, match=r"--positive-class 'yes' is not a value of label column 'outcome'; "
                       r"it holds 'no' \(2\)"):  # fmt: skip
        labels(["no", "no"], partial=False)


def test_a_part_with_three_values_is_refused_there() -> None:
    with pytest.raises(ExporterError, match=r"holds 3 distinct values .* in one part of the data"):
        labels(["no", "maybe", "later"], partial=True)


def test_an_empty_cell_is_refused_in_a_part_too() -> None:
    with pytest.raises(ExporterError, match="row 2: an empty cell is not a label"):
        labels(["no", None], partial=True)


def test_the_whole_column_is_checked_over_its_parts() -> None:
    parts = [pd.Series(["yes", "no", "no"]), pd.Series(["no"]), pd.Series(["maybe", "no"])]
    seen = I.PositiveClasses("outcome", "yes")
    for part in parts:
        seen.add(part)
    with pytest.raises(ExporterError) as err:
        seen.check("data d")
    # the counts of the whole column, most frequent first
    assert "label column 'outcome' holds 3 distinct values ('no' (4), 'yes' (1), 'maybe' (1))" in str(err.value)

    never = I.PositiveClasses("outcome", "yes")
    for part in (pd.Series(["no", "no"]), pd.Series(["No"])):
        never.add(part)
    with pytest.raises(ExporterError, match=r"'yes' is not a value of label column 'outcome'; it holds 'no' \(2\), "):
        never.check("data d")

    fine = I.PositiveClasses("outcome", 2)
    for value, n in (("2", 5), (2.0, 1), (3, 4)):  # grouped counts (Spark): "2" and 2.0 are one class
        fine.add_value(value, n)
    fine.check("data d")
    assert sorted(n for _, n in fine.counts.values()) == [4, 6]
