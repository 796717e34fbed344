"""``python -m exporter tune MODEL --trials N``: hyper-parameter search with Optuna, then the best as a version.

The data is prepared once (the same options, split and checks as ``export``); each trial trains with hyper-
parameters drawn by a seeded TPE sampler from the spec's ``tunable`` ranges (or ``--search``), is evaluated on the
validation rows, and maximises there the metric the model is judged by (AUC, or recall@K for the towers); the held-
out test rows report only the chosen trial, so its reported figure is not optimistic. Torch trials report their
validation loss after each epoch, and Optuna's median pruner stops one that falls behind the earlier trials. Each
trial is an MLflow run nested under the tuning run; the study lives in ``optuna.db`` beside the tracking database (a
file of its own: MLflow and Optuna both keep an ``alembic_version`` table, which one file cannot hold twice). The
best trial's model, refit on the training and validation rows as any export is (the trials themselves are not:
the validation rows judge them), is then exported as a normal version, its trial number and parameters in
metadata.json's ``tuning``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.tracking import held_signals as HS
from exporter.tracking import runs as R
from exporter.tracking import store as S
from exporter.tracking import study as ST
from exporter.tracking.session import ExportTracking
from exporter.training import quality_gate as Q

OPTUNA_DB = "optuna.db"
#: complete trials before the median pruner may stop one
PRUNE_STARTUP_TRIALS = 5


@dataclass
class TuneResult:
    study_name: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    metric: str
    trials: int
    export: Any  # exporter.export.pipeline.RunResult
    tracking: ExportTracking
    parent_run_id: str | None


def parse_search(items: list[str]) -> dict[str, tuple[str, float, float]]:
    """``KEY=LOW:HIGH[:int|float|log]`` pairs; the kind defaults to ``int`` for integer bounds, else ``float``."""
    out: dict[str, tuple[str, float, float]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = raw.split(":")
        if not sep or not key.strip() or len(parts) not in (2, 3):
            raise ExporterError(f"--search expects KEY=LOW:HIGH or KEY=LOW:HIGH:int|float|log, got '{item}'")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ExporterError(f"--search {item!r}: LOW and HIGH must be numbers") from None
        if len(parts) == 3:
            kind = parts[2]
        else:
            kind = "int" if low.is_integer() and high.is_integer() and "." not in raw else "float"
        out[key.strip()] = (kind, low, high)
    return out


def storage_uri(artifacts: str | Path, storage: str | None) -> str:
    """The Optuna storage: ``storage``, else ``sqlite:///<artifacts>/../mlruns/optuna.db``."""
    if storage:
        return storage
    directory = S.embedded_dir(artifacts)
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / OPTUNA_DB}"


def default_point(spec: Any, space: Mapping[str, Any], train_rows: int) -> dict[str, Any] | None:
    """The model's defaults as one trial's parameters (``weight_decay: auto`` resolved for ``train_rows``), so
    the first trial of a new study is the untuned model and the search never returns one worse on the validation
    rows; None when a default lies outside its searched range (``--search`` moved it) or is not a number."""
    from exporter.models.torch_common import resolve_weight_decay

    point: dict[str, Any] = {}
    for key, (kind, low, high) in space.items():
        value = spec.default_hparams[key]
        if value == "auto" and hasattr(spec, "weight_decay_scale"):
            value = resolve_weight_decay(value, train_rows, spec.weight_decay_scale)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            return None
        point[key] = int(value) if kind == "int" or isinstance(value, int) else float(value)
    return point


def _suggest(trial: Any, key: str, kind: str, low: float, high: float, default: Any) -> Any:
    if kind == "int" or (isinstance(default, int) and not isinstance(default, bool)):
        return trial.suggest_int(key, int(low), int(high), log=kind == "log")
    return trial.suggest_float(key, float(low), float(high), log=kind == "log")


