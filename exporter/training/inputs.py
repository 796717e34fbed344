"""From a table to a model's inputs: which columns are features, what the label is, and the fitted feature plan.

The pipeline calls these before any training, so a wrong column, label or schema fails fast with one line:

* :func:`choose_columns`: the explicit columns, else the schema's, else the model's defaults (contract section 1),
  else every column that is not a label (said so in the output);
* :func:`label_map` and :func:`read_labels`: ``--label`` (or the schema's ``label``) names the binary label;
  binary labels must be 0/1 or booleans, or any two values with ``--positive-class`` naming the one that is 1;
* :func:`check_excluded`: ``--exclude-columns`` drops columns from the automatically chosen features;
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
    exclude: Sequence[str] = (),
) -> tuple[list[str], str]:
    """The feature columns and a note on how they were chosen.

    A table that holds most (at least half) but not all of the default columns is taken as a mistake (the
    missing ones are named); any other table uses every column that is not a label, and the note says so.
    ``exclude`` (checked by :func:`check_excluded`) is left out of the automatically chosen columns.
    """
    if explicit:
        return list(explicit), "columns given"
    dropped = set(exclude)
    note = f"; excluded {', '.join(exclude)}" if exclude else ""
    if schema is not None and schema.features:
        columns = [c for c in schema.columns if c not in dropped]
        _check_some_left(columns, exclude, source)
        return columns, f"columns from {schema.source}{note}"
    defaults = [c for c in default_features if c not in dropped]
    if default_features and not defaults:
        _check_some_left(defaults, exclude, source)
    present = [c for c in defaults if c in frame.columns]
    if 2 * len(present) >= len(defaults):
        D.check_columns(frame, defaults, what="feature", source=source)
        return defaults, f"default schema{note}"
    excluded = set(labels) | {D.LABEL, *D.REGRESSION_LABELS} | dropped
    columns = [str(c) for c in frame.columns if str(c) not in excluded]
    if not columns:
        _check_some_left(columns, exclude, source)
        raise ExporterError(
            f"{source}: no feature columns: the table holds only label columns ({', '.join(map(str, frame.columns))})"
        )
    _check_named(frame, columns, source)
    held = (
        f"{len(present)} of the {len(defaults)} default columns (fewer than half)"
        if present
        else "none of the default columns"
    )
    return columns, (
        f"the data has {held}: every column but the label(s) {', '.join(sorted(set(labels)))} is a feature{note}"
    )


def _check_named(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Every column becomes a named model input (metadata, requests, ONNX): a column without a name cannot."""
    names = [str(c) for c in frame.columns]
    for name in columns:
        if not name.strip():
            raise ExporterError(
                f"{source}: column {names.index(name) + 1} of {len(names)} has "
                f"{'an empty name' if not name else f'a name of only spaces ({name!r})'}: every column but the "
                "label becomes a named model input; rename it, or choose the features with --feature-columns"
            )


def choose_features(
    frame: pd.DataFrame,
    default_features: Sequence[str],
    explicit: Sequence[str] | None,
    schema: F.Schema | None,
    labels: Mapping[str, str],
    needs: Sequence[Any],
    *,
    positive_class: Any,
    exclude_columns: Any,
    source: str,
) -> tuple[list[str], str, Any]:
    """The feature columns, the note saying how they were chosen, and the positive class: ``--exclude-columns`` and
    ``--positive-class`` checked against the table (its first rows when it is read in parts) and the labels the run
    ``needs``; one rule for the in-memory, streamed and Spark paths."""
    positive = positive_param(positive_class, schema)
    exclude = exclude_param(exclude_columns)
    check_excluded(frame, exclude, list(labels.values()), explicit is not None, source=source)
    check_positive_target(positive, labels, {n.name: n.kind for n in needs})
    columns, note = choose_columns(
        frame, default_features, explicit, schema, list(labels.values()), source=source, exclude=exclude
    )
    return columns, note, positive


def _check_some_left(columns: Sequence[str], exclude: Sequence[str], source: str) -> None:
    if not columns and exclude:
        raise ExporterError(
            f"{source}: --exclude-columns {','.join(exclude)} leaves no feature column: exclude fewer columns"
        )


def positive_param(value: Any, schema: F.Schema | None) -> Any:
    """``--positive-class`` (else the schema's ``positive_class``): the label value that means 1, or None."""
    if value is None and schema is not None:
        value = schema.positive_class
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
    if not isinstance(value, (str, int, float, bool)) or value == "":
        raise ExporterError(
            f"--positive-class must be the label value that means 1 (e.g. yes, cp, clicked), got {value!r}"
        )
    return value


