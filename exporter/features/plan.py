"""What training learned about each feature column: vocabularies, fills and statistics (a :class:`FeaturePlan`),
and the raw-table encoder that turns a table into the FP64 matrix the graph takes (see ``docs/features.md``).

Why this module is long: fitting, encoding, the numpy twin of the graph and the parity probes of every feature
kind (numeric, categorical, history) change together; split apart, each change would touch several modules.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.errors import ExporterError
from exporter.features.history import history_matrix, history_strings, holds_strings
from exporter.features.schema import (
    CATEGORICAL,
    DTYPES,
    HASH_ENCODING,
    HISTORY,
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
from exporter.runtime.history import column_name
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
    #: history features: this column's position (0 .. max_length - 1); the spec is the whole history's
    position: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name if self.position is None else column_name(self.spec.name, self.position)

    @cached_property
    def code_of(self) -> dict[str, int]:
        """string -> code of a vocabulary column, built once per fitted column (encoding each streamed batch
        rebuilt it: a million-string dict per batch)."""
        return {w: i for i, w in enumerate(self.vocab or ())}

    @property
    def history(self) -> bool:
        """One position of a history column (:mod:`exporter.features.history`)."""
        return self.spec.kind == HISTORY

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
        if self.spec.kind == NUMERIC:
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
        if self.history:
            return self._history_dict(full)
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

    def _history_dict(self, full: bool) -> dict[str, Any]:
        """One position of a history: its tensor column's name, kind ``history`` and the whole history's facts."""
        spec = self.spec.to_dict()
        info: dict[str, Any] = {
            "column": self.spec.name,
            "position": self.position,
            "max_length": self.spec.max_length,
            "delimiter": self.spec.delimiter,
            "vocab_from": self.spec.vocab_from,
        }
        if self.spec.vocab_from is not None and self.hashed:
            info["hash_buckets"] = self.spec.hash_buckets
        if self.spec.build:
            info["from"] = self.spec.build_from
        out: dict[str, Any] = {
            "name": self.name,
            "kind": HISTORY,
            "tower": self.spec.tower,
            "optional": True,
            "history": info,
            "dtype": self.dtype,
            "fill": None,
            "vocab_size": self.rows - 1,
            "embedding_rows": self.rows,
            "oov": {**self.oov_policy, "padding": "NaN (no item): masked, no embedding row"},
            "stats": self.stats,
        }
        for key in ("min_count", "max_size", "hash_buckets"):
            if key in spec:
                out[key] = spec[key]
        if full and not self.hashed and self.keys is not None:
            out["keys"] = list(self.keys)
        if full and self.vocab is not None:
            out["vocab"] = list(self.vocab)
        return out

    @classmethod
    def _history_from_dict(cls, raw: Mapping[str, Any], *, source: str) -> FittedFeature:
        info = raw.get("history")
        if not isinstance(info, Mapping):
            raise ExporterError(f"{source}: history feature {raw.get('name')!r} has no 'history' object")
        try:
            position = int(info["position"])
            spec = FeatureSpec.from_dict(
                {
                    "name": info["column"],
                    "kind": HISTORY,
                    "tower": raw.get("tower"),
                    "max_length": info.get("max_length"),
                    "delimiter": info.get("delimiter") or "|",
                    "vocab_from": info.get("vocab_from"),
                    **({"from": info["from"]} if info.get("from") else {}),
                    **{k: raw[k] for k in ("min_count", "max_size", "hash_buckets") if raw.get(k) is not None},
                },
                source=source,
            )
            if info.get("hash_buckets") is not None:
                spec = replace(spec, hash_buckets=int(info["hash_buckets"]))
            keys = [int(k) for k in raw.get("keys", [])]
            vocab = [str(v) for v in raw["vocab"]] if raw.get("vocab") is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ExporterError(f"{source}: unusable history feature entry {str(raw)[:80]}: {exc!r}") from exc
        dtype = str(raw.get("dtype", "int64"))
        if dtype == "string" and spec.hash_buckets is None and vocab is None and position == 0:
            raise ExporterError(f"{source}: string history {spec.name!r} has no vocab")
        return cls(spec, dtype, None, keys, vocab, dict(raw.get("stats") or {}), position)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str) -> FittedFeature:
        if raw.get("kind") == HISTORY:
            return cls._history_from_dict(raw, source=source)
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
    return categorical_from_counts(spec, column.dtype, counts, rows=len(train), present=len(present))


def categorical_from_counts(
    spec: FeatureSpec, dtype: str, counts: Mapping[Any, int], *, rows: int, present: int
) -> FittedFeature:
    """A categorical column fitted from its training values' counts (``rows`` training rows, ``present`` of
    them not missing): the one place the vocabulary rules (min_count, max_size, hashing) are applied, whether
    the counts came from a table in memory or from a streamed pass over record batches."""
    ordered = _order_by_count(counts)
    keys: list[int] = []
    vocab: list[str] | None = None
    if spec.hash_buckets is None:
        kept = [v for v in ordered if counts[v] >= spec.min_count]
        if spec.max_size is not None:
            kept = kept[: spec.max_size]
        if dtype == "string":
            vocab = [str(v) for v in kept]
            keys = list(range(len(vocab)))
        else:
            keys = [int(v) for v in kept]
        covered = sum(counts[v] for v in kept)
    else:
        covered = present
    top = [{"value": v if isinstance(v, str) else int(v), "count": int(counts[v])} for v in ordered[:TOP_VALUES]]
    stats = {
        "missing_rate": float((rows - present) / rows) if rows else 0.0,
        "values": present,
        "distinct": len(counts),
        "coverage": float(covered / present) if present else 0.0,
        "top_values": top,
    }
    return FittedFeature(spec, dtype, None, keys, vocab, stats)


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
        """Per column: embedding rows (incl. the OOV row) of a categorical column, 0 for a numeric one and a
        history position (:meth:`histories` describes those)."""
        return [f.rows if f.categorical else 0 for f in self.features]

    def histories(self) -> list[dict[str, Any]]:
        """The history columns as the torch models lay them out: per history its ``name``, tensor ``columns``
        (indices), embedding ``rows`` (OOV row included) and ``target``: the index of the categorical column
        whose vocabulary it shares when that is a feature here (its embedding is then shared), else None."""
        out: dict[str, dict[str, Any]] = {}
        for j, f in enumerate(self.features):
            if f.history:
                entry = out.setdefault(f.spec.name, {"name": f.spec.name, "columns": [], "rows": f.rows})
                entry["columns"].append(j)
        for entry in out.values():
            first = self.features[entry["columns"][0]]
            shared = first.spec.vocab_from
            target = self.columns.index(shared) if shared in self._by_name else None
            if target is not None and self.features[target].rows != entry["rows"]:
                target = None
            entry["target"] = target
        return list(out.values())

    def subset(self, columns: Sequence[str]) -> FeaturePlan:
        """The plan of some columns (a history's name stands for all its positions)."""
        picked = []
        for c in columns:
            if c in self._by_name:
                picked.append(self._by_name[c])
            else:
                positions = [f for f in self.features if f.history and f.spec.name == c]
                if not positions:
                    raise KeyError(c)
                picked += positions
        return FeaturePlan(picked, encode_only=self.encode_only)

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
                    "history",
                )
            }
            if (
                e.get("kind") in (CATEGORICAL, HISTORY)
                and e.get("dtype") == "string"
                and (e.get("oov") or {}).get("policy") != "hash"
            ):
                raw["vocab"] = vocab.get(str((e.get("vocab") or {}).get("key", e["name"])))
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
        missing = [c for c in self.columns if c not in frame.columns and not self._by_name[c].history]
        if missing:
            have = ", ".join(map(str, list(frame.columns)[:20]))
            raise ExporterError(f"{source}: missing feature column(s) {', '.join(missing)}; the table has: {have}")
        out = np.empty((len(frame), len(self.features)), dtype=np.float64)
        for j, feat in enumerate(self.features):
            if feat.history:
                if feat.position == 0 or j == 0 or self.features[j - 1].spec.name != feat.spec.name:
                    ids = history_matrix(frame, feat.spec, source=source, strings=_string_table(feat))
                out[:, j] = ids[:, feat.position]
                continue
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
        index = feat.code_of
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
            if feat.history:
                out[:, j] = history_rows(col, feat)
                continue
            if not feat.categorical:
                out[~np.isfinite(col), j] = np.nan if feat.fill is None else feat.fill
                continue
            out[:, j] = category_rows(col, feat)
        return out

    # ---------------------------------------------------------------- JSON forms
    def to_dict(self) -> dict[str, Any]:
        """The full plan (keys and vocabularies): stored in checkpoints and feature_meta.json."""
        features = [f.to_dict(full=True) for f in self.features]
        for f, entry in zip(self.features, features, strict=True):
            if f.history and f.position:  # one copy of a history's keys and vocabulary, at its position 0
                entry.pop("keys", None)
                entry.pop("vocab", None)
        return {"format": PLAN_FORMAT, "features": features}

    @classmethod
    def from_dict(cls, raw: Any, *, source: str) -> FeaturePlan:
        if (
            not isinstance(raw, Mapping)
            or raw.get("format") != PLAN_FORMAT
            or not isinstance(raw.get("features"), list)
        ):
            raise ExporterError(f"{source}: no fitted feature plan (format '{PLAN_FORMAT}')")
        fitted = [FittedFeature.from_dict(f, source=source) for f in raw["features"]]
        first: dict[str, FittedFeature] = {}
        for f in fitted:
            if f.history:
                head = first.setdefault(f.spec.name, f)
                f.keys, f.vocab = head.keys, head.vocab
        return cls(fitted)

    def metadata(self, vocab_file: str | None, vocab_sha256: str | None) -> list[dict[str, Any]]:
        """metadata.json ``features``: per column kind, dtype seen, fill, optional, stats and vocabulary policy."""
        out = []
        for f in self.features:
            entry = f.to_dict(full=False)
            if f.vocab is not None and vocab_file is not None:
                entry["vocab"] = {"file": vocab_file, "sha256": vocab_sha256, "key": self._vocab_key(f)}
            out.append(entry)
        return out

    def _vocab_key(self, f: FittedFeature) -> str:
        """The ``vocab.json`` key of a column's vocabulary: its own name; for a history of string IDs the column
        whose vocabulary it shares when that is a string column here, else the history's name (one copy)."""
        if not f.history:
            return f.name
        shared = self._by_name.get(f.spec.vocab_from or "")
        same = shared is not None and shared.vocab is not None and (shared.vocab is f.vocab or shared.vocab == f.vocab)
        return shared.name if same and shared is not None else f.spec.name

    def vocab_json(self) -> dict[str, list[str]]:
        """``vocab.json``: string column -> its vocabulary (code i is the i-th string). Empty when none."""
        out: dict[str, list[str]] = {}
        for f in self.features:
            if f.vocab is not None and (not f.history or not f.position):
                out.setdefault(self._vocab_key(f), list(f.vocab))
        return out

    def describe(self) -> pd.DataFrame:
        """The schema table notebooks show: kind, dtype, vocabulary size, missing rate, fill."""
        records = []
        for f in self.features:
            records.append(
                {
                    "column": f.name,
                    "kind": f.kind,
                    "dtype": f.dtype,
                    "vocab size": (f.rows - 1) if f.categorical or f.history else None,
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


#: a history position without an item (NaN) in the prepared matrix: no embedding row, masked by the models
PADDING_ROW = -1


def history_rows(col: np.ndarray, feat: FittedFeature) -> np.ndarray:
    """One history position -> embedding rows like a categorical ID, and :data:`PADDING_ROW` for NaN."""
    return np.where(np.isnan(col), float(PADDING_ROW), category_rows(col, feat))


def _string_table(feat: FittedFeature) -> dict[str, int] | str | None:
    """How the items of a history of string IDs become codes: its vocabulary (string -> code) or ``"hash"``;
    None for a history of integer IDs."""
    if feat.dtype != "string":
        return None
    if feat.hashed:
        return "hash"
    if feat.vocab is None:
        raise ExporterError(f"history '{feat.spec.name}' holds strings but has no vocabulary")
    return feat.code_of


def _fit_history(
    frame: pd.DataFrame, spec: FeatureSpec, train: np.ndarray, fitted: Mapping[str, FittedFeature], *, source: str
) -> list[FittedFeature]:
    """One history: its own vocabulary over the training rows' items, or the shared column's, and statistics."""
    shared = None
    if spec.vocab_from is not None:
        shared = fitted.get(spec.vocab_from)
        if shared is None:
            if spec.vocab_from not in frame.columns:
                raise ExporterError(
                    f"{source}: history '{spec.name}' shares the vocabulary of column '{spec.vocab_from}', "
                    "which the table lacks"
                )
            column = read_column(frame[spec.vocab_from], FeatureSpec(spec.vocab_from, CATEGORICAL), source=source)
            shared = _fit_categorical(column, train, FeatureSpec(spec.vocab_from, CATEGORICAL))
    counts = HistoryCounts(spec, history_holds_strings(frame, spec, shared, source=source))
    counts.add(frame, train, source=source)
    return counts.fitted(shared)


def history_holds_strings(frame: pd.DataFrame, spec: FeatureSpec, shared: FittedFeature | None, *, source: str) -> bool:
    """Whether a history's items are strings: those of the column whose vocabulary it shares; with a vocabulary
    of its own, when some item in ``frame`` is text that is not an integer (as a CSV reader tells them apart)."""
    if shared is None:
        return holds_strings(frame, spec)
    check_shared(spec, shared, source=source)
    return shared.dtype == "string"


def check_shared(spec: FeatureSpec, shared: FittedFeature, *, source: str) -> None:
    """A history shares the vocabulary of a categorical column only."""
    if not shared.categorical:
        raise ExporterError(
            f"{source}: history '{spec.name}' shares the vocabulary of '{spec.vocab_from}', which is not a "
            "categorical column; a history holds IDs, so it shares the vocabulary of a categorical column of IDs"
        )


@dataclass
class HistoryCounts:
    """A history's items and lengths over the training rows, added a table (in memory) or a batch (streamed) at a
    time; :meth:`fitted` applies the vocabulary rules once, wherever the counts came from."""

    spec: FeatureSpec
    #: items are strings (codes through a vocabulary or hash), else integer IDs
    strings: bool
    counts: dict[Any, int] = field(default_factory=dict)
    rows: int = 0
    items: int = 0
    empty: int = 0
    full: int = 0
    #: the most items any counted row holds (at most max_length)
    longest: int = 0

    def add(self, frame: pd.DataFrame, train: np.ndarray, *, source: str) -> None:
        """Count the items of ``frame``'s ``train`` rows (indices or a boolean mask); every row is validated."""
        if self.strings:
            cells = history_strings(frame, self.spec, source=source)[train]
            mask = pd.notna(cells)
            found = pd.Series(cells[mask], dtype=object).value_counts()
            pairs = zip(found.index.tolist(), found.tolist(), strict=True)
        else:
            ids = history_matrix(frame, self.spec, source=source)[train]
            mask = ~np.isnan(ids)
            keys, n = np.unique(ids[mask].astype(np.int64), return_counts=True)
            pairs = zip(keys.tolist(), n.tolist(), strict=True)
        for key, n in pairs:
            self.counts[key] = self.counts.get(key, 0) + int(n)
        lengths = mask.sum(axis=1)
        self.rows += len(lengths)
        self.items += int(lengths.sum())
        self.empty += int((lengths == 0).sum())
        self.full += int((lengths == self.spec.max_length).sum())
        self.longest = max(self.longest, int(lengths.max()) if len(lengths) else 0)

    def add_part(self, frame: pd.DataFrame, train: np.ndarray, *, source: str) -> None:
        """:meth:`add` for one part of a table read part by part (streamed, on Spark), which decided from an earlier
        part that the items are integers: at the first part holding text IDs, a history with a vocabulary of its own
        becomes a history of string IDs, as the whole table read at once would be. The integer items counted so far
        count as their text (``12`` -> ``"12"``, as a string history reads an integer item)."""
        try:
            self.add(frame, train, source=source)
        except ExporterError:
            if self.strings or self.spec.vocab_from is not None or not holds_strings(frame, self.spec):
                raise
            self.counts = {str(k): n for k, n in self.counts.items()}
            self.strings = True
            self.add(frame, train, source=source)

    def fitted(self, shared: FittedFeature | None) -> list[FittedFeature]:
        """The history's positions: the shared column's vocabulary (or hash), or its own over the counted items
        (``min_count``, ``max_size``, ``hash_buckets`` as a categorical column's), and its statistics."""
        spec, dtype = self.spec, "string" if self.strings else "int64"
        if shared is not None:
            spec = replace(spec, hash_buckets=shared.spec.hash_buckets)
            keys, vocab = list(shared.keys), shared.vocab if self.strings else None
            known = set(vocab if vocab is not None else keys)
            covered = self.items if shared.hashed else sum(n for v, n in self.counts.items() if v in known)
        else:
            own = categorical_from_counts(spec, dtype, self.counts, rows=self.items, present=self.items)
            keys, vocab = own.keys, own.vocab
            covered = round(float(own.stats["coverage"]) * self.items)
        if spec.hash_buckets is not None:
            keys, vocab = [], None
        rows = self.rows or 1
        stats = {
            "mean_length": self.items / rows,
            "empty_rate": self.empty / rows,
            "full_rate": self.full / rows,
            "longest": self.longest,
            "distinct": len(self.counts),
            "coverage": float(covered / self.items) if self.items else 0.0,
        }
        return [FittedFeature(spec, dtype, None, keys, vocab, stats, p) for p in range(spec.max_length)]


def fit(
    frame: pd.DataFrame, specs: Sequence[FeatureSpec], train_rows: Iterable[int] | None = None, *, source: str = "data"
) -> FeaturePlan:
    """Validate every row of ``frame`` and fit vocabularies and statistics on ``train_rows`` (default: all)."""
    train = np.arange(len(frame)) if train_rows is None else np.asarray(list(train_rows), dtype=np.int64)
    missing = [s.name for s in specs if s.name not in frame.columns and s.kind != HISTORY]
    if missing:
        have = ", ".join(map(str, list(frame.columns)[:20]))
        raise ExporterError(f"{source}: missing feature column(s) {', '.join(missing)}; the file has: {have}")
    fitted: list[FittedFeature] = []
    by_name: dict[str, FittedFeature] = {}
    for spec in specs:  # the histories after the columns whose vocabulary they may share
        if spec.kind == HISTORY:
            continue
        column = read_column(frame[spec.name], spec, source=source)
        if spec.kind == CATEGORICAL:
            fitted.append(_fit_categorical(column, train, spec))
        else:
            assert column.numbers is not None
            fill, stats = _numeric_stats(column.numbers[train], train, spec, source=source)
            fitted.append(FittedFeature(spec, column.dtype, fill, [], None, stats))
        by_name[spec.name] = fitted[-1]
    histories = {s.name: _fit_history(frame, s, train, by_name, source=source) for s in specs if s.kind == HISTORY}
    ordered: list[FittedFeature] = []
    for spec in specs:
        ordered += histories[spec.name] if spec.kind == HISTORY else [by_name[spec.name]]
    return FeaturePlan(ordered)


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
    must land on the OOV row in graph and twin alike) besides known values; numeric columns NaN and +-inf;
    history columns empty, partial, full and over-long histories (kept: the last ``max_length``), unseen and
    invalid IDs among known ones, and gaps.
    """
    base = np.asarray(base, dtype=np.float64)
    if len(base) == 0:
        base = np.zeros((1, len(plan)), dtype=np.float64)
    out = base[np.arange(rows) % len(base)].copy()
    for group in plan.histories():
        out[:, group["columns"]] = _history_probes(plan.features[group["columns"][0]], rows)
    for j, feat in enumerate(plan.features):
        if feat.history:
            continue
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


def _history_probes(feat: FittedFeature, rows: int) -> np.ndarray:
    """``[rows, max_length]`` history probes: the OOV, padding and truncation paths (see :func:`probe_rows`)."""
    length = feat.spec.max_length
    keys = feat.keys or [0]
    top = max([abs(k) for k in keys] + [0])
    out = np.full((rows, length), np.nan)
    for r in range(rows):
        known = [float(keys[(r + i) % len(keys)]) for i in range(length + 5)]
        variant = r % 8
        if variant == 0:  # empty
            continue
        if variant == 1:  # over-long: the encoder keeps the last max_length items
            values = known[-length:]
        elif variant == 2:  # one item
            values = known[:1]
        elif variant == 3:  # unseen IDs, negative ones too
            values = [float(top + 1 + r + i) * (-1 if i % 2 else 1) for i in range(length)]
        elif variant == 4:  # invalid values among known ones: all OOV rows
            values = [known[0], known[1] + 0.5, float(2**60), np.inf, -np.inf, known[2]][:length]
        elif variant == 5:  # a gap (no item) between items
            values = known[: max(1, length // 2)]
            values = values[:1] + [np.nan] + values[1:]
        elif variant == 6:  # half full
            values = known[: max(1, length // 2)]
        else:  # full, known
            values = known[:length]
        values = values[:length]
        out[r, : len(values)] = values
    return out
