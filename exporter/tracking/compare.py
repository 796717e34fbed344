"""Runs side by side: the recent runs of a model as a table (``python -m exporter runs MODEL``, the notebooks'
last cell) and the judged metric across them as a small plot."""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Any

import pandas as pd

from exporter.errors import ExporterError
from exporter.tracking import runs as R
from exporter.tracking import store as S

#: held-out metrics shown per run at most (the judged one first)
MAX_METRICS = 4
#: hyper-parameters shown at most: those that differ between the listed runs first
MAX_PARAMS = 6


def _shown_metric(key: str) -> bool:
    name = key[len("heldout.") :]
    return (
        not (
            name.endswith(("_baseline", "base_rate")) or name.startswith("popularity_") or name in ("users_evaluated",)
        )
        and name != "catalogue_items"
    )


def runs_frame(store: S.Store, model: str, limit: int = 10) -> pd.DataFrame:
    """The ``limit`` most recent runs of ``model`` (its experiment), newest first: run id, start, artifact version,
    kind (export, tune, trial), the hyper-parameters that differ, held-out metrics, parity."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ExporterError(f"--limit must be a positive integer, got {limit!r}")
    if store.sqlite_path is not None and not store.sqlite_path.is_file():  # reading must not create a store
        raise ExporterError(
            f"no tracking store at {store.sqlite_path}: no export was tracked there yet "
            "(give the --artifacts tree the exports wrote, or --tracking-uri)"
        )
    if store.sqlite_path is not None and not _holds_mlflow_tables(store.sqlite_path):  # nor migrate another one
        raise ExporterError(
            f"{store.sqlite_path} is not an MLflow tracking store (it has no MLflow tables); reading runs does not "
            "write them into it: give the --artifacts tree the exports wrote, or --tracking-uri of a store"
        )
    try:
        with S.bounded_http():
            c = S.client(store)
            exp = c.get_experiment_by_name(model)
            found = (
                []
                if exp is None
                else c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
            )
    except S.TrackingUnavailable:
        raise
    except Exception as exc:
        raise S.TrackingUnavailable(f"tracking store {store.shown()} is not usable: {R._one_line(exc)}") from None
    return _frame(found)


def _holds_mlflow_tables(path: Path) -> bool:
    """An SQLite file with MLflow's schema (its ``alembic_version`` and ``experiments`` tables), opened read-only."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return False
    return {"alembic_version", "experiments"} <= names


def _frame(found: list[Any]) -> pd.DataFrame:
    params = [{k[3:]: v for k, v in r.data.params.items() if k.startswith("hp.")} for r in found]
    keys = sorted({k for p in params for k in p})
    # a run without hyper-parameters (a tuning run logs the chosen trial's as best.*) makes no key vary
    varying = [k for k in keys if len({p[k] for p in params if k in p}) > 1]
    shown_params = (varying + [k for k in keys if k not in varying])[:MAX_PARAMS]
    metric_keys: list[str] = []
    for r in found:
        for k in r.data.metrics:
            if k.startswith("heldout.") and _shown_metric(k) and k not in metric_keys:
                metric_keys.append(k)
    judged = next((r.data.tags.get("exporter.objective") for r in found if r.data.tags.get("exporter.objective")), None)
    if judged and f"heldout.{judged}" in metric_keys:
        metric_keys.remove(f"heldout.{judged}")
        metric_keys.insert(0, f"heldout.{judged}")
    metric_keys = metric_keys[:MAX_METRICS]
    records = []
    for r, p in zip(found, params, strict=True):
        start = _dt.datetime.fromtimestamp(r.info.start_time / 1000, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "start (UTC)": start,
            # a trial the pruner stopped ran as it should (FINISHED in MLflow) but gave no value: say so
            "status": "PRUNED" if r.data.tags.get("exporter.trial_state") == "PRUNED" else r.info.status,
            "kind": r.data.tags.get(R.TAG_KIND, ""),
            "version": r.data.tags.get(R.TAG_VERSION, ""),
        }
        row.update({k: p.get(k, "") for k in shown_params})
        row.update({k[len("heldout.") :]: r.data.metrics.get(k) for k in metric_keys})
        row["objective"] = r.data.metrics.get("objective")  # a trial's (and a search's) validation figure
        row["parity_max_diff"] = r.data.metrics.get("parity.max_abs_diff")
        records.append(row)
    frame = pd.DataFrame.from_records(records)
    empty = [c for c in ("objective", "parity_max_diff") if c in frame.columns and frame[c].isna().all()]
    return frame.drop(columns=empty)


def format_table(frame: pd.DataFrame, model: str, store: S.Store) -> str:
    """The table as ``runs`` prints it."""
    if frame.empty:
        return f"no runs of {model} in {store.shown()}"
    shown = frame.copy()
    for col in shown.columns:
        if shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return f"runs of {model} in {store.shown()} (newest first)\n" + shown.to_string(index=False)


def metric_plot(frame: pd.DataFrame, metric: str | None = None) -> Any:
    """The judged metric (the first metric column) of the listed runs, oldest to newest."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.6))  # not pyplot's: a notebook shows the returned figure once, nothing leaks
    ax = fig.add_subplot()
    fixed = {"run_id", "start (UTC)", "status", "kind", "version", "parity_max_diff"}
    numeric = [c for c in frame.columns if c not in fixed and frame[c].dtype.kind == "f"]
    metric = metric or (numeric[0] if numeric else None)
    if metric is None or frame.empty:
        ax.text(0.5, 0.5, "no runs with held-out metrics yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ordered = frame.iloc[::-1]
    labels = [f"v{v}" if v else str(r)[:6] for v, r in zip(ordered["version"], ordered["run_id"], strict=True)]
    ax.plot(range(len(ordered)), ordered[metric].to_numpy(dtype=float), marker="o")
    ax.set_xticks(range(len(ordered)), labels, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} across runs (oldest to newest)", fontsize=10)
    fig.tight_layout()
    return fig