def positive_target(labels: Mapping[str, str], kinds: Mapping[str, str] | None = None) -> str | None:
    """The label ``--positive-class`` applies to: ``label`` (the column ``--label`` names) when the run reads it,
    else the run's only binary label (an mmoe task naming its column), else None."""
    if D.LABEL in labels:
        return D.LABEL
    binary = [n for n in labels if (kinds or {}).get(n) == "binary"]
    return binary[0] if len(binary) == 1 else None


def check_positive_target(positive: Any, labels: Mapping[str, str], kinds: Mapping[str, str] | None = None) -> None:
    """``--positive-class`` names a value of one binary label column (:func:`positive_target`); a run that reads
    none, or several without ``--label`` saying which, cannot use it."""
    if positive is not None and positive_target(labels, kinds) is None:
        binary = [labels[n] for n in labels if (kinds or {}).get(n) == "binary"]
        which = f"{len(binary)} binary labels ({', '.join(binary)}), so it cannot tell which: give that task the label"
        which = f"{which} 'label' and name its column with --label" if binary else "none"
        raise ExporterError(
            f"--positive-class {F.show_value(positive)} applies to the binary label column (--label), but this run "
            f"reads {which} (its labels: {', '.join(labels.values()) or 'none'})"
        )


def exclude_param(value: Any) -> list[str]:
    """``--exclude-columns``: None, a list of names or one comma-separated string -> distinct names."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) and c.strip() for c in value):
        raise ExporterError(f"--exclude-columns must be column names (a list or 'a,b'), got {value!r}")
    return list(dict.fromkeys(c.strip() for c in value))


def check_excluded(
    frame: pd.DataFrame, exclude: Sequence[str], labels: Sequence[str], explicit: bool, *, source: str
) -> None:
    """``--exclude-columns`` names columns of the data that are not this run's labels, and only makes sense when
    the features are chosen automatically (not listed by ``--feature-columns``, nor fixed by a loaded model)."""
    if not exclude:
        return
    if explicit:
        raise ExporterError(
            f"--exclude-columns {','.join(exclude)} drops columns from the automatically chosen features, but the "
            "feature columns are given (--feature-columns, --feature-meta or a loaded model): list only the "
            "columns you want there instead"
        )
    have = [str(c) for c in frame.columns]
    unknown = [c for c in exclude if c not in have]
    if unknown:
        shown = ", ".join(have[:40]) + (f", ... ({len(have)} columns)" if len(have) > 40 else "")
        raise ExporterError(
            f"{source}: --exclude-columns names column(s) the data does not have: {', '.join(unknown)}; "
            f"available columns: {shown}"
        )
    clash = [c for c in exclude if c in set(labels)]
    if clash:
        raise ExporterError(
            f"--exclude-columns {', '.join(clash)}: a label column is never a feature, so it cannot be excluded; "
            "to train on another label pass --label"
        )


def binary_labels(
    frame: pd.DataFrame, column: str, *, source: str, positive: Any = None, partial: bool = False
) -> np.ndarray:
    """A 0/1 label as float64; anything but 0, 1, true or false is an error naming the column, row and value.

    With ``positive`` (``--positive-class``) the column may hold any two values: that one is 1, the other 0
    (``partial``: ``frame`` is one part of the table, see :func:`positive_class_labels`).
    """
    series = frame[column]
    if positive is not None:
        return positive_class_labels(series, column, positive, source=source, partial=partial)
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(series):
        fast = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if bool(np.all((fast == 0) | (fast == 1))):
            return fast
    # by distinct value: text "0"/"1"/"true"/"false" (a Parquet string column, labels written as text) is a label too
    rows, classes, _ = _classes(series)
    out = np.array([BINARY_KEYS.get(k, np.nan) for k in classes] + [np.nan], dtype=np.float64)[rows]
    bad = np.flatnonzero(np.isnan(out))
    for i in bad[:1]:
        v = series.iloc[i]
        shown = "an empty cell" if v is None or (isinstance(v, float) and np.isnan(v)) else f"value {F.show_value(v)}"
        present = series.dropna()
        hint = ""
        if v is not None and present.nunique() == 2:  # e.g. yes/no: say how to name the positive one
            hint = f"; or name the value that means 1 with --positive-class (the column holds {_value_counts(present)})"
        raise ExporterError(
            f"{source}: label column '{column}' row {i + 1}: {shown} is not a binary label; "
            f"expected 0 or 1 (or true/false){hint}"
        )
    return out


#: what a binary label's values mean without --positive-class, by :func:`class_key` (0, 1.0, "1", True, "false"...)
BINARY_KEYS: dict[tuple[str, Any], float] = {(kind, v): float(v) for kind in ("number", "bool") for v in (0, 1)}

#: how many of a label column's values an error lists (with their counts)
SHOWN_VALUES = 5


def _classes(series: pd.Series) -> tuple[np.ndarray, list[tuple[str, Any]], dict[tuple[str, Any], tuple[Any, int]]]:
    """Per row the index of its class (-1: empty), the classes, and per class (its first value, its count);
    computed over the distinct values, so a 10-million-row label costs one factorisation."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    keys = [class_key(u) for u in uniques]
    classes = list(dict.fromkeys(keys))
    position = {k: i for i, k in enumerate(classes)}
    per_class: dict[tuple[str, Any], tuple[Any, int]] = {}
    for value, key, n in zip(uniques, keys, counts, strict=True):
        first, total = per_class.get(key, (value, 0))
        per_class[key] = (first, total + int(n))
    remap = np.array([position[k] for k in keys] + [-1], dtype=np.int64)
    return remap[codes], classes, per_class


