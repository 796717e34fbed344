"""What training learned about each feature column: vocabularies, fills and statistics (a :class:`FeaturePlan`),
and the raw-table encoder that turns a table into the FP64 matrix the graph takes (see ``docs/features.md``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.errors import ExporterError
from exporter.features.schema import (
    CATEGORICAL,
    DTYPES,
    HASH_ENCODING,
    MAX_EXACT_INT,
    NUMERIC,
    OOV_ROW,
    SPEC_KEYS,
    TOP_VALUES,
    UNKNOWN_CODE,
    Column,
    FeatureSpec,
    hash_code,
    read_column,
)
from exporter.runtime.rules import METADATA_FILE, MetadataError, read_metadata

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
        buckets = self.spec.hash_buckets
        return 1 + (int(buckets) if buckets is not None else len(self.keys))

    @property
    def oov_policy(self) -> dict[str, Any]:
        if self.hashed:
            policy: dict[str, Any] = {
                "policy": "hash",
                "hash_buckets": self.spec.hash_buckets,
                "row": "1 + (value mod hash_buckets)",
            }
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
    def from_dict(cls, raw: Mapping[str, Any], *, source: str) -> FittedFeature:
        try:
            spec = FeatureSpec.from_dict(
                {k: raw[k] for k in SPEC_KEYS if k in raw and k != "fill"}
                | ({"fill": raw.get("fill")} if raw.get("kind", NUMERIC) == NUMERIC else {}),
                source=source,
            )
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


def _numeric_stats(
    values: np.ndarray, rows: np.ndarray, spec: FeatureSpec, *, source: str
) -> tuple[float, dict[str, Any]]:
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
    stats = {
        "mean": mean,
        "std": std,
        "min": float(present.min()),
        "max": float(present.max()),
        "median": median,
        "missing_rate": missing_rate,
        "histogram": _histogram(present),
    }
    return float(fill), stats


def _histogram(present: np.ndarray) -> dict[str, list[float]]:
    """The training deciles as bin edges and the share of training values in each bin (``(-inf, e0]``,
    ``(e0, e1]``, ..., ``(e_last, inf)``): what serving compares live values with (drift PSI). Equal deciles
    (a column of few distinct values) collapse into one edge, so the shares are counted, not assumed."""
    edges = np.unique(np.quantile(present, np.linspace(0.1, 0.9, 9)))
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges], "shares": [float(c) / len(present) for c in counts]}


def _order_by_count(counts: Mapping[Any, int]) -> list[Any]:
    """Most frequent first; ties by value, so the order never depends on the data's row order."""
    return sorted(counts, key=lambda v: (-counts[v], v))


def _fit_categorical(column: Column, train: np.ndarray, spec: FeatureSpec) -> FittedFeature:
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
        "values": len(present),
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

    def subset(self, columns: Sequence[str]) -> FeaturePlan:
        return FeaturePlan([self._by_name[c] for c in columns], encode_only=self.encode_only)

    @classmethod
    def from_artifact(cls, version_dir: str | Path) -> FeaturePlan:
        """The encoder of an exported model (offline scoring): ``metadata.json`` ``features`` and ``vocab.json``.

        It turns raw tables into the FP64 ``features`` the model's graph takes (:meth:`encode`); the mapping to
        embedding rows lives in the graph, so this plan is encode-only. The vocabulary's sha256 is checked.
        """
        version_dir = Path(version_dir)
        meta_path = version_dir / METADATA_FILE
        try:
            meta = read_metadata(meta_path)
        except MetadataError as exc:
            raise ExporterError(f"cannot read {meta_path}: {exc}") from None
        entries = meta.get("features")
        columns = meta["feature_columns"]
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
            raw = {
                k: v
                for k, v in e.items()
                if k
                in (
                    "name",
                    "kind",
                    "dtype",
                    "fill",
                    "optional",
                    "tower",
                    "min_count",
                    "max_size",
                    "hash_buckets",
                    "stats",
                )
            }
            if (
                e.get("kind") == CATEGORICAL
                and e.get("dtype") == "string"
                and (e.get("oov") or {}).get("policy") != "hash"
            ):
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
            column = read_column(frame[feat.name], feat.spec, source=source)
            out[:, j] = self._codes(feat, column)
        return out

    @staticmethod
    def _codes(feat: FittedFeature, column: Column) -> np.ndarray:
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
        """The numpy twin of the in-graph preprocessing (:mod:`exporter.features.onnx_prep`).

        Numeric: NaN and +-inf become the fill. Categorical: the raw value becomes its embedding row (1..K),
        and unknown, non-integer, NaN or beyond-2^53 values row 0 (OOV). Same shape, float64.
        """
        if self.encode_only:
            raise ExporterError(
                "this feature plan was read from an artifact's metadata: it encodes tables; the "
                "mapping to embedding rows lives in the model's graph"
            )
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
    def from_dict(cls, raw: Any, *, source: str) -> FeaturePlan:
        if (
            not isinstance(raw, Mapping)
            or raw.get("format") != PLAN_FORMAT
            or not isinstance(raw.get("features"), list)
        ):
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
            records.append(
                {
                    "column": f.name,
                    "kind": f.kind,
                    "dtype": f.dtype,
                    "vocab size": (f.rows - 1) if f.categorical else None,
                    "OOV policy": (f"hash {f.spec.hash_buckets}" if f.hashed else f"min_count {f.spec.min_count}")
                    if f.categorical
                    else "",
                    "missing rate": round(float(f.stats.get("missing_rate") or 0.0), 4),
                    "fill": f.fill,
                    "optional": f.spec.optional,
                }
            )
        return pd.DataFrame.from_records(records).set_index("column")


