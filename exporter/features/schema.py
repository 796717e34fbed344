"""The feature schema: which input columns are numeric or categorical, and what training learned about them.

A model reads one FP64 ``features`` tensor (contract section 1). Numeric columns travel as they are (NaN for a
missing value); categorical columns travel as numbers too: an integer ID as it is, a boolean as 0/1, a string as
its *code* in the vocabulary training learned (its position in that list; -1 for a string not in it). The graph
turns a raw value into an embedding row itself (:mod:`exporter.features.onnx_prep`), and :meth:`FeaturePlan.prepare` is
the numpy twin of that mapping, so the parity gate tests the in-graph lookup.

Three steps, used by the pipeline, the notebooks and the offline ``score`` command alike:

* :func:`load_schema` / :func:`resolve_specs`: a :class:`FeatureSpec` per column, declared (JSON file or dict)
  or inferred from the data;
* :func:`fit`: per-column vocabularies and statistics from the training rows (a :class:`FeaturePlan`);
* :meth:`FeaturePlan.encode`: a raw table -> the FP64 matrix the graph takes.

The exact format is documented in ``docs/features.md``; errors name the column and the row (1-based, as a
person counts data rows in a file).

Why this module is long: every feature kind's options (numeric, categorical, history) are declared, checked,
inferred and read from the data in one place, so a new option is one edit here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.errors import ExporterError, read_json_file

# owned by the runtime rules (the handler applies them to requests); re-exported for the features package
from exporter.runtime.rules import MAX_EXACT_INT, UNKNOWN_CODE, hash_code  # noqa: F401

NUMERIC = "numeric"
CATEGORICAL = "categorical"
#: a list of integer IDs (a user's recent items) travelling as ``max_length`` columns (docs/features.md)
HISTORY = "history"
KINDS = (NUMERIC, CATEGORICAL, HISTORY)
#: a history keeps at most this many IDs (the most recent) unless the schema says otherwise
DEFAULT_MAX_LENGTH = 20
#: keys of a history's ``from``: build the column from an interaction log (:mod:`exporter.features.history`)
FROM_KEYS = ("user", "item", "time", "positive")
TOWERS = ("user", "item")
#: the embedding row every unknown, rare, non-integer or missing categorical value maps to
OOV_ROW = 0
#: default vocabulary policy: a value must be seen this often in training to get its own row, so the OOV row
#: is trained on rare values (what an unseen ID at serving time most resembles)
DEFAULT_MIN_COUNT = 2
#: string hashing for ``hash_buckets`` string columns: the first 6 bytes of sha256(utf-8), big-endian
HASH_ENCODING = "sha256-48"
#: dtypes as metadata reports them ("dtype seen")
DTYPES = ("float64", "int64", "bool", "string")
TOP_VALUES = 5
SPEC_KEYS = (
    "name",
    "kind",
    "tower",
    "fill",
    "optional",
    "min_count",
    "max_size",
    "hash_buckets",
    "max_length",
    "delimiter",
    "vocab_from",
    "from",
)


# --------------------------------------------------------------------------- declared schema


@dataclass(frozen=True)
class FeatureSpec:
    """What a user declares about one input column (everything but ``name`` has a default)."""

    name: str
    kind: str = NUMERIC
    #: two_tower: the tower this column feeds (``user``/``item``); None: decided by name (``user_*``)
    tower: str | None = None
    #: numeric: the value a missing cell (NaN) stands for; None: the training median
    fill: float | None = None
    #: serving may omit this column (or send null): it then means ``fill`` / the OOV row
    optional: bool = False
    #: categorical: values seen fewer times in training share the OOV row
    min_count: int = DEFAULT_MIN_COUNT
    #: categorical: at most this many values get their own row (the most frequent)
    max_size: int | None = None
    #: categorical: hash values into this many rows instead of learning a vocabulary
    hash_buckets: int | None = None
    #: history: the number of IDs kept (the most recent), i.e. its number of tensor columns
    max_length: int = DEFAULT_MAX_LENGTH
    #: history: the separator of the IDs in a text cell (CSV)
    delimiter: str = "|"
    #: history: the categorical column whose vocabulary (and, when a feature, embedding) it shares; None: its own
    vocab_from: str | None = None
    #: history: build the column from the interaction log's columns (``user``, ``item``, ``time``, ``positive``)
    build: tuple[tuple[str, str], ...] | None = None

    @property
    def is_history(self) -> bool:
        return self.kind == HISTORY

    @property
    def build_from(self) -> dict[str, str]:
        """The ``from`` of a history built from the log (empty when the data holds the column)."""
        return dict(self.build or ())

    @classmethod
    def from_dict(cls, raw: Any, *, source: str) -> FeatureSpec:
        """A spec from its JSON form; every unknown key or bad value is an error naming it."""
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            raise ExporterError(
                f'{source}: each feature must be an object like {{"name": ..., "kind": ...}}, got {raw!r}'
            )
        unknown = sorted(set(raw) - set(SPEC_KEYS))
        name = raw.get("name")
        where = f"{source}: feature {name!r}" if isinstance(name, str) else f"{source}: feature {raw!r}"
        if unknown:
            raise ExporterError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(SPEC_KEYS)}")
        if not isinstance(name, str) or not name.strip():
            raise ExporterError(f"{where}: 'name' must be a non-empty column name")
        kind = raw.get("kind", NUMERIC)
        if kind not in KINDS:
            raise ExporterError(f"{where}: kind must be 'numeric', 'categorical' or 'history', got {kind!r}")
        history = _history_options(raw, kind, where)
        tower = raw.get("tower")
        if tower is not None and tower not in TOWERS:
            raise ExporterError(f"{where}: tower must be 'user', 'item' or null, got {tower!r}")
        fill = raw.get("fill")
        if fill is not None:
            if kind != NUMERIC:
                raise ExporterError(
                    f"{where}: 'fill' is for numeric features; a missing categorical value maps to the OOV row"
                )
            if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
                raise ExporterError(
                    f"{where}: fill must be a finite number or null (the training median), got {fill!r}"
                )
            fill = float(fill)
        optional = raw.get("optional", False)
        if not isinstance(optional, bool):
            raise ExporterError(f"{where}: optional must be true or false, got {optional!r}")
        ints = {}
        for key, low in (("min_count", 1), ("max_size", 1), ("hash_buckets", 1)):
            value = raw.get(key)
            if value is None:
                continue
            if kind == NUMERIC:
                raise ExporterError(f"{where}: '{key}' is a vocabulary policy of categorical and history features")
            if history.get("vocab_from") is not None:
                raise ExporterError(
                    f"{where}: '{key}' does not apply: the history shares the vocabulary of {history['vocab_from']!r}"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value >= MAX_EXACT_INT:
                raise ExporterError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
            ints[key] = value
        if "hash_buckets" in ints and ({"min_count", "max_size"} & set(ints)):
            raise ExporterError(f"{where}: hash_buckets replaces the vocabulary; drop min_count/max_size")
        if kind == HISTORY and tower is None:
            tower = "user"  # a user's recent items describe the user
        return cls(
            name=name,
            kind=kind,
            tower=tower,
            fill=fill,
            optional=optional,
            min_count=ints.get("min_count", DEFAULT_MIN_COUNT),
            max_size=ints.get("max_size"),
            hash_buckets=ints.get("hash_buckets"),
            **history,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "tower": self.tower, "optional": self.optional}
        if self.kind == NUMERIC:
            out["fill"] = self.fill
        elif self.kind == HISTORY and self.vocab_from is not None:
            out["vocab_from"] = self.vocab_from
        elif self.hash_buckets is not None:
            out["hash_buckets"] = self.hash_buckets
        else:
            out.update(min_count=self.min_count, max_size=self.max_size)
        if self.kind == HISTORY:
            out.update(max_length=self.max_length, delimiter=self.delimiter)
            if self.build:
                out["from"] = self.build_from
        return out


def _history_options(raw: Mapping[str, Any], kind: str, where: str) -> dict[str, Any]:
    """``max_length``, ``delimiter``, ``vocab_from`` and ``from`` of a history feature (an error for other kinds)."""
    keys = [k for k in ("max_length", "delimiter", "vocab_from", "from") if raw.get(k) is not None]
    if kind != HISTORY:
        if keys:
            raise ExporterError(f"{where}: '{keys[0]}' is an option of history features (kind 'history')")
        return {}
    out: dict[str, Any] = {}
    length = raw.get("max_length", DEFAULT_MAX_LENGTH)
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 1000:
        raise ExporterError(f"{where}: max_length must be an integer from 1 to 1000, got {length!r}")
    out["max_length"] = length
    delimiter = raw.get("delimiter", "|")
    if (
        not isinstance(delimiter, str)
        or not delimiter
        or delimiter.strip() != delimiter
        or any(ch.isdigit() or ch in "+-" for ch in delimiter)
    ):
        raise ExporterError(
            f"{where}: delimiter must be a non-blank string without digits or signs (e.g. '|' or ';'), "
            f"got {delimiter!r}"
        )
    out["delimiter"] = delimiter
    vocab = raw.get("vocab_from")
    built = raw.get("from")
    if built is not None:
        if not isinstance(built, Mapping) or not {"user", "item"} <= set(built) or set(built) - set(FROM_KEYS):
            raise ExporterError(
                f"{where}: 'from' must be an object with 'user' and 'item' (and optionally 'time', 'positive') "
                f"naming columns of the interaction log, got {built!r}"
            )
        if not all(isinstance(v, str) and v for v in built.values()):
            raise ExporterError(f"{where}: the values of 'from' must be column names, got {built!r}")
        out["build"] = tuple((k, str(built[k])) for k in FROM_KEYS if k in built)
        if vocab is None and "vocab_from" not in raw:
            vocab = str(built["item"])  # the items of the log are the item column's IDs
    if vocab is not None and (not isinstance(vocab, str) or not vocab.strip()):
        raise ExporterError(
            f"{where}: vocab_from must name the categorical column whose vocabulary it shares, got {vocab!r}"
        )
    out["vocab_from"] = vocab
    return out


@dataclass(frozen=True)
class Schema:
    """A declared schema: features in tensor order (may be empty: infer them) and optionally the label, with the
    label's value that means 1 when it is not 0/1 (``positive_class``)."""

    features: tuple[FeatureSpec, ...] = ()
    label: str | None = None
    source: str = "schema"
    positive_class: str | int | float | bool | None = None

    def get(self, name: str) -> FeatureSpec | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.features]


