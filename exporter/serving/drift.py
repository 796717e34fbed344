"""Input drift of the served versions: a window of recent request rows against the training statistics that
``metadata.json`` records (``features[].stats``), exposed as Prometheus gauges, as ``GET /models/{model}/drift``
and as one log line per threshold crossing (docs/serving.md, "Drift").

Cost on the request path: :meth:`DriftMonitor.observe` takes the request's decoded ``features`` matrix (raw
values; string categories as their vocabulary codes) and copies a sample of its rows into the version's
fixed-size ring buffer (one lock, one slice assignment). Everything else, the statistics, gauges and log lines,
is computed off that path: by a background thread every ``interval`` seconds for versions that saw new rows,
and on ``GET /models/{model}/drift``. When a version's traffic exceeds ``max_rows_per_second`` the sample thins
to 1 row in k, so the window's cost per second stays bounded; the window itself holds at most ``window`` rows.

Per numeric feature: PSI of the window over the training decile bins (``stats.histogram``; exports without it
get two bins split at the training median), the share of values outside the training [min, max], the missing
rate against training's. Per categorical feature: the out-of-vocabulary rate against training's (1 -
``stats.coverage``; the vocabulary keys are read from the graph's lookup nodes, off the request path), PSI over
the training top values plus "other", the missing rate. With several server processes each process has its own
window; the gauges are ``livemostrecent`` in prometheus_client's multiprocess mode (the last process to compute
wins).

Why this module is long: the training references, the statistics, the window and the monitor are one feature
whose parts only make sense together (each is short); split, they would only import each other.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Gauge

from exporter.runtime.rules import UNKNOWN_CODE, hash_code

if TYPE_CHECKING:  # pragma: no cover
    from exporter.runtime.handler import ModelHandler

__all__ = ["DEFAULT_WINDOW", "DRIFT", "DriftMonitor", "Thresholds", "WINDOW_ROWS"]

log = logging.getLogger("exporter.serve")

DEFAULT_WINDOW = 10_000
#: fewer rows than this in the window: statistics are reported but no threshold is judged (PSI is noisy)
MIN_ROWS = 500
#: a window share below this counts as this in PSI (an empty bin would make it infinite)
_PSI_FLOOR = 1e-4
#: model files larger than this are not parsed for their vocabulary keys (the ID columns' OOV rate is null)
_MAX_GRAPH_BYTES = 256 * 2**20

_LABELS = ("model", "version", "feature", "statistic")
DRIFT = Gauge(
    "exporter_drift",
    "Input drift of a served version over its window of recent rows: statistic psi, out_of_range, oov_rate, "
    "oov_increase, missing_rate or missing_increase of one feature",
    _LABELS,
    multiprocess_mode="livemostrecent",
)
WINDOW_ROWS = Gauge(
    "exporter_drift_window_rows",
    "Rows in a served version's drift window",
    ("model", "version"),
    multiprocess_mode="livemostrecent",
)
SAMPLING = Gauge(
    "exporter_drift_sampling_ratio",
    "Share of a served version's rows that enter its drift window (1: every row)",
    ("model", "version"),
    multiprocess_mode="livemostrecent",
)
_LEVELS = ("ok", "warn", "alert")


@dataclass(frozen=True)
class Thresholds:
    """When a statistic is a warning or an alert (PSI: the usual 0.1 / 0.25 rule; rates: absolute shares)."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    #: out-of-range share, and the increase of the OOV and missing rates over training's
    rate_warn: float = 0.05
    rate_alert: float = 0.1

    def level(self, statistic: str, value: float | None) -> int:
        """0 ok, 1 warn, 2 alert."""
        if value is None or statistic not in _JUDGED:
            return 0
        warn, alert = (self.psi_warn, self.psi_alert) if statistic == "psi" else (self.rate_warn, self.rate_alert)
        return 2 if value >= alert else 1 if value >= warn else 0


#: the statistics that have thresholds (rates themselves are reported, their increase judged)
_JUDGED = ("psi", "out_of_range", "oov_increase", "missing_increase")