PLAN_FORMAT = "exporter.feature-plan/1"


def category_rows(col: np.ndarray, feat: FittedFeature) -> np.ndarray:
    """Raw categorical values -> embedding rows (float64), row 0 for anything without its own row."""
    valid = (np.floor(col) == col) & (np.abs(col) <= MAX_EXACT_INT)
    ints = np.where(valid, col, 0.0).astype(np.int64)
    buckets = feat.spec.hash_buckets
    if buckets is not None:  # feat.hashed
        rows = ints % int(buckets) + 1
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


def fit(
    frame: pd.DataFrame, specs: Sequence[FeatureSpec], train_rows: Iterable[int] | None = None, *, source: str = "data"
) -> FeaturePlan:
    """Validate every row of ``frame`` and fit vocabularies and statistics on ``train_rows`` (default: all)."""
    train = np.arange(len(frame)) if train_rows is None else np.asarray(list(train_rows), dtype=np.int64)
    missing = [s.name for s in specs if s.name not in frame.columns]
    if missing:
        have = ", ".join(map(str, list(frame.columns)[:20]))
        raise ExporterError(f"{source}: missing feature column(s) {', '.join(missing)}; the file has: {have}")
    fitted = []
    for spec in specs:
        column = read_column(frame[spec.name], spec, source=source)
        if spec.kind == CATEGORICAL:
            fitted.append(_fit_categorical(column, train, spec))
        else:
            assert column.numbers is not None
            fill, stats = _numeric_stats(column.numbers[train], train, spec, source=source)
            fitted.append(FittedFeature(spec, column.dtype, fill, [], None, stats))
    return FeaturePlan(fitted)


def passthrough_plan(
    frame: pd.DataFrame, columns: Sequence[str], train_rows: Iterable[int] | None = None, *, source: str = "data"
) -> FeaturePlan:
    """For a model loaded without a plan (trained elsewhere on plain numbers): every column numeric, and a
    missing value reaches the model as NaN (XGBoost, for one, learned where missing values go)."""
    plan = fit(frame, [FeatureSpec(c) for c in columns], train_rows, source=source)
    return FeaturePlan([replace(f, fill=None) for f in plan.features])


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
                0: top + 1 + r,  # an unseen ID / a code beyond the vocabulary
                1: np.nan,  # missing
                2: float(UNKNOWN_CODE),  # the unknown-string code
                3: (feat.keys[r % len(feat.keys)] if feat.keys else 0) + 0.5,  # not an integer
                4: float(2**60),  # beyond 2^53
                5: -np.inf if r % 16 < 8 else np.inf,
                6: float(feat.keys[r % len(feat.keys)]) if feat.keys else float(r),  # a known value
                7: -float(top + 2 + r),  # negative unseen
            }[variant]
    return out