def load_schema(value: Any, *, source: str = "schema") -> Schema | None:
    """A schema from a JSON file path, a dict, or a list of features (``None`` stays ``None``).

    Accepted shapes: ``{"label": "clicked", "positive_class": "yes", "features": [{"name": ..., "kind": ...}, ...]}``
    (``positive_class`` optional), the features as an object ``{"user_id": {"kind": "categorical"}, ...}``, or just
    the list.
    """
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        source = f"schema file {path}"
        if not path.is_file():
            raise ExporterError(f"{source} not found (expected a JSON file, see docs/features.md)")
        value = read_json_file(path, source, "a schema object (see docs/features.md)")
    label = positive = None
    if isinstance(value, Mapping) and ("features" in value or "label" in value or "positive_class" in value):
        unknown = sorted(set(value) - {"features", "label", "positive_class"})
        if unknown:
            raise ExporterError(
                f"{source}: unknown key(s) {', '.join(unknown)}; a schema has 'features', 'label' and 'positive_class'"
            )
        label = value.get("label")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ExporterError(f"{source}: label must be a column name, got {label!r}")
        positive = value.get("positive_class")
        if positive is not None and (
            not isinstance(positive, (str, int, float, bool)) or (isinstance(positive, str) and not positive.strip())
        ):
            raise ExporterError(
                f"{source}: positive_class must be the label value that means 1 (a string, number or boolean), "
                f"got {positive!r}"
            )
        value = value.get("features", [])
    if isinstance(value, Mapping):
        items = []
        for name, options in value.items():
            if options is None:
                options = {}
            if not isinstance(options, Mapping):
                raise ExporterError(f"{source}: feature {name!r} must map to an object of options, got {options!r}")
            items.append({"name": name, **options})
        value = items
    if not isinstance(value, (list, tuple)):
        raise ExporterError(
            f'{source}: expected {{"label": ..., '
            f'"features": [{{"name": ..., "kind": "numeric"|"categorical"}}, ...]}}, '
            f"got {type(value).__name__}"
        )
    specs = tuple(FeatureSpec.from_dict(item, source=source) for item in value)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ExporterError(f"{source}: features listed twice: {', '.join(dupes)}")
    return Schema(specs, label, source, positive)