# ---------------------------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class _Reference:
    """One feature's training side: what the window is compared with."""

    j: int
    name: str
    kind: str
    missing_rate: float
    #: numeric: bin edges and training shares per bin; categorical: top value codes and shares (+ other)
    edges: np.ndarray | None = None
    shares: np.ndarray | None = None
    low: float | None = None
    high: float | None = None
    top_codes: np.ndarray | None = None
    oov_rate: float | None = None
    #: the codes that own an embedding row (sorted), None when unknown or hashed (no OOV)
    keys: np.ndarray | None = None


def _numeric_reference(j: int, entry: Mapping[str, Any]) -> _Reference:
    stats = entry.get("stats") or {}
    missing = float(stats.get("missing_rate") or 0.0)
    hist = stats.get("histogram")
    edges: np.ndarray | None
    shares: np.ndarray | None
    if isinstance(hist, Mapping) and hist.get("edges") is not None:
        edges, shares = np.array(hist["edges"], dtype=np.float64), np.array(hist["shares"], dtype=np.float64)
    elif stats.get("median") is not None:  # an export from before histograms: two bins at the median
        edges, shares = np.array([float(stats["median"])]), np.array([0.5, 0.5])
    else:
        edges = shares = None
    low, high = stats.get("min"), stats.get("max")
    return _Reference(
        j,
        str(entry["name"]),
        "numeric",
        missing,
        edges,
        shares,
        None if low is None else float(low),
        None if high is None else float(high),
    )


def _code(value: Any, table: dict[str, int] | str | None) -> float | None:
    """A training top value as the matrix holds it (strings through the vocabulary or hashed)."""
    if isinstance(value, str):
        if table == "hash":
            return float(hash_code(value))
        return float(table.get(value, UNKNOWN_CODE)) if isinstance(table, dict) else None
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def _categorical_reference(
    j: int, k: int, entry: Mapping[str, Any], table: Any, train_rows: int | None, keys: dict[int, np.ndarray]
) -> _Reference:
    stats = entry.get("stats") or {}
    missing = float(stats.get("missing_rate") or 0.0)
    present = stats.get("values")
    if present is None and train_rows:
        present = round(train_rows * (1.0 - missing))
    top = [t for t in stats.get("top_values") or [] if isinstance(t, Mapping)]
    codes = [_code(t.get("value"), table) for t in top]
    top_codes = shares = None
    if present and top and all(c is not None for c in codes):
        counts = np.array([float(t.get("count") or 0) for t in top])
        shares = np.append(counts / float(present), max(0.0, 1.0 - float(counts.sum()) / float(present)))
        top_codes = np.array(codes, dtype=np.float64)
    hashed = table == "hash"
    coverage = stats.get("coverage")
    oov = None if hashed or coverage is None else 1.0 - float(coverage)
    column_keys = None if hashed else keys.get(k)
    if column_keys is None and isinstance(table, dict):  # a string vocabulary: codes 0..V-1
        column_keys = np.arange(len(table), dtype=np.float64)
    return _Reference(
        j, str(entry["name"]), "categorical", missing, None, shares, None, None, top_codes, oov, column_keys
    )


def _history_reference(j: int, entry: Mapping[str, Any]) -> _Reference:
    """A history, watched by its first position: a row whose history is empty (``empty_rate`` in training)."""
    column = str((entry.get("history") or {}).get("column") or entry["name"])
    empty = float((entry.get("stats") or {}).get("empty_rate") or 0.0)
    return _Reference(j, column, "history", empty)


def _graph_keys(path: Path) -> dict[int, np.ndarray]:
    """k-th categorical column -> the codes its lookup node (``fprep__lookup_k``) maps to embedding rows."""
    try:
        if path.stat().st_size > _MAX_GRAPH_BYTES:
            return {}
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - drift only loses the ID columns' OOV rate
        log.warning("drift: cannot read vocabulary keys from %s: %s", path, exc)
        return {}
    found: dict[int, np.ndarray] = {}
    for node in graph.node:
        suffix = node.name.rpartition("lookup_")[2]
        if node.op_type == "LabelEncoder" and node.name.startswith("fprep__lookup_") and suffix.isdigit():
            for attr in node.attribute:
                if attr.name == "keys_int64s":
                    found[int(suffix)] = np.sort(np.array(attr.ints, dtype=np.float64))
    return found


