"""The feature schema: which input columns are numeric or categorical, and what training learned about them.

A model reads one FP64 ``features`` tensor (contract section 1). Numeric columns travel as they are (NaN for a
missing value); categorical columns travel as numbers too: an integer ID as it is, a boolean as 0/1, a string as
its *code* in the vocabulary training learned (its position in that list; -1 for a string not in it). The graph
turns a raw value into an embedding row itself (:mod:`exporter.onnx_prep`), and :meth:`FeaturePlan.prepare` is
the numpy twin of that mapping, so the parity gate tests the in-graph lookup.

Three steps, used by the pipeline, the notebooks and the offline ``score`` command alike:

* :func:`load_schema` / :func:`resolve_specs`: a :class:`FeatureSpec` per column, declared (JSON file or dict)
  or inferred from the data;
* :func:`fit`: per-column vocabularies and statistics from the training rows (a :class:`FeaturePlan`);
* :meth:`FeaturePlan.encode`: a raw table -> the FP64 matrix the graph takes.

The exact format is documented in ``docs/features.md``; errors name the column and the row (1-based, as a
person counts data rows in a file).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from exporter.errors import ExporterError

NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)
TOWERS = ("user", "item")
#: largest integer every FP64 value up to which is exact: IDs beyond it are not IDs the tensor can carry
MAX_EXACT_INT = 2**53
#: the code of a string that is not in the vocabulary (the graph sends it to the OOV row)
UNKNOWN_CODE = -1
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
_SPEC_KEYS = ("name", "kind", "tower", "fill", "optional", "min_count", "max_size", "hash_buckets")


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

    @classmethod
    def from_dict(cls, raw: Any, *, source: str) -> "FeatureSpec":
        """A spec from its JSON form; every unknown key or bad value is an error naming it."""
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            raise ExporterError(f"{source}: each feature must be an object like {{\"name\": ..., \"kind\": ...}}, got {raw!r}")
        unknown = sorted(set(raw) - set(_SPEC_KEYS))
        name = raw.get("name")
        where = f"{source}: feature {name!r}" if isinstance(name, str) else f"{source}: feature {raw!r}"
        if unknown:
            raise ExporterError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(_SPEC_KEYS)}")
        if not isinstance(name, str) or not name.strip():
            raise ExporterError(f"{where}: 'name' must be a non-empty column name")
        kind = raw.get("kind", NUMERIC)
        if kind not in KINDS:
            raise ExporterError(f"{where}: kind must be 'numeric' or 'categorical', got {kind!r}")
        tower = raw.get("tower")
        if tower is not None and tower not in TOWERS:
            raise ExporterError(f"{where}: tower must be 'user', 'item' or null, got {tower!r}")
        fill = raw.get("fill")
        if fill is not None:
            if kind != NUMERIC:
                raise ExporterError(f"{where}: 'fill' is for numeric features; a missing categorical value maps to the OOV row")
            if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
                raise ExporterError(f"{where}: fill must be a finite number or null (the training median), got {fill!r}")
            fill = float(fill)
        optional = raw.get("optional", False)
        if not isinstance(optional, bool):
            raise ExporterError(f"{where}: optional must be true or false, got {optional!r}")
        ints = {}
        for key, low in (("min_count", 1), ("max_size", 1), ("hash_buckets", 1)):
            value = raw.get(key)
            if value is None:
                continue
            if kind != CATEGORICAL:
                raise ExporterError(f"{where}: '{key}' is a vocabulary policy of categorical features")
            if isinstance(value, bool) or not isinstance(value, int) or value < low or value >= MAX_EXACT_INT:
                raise ExporterError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
            ints[key] = value
        if "hash_buckets" in ints and ({"min_count", "max_size"} & set(ints)):
            raise ExporterError(f"{where}: hash_buckets replaces the vocabulary; drop min_count/max_size")
        return cls(name=name, kind=kind, tower=tower, fill=fill, optional=optional,
                   min_count=ints.get("min_count", DEFAULT_MIN_COUNT), max_size=ints.get("max_size"),
                   hash_buckets=ints.get("hash_buckets"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "tower": self.tower, "optional": self.optional}
        if self.kind == NUMERIC:
            out["fill"] = self.fill
        elif self.hash_buckets is not None:
            out["hash_buckets"] = self.hash_buckets
        else:
            out.update(min_count=self.min_count, max_size=self.max_size)
        return out


@dataclass(frozen=True)
class Schema:
    """A declared schema: features in tensor order (may be empty: infer them) and optionally the label."""

    features: tuple[FeatureSpec, ...] = ()
    label: str | None = None
    source: str = "schema"

    def get(self, name: str) -> FeatureSpec | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.features]


def load_schema(value: Any, *, source: str = "schema") -> Schema | None:
    """A schema from a JSON file path, a dict, or a list of features (``None`` stays ``None``).

    Accepted shapes: ``{"label": "clicked", "features": [{"name": ..., "kind": ...}, ...]}``, the features as an
    object ``{"user_id": {"kind": "categorical"}, ...}``, or just the list.
    """
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        source = f"schema file {path}"
        if not path.is_file():
            raise ExporterError(f"{source} not found (expected a JSON file, see docs/features.md)")
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExporterError(f"{source} is not valid JSON: {exc}") from exc
    label = None
    if isinstance(value, Mapping) and ("features" in value or "label" in value):
        unknown = sorted(set(value) - {"features", "label"})
        if unknown:
            raise ExporterError(f"{source}: unknown key(s) {', '.join(unknown)}; a schema has 'features' and 'label'")
        label = value.get("label")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ExporterError(f"{source}: label must be a column name, got {label!r}")
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
            f"{source}: expected {{\"label\": ..., \"features\": [{{\"name\": ..., \"kind\": \"numeric\"|\"categorical\"}}, ...]}}, "
            f"got {type(value).__name__}"
        )
    specs = tuple(FeatureSpec.from_dict(item, source=source) for item in value)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ExporterError(f"{source}: features listed twice: {', '.join(dupes)}")
    return Schema(specs, label, source)


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


def infer_kind(series: pd.Series, name: str) -> str:
    """String, bool and pandas category columns, and integer columns named ``*id``, are categorical.

    An object column whose values are nearly all numbers (at least 90%) is numeric: it is a numeric column
    with a few bad cells, which the encoder then reports by row instead of learning them as categories.
    """
    if isinstance(series.dtype, pd.CategoricalDtype) or _is_bool_series(series):
        return CATEGORICAL
    if pd.api.types.is_string_dtype(series) or series.dtype == object:
        present = series.dropna()
        numeric = pd.to_numeric(present, errors="coerce").notna().mean() if len(present) else 0.0
        return NUMERIC if numeric >= 0.9 and not any(isinstance(v, (bool, np.bool_)) for v in present) else CATEGORICAL
    if _integer_valued(series) and name.lower().endswith("id"):
        return CATEGORICAL
    return NUMERIC


def resolve_specs(frame: pd.DataFrame, columns: Sequence[str], schema: Schema | None,
                  defaults: Sequence[FeatureSpec] = ()) -> tuple[list[FeatureSpec], dict[str, str]]:
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
            spec, origin = FeatureSpec(col, infer_kind(frame[col], col) if col in frame.columns else NUMERIC), "inferred"
        specs.append(spec)
        origins[col] = origin
    return specs, origins


# --------------------------------------------------------------------------- column values


def _show(value: Any) -> str:
    item = getattr(value, "item", None)
    value = item() if callable(item) and not isinstance(value, (str, bytes)) else value
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def hash_code(text: str) -> int:
    """The code of a string in a ``hash_buckets`` column: sha256 of its UTF-8 bytes, first 6 bytes big-endian."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:6], "big")


