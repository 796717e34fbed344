"""One export as an MLflow run: opened before the artifact is written (so metadata.json names it), filled in
after from the written version directories, its models registered.

Everything logged comes from the version directories (metadata.json, the model card, model.onnx, the sample
request), plus what only the live run knows (the training curve, step timings, figures): so
``python -m exporter track VERSION_DIR`` logs a version later, when the store was unreachable at export time.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.tracking import store as S

#: MLflow's limit on a parameter value is larger, but a table of runs stays readable with this
MAX_PARAM_CHARS = 500
#: tags every run carries (``runs`` filters and shows them)
TAG_MODEL = "exporter.model"
TAG_VERSION = "exporter.version"
TAG_KIND = "exporter.kind"


@dataclass
class Extras:
    """What a live export knows beyond its version directories."""

    #: per epoch / boosting round: ``{"step": i, "train_loss": ..., "validation_loss": ...}``
    history: Sequence[Mapping[str, float]] = ()
    #: seconds per step (prepare, fit, evaluate, export, total)
    timings: Mapping[str, float] = field(default_factory=dict)
    #: file name -> matplotlib figure (the notebook's plots)
    figures: Mapping[str, Any] = field(default_factory=dict)
    #: further files to attach (the executed notebook)
    files: Sequence[Path] = ()
    #: further params and tags (a tuning trial's number, the parent run)
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """An open tracking run: where it lives and its id."""

    store: S.Store
    run_id: str
    experiment_id: str
    #: what metadata.json records (``run_id``, ``tracking_uri``, ``experiment``)
    record: dict[str, str]


def start(
    store: S.Store,
    experiment: str,
    model: str,
    artifacts: str | Path,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    kind: str = "export",
) -> Run:
    """Open a run in ``experiment`` for ``model``; raises :class:`TrackingUnavailable` when the store is not
    usable (the caller warns and exports without it)."""
    try:
        with S.bounded_http():
            c = S.client(store)
            exp = S.experiment_id(c, store, experiment)
            tags = {TAG_MODEL: model, TAG_KIND: kind}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            run = c.create_run(exp, run_name=run_name or model, tags=tags)
    except S.TrackingUnavailable:
        raise
    except Exception as exc:
        raise S.TrackingUnavailable(f"tracking store {store.shown()} is not usable: {_one_line(exc)}") from None
    record = {
        "run_id": run.info.run_id,
        "tracking_uri": S.portable_uri(store, artifacts),
        "experiment": experiment,
    }
    return Run(store, run.info.run_id, exp, record)


def ended_status() -> str:
    """How a run ends that did not finish, called while handling its exception: ``KILLED`` when the user stopped it
    (Ctrl-C, SIGTERM), else ``FAILED``; MLflow's UI and ``runs`` tell the two apart."""
    return "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED"


def finish(run: Run, status: str = "FINISHED") -> None:
    """Close ``run`` (``FAILED`` when the export did not happen); a store gone meanwhile is not an error."""
    try:
        with S.bounded_http():
            S.client(run.store).set_terminated(run.run_id, status)
    except Exception:
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# --------------------------------------------------------------------------------------------- what is logged