def references(handler: ModelHandler) -> list[_Reference]:
    """Every feature's training side, from the version's metadata (and its graph, for vocabulary keys)."""
    metadata = handler.metadata
    entries = metadata.get("features")
    columns = handler.feature_columns
    if not isinstance(entries, list) or len(entries) != len(columns):  # an export from before feature schemas
        entries = [{"name": c, "kind": "numeric"} for c in columns]
    training = metadata.get("training") or {}
    train_rows = training.get("train_rows") if isinstance(training, Mapping) else None
    categorical = [j for j, e in enumerate(entries) if e.get("kind") == "categorical"]
    keys = _graph_keys(handler.directory / str(metadata["model_file"])) if categorical else {}
    out = []
    for j, entry in enumerate(entries):
        if entry.get("kind") == "history":
            # a short history leaves its later positions empty (no item, not a missing value): only the first
            # position says something training recorded, the share of rows without any item
            if (entry.get("history") or {}).get("position") == 0:
                out.append(_history_reference(j, entry))
            continue
        if j in categorical:
            table = handler.features.strings[j]
            out.append(_categorical_reference(j, categorical.index(j), entry, table, train_rows, keys))
        else:
            out.append(_numeric_reference(j, entry))
    return out


# ---------------------------------------------------------------------------------------------- statistics
def psi(actual: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    a = np.maximum(actual, _PSI_FLOOR)
    e = np.maximum(expected, _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_stats(ref: _Reference, column: np.ndarray) -> dict[str, float | None]:
    """One feature's statistics over the window's column (NaN: missing)."""
    n = len(column)
    missing_mask = np.isnan(column)
    present = column[~missing_mask]
    missing = float(missing_mask.mean()) if n else 0.0
    stats: dict[str, float | None] = {"missing_rate": missing, "missing_increase": missing - ref.missing_rate}
    if ref.kind == "history":  # the share of rows with no item at all
        return stats
    if ref.kind == "numeric":
        stats["psi"] = stats["out_of_range"] = None
        if len(present) and ref.edges is not None and ref.shares is not None:
            counts = np.bincount(np.searchsorted(ref.edges, present, side="left"), minlength=len(ref.shares))
            stats["psi"] = psi(counts / len(present), ref.shares)
        if len(present) and ref.low is not None and ref.high is not None:
            stats["out_of_range"] = float(np.mean((present < ref.low) | (present > ref.high)))
        return stats
    stats["psi"] = stats["oov_rate"] = stats["oov_increase"] = None
    if len(present) and ref.top_codes is not None and ref.shares is not None:
        hits = present[:, None] == ref.top_codes[None, :]
        top = hits.mean(axis=0)
        stats["psi"] = psi(np.append(top, max(0.0, 1.0 - float(top.sum()))), ref.shares)
    if len(present) and ref.keys is not None:
        at = np.searchsorted(ref.keys, present).clip(0, max(len(ref.keys) - 1, 0))
        known = ref.keys[at] == present if len(ref.keys) else np.zeros(len(present), dtype=bool)
        oov = stats["oov_rate"] = float(1.0 - known.mean())
        if ref.oov_rate is not None:
            stats["oov_increase"] = oov - ref.oov_rate
    return stats


# ---------------------------------------------------------------------------------------------- window
class _Window:
    """One version's ring buffer of sampled rows and its sampling state."""

    def __init__(self, handler: ModelHandler, size: int) -> None:
        self.model, self.version = handler.model_name, handler.version
        self.size = size
        self.rows = np.empty((size, handler.n_features), dtype=np.float64)
        self.lock = threading.Lock()
        self.pos = self.filled = 0
        #: rows decoded for this version, and rows copied into the window, since it was loaded
        self.seen = self.observed = 0
        self.every = 1  # sample 1 row in `every`
        self.skip = 0  # rows still to skip before the next sampled one
        self.refs: list[_Reference] | None = None
        self.computed_at = -1  # `observed` when last computed
        self.last: dict[str, Any] | None = None
        self.levels: dict[tuple[str, str], int] = {}
        self.rate_seen = 0  # `seen` at the last sampling adjustment

    def add(self, matrix: np.ndarray) -> None:
        n = len(matrix)
        with self.lock:
            self.seen += n
            skip, every = self.skip, self.every
            if n <= skip:
                self.skip = skip - n
                return
            rows = matrix[skip::every] if every > 1 or skip else matrix
            self.skip = (skip - n) % every
            m = len(rows)
            size = self.size
            if m >= size:
                self.rows[:] = rows[m - size :]
                self.pos = 0
            else:
                end = self.pos + m
                if end <= size:
                    self.rows[self.pos : end] = rows
                else:
                    first = size - self.pos
                    self.rows[self.pos :] = rows[:first]
                    self.rows[: m - first] = rows[first:]
                self.pos = end % size
            self.filled = min(size, self.filled + m)
            self.observed += m

    def snapshot(self) -> np.ndarray:
        with self.lock:
            return self.rows[: self.filled].copy()


# ---------------------------------------------------------------------------------------------- monitor
class DriftMonitor:
    """The windows of every served version (dropped with the version) and the statistics computed from them."""

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        *,
        thresholds: Thresholds | None = None,
        max_rows_per_second: float = 2000.0,
        interval: float = 10.0,
        min_rows: int = MIN_ROWS,
    ) -> None:
        if window < 1:
            raise ValueError(f"drift window must be at least 1 row, got {window}")
        self.window = int(window)
        self.thresholds = thresholds or Thresholds()
        self.max_rows_per_second = float(max_rows_per_second)
        self.interval = float(interval)
        self.min_rows = min(int(min_rows), self.window)
        #: id(handler) -> (weak reference to the handler, its window): a window goes when its version goes
        self._windows: dict[int, tuple[weakref.ref[ModelHandler], _Window]] = {}
        self._create = threading.Lock()
        self._compute = threading.Lock()
        self._labels: set[tuple[str, ...]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the request path
    def observe(self, handler: ModelHandler, matrix: np.ndarray) -> None:
        """Sample a decoded request's rows into its version's window (the only call on the request path)."""
        entry = self._windows.get(id(handler))
        if entry is None or entry[0]() is not handler:
            entry = self._new_window(handler)
        entry[1].add(matrix)

    def _new_window(self, handler: ModelHandler) -> tuple[weakref.ref[ModelHandler], _Window]:
        key = id(handler)
        with self._create:
            entry = self._windows.get(key)
            if entry is None or entry[0]() is not handler:
                windows = self._windows
                entry = (weakref.ref(handler, lambda _: windows.pop(key, None)), _Window(handler, self.window))
                windows[key] = entry
        return entry

    def _window(self, handler: ModelHandler) -> _Window | None:
        entry = self._windows.get(id(handler))
        return entry[1] if entry is not None and entry[0]() is handler else None

    def _live(self) -> list[tuple[ModelHandler, _Window]]:
        found = []
        for ref, window in list(self._windows.values()):
            handler = ref()
            if handler is not None:
                found.append((handler, window))
        return found

    # ------------------------------------------------------------------ off the request path
    def start(self) -> None:
        """Compute every ``interval`` seconds in a daemon thread (gauges and crossings stay current)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh(self.interval)
            except Exception:  # noqa: BLE001 - drift must never take the server down; say so and go on
                log.exception("drift: computing the statistics failed")

    def refresh(self, elapsed: float | None = None) -> None:
        """Recompute the versions that saw new rows, adjust their sampling, drop the gauges of gone versions."""
        windows = self._live()
        for handler, window in windows:
            if elapsed:
                self._adjust_sampling(window, elapsed)
            if window.observed != window.computed_at:
                self.compute(handler, window)
        live = {(w.model, w.version) for _, w in windows}
        with self._compute:
            for labels in [la for la in self._labels if (la[0], la[1]) not in live]:
                self._labels.discard(labels)
                _remove(labels)

    def _adjust_sampling(self, window: _Window, elapsed: float) -> None:
        """1 row in k, k such that at most ``max_rows_per_second`` rows enter the window per second."""
        rate = (window.seen - window.rate_seen) / elapsed
        window.rate_seen = window.seen
        every = max(1, math.ceil(rate / self.max_rows_per_second)) if self.max_rows_per_second > 0 else 1
        with window.lock:
            window.every = every
            window.skip = min(window.skip, every - 1)
        SAMPLING.labels(window.model, window.version).set(1.0 / every)

    def compute(self, handler: ModelHandler, window: _Window) -> dict[str, Any]:
        """A version's report (gauges set, crossings logged) from its window as it is now."""
        with self._compute:
            if window.refs is None:
                window.refs = references(handler)
            observed = window.observed
            rows = window.snapshot()
            judged = len(rows) >= self.min_rows
            features: dict[str, dict[str, Any]] = {}
            crossed = []
            for ref in window.refs:
                stats = feature_stats(ref, rows[:, ref.j])
                features[ref.name] = {"kind": ref.kind, **_training(ref), **stats}
                for statistic, value in stats.items():
                    labels = (window.model, window.version, ref.name, statistic)
                    if value is not None:
                        DRIFT.labels(*labels).set(value)
                        self._labels.add(labels)
                    level = self.thresholds.level(statistic, value) if judged else 0
                    if level:
                        crossed.append(
                            {"feature": ref.name, "statistic": statistic, "value": value, "level": _LEVELS[level]}
                        )
                    self._log_crossing(window, ref.name, statistic, value, level, len(rows))
            WINDOW_ROWS.labels(window.model, window.version).set(len(rows))
            self._labels.add((window.model, window.version))
            window.computed_at = observed
            window.last = {
                "version": window.version,
                "window": window.size,
                "rows_in_window": len(rows),
                "rows_seen": window.seen,
                "rows_observed": observed,
                "sampling_ratio": 1.0 / window.every,
                "min_rows": self.min_rows,
                "judged": judged,
                "thresholds": asdict(self.thresholds),
                "features": features,
                "crossed": crossed,
            }
            return window.last

    def _log_crossing(self, window: _Window, feature: str, statistic: str, value: Any, level: int, rows: int) -> None:
        """One line when a statistic rises to warn or alert, one when it is back below (never per request)."""
        key = (feature, statistic)
        before = window.levels.get(key, 0)
        if level == before:
            return
        window.levels[key] = level
        if level > before:
            log.warning(
                "drift %s: model=%s version=%s feature=%s %s=%.4f over %d rows (thresholds: %s)",
                _LEVELS[level],
                window.model,
                window.version,
                feature,
                statistic,
                value,
                rows,
                self._threshold_text(statistic),
            )
        elif level == 0:
            log.info(
                "drift back to ok: model=%s version=%s feature=%s %s=%s over %d rows",
                window.model,
                window.version,
                feature,
                statistic,
                "null" if value is None else f"{value:.4f}",
                rows,
            )

    def _threshold_text(self, statistic: str) -> str:
        t = self.thresholds
        warn, alert = (t.psi_warn, t.psi_alert) if statistic == "psi" else (t.rate_warn, t.rate_alert)
        return f"warn {warn:g}, alert {alert:g}"

    def report(self, handlers: Iterable[ModelHandler]) -> list[dict[str, Any]]:
        """``GET /models/{model}/drift``: each given version computed now (versions without rows yet: empty)."""
        out = []
        for handler in handlers:
            window = self._window(handler)
            if window is None:
                out.append(self._empty(handler))
            else:
                out.append(self.compute(handler, window))
        return out

    def _empty(self, handler: ModelHandler) -> dict[str, Any]:
        return {
            "version": handler.version,
            "window": self.window,
            "rows_in_window": 0,
            "rows_seen": 0,
            "rows_observed": 0,
            "sampling_ratio": 1.0,
            "min_rows": self.min_rows,
            "judged": False,
            "thresholds": asdict(self.thresholds),
            "features": {},
            "crossed": [],
        }


def _training(ref: _Reference) -> dict[str, Any]:
    """What the window is compared with, for the report."""
    out: dict[str, Any] = {"training_missing_rate": ref.missing_rate}
    if ref.kind == "numeric":
        out["training_range"] = None if ref.low is None else [ref.low, ref.high]
        out["bins"] = None if ref.edges is None else len(ref.edges) + 1
    elif ref.kind == "categorical":
        out["training_oov_rate"] = ref.oov_rate
        out["top_values"] = None if ref.top_codes is None else len(ref.top_codes)
    return out


def _remove(labels: tuple[str, ...]) -> None:
    """Drop a gone version's series (prometheus_client's multiprocess mode cannot remove: they stay there)."""
    try:
        if len(labels) == 2:
            WINDOW_ROWS.remove(*labels)
            SAMPLING.remove(*labels)
        else:
            DRIFT.remove(*labels)
    except (KeyError, ValueError, NotImplementedError):
        pass