# --------------------------------------------------------------------------- inference


def _is_bool_series(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return True
    if series.dtype == object:
        present = series.dropna()
        return len(present) > 0 and all(isinstance(v, (bool, np.bool_)) for v in present)
    return False


def _integer_valued(series: pd.Series) -> bool:
    if pd.api.types.is_integer_dtype(series):
        return True
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[~np.isnan(values)]
    return len(values) > 0 and bool(np.all(np.isfinite(values))) and bool(np.all(values == np.floor(values)))


#: what a feature column may hold (docs/features.md); dates, times and durations are refused by name
SUPPORTED_VALUES = "numbers, integer IDs, strings or booleans"


def check_supported(series: pd.Series, name: str, *, source: str) -> None:
    """Refuse a column of dates, times, durations, periods or intervals: no FP64 feature stands for them."""
    dtype = series.dtype
    temporal = (
        pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_timedelta64_dtype(dtype)
        or isinstance(dtype, (pd.PeriodDtype, pd.IntervalDtype))
    )
    if temporal or pd.api.types.is_complex_dtype(dtype):
        raise ExporterError(
            f"{source}: column '{name}' holds {dtype} values; a feature column holds {SUPPORTED_VALUES}: convert "
            "it first (e.g. to epoch seconds or to the parts you need) or leave it out of the features"
        )


def infer_kind(series: pd.Series, name: str) -> str:
    """String, bool and pandas category columns, and integer columns named ``*id``, are categorical.

    An object column whose values are nearly all numbers (at least 90%) is numeric: it is a numeric column
    with a few bad cells (as a CSV reader leaves it), which the encoder then reports by row instead of learning them
    as categories. Text that is numbers in every cell is categorical: a reader that parses numbers (pandas' and
    pyarrow's CSV readers do) would have read it as numbers, so the file typed it as text (a Parquet string column
    of codes such as ``"10"`` or ``"01234"``, whose leading zeros a number would lose).
    """
    if isinstance(series.dtype, pd.CategoricalDtype) or _is_bool_series(series):
        return CATEGORICAL
    if series.dtype == object:
        present = series.dropna().head(100)
        if len(present) and all(isinstance(v, (list, tuple, np.ndarray)) for v in present):
            return HISTORY  # a list column (Parquet): IDs, e.g. a user's recent items
    if pd.api.types.is_string_dtype(series) or series.dtype == object:
        present = series.dropna()
        numeric = pd.to_numeric(present, errors="coerce").notna().mean() if len(present) else 0.0
        if numeric == 1.0 and all(isinstance(v, str) for v in present):
            return CATEGORICAL  # typed as text by its file: codes
        return NUMERIC if numeric >= 0.9 and not any(isinstance(v, (bool, np.bool_)) for v in present) else CATEGORICAL
    if _integer_valued(series) and name.lower().endswith("id"):
        return CATEGORICAL
    return NUMERIC


def resolve_specs(
    frame: pd.DataFrame, columns: Sequence[str], schema: Schema | None, defaults: Sequence[FeatureSpec] = ()
) -> tuple[list[FeatureSpec], dict[str, str]]:
    """One spec per column: the schema's, else a default's (contract schema), else inferred from the data.

    Returns the specs and where each came from (``declared``, ``default`` or ``inferred``), to print them.
    """
    by_default = {s.name: s for s in defaults}
    specs, origins = [], {}
    for col in columns:
        spec, origin = (schema.get(col) if schema is not None else None), "declared"
        if spec is None:
            spec, origin = by_default.get(col), "default"
        if spec is None:
            kind = infer_kind(frame[col], col) if col in frame.columns else NUMERIC
            spec, origin = FeatureSpec(col, kind, tower="user" if kind == HISTORY else None), "inferred"
        specs.append(spec)
        origins[col] = origin
    check_tensor_names(specs)
    return specs, origins


def check_tensor_names(specs: Sequence[FeatureSpec]) -> None:
    """A history's tensor columns (``a[0]`` ...) are inputs by name in metadata, requests and the graph: a column of
    the table with the same name would be two inputs under one name."""
    from exporter.runtime.history import column_name

    owner: dict[str, str] = {}
    for spec in specs:
        names = [column_name(spec.name, p) for p in range(spec.max_length)] if spec.kind == HISTORY else [spec.name]
        for name in names:
            if name in owner and owner[name] != spec.name:
                a, b = sorted((owner[name], spec.name), key=lambda n: n != name)
                raise ExporterError(
                    f"column '{a}' has the name of tensor column {name} of history '{b}': two model inputs cannot "
                    "share a name; rename the column (or leave it out with --exclude-columns)"
                )
            owner[name] = spec.name


def _integer_text(value: Any) -> int | None:
    """The integer an ID cell holds (a Python/numpy int, or an optional sign plus ASCII digits), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        digits = value.strip()
        body = digits[1:] if digits[:1] in ("+", "-") else digits
        if body and body.isascii() and body.isdigit():
            return int(digits)
    return None


def check_id_range(
    frame: pd.DataFrame, specs: Sequence[FeatureSpec], origins: Mapping[str, str], *, source: str
) -> None:
    """Refuse an undeclared ID column of integers beyond +-2^53 that pandas holds as objects or strings.

    Such a column (a CSV value >= 2^64 turns the whole column into objects) would otherwise be read as strings,
    so an integer request would silently mean a vocabulary position. A declared column follows its declaration.
    """
    for spec in specs:
        col = spec.name
        if origins.get(col) == "declared" or col not in frame.columns or spec.kind == HISTORY:
            continue
        series = frame[col]
        if not (spec.kind == CATEGORICAL or col.lower().endswith("id")):
            continue
        if not (series.dtype == object or pd.api.types.is_string_dtype(series)):
            continue
        present = series.dropna()
        numbers = [_integer_text(v) for v in present]
        if not numbers or any(n is None for n in numbers):
            continue
        beyond = [i for i, n in enumerate(numbers) if n is not None and abs(n) > MAX_EXACT_INT]
        if beyond:
            row = int(frame.index.get_loc(present.index[beyond[0]])) + 1
            text = str(present.iloc[beyond[0]]).strip()
            text = text if len(text) <= 40 else text[:37] + "..."
            raise ExporterError(
                f"{source}: column '{col}' row {row}: ID {text} is beyond 2^53, the largest "
                "integer the FP64 features tensor carries exactly; remap or hash the IDs into +-2^53 (e.g. a dense "
                f'index), or declare the column in the schema as {{"name": "{col}", "kind": "categorical"}} to '
                "learn its values as strings (requests then send each ID as a string)"
            )


# --------------------------------------------------------------------------- column values


def show_value(value: Any) -> str:
    item = getattr(value, "item", None)
    value = item() if callable(item) and not isinstance(value, (str, bytes)) else value
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Column:
    """One column's values as the encoder sees them: float64 (NaN = missing), or strings (None = missing)."""

    dtype: str
    numbers: np.ndarray | None = None
    strings: list[str | None] | None = None

    def missing(self) -> np.ndarray:
        if self.numbers is not None:
            return np.isnan(self.numbers)
        return np.array([s is None for s in self.strings or []], dtype=bool)


def read_column(series: pd.Series, spec: FeatureSpec, *, source: str) -> Column:
    """Validate one column and return its values; errors name the column, the row and the value."""
    col = spec.name
    check_supported(series, col, source=source)
    if spec.kind == CATEGORICAL and (
        isinstance(series.dtype, pd.CategoricalDtype)
        or not (pd.api.types.is_numeric_dtype(series) or _is_bool_series(series))
    ):
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object)
        present = series.notna().to_numpy()
        values = series.to_numpy(dtype=object)
        if any(isinstance(v, (bool, np.bool_)) for v in values[present]):
            bad = next(i for i in np.flatnonzero(present) if isinstance(values[i], (bool, np.bool_)))
            raise ExporterError(
                f"{source}: column '{col}' row {bad + 1}: value {show_value(values[bad])} is a boolean in a column of "
                "strings; expected strings only (or booleans only)"
            )
        return Column("string", strings=[str(v) if p else None for v, p in zip(values, present, strict=True)])
    if _is_bool_series(series):
        if spec.kind == NUMERIC:
            raise ExporterError(
                f"{source}: column '{col}' row 1: value {show_value(series.dropna().iloc[0])} is a boolean, "
                "expected a number "
                "(declare the column categorical to use booleans)"
            )
        # pd.isna: a nullable ``boolean`` column's missing value is pd.NA, whose truth value raises
        numbers = series.map(lambda v: np.nan if pd.isna(v) else float(bool(v)))
        return Column("bool", numbers=numbers.to_numpy(dtype=np.float64))
    if not pd.api.types.is_numeric_dtype(series):
        converted = pd.to_numeric(series, errors="coerce")
        bad = (converted.isna() & series.notna()).to_numpy() | series.map(
            lambda v: isinstance(v, (bool, np.bool_))
        ).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExporterError(
                f"{source}: column '{col}' row {i + 1}: value {show_value(series.iloc[i])} is not a number"
            )
        series = converted
    numbers = series.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(numbers)
    if infinite.any():
        i = int(np.flatnonzero(infinite)[0])
        raise ExporterError(
            f"{source}: column '{col}' row {i + 1}: value {numbers[i]} is not a finite number "
            "(an empty cell or NaN is a missing value; infinite values are not allowed)"
        )
    if spec.kind == CATEGORICAL:
        present = ~np.isnan(numbers)
        bad = present & ((numbers != np.floor(numbers)) | (np.abs(numbers) > MAX_EXACT_INT))
        if pd.api.types.is_integer_dtype(series) and not bad.any():  # 2^53 + 1 rounds to 2^53 as a float: exact test
            held = series.notna().to_numpy()
            exact = series[held].to_numpy(dtype=np.uint64 if series.dtype.kind == "u" else np.int64)
            outside = exact > MAX_EXACT_INT
            if series.dtype.kind == "i":
                outside |= exact < -MAX_EXACT_INT
            bad[np.flatnonzero(held)[outside]] = True
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            shown = show_value(series.iloc[i])  # as the file holds it (a uint64 ID is not rounded to a float)
            if numbers[i] == np.floor(numbers[i]):
                raise ExporterError(
                    f"{source}: column '{col}' row {i + 1}: ID {shown} is beyond 2^53, the largest integer the FP64 "
                    "features tensor carries exactly; remap or hash the IDs into +-2^53 (e.g. a dense index), or "
                    "store them as strings (text IDs are learnt as strings; requests then send each ID as a string)"
                )
            raise ExporterError(
                f"{source}: column '{col}' row {i + 1}: value {shown} is not an integer ID; a categorical column "
                "of numbers holds integer IDs (declare it numeric, or store it as strings)"
            )
        return Column("int64", numbers=numbers)
    return Column("int64" if _integer_valued(series) else "float64", numbers=numbers)