def _param(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def params_of(meta: Mapping[str, Any]) -> dict[str, str]:
    """Hyper-parameters, the feature schema in short (columns and kinds), data, split, seed and engine."""
    t = meta.get("training") or {}
    out: dict[str, Any] = {f"hp.{k}": v for k, v in (t.get("hyperparameters") or {}).items()}
    features = meta.get("features") or []
    kinds: dict[str, list[str]] = {}
    for f in features:
        if isinstance(f, Mapping):
            kinds.setdefault(str(f.get("kind", "numeric")), []).append(str(f.get("name")))
    stop = t.get("early_stopping") or {}
    if isinstance(stop, Mapping):  # where training stopped and why, to compare runs by (their curves are metrics)
        refit = stop.get("refit")
        out.update(
            {
                "stop.best_epoch": stop.get("best_epoch", stop.get("best_round")),
                "stop.epochs_run": stop.get("epochs_run", stop.get("rounds_run")),
                "stop.reason": stop.get("stopped_because"),
                "stop.refit": refit.get("applied") if isinstance(refit, Mapping) else None,
            }
        )
    out["features.count"] = len(meta.get("feature_columns") or [])
    for kind, names in sorted(kinds.items()):
        out[f"features.{kind}"] = ",".join(names)
    out.update(
        {
            "data.source": t.get("data_source"),
            "data.rows": t.get("rows"),
            "split.train_rows": t.get("train_rows"),
            "split.validation_rows": t.get("validation_rows"),
            "split.test_rows": t.get("test_rows"),
            "seed": t.get("seed"),
            "mode": t.get("mode"),
            "labels": ",".join(map(str, t.get("label_columns") or [])),
            "engine": (meta.get("producer") or {}).get("framework"),
            "engine_version": (meta.get("producer") or {}).get("framework_version"),
        }
    )
    return {k: _param(v) for k, v in out.items() if v is not None and v != ""}


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_ - . : /`` and spaces): ``recall@10`` -> ``recall_at_10``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_of(metas: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Held-out metrics (``heldout.<name>``) and parity (``parity.max_abs_diff``, per part when several)."""
    out: dict[str, float] = {}
    for meta in metas:
        for k, v in ((meta.get("training") or {}).get("metrics") or {}).items():
            if _finite(v):
                out[metric_key(f"heldout.{k}")] = float(v)
    for meta in metas:
        parity = meta.get("parity") or {}
        suffix = "" if len(metas) == 1 else f".{meta.get('name')}"
        for key in ("max_abs_diff", "mean_abs_diff"):
            if _finite(parity.get(key)):
                out[f"parity.{key}{suffix}"] = float(parity[key])
    judged = judged_metric(metas[0])
    if judged is not None:
        out["objective"] = judged[1]
    if len(metas) > 1:  # the worst part, under the same name a one-part run uses
        worst = [out[k] for k in out if k.startswith("parity.max_abs_diff.")]
        out["parity.max_abs_diff"] = max(worst) if worst else math.nan
    return {k: v for k, v in out.items() if math.isfinite(v)}


def judged_metric(meta: Mapping[str, Any]) -> tuple[str, float] | None:
    """The held-out metric the model is judged by (``quality.metric``: AUC, or recall@K for the towers) and its
    value: the ``objective`` metric of a run, what ``tune`` maximises."""
    quality = meta.get("quality") or {}
    key, value = quality.get("metric"), quality.get("value")
    if isinstance(key, str) and isinstance(value, (int, float)) and _finite(value):
        return key, float(value)
    return None


def read_version(directory: Path) -> dict[str, Any]:
    """metadata.json of a version directory, checked as the handler checks it and for what a run is logged from
    (its version, and objects where the logging reads objects), or a clear error naming what is wrong."""
    from exporter.runtime import rules

    path = Path(directory) / "metadata.json"
    try:
        meta = rules.read_metadata(path)
    except rules.MetadataError as exc:
        raise ExporterError(f"{directory}: not an exported version ({exc})") from None
    problems = []
    versions = meta.get("versions")
    if not (isinstance(versions, list) and versions and all(str(v).isdigit() for v in versions)):
        problems.append('"versions" must be a non-empty list of version numbers')
    for key in ("tracking", "training", "quality", "evaluation", "parity"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            problems.append(f'"{key}" must be an object')
    if not isinstance(meta.get("related_models", []), list):
        problems.append('"related_models" must be a list')
    if problems:
        raise ExporterError(f"{path}: not an exported version's metadata: {'; '.join(problems)}")
    return meta


def log_versions(run: Run, directories: Sequence[Path], extras: Extras | None = None) -> list[Any]:
    """Fill ``run`` from the written version directories and register each as a model version; returns the
    registry's model versions. Raises :class:`TrackingUnavailable` when the store fails meanwhile."""
    extras = extras or Extras()
    metas = [read_version(d) for d in directories]
    try:
        with S.bounded_http():
            return _log(run, [Path(d) for d in directories], metas, extras)
    except (S.TrackingUnavailable, ExporterError):
        raise
    except Exception as exc:
        raise S.TrackingUnavailable(f"logging to {run.store.shown()} failed: {_one_line(exc)}") from None


def _log(run: Run, directories: list[Path], metas: list[dict[str, Any]], extras: Extras) -> list[Any]:
    from mlflow.entities import Metric, Param, RunTag

    S.mlflow_module()  # quietened, telemetry off, before the first use
    c = S.client(run.store)
    first = metas[0]
    version = str(first["versions"][-1])
    params = {**params_of(first), **{k: _param(v) for k, v in extras.params.items()}}
    tags = {
        TAG_VERSION: version,
        "exporter.sha256": ",".join(str(m["sha256"]) for m in metas),
        "exporter.parts": ",".join(str(m["name"]) for m in metas),
        "exporter.version_dirs": ",".join(str(d.resolve()) for d in directories),
        "mlflow.runName": f"{first['name']} v{version}",
        **({"exporter.objective": metric_key(judged[0])} if (judged := judged_metric(first)) else {}),
        **extras.tags,
    }
    metrics = [Metric(k, v, 0, 0) for k, v in metrics_of(metas).items()]
    for h in extras.history:
        for key in ("train_loss", "validation_loss"):
            if _finite(h.get(key)):
                metrics.append(Metric(f"curve.{key}", float(h[key]), 0, int(h.get("step", 0))))
    metrics += [Metric(f"seconds.{k}", float(v), 0, 0) for k, v in extras.timings.items() if _finite(v)]
    existing = set(c.get_run(run.run_id).data.params)  # a run logged once already (track after a partial log)
    c.log_batch(
        run.run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in params.items() if k not in existing],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for d, meta in zip(directories, metas, strict=True):
        folder = "version" if len(metas) == 1 else f"version/{meta['name']}"
        for name in ("README.md", "metadata.json", "sample_request.json", "sample_response.json", "report.ipynb"):
            if (d / name).is_file():
                c.log_artifact(run.run_id, str(d / name), folder)
    for f in extras.files:
        c.log_artifact(run.run_id, str(f))
    if extras.figures:
        with tempfile.TemporaryDirectory() as tmp:
            for name, fig in extras.figures.items():
                path = Path(tmp) / name
                fig.savefig(path, dpi=90, bbox_inches="tight")
                c.log_artifact(run.run_id, str(path), "plots")
    registered = []
    from exporter.tracking import onnx_model

    with S.pointed_at(run.store):
        for d, meta in zip(directories, metas, strict=True):
            registered.append(onnx_model.log_and_register(c, run, d, meta))
    return registered