@dataclass
class _Column:
    """One column's values as the encoder sees them: float64 (NaN = missing), or strings (None = missing)."""

    dtype: str
    numbers: np.ndarray | None = None
    strings: list[str | None] | None = None

    def missing(self) -> np.ndarray:
        if self.numbers is not None:
            return np.isnan(self.numbers)
        return np.array([s is None for s in self.strings or []], dtype=bool)


def _read_column(series: pd.Series, spec: FeatureSpec, *, source: str) -> _Column:
    """Validate one column and return its values; errors name the column, the row and the value."""
    col = spec.name
    if spec.kind == CATEGORICAL and (isinstance(series.dtype, pd.CategoricalDtype) or not (
            pd.api.types.is_numeric_dtype(series) or _is_bool_series(series))):
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object)
        present = series.notna().to_numpy()
        values = series.to_numpy(dtype=object)
        if any(isinstance(v, (bool, np.bool_)) for v in values[present]):
            bad = next(i for i in np.flatnonzero(present) if isinstance(values[i], (bool, np.bool_)))
            raise ExporterError(
                f"{source}: column '{col}' row {bad + 1}: value {_show(values[bad])} is a boolean in a column of "
                "strings; expected strings only (or booleans only)"
            )
        return _Column("string", strings=[str(v) if p else None for v, p in zip(values, present)])
    if _is_bool_series(series):
        if spec.kind == NUMERIC:
            raise ExporterError(
                f"{source}: column '{col}' row 1: value {_show(series.dropna().iloc[0])} is a boolean, expected a number "
                "(declare the column categorical to use booleans)"
            )
        numbers = series.map(lambda v: np.nan if v is None or (isinstance(v, float) and np.isnan(v)) else float(bool(v)))
        return _Column("bool", numbers=numbers.to_numpy(dtype=np.float64))
    if not pd.api.types.is_numeric_dtype(series):
        converted = pd.to_numeric(series, errors="coerce")
        bad = (converted.isna() & series.notna()).to_numpy() | series.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExporterError(f"{source}: column '{col}' row {i + 1}: value {_show(series.iloc[i])} is not a number")
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
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExporterError(
                f"{source}: column '{col}' row {i + 1}: value {numbers[i]!r} is not an integer ID within +-2^53; "
                "a categorical column of numbers holds integer IDs (declare it numeric, or store it as strings)"
            )
        return _Column("int64", numbers=numbers)
    return _Column("int64" if _integer_valued(series) else "float64", numbers=numbers)