def format_schema(specs: Sequence[FeatureSpec], origins: Mapping[str, str], *, note: str = "") -> str:
    """A few lines the user sees before training: every feature with its kind and where the kind came from."""
    columns = len(specs)
    specs = list({s.name: s for s in specs}.values())  # a history's positions share one spec: one line
    width = max((len(s.name) for s in specs), default=0)
    size = f"{columns} columns" if columns == len(specs) else f"{len(specs)} features, {columns} tensor columns"
    lines = [f"feature schema ({size}{'; ' + note if note else ''}):"]
    for s in specs:
        extra = []
        if s.tower:
            extra.append(f"tower {s.tower}")
        if s.optional:
            extra.append("optional")
        if s.kind == HISTORY:
            last = f" ... {s.name}[{s.max_length - 1}]" if s.max_length > 1 else ""
            extra.append(
                f"max_length {s.max_length}: tensor columns {s.name}[0]{last}, "
                + (f"vocab of {s.vocab_from}" if s.vocab_from else "own vocabulary")
            )
        elif s.kind == CATEGORICAL:
            extra.append(
                f"hash_buckets {s.hash_buckets}"
                if s.hash_buckets
                else f"min_count {s.min_count}" + (f", max_size {s.max_size}" if s.max_size else "")
            )
        elif s.fill is not None:
            extra.append(f"fill {s.fill:g}")
        tail = f"  ({', '.join(extra)})" if extra else ""
        lines.append(f"  {s.name:<{width}}  {s.kind:<11} {origins.get(s.name, 'stored'):<8}{tail}")
    return "\n".join(lines)
