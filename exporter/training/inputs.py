"""From a table to a model's inputs: which columns are features, what the label is, and the fitted feature plan.

The pipeline calls these before any training, so a wrong column, label or schema fails fast with one line:

* :func:`choose_columns`: the explicit columns, else the schema's, else the model's defaults (contract section 1),
  else every column that is not a label (said so in the output);
* :func:`label_map` and :func:`read_labels`: ``--label`` (or the schema's ``label``) names the binary label;
  binary labels must be 0/1 or booleans;
* :func:`fit_plan`: one :class:`~exporter.features.FeatureSpec` per column (declared, default or inferred) fitted
  on the training rows, or the plan a loaded model carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from exporter import features as F
from exporter.errors import ExporterError
from exporter.training import data as D

#: label columns of the specs that are binary (0/1); the others are regression targets
BINARY_LABELS = (D.LABEL,)


def default_specs() -> list[F.FeatureSpec]:
    """The contract's default schema: integer IDs and the string category are categorical, towers by name."""
    towers = {c: "user" for c in D.USER_FEATURES} | {c: "item" for c in D.ITEM_FEATURES}
    return [
        F.FeatureSpec(c, F.CATEGORICAL if c in D.CATEGORICAL_FEATURES else F.NUMERIC, tower=towers.get(c))
        for c in D.DEFAULT_FEATURES
    ]


def label_map(label_columns: Sequence[str], label: str | None) -> dict[str, str]:
    """The model's label names -> the data's columns.

    ``label`` is renamed by ``--label``, the others keep their name.
    """
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ExporterError(f"label must be a column name, got {label!r}")
    return {name: (label or name) if name == D.LABEL else name for name in label_columns}


def choose_columns(
    frame: pd.DataFrame,
    default_features: Sequence[str],
    explicit: Sequence[str] | None,
    schema: F.Schema | None,
    labels: Sequence[str],
    *,
    source: str,
) -> tuple[list[str], str]:
    """The feature columns and a note on how they were chosen.

    A table that holds most (at least half) but not all of the default columns is taken as a mistake (the
    missing ones are named); any other table uses every column that is not a label, and the note says so.
    """
    if explicit:
        return list(explicit), "columns given"
    if schema is not None and schema.features:
        return schema.columns, f"columns from {schema.source}"
    present = [c for c in default_features if c in frame.columns]
    if 2 * len(present) >= len(default_features):
        D.check_columns(frame, default_features, what="feature", source=source)
        return list(default_features), "default schema"
    excluded = set(labels) | {D.LABEL, *D.REGRESSION_LABELS}
    columns = [str(c) for c in frame.columns if str(c) not in excluded]
    if not columns:
        raise ExporterError(
            f"{source}: no feature columns: the table holds only label columns ({', '.join(map(str, frame.columns))})"
        )
    return columns, (
        f"the data has none of the default columns: every column but the label(s) "
        f"{', '.join(sorted(set(labels)))} is a feature"
    )


def binary_labels(frame: pd.DataFrame, column: str, *, source: str) -> np.ndarray:
    """A 0/1 label as float64; anything but 0, 1, true or false is an error naming the column, row and value."""
    series = frame[column]
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(series):
        fast = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if bool(np.all((fast == 0) | (fast == 1))):
            return fast
    values = series.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            out[i] = float(bool(v))
            continue
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and v in (0, 1):
            out[i] = float(v)
            continue
        shown = "an empty cell" if v is None or (isinstance(v, float) and np.isnan(v)) else F.show_value(v)
        raise ExporterError(
            f"{source}: label column '{column}' row {i + 1}: value {shown} is not a binary label; "
            "expected 0 or 1 (or true/false)"
        )
    return out


def check_labels(frame: pd.DataFrame, needs: Sequence[Any], labels: Mapping[str, str], *, source: str) -> None:
    """Every required label column is in the data; a missing one is named with what it is for (e.g. its task)."""
    for need in needs:
        column = labels.get(need.name, need.name)
        if need.required and column not in frame.columns:
            have = ", ".join(map(str, list(frame.columns)[:30]))
            raise ExporterError(
                f"{source}: label column '{column}' ({need.role}) is missing; the data has columns: {have}"
            )


def read_labels(
    frame: pd.DataFrame, labels: Mapping[str, str], *, source: str, kinds: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """Model label name -> values over all rows: binary ones checked as 0/1, the others as finite numbers.

    ``kinds`` gives each label's kind (``binary``/``regression``); without it ``label`` is the binary one.
    """
    out: dict[str, np.ndarray] = {}
    for name, column in labels.items():
        binary = kinds[name] == "binary" if kinds is not None and name in kinds else name in BINARY_LABELS
        if binary:
            out[name] = binary_labels(frame, column, source=source)
        else:
            out[name] = D.numeric_matrix(frame, [column], source=source)[:, 0]
    return out


def fit_plan(
    frame: pd.DataFrame,
    columns: Sequence[str],
    schema: F.Schema | None,
    train_rows: np.ndarray,
    *,
    source: str,
    stored: F.FeaturePlan | None = None,
) -> tuple[F.FeaturePlan, dict[str, str]]:
    """The fitted plan (``stored`` when a loaded model brings one) and where each column's kind came from."""
    if stored is not None:
        if stored.columns != list(columns):
            raise ExporterError(
                f"the loaded model's feature plan has columns {stored.columns}, expected {list(columns)}"
            )
        return stored, {c: "stored" for c in columns}
    specs, origins = F.resolve_specs(frame, columns, schema, default_specs())
    F.check_id_range(frame, specs, origins, source=source)
    return F.fit(frame, specs, train_rows, source=source), origins


def numeric_plan(frame: pd.DataFrame, columns: Sequence[str], train_rows: np.ndarray, *, source: str) -> F.FeaturePlan:
    """For a loaded model that stores no plan (trained elsewhere on plain numbers): every column numeric,
    missing values passed to the model as NaN."""
    return F.passthrough_plan(frame, columns, train_rows, source=source)


def stored_plan(feature_meta: Any) -> F.FeaturePlan | None:
    """The plan inside a feature-meta JSON (this exporter's feature_meta.json), or ``None``."""
    import json
    from pathlib import Path

    if feature_meta is None:
        return None
    try:
        meta = json.loads(Path(feature_meta).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(meta, dict) and isinstance(meta.get("features"), dict):
        return F.FeaturePlan.from_dict(meta["features"], source=f"feature-meta file {feature_meta}")
    return None