# --------------------------------------------------------------------------- fitted plan


@dataclass
class FittedFeature:
    """One column after fitting: its spec, the dtype seen, the fill or vocabulary, and training statistics."""

    spec: FeatureSpec
    dtype: str
    #: numeric: the value a missing cell becomes (the spec's, or the training median); None only for models
    #: loaded without a plan (trained elsewhere on plain numbers): missing values reach the model as NaN
    fill: float | None = None
    #: categorical with a vocabulary: the raw values (IDs, or string codes) that own rows 1, 2, ... in order
    keys: list[int] = field(default_factory=list)
    #: string columns with a vocabulary: code i is ``vocab[i]`` (most frequent first)
    vocab: list[str] | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def categorical(self) -> bool:
        return self.spec.kind == CATEGORICAL

    @property
    def hashed(self) -> bool:
        return self.spec.hash_buckets is not None

    @property
    def rows(self) -> int:
        """Embedding rows including the OOV row 0 (0 for a numeric column)."""
        if not self.categorical:
            return 0
        return 1 + (int(self.spec.hash_buckets) if self.hashed else len(self.keys))

    @property
    def oov_policy(self) -> dict[str, Any]:
        if self.hashed:
            policy: dict[str, Any] = {"policy": "hash", "hash_buckets": self.spec.hash_buckets,
                                      "row": "1 + (value mod hash_buckets)"}
            if self.dtype == "string":
                policy["string_code"] = HASH_ENCODING
        else:
            policy = {"policy": "vocabulary", "min_count": self.spec.min_count, "max_size": self.spec.max_size}
        policy.update(oov_row=OOV_ROW, oov_values="unknown, non-integer, beyond +-2^53 or missing")
        if self.dtype == "string" and not self.hashed:
            policy["unknown_code"] = UNKNOWN_CODE
        return policy

    def to_dict(self, *, full: bool = True) -> dict[str, Any]:
        """JSON form: ``full`` includes the keys (checkpoints, feature_meta.json); metadata omits them."""
        out: dict[str, Any] = {**self.spec.to_dict(), "dtype": self.dtype}
        if self.categorical:
            out.pop("fill", None)
            out["fill"] = None
            out["vocab_size"] = self.rows - 1
            out["embedding_rows"] = self.rows
            out["oov"] = self.oov_policy
        else:
            out["fill"] = self.fill
        out["stats"] = self.stats
        if full:
            if self.categorical and not self.hashed:
                out["keys"] = list(self.keys)
            if self.vocab is not None:
                out["vocab"] = list(self.vocab)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str) -> "FittedFeature":
        try:
            spec = FeatureSpec.from_dict({k: raw[k] for k in _SPEC_KEYS if k in raw and k != "fill"}
                                         | ({"fill": raw.get("fill")} if raw.get("kind", NUMERIC) == NUMERIC else {}),
                                         source=source)
            dtype = str(raw["dtype"])
            if dtype not in DTYPES:
                raise ExporterError(f"{source}: feature {spec.name!r} has dtype {dtype!r}; expected one of {DTYPES}")
            keys = [int(k) for k in raw.get("keys", [])]
            vocab = [str(v) for v in raw["vocab"]] if raw.get("vocab") is not None else None
            fill = None if raw.get("fill") is None else float(raw["fill"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ExporterError(f"{source}: unusable feature entry {str(raw)[:80]}: {exc!r}") from exc
        if spec.kind == CATEGORICAL and spec.hash_buckets is None and dtype == "string" and vocab is None:
            raise ExporterError(f"{source}: string feature {spec.name!r} has no vocab")
        return cls(spec, dtype, fill, keys, vocab, dict(raw.get("stats") or {}))


def _numeric_stats(values: np.ndarray, rows: np.ndarray, spec: FeatureSpec, *, source: str) -> tuple[float, dict[str, Any]]:
    """fill and statistics of a numeric column over the training rows; insane values are an error."""
    present = values[~np.isnan(values)]
    missing_rate = float((len(values) - len(present)) / len(values)) if len(values) else 0.0
    if len(present) == 0:
        if spec.fill is None:
            raise ExporterError(
                f"{source}: column '{spec.name}' has no values in the training rows: give it a 'fill' in the schema "
                "or leave it out of the features"
            )
        return spec.fill, {"mean": None, "std": None, "min": None, "max": None, "median": None, "missing_rate": 1.0}
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(np.mean(present)), float(np.std(present))
    if not (math.isfinite(mean) and math.isfinite(std)):
        local = int(np.nanargmax(np.abs(values)))
        raise ExporterError(
            f"{source}: column '{spec.name}' row {int(rows[local]) + 1}: value {values[local]!r} makes the column's "
            "mean or standard deviation overflow; expected numbers of a sane magnitude (rescale the column)"
        )
    median = float(np.median(present))
    fill = spec.fill if spec.fill is not None else median
    stats = {"mean": mean, "std": std, "min": float(present.min()), "max": float(present.max()),
             "median": median, "missing_rate": missing_rate}
    return float(fill), stats


def _order_by_count(counts: Mapping[Any, int]) -> list[Any]:
    """Most frequent first; ties by value, so the order never depends on the data's row order."""
    return sorted(counts, key=lambda v: (-counts[v], v))


def _fit_categorical(column: _Column, train: np.ndarray, spec: FeatureSpec) -> FittedFeature:
    if column.strings is not None:
        values = [column.strings[i] for i in train]
        present = [v for v in values if v is not None]
    else:
        assert column.numbers is not None
        sub = column.numbers[train]
        present = [int(v) for v in sub[~np.isnan(sub)]]
    counts: dict[Any, int] = {}
    for v in present:
        counts[v] = counts.get(v, 0) + 1
    ordered = _order_by_count(counts)
    keys: list[int] = []
    vocab: list[str] | None = None
    if spec.hash_buckets is None:
        kept = [v for v in ordered if counts[v] >= spec.min_count]
        if spec.max_size is not None:
            kept = kept[: spec.max_size]
        if column.strings is not None:
            vocab = [str(v) for v in kept]
            keys = list(range(len(vocab)))
        else:
            keys = [int(v) for v in kept]
        covered = sum(counts[v] for v in kept)
    else:
        covered = len(present)
    n = len(train)
    top = [{"value": v if isinstance(v, str) else int(v), "count": int(counts[v])} for v in ordered[:TOP_VALUES]]
    stats = {
        "missing_rate": float((n - len(present)) / n) if n else 0.0,
        "distinct": len(counts),
        "coverage": float(covered / len(present)) if present else 0.0,
        "top_values": top,
    }
    return FittedFeature(spec, column.dtype, None, keys, vocab, stats)


class FeaturePlan:
    """The fitted features of a model, in tensor order: encode raw tables, prepare matrices, describe them."""

    def __init__(self, features: Sequence[FittedFeature], *, encode_only: bool = False) -> None:
        self.features = list(features)
        self.columns = [f.name for f in self.features]
        self._by_name = {f.name: f for f in self.features}
        #: built from metadata.json (no ID keys): can encode raw tables, cannot prepare (the graph does that)
        self.encode_only = encode_only

    def __getitem__(self, name: str) -> FittedFeature:
        return self._by_name[name]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def categorical(self) -> list[FittedFeature]:
        return [f for f in self.features if f.categorical]

    @property
    def cardinalities(self) -> list[int]:
        """Per column: embedding rows (incl. the OOV row) of a categorical column, 0 for a numeric one."""
        return [f.rows for f in self.features]

    def subset(self, columns: Sequence[str]) -> "FeaturePlan":
        return FeaturePlan([self._by_name[c] for c in columns], encode_only=self.encode_only)

    @classmethod
    def from_artifact(cls, version_dir: str | Path) -> "FeaturePlan":
        """The encoder of an exported model (offline scoring): ``metadata.json`` ``features`` and ``vocab.json``.

        It turns raw tables into the FP64 ``features`` the model's graph takes (:meth:`encode`); the mapping to
        embedding rows lives in the graph, so this plan is encode-only. The vocabulary's sha256 is checked.
        """
        version_dir = Path(version_dir)
        meta_path = version_dir / "metadata.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExporterError(f"cannot read {meta_path}: {exc}") from exc
        entries = meta.get("features") if isinstance(meta, dict) else None
        columns = meta.get("feature_columns") if isinstance(meta, dict) else None
        if not isinstance(columns, list):
            raise ExporterError(f"{meta_path} has no feature_columns")
        if not isinstance(entries, list):  # an export from before feature schemas: every column numeric
            return cls([FittedFeature(FeatureSpec(c), "float64", None) for c in columns], encode_only=True)
        vocab: dict[str, list[str]] = {}
        ref = next((e["vocab"] for e in entries if isinstance(e, dict) and isinstance(e.get("vocab"), dict)), None)
        if ref is not None:
            path = version_dir / str(ref.get("file"))
            data = path.read_bytes() if path.is_file() else None
            if data is None or hashlib.sha256(data).hexdigest() != ref.get("sha256"):
                raise ExporterError(f"vocabulary {path} is missing or does not match the sha256 in {meta_path}")
            vocab = json.loads(data.decode("utf-8"))
        fitted = []
        for e in entries:
            raw = {k: v for k, v in e.items() if k in ("name", "kind", "dtype", "fill", "optional", "tower",
                                                       "min_count", "max_size", "hash_buckets", "stats")}
            if e.get("kind") == CATEGORICAL and e.get("dtype") == "string" and (e.get("oov") or {}).get("policy") != "hash":
                raw["vocab"] = vocab.get(e["name"])
            fitted.append(FittedFeature.from_dict(raw, source=str(meta_path)))
        if [f.name for f in fitted] != columns:
            raise ExporterError(f"{meta_path}: features do not match feature_columns")
        return cls(fitted, encode_only=True)

    # ---------------------------------------------------------------- raw table -> FP64 features
    def encode(self, frame: pd.DataFrame, *, source: str = "data") -> np.ndarray:
        """The FP64 ``features`` matrix of a raw table (what Triton, v2 and the graph take).

        Numbers as they are (NaN where missing), integer IDs as they are, booleans as 0/1, strings as their
        vocabulary code (-1 when unknown) or hash code. Raises :class:`ExporterError` naming column and row.
        """
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            have = ", ".join(map(str, list(frame.columns)[:20]))
            raise ExporterError(f"{source}: missing feature column(s) {', '.join(missing)}; the table has: {have}")
        out = np.empty((len(frame), len(self.features)), dtype=np.float64)
        for j, feat in enumerate(self.features):
            column = _read_column(frame[feat.name], feat.spec, source=source)
            out[:, j] = self._codes(feat, column)
        return out

    @staticmethod
    def _codes(feat: FittedFeature, column: _Column) -> np.ndarray:
        if column.strings is None:
            assert column.numbers is not None
            return column.numbers
        if feat.categorical and feat.hashed:
            return np.array([np.nan if s is None else hash_code(s) for s in column.strings], dtype=np.float64)
        if not feat.categorical or feat.vocab is None:
            raise ExporterError(f"column '{feat.name}' holds strings but was fitted as {feat.dtype} numbers")
        index = {s: i for i, s in enumerate(feat.vocab)}
        return np.array([np.nan if s is None else index.get(s, UNKNOWN_CODE) for s in column.strings], dtype=np.float64)

    # ---------------------------------------------------------------- FP64 features -> prepared matrix (numpy twin)
    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """The numpy twin of the in-graph preprocessing (:mod:`exporter.onnx_prep`).

        Numeric: NaN and +-inf become the fill. Categorical: the raw value becomes its embedding row (1..K),
        and unknown, non-integer, NaN or beyond-2^53 values row 0 (OOV). Same shape, float64.
        """
        if self.encode_only:
            raise ExporterError("this feature plan was read from an artifact's metadata: it encodes tables; the "
                                "mapping to embedding rows lives in the model's graph")
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.features):
            raise ExporterError(f"expected a [rows, {len(self.features)}] matrix, got shape {list(raw.shape)}")
        out = raw.copy()
        for j, feat in enumerate(self.features):
            col = raw[:, j]
            if not feat.categorical:
                out[~np.isfinite(col), j] = np.nan if feat.fill is None else feat.fill
                continue
            out[:, j] = category_rows(col, feat)
        return out

    # ---------------------------------------------------------------- JSON forms
    def to_dict(self) -> dict[str, Any]:
        """The full plan (keys and vocabularies): stored in checkpoints and feature_meta.json."""
        return {"format": PLAN_FORMAT, "features": [f.to_dict(full=True) for f in self.features]}

    @classmethod
    def from_dict(cls, raw: Any, *, source: str) -> "FeaturePlan":
        if not isinstance(raw, Mapping) or raw.get("format") != PLAN_FORMAT or not isinstance(raw.get("features"), list):
            raise ExporterError(f"{source}: no fitted feature plan (format '{PLAN_FORMAT}')")
        return cls([FittedFeature.from_dict(f, source=source) for f in raw["features"]])

    def metadata(self, vocab_file: str | None, vocab_sha256: str | None) -> list[dict[str, Any]]:
        """metadata.json ``features``: per column kind, dtype seen, fill, optional, stats and vocabulary policy."""
        out = []
        for f in self.features:
            entry = f.to_dict(full=False)
            if f.vocab is not None and vocab_file is not None:
                entry["vocab"] = {"file": vocab_file, "sha256": vocab_sha256, "key": f.name}
            out.append(entry)
        return out

    def vocab_json(self) -> dict[str, list[str]]:
        """``vocab.json``: string column -> its vocabulary (code i is the i-th string). Empty when none."""
        return {f.name: list(f.vocab) for f in self.features if f.vocab is not None}

    def describe(self) -> pd.DataFrame:
        """The schema table notebooks show: kind, dtype, vocabulary size, missing rate, fill."""
        records = []
        for f in self.features:
            records.append({
                "column": f.name,
                "kind": f.kind,
                "dtype": f.dtype,
                "vocab size": (f.rows - 1) if f.categorical else None,
                "OOV policy": (f"hash {f.spec.hash_buckets}" if f.hashed else f"min_count {f.spec.min_count}")
                if f.categorical else "",
                "missing rate": round(float(f.stats.get("missing_rate") or 0.0), 4),
                "fill": f.fill,
                "optional": f.spec.optional,
            })
        return pd.DataFrame.from_records(records).set_index("column")


PLAN_FORMAT = "exporter.feature-plan/1"


def category_rows(col: np.ndarray, feat: FittedFeature) -> np.ndarray:
    """Raw categorical values -> embedding rows (float64), row 0 for anything without its own row."""
    valid = (np.floor(col) == col) & (np.abs(col) <= MAX_EXACT_INT)
    ints = np.where(valid, col, 0.0).astype(np.int64)
    if feat.hashed:
        rows = ints % int(feat.spec.hash_buckets) + 1
    elif feat.keys:
        keys = np.asarray(feat.keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        pos = np.searchsorted(sorted_keys, ints)
        pos_c = np.minimum(pos, len(keys) - 1)
        found = sorted_keys[pos_c] == ints
        rows = np.where(found, order[pos_c] + 1, OOV_ROW)
    else:
        rows = np.zeros(len(col), dtype=np.int64)
    return np.where(valid, rows, OOV_ROW).astype(np.float64)


def fit(frame: pd.DataFrame, specs: Sequence[FeatureSpec], train_rows: Iterable[int] | None = None, *,
        source: str = "data") -> FeaturePlan:
    """Validate every row of ``frame`` and fit vocabularies and statistics on ``train_rows`` (default: all)."""
    train = np.arange(len(frame)) if train_rows is None else np.asarray(list(train_rows), dtype=np.int64)
    missing = [s.name for s in specs if s.name not in frame.columns]
    if missing:
        have = ", ".join(map(str, list(frame.columns)[:20]))
        raise ExporterError(f"{source}: missing feature column(s) {', '.join(missing)}; the file has: {have}")
    fitted = []
    for spec in specs:
        column = _read_column(frame[spec.name], spec, source=source)
        if spec.kind == CATEGORICAL:
            fitted.append(_fit_categorical(column, train, spec))
        else:
            assert column.numbers is not None
            fill, stats = _numeric_stats(column.numbers[train], train, spec, source=source)
            fitted.append(FittedFeature(spec, column.dtype, fill, [], None, stats))
    return FeaturePlan(fitted)


def passthrough_plan(frame: pd.DataFrame, columns: Sequence[str], train_rows: Iterable[int] | None = None, *,
                     source: str = "data") -> FeaturePlan:
    """For a model loaded without a plan (trained elsewhere on plain numbers): every column numeric, and a
    missing value reaches the model as NaN (XGBoost, for one, learned where missing values go)."""
    plan = fit(frame, [FeatureSpec(c) for c in columns], train_rows, source=source)
    return FeaturePlan([replace(f, fill=None) for f in plan.features])


def format_schema(specs: Sequence[FeatureSpec], origins: Mapping[str, str], *, note: str = "") -> str:
    """A few lines the user sees before training: every feature with its kind and where the kind came from."""
    width = max((len(s.name) for s in specs), default=0)
    lines = [f"feature schema ({len(specs)} columns{'; ' + note if note else ''}):"]
    for s in specs:
        extra = []
        if s.tower:
            extra.append(f"tower {s.tower}")
        if s.optional:
            extra.append("optional")
        if s.kind == CATEGORICAL:
            extra.append(f"hash_buckets {s.hash_buckets}" if s.hash_buckets else f"min_count {s.min_count}"
                         + (f", max_size {s.max_size}" if s.max_size else ""))
        elif s.fill is not None:
            extra.append(f"fill {s.fill:g}")
        tail = f"  ({', '.join(extra)})" if extra else ""
        lines.append(f"  {s.name:<{width}}  {s.kind:<11} {origins.get(s.name, 'stored'):<8}{tail}")
    return "\n".join(lines)


def probe_rows(plan: FeaturePlan, base: np.ndarray, *, rows: int = 64) -> np.ndarray:
    """Rows for the parity gate that exercise every OOV path and the numeric fill (built from ``base`` rows).

    Categorical columns get unseen IDs, unknown codes, non-integers, NaN, +-inf and integers beyond 2^53 (all
    must land on the OOV row in graph and twin alike) besides known values; numeric columns NaN and +-inf.
    """
    base = np.asarray(base, dtype=np.float64)
    if len(base) == 0:
        base = np.zeros((1, len(plan)), dtype=np.float64)
    out = base[np.arange(rows) % len(base)].copy()
    for j, feat in enumerate(plan.features):
        for r in range(rows):
            variant = r % 8
            if not feat.categorical:
                if variant in (1, 4):
                    out[r, j] = np.nan
                elif variant == 6:
                    out[r, j] = np.inf if r % 16 < 8 else -np.inf
                continue
            top = max([abs(k) for k in feat.keys] + [0])
            out[r, j] = {
                0: top + 1 + r,                   # an unseen ID / a code beyond the vocabulary
                1: np.nan,                        # missing
                2: float(UNKNOWN_CODE),           # the unknown-string code
                3: (feat.keys[r % len(feat.keys)] if feat.keys else 0) + 0.5,  # not an integer
                4: float(2**60),                  # beyond 2^53
                5: -np.inf if r % 16 < 8 else np.inf,
                6: float(feat.keys[r % len(feat.keys)]) if feat.keys else float(r),  # a known value
                7: -float(top + 2 + r),           # negative unseen
            }[variant]
    return out