def _value_counts(present: pd.Series) -> str:
    """``'cp' (1,203), 'no' (8,797)``: the most frequent values first, at most :data:`SHOWN_VALUES`."""
    return _counts_text(_classes(present)[2])


def _counts_text(per_class: Mapping[tuple[str, Any], tuple[Any, int]]) -> str:
    ordered = sorted(per_class.values(), key=lambda vn: -vn[1])
    shown = [f"{F.show_value(value)} ({n:,})" for value, n in ordered[:SHOWN_VALUES]]
    more = len(ordered) - SHOWN_VALUES
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def class_key(value: Any) -> tuple[str, Any]:
    """What makes two label values the same class: ``2``, ``2.0`` and ``"2"`` are; ``true`` and ``True`` are."""
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return ("number", float(value))
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return ("bool", text.lower() == "true")
    try:
        return ("number", float(text))
    except ValueError:
        return ("text", text)


def positive_class_labels(
    series: pd.Series, column: str, positive: Any, *, source: str, partial: bool = False
) -> np.ndarray:
    """``positive`` -> 1, the column's one other value -> 0; an empty cell, a third value or a positive class the
    column does not hold is an error naming the column and the values it holds (with their counts).

    ``partial``: ``series`` is one chunk of a table read in parts (streamed, or one Spark batch), which may hold only
    one of the two values; the whole column is checked by :class:`PositiveClasses`."""
    rows, classes, per_class = _classes(series)
    if (rows < 0).any():
        first = int(np.flatnonzero(rows < 0)[0]) + 1
        raise ExporterError(f"{source}: label column '{column}' row {first}: an empty cell is not a label")
    want = class_key(positive)
    if not partial:
        _check_positive_classes(per_class, column, positive, source)
    elif len(classes) > 2:
        _check_positive_classes(per_class, column, positive, source, part=True)
    if want not in classes:
        return np.zeros(len(rows), dtype=np.float64)
    return (rows == classes.index(want)).astype(np.float64)


def _check_positive_classes(
    per_class: Mapping[tuple[str, Any], tuple[Any, int]], column: str, positive: Any, source: str, part: bool = False
) -> None:
    """The whole column (``part``: one part of it, which need not hold the positive class) holds ``positive`` and
    one other value at most."""
    if not part and class_key(positive) not in per_class:
        raise ExporterError(
            f"{source}: --positive-class {F.show_value(positive)} is not a value of label column '{column}'; "
            f"it holds {_counts_text(per_class)}"
        )
    if len(per_class) > 2:
        raise ExporterError(
            f"{source}: label column '{column}' holds {len(per_class)} distinct values ({_counts_text(per_class)}"
            f"{' in one part of the data' if part else ''}); --positive-class makes a binary label of a column with "
            "two values: map the others first"
        )


class PositiveClasses:
    """The values of a label column read with ``--positive-class`` in parts (streamed chunks, a Spark table's
    grouped counts), checked once over the whole column with the errors of a table read whole."""

    def __init__(self, column: str, positive: Any) -> None:
        self.column, self.positive = column, positive
        self.counts: dict[tuple[str, Any], tuple[Any, int]] = {}

    def add(self, series: pd.Series) -> None:
        """One part's values (its empty cells are the reading's error, not counted here)."""
        for key, (value, n) in _classes(series)[2].items():
            self.add_count(key, value, n)

    def add_value(self, value: Any, n: int) -> None:
        """``n`` rows holding ``value`` (a grouped count)."""
        self.add_count(class_key(value), value, n)

    def add_count(self, key: tuple[str, Any], value: Any, n: int) -> None:
        first, total = self.counts.get(key, (value, 0))
        self.counts[key] = (first, total + int(n))

    def check(self, source: str) -> None:
        """The error a table read whole would give: a positive class the column never holds, or a third value."""
        _check_positive_classes(self.counts, self.column, self.positive, source)