@dataclass
class Searched:
    """The outcome of :func:`run_search`: the chosen trial's prepared run (its ``params.tuning`` set) and model."""

    prep: Any
    trained: Any
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    metric: str
    trials: int
    study_name: str
    parent: ExportTracking
    parent_run: str | None

    def close(self) -> None:
        """Close the tuning run (the best trial's number, parameters and objective logged)."""
        if self.parent.run is not None:
            best = {"value": self.best_value, "trial": self.best_trial, "params": self.best_params}
            _close_parent(self.parent, best, self.metric, self.trials)


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs, beside its trial count: its time budget, the space on top of the model's own ranges,
    where it is tracked and stored, and where its progress lines go (``tune`` and ``run_search`` take it alike)."""

    timeout: float | None = None
    search: Mapping[str, tuple[str, float, float]] | None = None
    tracking_uri: str | None = None
    tracking_enabled: bool = True
    storage: str | None = None
    study_name: str | None = None
    echo: Callable[[str], None] = print


def check(
    params: Any, trials: Any, timeout: Any, search: Mapping[str, tuple[str, float, float]] | None
) -> dict[str, tuple[str, float, float]]:
    """The search space (the spec's ranges, ``search`` on top), every option checked before any data is read."""
    from exporter.export import pipeline
    from exporter.training import hparams as H

    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 10_000:
        raise ExporterError(f"--trials must be an integer from 1 to 10000, got {trials!r}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ExporterError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    if params.mode != "train":
        raise ExporterError("tune trains models: --mode load has nothing to search")
    spec = pipeline.get_spec(params.model)
    space = dict(spec.tunable)
    space.update(search or {})
    H.check_search_space(spec, space, params.hparams)
    return space


def run_search(prep: Any, *, trials: int, options: SearchOptions = SearchOptions()) -> Searched:
    """The trials on a prepared run, each chosen on the validation rows; the caller evaluates and exports the
    best (``tune`` does; a notebook's own cells do) and then calls :meth:`Searched.close`."""
    import optuna

    from exporter.export import pipeline
    from exporter.export.metadata import split_counts
    from exporter.training import hparams as H

    params, echo = prep.params, options.echo
    space = check(params, trials, options.timeout, options.search)
    spec = prep.spec
    if not len(prep.x_valid):
        raise ExporterError(
            f"tune chooses by the validation rows, and the split of {prep.data_source} left none "
            f"({len(prep.x_train)} training rows): give it more rows"
        )
    model = params.model_name or spec.name
    counts = split_counts(prep)
    data = prep.data_source if prep.data_source == "synthetic" else str(Path(prep.data_source).resolve())
    ident = ST.identity(
        model,
        f"{data} ({counts['train_rows']} training, {counts['validation_rows']} validation rows, seed {params.seed})",
    )
    # Optuna's own warnings print a failed trial's traceback; the search prints one line per trial instead
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study, study_name = ST.open_study(
        options.study_name,
        model,
        storage_uri(params.artifacts, options.storage),
        int(params.seed),
        ident,
        # torch trials report their validation loss after each epoch: one worse than the median of the earlier
        # trials at that epoch stops there (after PRUNE_STARTUP_TRIALS complete trials, from the second epoch)
        optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=1),
    )
    held = f"continues with {len(study.trials)} trial(s)" if study.trials else "is new"
    echo(f"study {study_name} {held} (continue it later with --study {study_name})")
    parent = ExportTracking(params.artifacts, options.tracking_uri, enabled=options.tracking_enabled, kind="tune")
    parent.warm_up()
    parent_run = _open_parent(parent, prep, study_name)
    if not study.trials:  # a new study: the defaults are its first trial (a continued one already has trials)
        start = default_point(spec, space, int(counts["train_rows"]))
        if start is not None:
            study.enqueue_trial(start)
    best: dict[str, Any] = {}
    metric_name: list[str] = []
    failed: list[str] = []

    def objective(trial: Any) -> float:
        chosen = {k: _suggest(trial, k, *space[k], spec.default_hparams[k]) for k in space}
        hp = H.resolve_hparams(spec, {**params.hparams, **chosen})
        H.check_memory(spec.name, hp, prep.features.cardinalities, len(prep.x_train))
        t_prep = dataclasses.replace(prep, hparams=hp)

        def report(epoch: int, loss: float) -> None:
            if math.isfinite(loss):
                trial.report(-loss, epoch)  # the study maximises: the negated validation loss
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation loss {loss:.4f} at epoch {epoch}, worse than the trials' median")

        t_prep.on_epoch = report
        start = time.perf_counter()
        try:
            trained = pipeline.fit(t_prep, refit=False)  # judged on the validation rows: it must not train on them
        except (optuna.TrialPruned, ExporterError) as exc:  # pruned, or its parameters failed: the search goes on
            state = "PRUNED" if isinstance(exc, optuna.TrialPruned) else "FAILED"
            ended = Ended(state, str(exc), time.perf_counter() - start)
            if ended.state == "FAILED":
                failed.append(f"trial {trial.number}: {exc}")
            echo(f"trial {trial.number}: {ended.state.lower()}: {exc}  {_short(chosen)}  ({ended.seconds:.1f}s)")
            _log_trial(parent, parent_run, model, trial.number, hp, {}, None, ended.seconds, None, ended)
            raise
        t_prep.on_epoch = None
        # the validation rows choose; the test rows report only the chosen trial (choosing by them would make
        # the reported figure optimistic)
        validated = t_prep.spec.evaluate(_validation_view(t_prep), trained)
        seconds = time.perf_counter() - start
        quality = Q.assess(validated.metrics, validated.labels)
        value = quality.get("value")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise optuna.TrialPruned(f"no finite validation {quality.get('metric', 'metric')}")
        metric_name[:] = [f"validation {quality.get('metric')}"]
        _log_trial(parent, parent_run, model, trial.number, hp, validated.metrics, trained.history, seconds, value)
        echo(f"trial {trial.number}: {metric_name[0]}={value:.4f}  {_short(chosen)}  ({seconds:.1f}s)")
        if not best or value > best["value"]:
            best.update(value=float(value), trial=trial.number, params=chosen, prep=t_prep, trained=trained)
        return float(value)

    try:
        with HS.held_between_trials() as gate:  # a stop inside Optuna's own records waits for the next trial

            def gated(trial: Any) -> float:
                with gate.trial():
                    return objective(trial)

            study.optimize(gated, n_trials=trials, timeout=options.timeout, catch=(ExporterError,))
        _best_of_study(study, best, objective, echo)
    except BaseException:
        parent.failed()
        raise
    if not best:
        parent.failed()
        why = f" ({len(failed)} failed; {failed[0]})" if failed else ""
        raise ExporterError(
            f"no trial of {study_name} finished with a finite validation metric{why}: nothing to export"
        )
    echo(f"best: trial {best['trial']} {metric_name[0]}={best['value']:.4f}  {_short(best['params'])}")
    b_prep = best["prep"]
    best["trained"] = pipeline.refit_model(b_prep, best["trained"])  # the chosen trial, on training + validation
    b_prep.params = dataclasses.replace(
        params,
        hparams={**params.hparams, **best["params"]},
        tuning={
            "study": study_name,
            "trial": best["trial"],
            "trials": len(study.trials),
            "objective": metric_name[0],
            "value": round(best["value"], 6),
            "params": best["params"],
        },
    )
    return Searched(
        b_prep,
        best["trained"],
        best["trial"],
        best["value"],
        best["params"],
        metric_name[0],
        len(study.trials),
        study_name,
        parent,
        parent_run,
    )


def _best_of_study(study: Any, best: dict[str, Any], objective: Callable[[Any], float], echo: Any) -> None:
    """A continued study's best trial may be an earlier search's, whose model was not kept: its parameters train
    again here, so the export is the study's best (as Optuna's ``study.best_trial`` says), not this search's."""
    import optuna

    top = ST.best_trial(study)
    if top is None or (best and (top.number == best["trial"] or top.value <= best["value"])):
        return
    echo(
        f"the study's best is trial {top.number} of an earlier search ({top.value:.4f}): training its parameters again"
    )
    mine = dict(best)
    best.clear()
    try:
        objective(optuna.trial.FixedTrial(top.params, number=top.number))
    except (ExporterError, ValueError, optuna.TrialPruned) as exc:  # ValueError: a parameter outside this space
        best.update(mine)
        echo(f"trial {top.number} could not be trained again ({exc}); keeping this search's best")


def tune(params: Any, *, trials: int, options: SearchOptions = SearchOptions()) -> TuneResult:
    """Search, then export the best trial (``params``: the export's ExportParams, its ``hparams`` fixed)."""
    from exporter.export import pipeline

    check(params, trials, options.timeout, options.search)
    prep = pipeline.prepare(params)  # every option checked and the data read once, before any trial
    options.echo(prep.schema_text())
    found = run_search(prep, trials=trials, options=options)
    b_prep, trained, parent = found.prep, found.trained, found.parent
    model = params.model_name or prep.spec.name
    tracking = ExportTracking(
        params.artifacts,
        options.tracking_uri,
        enabled=options.tracking_enabled,
        parent_run_id=found.parent_run,
        run_name=f"{model} best (trial {found.best_trial})",
    )
    start = time.perf_counter()
    try:
        evaluation = pipeline.evaluate(b_prep, trained)  # the test rows, for the chosen trial only
        tracking.start(b_prep)
        artifacts = pipeline.export(b_prep, trained, evaluation)
    except BaseException:
        tracking.failed()
        parent.failed()
        raise
    seconds = time.perf_counter() - start
    result = pipeline.RunResult(b_prep, trained, evaluation, artifacts, seconds, {"export": seconds})
    tracking.log(
        [a.path for a in artifacts],
        R.Extras(
            history=trained.history,
            timings={"export": seconds},
            params={"tune.trial": found.best_trial, "tune.study": found.study_name},
        ),
    )
    found.close()
    return TuneResult(
        found.study_name,
        found.best_trial,
        found.best_value,
        found.best_params,
        found.metric,
        found.trials,
        result,
        tracking,
        found.parent_run,
    )


def _validation_view(prep: Any) -> Any:
    """``prep`` with the validation rows in the place of the test rows (and no test rows anywhere), so that a
    model's own evaluation measures the validation rows: two_tower then ranks against the training pairs."""
    return dataclasses.replace(
        prep,
        heldout=prep.validation,
        x_heldout=prep.x_valid,
        y_heldout=prep.y_valid,
        raw_heldout=None,
        validation=prep.validation.iloc[:0],
        x_valid=prep.x_valid[:0],
        y_valid={k: v[:0] for k, v in prep.y_valid.items()},
    )


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _open_parent(parent: ExportTracking, prep: Any, study_name: str) -> str | None:
    """The tuning run the trials nest under (``None`` when tracking is off or the store unreachable)."""
    parent.run_name = f"tune {study_name}"
    parent.start(prep)
    prep.params.tracking = None  # the trials' and the best export's own runs are recorded, not the parent's
    return parent.run.run_id if parent.run is not None else None


@dataclasses.dataclass(frozen=True)
class Ended:
    """A trial that gave no value: ``PRUNED`` (the pruner stopped it) or ``FAILED`` (its parameters failed)."""

    state: str
    reason: str
    seconds: float


def _log_trial(
    parent: ExportTracking,
    parent_run: str | None,
    model: str,
    number: int,
    chosen: Mapping[str, Any],
    validation_metrics: Mapping[str, Any],
    history: Any,
    seconds: float,
    value: float | None,
    ended: Ended | None = None,
) -> None:
    """One trial as a run nested under the tuning run: its parameters, validation metrics, curve, objective; a
    pruned or failed one too (its parameters, tags ``exporter.trial_state`` and ``exporter.trial_reason``; a failed
    one ``FAILED``), so the runs show every point the search tried."""
    if parent_run is None or parent.store is None or parent.run is None:
        return
    from mlflow.entities import Metric, Param

    try:
        trial = R.start(
            parent.store,
            model,
            model,
            parent.artifacts,
            run_name=f"trial {number}",
            parent_run_id=parent_run,
            kind="trial",
        )
        c = S.client(parent.store)
        metrics = [Metric("seconds.fit", seconds, 0, 0)]
        metrics += [Metric("objective", value, 0, 0)] if value is not None else []
        metrics += [
            Metric(R.metric_key(f"validation.{k}"), float(v), 0, 0)
            for k, v in validation_metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        for h in history or []:
            for key in ("train_loss", "validation_loss"):
                v = h.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    metrics.append(Metric(f"curve.{key}", float(v), 0, int(h.get("step", 0))))
        params = [Param(f"hp.{k}", R._param(v)) for k, v in chosen.items()] + [Param("tune.trial", str(number))]
        state = {"exporter.trial_state": ended.state if ended else "COMPLETE"}
        if ended is not None:
            state["exporter.trial_reason"] = ended.reason[:5000]
        with S.bounded_http():
            c.log_batch(trial.run_id, metrics=metrics, params=params)
            c.set_tag(trial.run_id, "exporter.objective", "validation")
            for key, text in state.items():
                c.set_tag(trial.run_id, key, text)
        R.finish(trial, "FAILED" if ended is not None and ended.state == "FAILED" else "FINISHED")
    except Exception as exc:  # the search goes on untracked
        parent.warn(f"warning: tracking: trial {number} not logged: {R._one_line(exc)}")


def _close_parent(parent: ExportTracking, best: Mapping[str, Any], metric: str, trials: int) -> None:
    from mlflow.entities import Metric, Param

    assert parent.run is not None and parent.store is not None
    try:
        with S.bounded_http():
            c = S.client(parent.store)
            c.log_batch(
                parent.run.run_id,
                metrics=[Metric("objective", float(best["value"]), 0, 0), Metric("trials", float(trials), 0, 0)],
                params=[Param("tune.best_trial", str(best["trial"])), Param("tune.objective", metric)]
                + [Param(f"best.{k}", R._param(v)) for k, v in best["params"].items()],
            )
        R.finish(parent.run)
    except Exception as exc:
        parent.warn(f"warning: tracking: the tuning run was not closed: {R._one_line(exc)}")