def check_labels(frame: pd.DataFrame, needs: Sequence[Any], labels: Mapping[str, str], *, source: str) -> None:
    """Every required label column is in the data; a missing one is named with what it is for (e.g. its task)."""
    for need in needs:
        column = labels.get(need.name, need.name)
        if need.required and column not in frame.columns:
            have = ", ".join(map(str, list(frame.columns)[:30]))
            hint = f"; {need.hint}" if need.hint else ""
            raise ExporterError(
                f"{source}: label column '{column}' ({need.role}) is missing; the data has columns: {have}{hint}"
            )


def read_labels(
    frame: pd.DataFrame,
    labels: Mapping[str, str],
    *,
    source: str,
    kinds: Mapping[str, str] | None = None,
    positive: Any = None,
    partial: bool = False,
) -> dict[str, np.ndarray]:
    """Model label name -> values over all rows: binary ones checked as 0/1, the others as finite numbers.

    ``kinds`` gives each label's kind (``binary``/``regression``); without it ``label`` is the binary one.
    ``positive`` (``--positive-class``) is the value of the ``label`` column (the one ``--label`` names) that is 1;
    ``partial``: ``frame`` is one part of a table read in parts (a chunk may hold one of the two values).
    """
    out: dict[str, np.ndarray] = {}
    target = positive_target(labels, kinds) if positive is not None else None
    for name, column in labels.items():
        binary = kinds[name] == "binary" if kinds is not None and name in kinds else name in BINARY_LABELS
        if binary:
            out[name] = binary_labels(
                frame, column, source=source, positive=positive if name == target else None, partial=partial
            )
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
    specs = [_empty_fill(frame, s, origins, train_rows) for s in specs]
    return F.fit(frame, specs, train_rows, source=source), origins


#: the fill of an automatically chosen numeric column that is empty in every training row (it carries nothing:
#: it is trained on as a constant, and the column checks warn about it)
EMPTY_FILL = 0.0


def _empty_fill(
    frame: pd.DataFrame, spec: F.FeatureSpec, origins: Mapping[str, str], train_rows: np.ndarray
) -> F.FeatureSpec:
    """An undeclared column with empty cells in the training rows is optional: serving and scoring may send an
    empty value, which gets the fill (numeric) or the OOV row (categorical) as those training cells did. Without
    any value it is a warning, not an error: numeric ones get :data:`EMPTY_FILL`. A declared column keeps its
    declaration (a numeric one without values must say its fill: the plan's error)."""
    if spec.name not in frame.columns or spec.kind == F.HISTORY:
        return spec
    missing = frame[spec.name].iloc[train_rows].isna()
    return spec_for_missing(spec, origins, float(missing.mean()) if len(missing) else 1.0)


def spec_for_missing(spec: F.FeatureSpec, origins: Mapping[str, str], missing_rate: float) -> F.FeatureSpec:
    """The spec of a column whose training rows miss ``missing_rate`` of their values (read whole, or a streamed
    or Spark fit's statistics): as it is without gaps, else :func:`empty_column_spec` or :func:`gappy_column_spec`."""
    if not missing_rate:
        return spec
    return empty_column_spec(spec, origins) if missing_rate >= 1.0 else gappy_column_spec(spec, origins)


def gappy_column_spec(spec: F.FeatureSpec, origins: Mapping[str, str]) -> F.FeatureSpec:
    """The spec of a column with some empty cells in the training rows (read whole or streamed): an undeclared one
    becomes optional (an empty value at serving means what it meant in training); a declared one stays as
    declared."""
    if origins.get(spec.name) == "declared" or spec.kind == F.HISTORY:
        return spec
    from dataclasses import replace

    return replace(spec, optional=True)


def empty_column_spec(spec: F.FeatureSpec, origins: Mapping[str, str]) -> F.FeatureSpec:
    """The spec of a column without a value in the training rows (read whole or streamed): an undeclared one
    becomes optional, a numeric one with the fill :data:`EMPTY_FILL`; a declared one stays as declared."""
    if origins.get(spec.name) == "declared":
        return spec
    from dataclasses import replace

    if spec.kind == F.NUMERIC:
        return replace(spec, fill=EMPTY_FILL if spec.fill is None else spec.fill, optional=True)
    return replace(spec, optional=True)


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
