"""The one export path every model shares: prepare -> fit -> evaluate -> export (ONNX, parity, artifact).

Notebooks call the steps one by one (to plot in between); the command line calls :func:`run`.
Nothing here is model specific: that lives in the specs (:mod:`exporter.models`). The steps of ``export``
live beside this module: :mod:`~exporter.export.convert` (ONNX build, parity),
:mod:`~exporter.export.metadata` (metadata.json, sample request) and :mod:`~exporter.export.write`
(repository names, the config clash check, the atomic versions); their public names are re-exported here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter import contract as C
from exporter import features as F
from exporter.errors import ExporterError, ParityError
from exporter.export import kserve, triton
from exporter.export import repository as repo
from exporter.export import streaming as ST
from exporter.export import write as W
from exporter.export.convert import PARITY_MIN_ROWS, ParityResult, build_onnx, check_parity
from exporter.export.metadata import (
    SAMPLE_ROWS,
    build_metadata,
    portable_source,
    repository_root,
    sample_request,
)
from exporter.export.params import MAX_SEED, MODES, Evaluation, ExportParams, Prepared
from exporter.export.write import (
    ExportedArtifact,
    check_config_compatible,
    check_model_name,
    renamed_model_names,
)
from exporter.models import ExportUnit, ModelSpec, TrainData, Trained, get_spec, threads
from exporter.models.base import BINARY
from exporter.training import column_checks as K
from exporter.training import data as D
from exporter.training import diagnostics as DG
from exporter.training import hparams as H
from exporter.training import inputs as I
from exporter.training import quality_gate as Q
from exporter.training import refit as RF

__all__ = [
    "MODES",
    "MAX_SEED",
    "PARITY_MIN_ROWS",
    "SAMPLE_ROWS",
    "ExportParams",
    "Prepared",
    "Evaluation",
    "ParityResult",
    "ExportedArtifact",
    "RunResult",
    "prepare",
    "fit",
    "evaluate",
    "export",
    "run",
    "build_onnx",
    "check_parity",
    "build_metadata",
    "sample_request",
    "portable_source",
    "repository_root",
    "check_model_name",
    "renamed_model_names",
    "check_config_compatible",
]


@dataclass
class RunResult:
    prepared: Prepared
    trained: Trained
    evaluation: Evaluation
    artifacts: list[ExportedArtifact]
    seconds: float
    #: seconds of each step: prepare, fit, evaluate, export
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- prepare


def _check_handoff_params(params: ExportParams) -> None:
    """Options of the Triton config and KServe manifest, checked before any training."""
    triton.check_max_batch_size(params.max_batch_size)
    if params.storage_uri is not None:
        kserve.check_storage_uri(params.storage_uri)


#: largest feature magnitude any model takes (docs/features.md): beyond it a network's arithmetic overflows
#: (a held-out 1e308 made predictions NaN); every row is checked, training and held-out alike
MAX_ABS_FEATURE = 1e20


def _check_range(spec: ModelSpec, x: np.ndarray, columns: Sequence[str], where: str) -> None:
    """Values the model's framework cannot represent (xgboost computes in float32) or that overflow a network's
    arithmetic (beyond :data:`MAX_ABS_FEATURE`) fail here, naming the cell."""
    limit = min(spec.max_abs_feature or MAX_ABS_FEATURE, MAX_ABS_FEATURE)
    if not x.size:
        return
    with np.errstate(invalid="ignore"):
        beyond = np.abs(x) > limit
    if beyond.any():
        row, col = (int(i) for i in np.argwhere(beyond)[0])
        raise ExporterError(
            f"{where}: column '{columns[col]}' row {row + 1}: value {x[row, col]:.6g} is beyond what "
            f"{spec.framework} can represent (|value| <= {limit:.4g}); rescale the column or drop the row"
        )


def _check_two_classes(
    labels: np.ndarray, column: str, parts: Mapping[str, np.ndarray], where: str, *, training: bool
) -> None:
    """A click label with one class trains nothing and makes AUC undefined: say so before any training.

    ``parts``: training, validation and held-out rows; in load mode only the held-out rows are judged."""
    for part, idx in parts.items():
        if part != "held-out" and not training:
            continue
        classes = np.unique(labels[idx])
        if len(classes) < 2:
            value = f"{classes[0]:g}" if len(classes) else "none"
            raise ExporterError(
                f"{where}: the {part} labels '{column}' hold one class (all {value}, {len(idx)} rows): a click "
                f"model needs clicks (1) and non-clicks (0) to {'learn' if part == 'training' else 'be evaluated'}; "
                "use more rows or data with both classes"
            )


def prepare(params: ExportParams) -> Prepared:
    """Check every parameter and input before any training, so mistakes fail fast and clearly."""
    parts: D.Parts = []  # a directory or glob read in memory: its files, so that an error names the file's row
    with D.located_in_files(parts, f"data file {params.data_path}"):
        return _prepare(params, parts)


def _prepare(params: ExportParams, parts: D.Parts) -> Prepared:
    spec = get_spec(params.model)
    if params.mode not in MODES:
        raise ExporterError(f"unknown mode '{params.mode}': expected 'train' or 'load'")
    if params.atol is not None and not (
        isinstance(params.atol, (int, float))
        and not isinstance(params.atol, bool)
        and math.isfinite(params.atol)
        and params.atol >= 0
    ):
        raise ExporterError(f"--atol must be a finite non-negative number, got {params.atol!r}")
    if isinstance(params.seed, bool) or not isinstance(params.seed, int) or not 0 <= params.seed <= MAX_SEED:
        raise ExporterError(f"--seed must be an integer from 0 to {MAX_SEED}, got {params.seed!r}")
    if params.version is not None and C.version_problem(params.version):
        raise ExporterError(str(C.version_problem(params.version)))
    threads.check_threads(params.threads)
    hparams = H.resolve_hparams(spec, params.hparams)
    if params.min_auc is not None and (
        isinstance(params.min_auc, bool) or not isinstance(params.min_auc, (int, float)) or not 0 <= params.min_auc <= 1
    ):
        raise ExporterError(f"min_auc must be a number in [0, 1], got {params.min_auc!r}")
    if params.model_name is not None:
        check_model_name(params.model_name)
    schema = F.load_schema(params.schema, source="schema")
    label_name = params.label or (schema.label if schema is not None else None)
    I.label_map([], label_name)  # a bad --label fails before any loading
    I.positive_param(params.positive_class, schema)  # bad options fail before any loading, too
    I.exclude_param(params.exclude_columns)
    _check_handoff_params(params)
    # before any training: the artifacts tree can take this export (under --model-name's names, if given)
    repo.check_target(Path(params.artifacts), renamed_model_names(spec.model_names, params.model_name), params.version)

    columns: list[str] | None = None
    if params.feature_columns is not None:
        columns = D.validate_feature_columns(params.feature_columns, source="feature_columns")
    if params.feature_meta is not None:
        meta_columns = D.read_feature_meta(params.feature_meta)
        if columns is not None and columns != meta_columns:
            raise ExporterError(
                f"feature_columns {columns} disagree with feature-meta {params.feature_meta}: {meta_columns}"
            )
        columns = meta_columns

    loaded: Trained | None = None
    if params.mode == "load":
        if params.checkpoint is None:
            raise ExporterError(f"load mode needs --checkpoint: {spec.checkpoint_hint}")
        loaded = spec.load(params.checkpoint, columns, hparams)
        columns = loaded.feature_columns
    elif params.checkpoint is not None:
        raise ExporterError("--checkpoint is only used with --mode load")
    # the labels this run needs come from the spec (mmoe: its tasks'; load mode: the loaded model's settings)
    needs = spec.label_needs(loaded.hparams if loaded is not None else hparams)
    labels = I.label_map([n.name for n in needs], label_name)

    started = time.perf_counter()
    reading = ST.choose_reading(params)
    if reading.streaming:
        RF.require_in_memory(hparams, "a streamed run")
        return ST.prepare_streaming(params, spec, hparams, schema, columns, labels, needs, reading)
    if params.data_path is not None:
        ST.log(params, f"data: in memory ({reading.reason})")
        frame, read = D.read_parts(params.data_path)
        parts.extend(read)
        source = str(params.data_path)
    else:
        D.check_rows(params.rows)
        frame = D.synthetic_dataset(params.rows, params.seed)
        source = "synthetic"
        absent = [c for c in (columns or []) if c not in frame.columns]
        if absent:
            raise ExporterError(
                f"columns {', '.join(absent)} are not in the built-in synthetic data "
                f"({', '.join(D.DEFAULT_FEATURES)}): pass --data with a file that has them"
            )
    where = f"data file {params.data_path}" if params.data_path is not None else "synthetic data"
    columns, note, positive = I.choose_features(
        frame, spec.default_features, columns, schema, labels, needs,
        positive_class=params.positive_class, exclude_columns=params.exclude_columns, source=where,
    )  # fmt: skip
    built = F.built_columns(schema)  # history columns built from the log after the split (features/history.py)
    D.check_columns(
        frame,
        [c for c in F.input_columns(columns, list(frame.columns)) if c not in built],
        what="feature",
        source=where,
    )
    clash = sorted(set(columns) & set(labels.values()))
    if clash:
        raise ExporterError(f"column(s) {', '.join(clash)} cannot be both a feature and a label")
    if params.mode == "train":
        I.check_labels(frame, needs, labels, source=where)
    optional = {n.name for n in needs if not n.required}
    labels = {n: c for n, c in labels.items() if n not in optional or c in frame.columns}
    has_labels = all(c in frame.columns for c in labels.values())
    # the seeded 70/10/20 train/validation/test split by row content, or the model's own (two_tower: by
    # user-item pairs, none seen in training); validation drives early stopping, test only reports
    chosen, table = list(columns), frame
    train_idx, valid_idx, held_idx, split_rule = spec.split(
        frame,
        chosen,
        loaded.hparams if loaded is not None else hparams,
        lambda: _towers(table, chosen, schema, loaded),
        params.seed,
    )
    frame = F.add_built_histories(frame, schema, train_idx, source=where)
    # validate the whole table first, so errors name rows as they are in the file
    stored = None
    if loaded is not None:
        stored = loaded.features or I.stored_plan(params.feature_meta)
        if stored is None:  # a model trained elsewhere on plain numbers
            stored = I.numeric_plan(frame, columns, train_idx, source=where)
            note = "a loaded model without a feature plan: every column numeric, missing values passed on as NaN"
    # a run that will refit on training + validation rows fits its vocabularies, fills and scales on them too
    refits = params.mode == "train" and RF.decide(hparams, len(train_idx), len(valid_idx))[0]
    plan_rows = np.sort(np.concatenate([train_idx, valid_idx])) if refits else train_idx
    plan, origins = I.fit_plan(frame, columns, schema, plan_rows, source=where, stored=stored)
    columns = plan.columns  # a history column is max_length tensor columns
    raw = plan.encode(frame, source=where)
    x_all = plan.prepare(raw)
    kinds = {n.name: n.kind for n in needs}
    y_all = I.read_labels(frame, labels, source=where, kinds=kinds, positive=positive) if has_labels else {}
    _check_range(spec, x_all, columns, where)
    for need in needs:  # an optional label (two_tower's positives-only pairs) may hold one class
        if need.kind == BINARY and need.required and need.name in y_all:
            _check_two_classes(
                y_all[need.name],
                labels[need.name],
                {"training": train_idx, "validation": valid_idx, "held-out": held_idx},
                where,
                training=params.mode == "train",
            )
    if loaded is not None:
        hparams = dict(loaded.hparams)
        loaded.features = plan
    else:  # what the hyper-parameters allocate, against the machine's memory, before training
        H.check_memory(spec.name, hparams, plan.cardinalities, len(plan_rows))
    # features that carry nothing (unique per row, constant, all empty), and those the model would misuse (two_tower:
    # an item-tower column that is not a property of the item), are trained on, with a warning
    warnings = []
    if params.mode == "train":
        warnings = K.column_warnings(frame, plan, x_all[plan_rows], plan_rows)
        warnings += spec.column_warnings(frame, plan_rows, plan, hparams)
    prep = Prepared(
        spec,
        params,
        columns,
        hparams,
        source,
        frame.iloc[train_idx].reset_index(drop=True),
        frame.iloc[held_idx].reset_index(drop=True),
        x_all[train_idx],
        x_all[held_idx],
        {k: v[train_idx] for k, v in y_all.items()},
        {k: v[held_idx] for k, v in y_all.items()},
        plan,
        loaded,
        raw[train_idx],
        raw[held_idx],
        labels,
        origins,
        note,
        validation=frame.iloc[valid_idx].reset_index(drop=True),
        x_valid=x_all[valid_idx],
        y_valid={k: v[valid_idx] for k, v in y_all.items()},
        split=split_rule,
        column_warnings=warnings,
        positive_class=positive,
        reading={
            **ST.in_memory_report(reading),
            "rows_read": len(frame),
            "rows": {"train": len(train_idx), "validation": len(valid_idx), "test": len(held_idx)},
        },
    )
    ST.record_phase(prep, "read_and_prepare", time.perf_counter() - started)
    return prep


def _towers(
    frame: pd.DataFrame, columns: Sequence[str], schema: F.Schema | None, loaded: Trained | None
) -> dict[str, str | None]:
    """Column -> tower declared for it (the loaded model's plan, else the schema or the contract's defaults)."""
    if loaded is not None and loaded.features is not None:
        return {f.name: f.spec.tower for f in loaded.features.features}
    specs, _ = F.resolve_specs(frame, columns, schema, I.default_specs())
    return {s.name: s.tower for s in specs}


# --------------------------------------------------------------------------- fit / evaluate


def fit(prep: Prepared, *, refit: bool = True) -> Trained:
    """Train (with a progress bar) or hand back the model that load mode already read; then, unless ``refit`` is
    False (a tuner's trials), :func:`refit_model`."""
    if prep.loaded is not None:
        return prep.loaded
    if prep.stream is not None:
        return _no_refit(ST.fit_streaming(prep), "a streamed run does not refit (it would read the log again)")
    if prep.fit_elsewhere is not None:  # another engine (Spark) prepared this run and trains it
        elsewhere, prep.fit_elsewhere = prep.fit_elsewhere, None
        return _no_refit(elsewhere(prep), "a Spark run does not refit (it would train on the whole log again)")
    started = time.perf_counter()
    total = prep.spec.progress_total(prep.hparams, len(prep.x_train))
    with _bar(prep, total, "train") as bar:
        trained = prep.spec.train(_train_data(prep, bar))
    ST.record_phase(prep, "train", time.perf_counter() - started)
    return refit_model(prep, trained) if refit else trained


def refit_model(prep: Prepared, first: Trained) -> Trained:
    """``first`` trained again on the training and validation rows for as long as the validation rows chose
    (:mod:`exporter.training.refit`, by ``refit`` and the rows); how, or why not, in ``stopping["refit"]``."""
    rows = len(prep.x_train) + len(prep.x_valid)
    wanted, why = RF.decide(prep.hparams, len(prep.x_train), len(prep.x_valid))
    if not wanted:
        return _no_refit(first, why)
    started = time.perf_counter()
    chosen = int(first.stopping.get("best_epoch") or first.stopping.get("best_round") or 0)
    total = prep.spec.progress_total({**prep.hparams, "max_epochs": chosen, "n_estimators": chosen}, rows)
    with _bar(prep, total, "refit") as bar:
        again = prep.spec.refit(RF.combined(_train_data(prep, bar)), first)
    if again is None:
        return _no_refit(first, f"{why}, but the first fit chose no epoch or round to replay")
    seconds = time.perf_counter() - started
    again.stopping["refit"] = RF.done(why, rows, seconds, **again.stopping.get("refit", {}))
    ST.record_phase(prep, "refit", seconds)
    return again


def _no_refit(trained: Trained, why: str) -> Trained:
    if trained.stopping:  # a loaded model has no training record
        trained.stopping["refit"] = RF.not_done(why)
    return trained


def _bar(prep: Prepared, total: int, what: str) -> Any:
    from exporter.training.progress_bar import progress_bar  # tqdm in a terminal, one updating line in a notebook

    return progress_bar(total, f"{what} {prep.spec.name}", enabled=prep.params.progress)


def _train_data(prep: Prepared, bar: Any) -> TrainData:
    return TrainData(  # the held-out test rows stay out: they report, never decide
        x_train=prep.x_train,
        y_train=prep.y_train,
        x_valid=prep.x_valid,
        y_valid=prep.y_valid,
        columns=prep.columns,
        hparams=prep.hparams,
        seed=prep.params.seed,
        features=prep.features,
        progress=bar,
        threads=prep.params.threads,
        on_epoch=prep.on_epoch,
    )


def evaluate(prep: Prepared, trained: Trained) -> Evaluation:
    """Held-out test metrics (empty when a load-mode data file has no labels), as the model evaluates itself, and
    the quality warnings: no better than chance or a constant, or under-trained (from how training stopped)."""
    started = time.perf_counter()
    own = prep.spec.evaluate(prep, trained)
    # computed by the engine over every held-out row: they replace the sample's figures of the same name
    own.metrics.update({k: v for k, v in prep.heldout_metrics.items() if k in own.metrics})
    quality = Q.with_training_warnings(Q.assess(own.metrics, own.labels), trained.stopping)
    evaluation = Evaluation(own.metrics, own.labels, own.predictions, quality, own.details, own.files)
    # precision-recall, calibration, feature importance (the model's own, else permutation on sampled held-out rows)
    evaluation.diagnostics = DG.diagnose(prep, trained, evaluation, prep.spec.native_importance(trained))
    ST.record_phase(prep, "evaluate", time.perf_counter() - started)
    return evaluation


# --------------------------------------------------------------------------- export


def export(prep: Prepared, trained: Trained, evaluation: Evaluation) -> list[ExportedArtifact]:
    """Export every unit; all pass the parity gate and are committed together, or nothing is written."""
    Q.check_min_auc(evaluation.quality, prep.params.min_auc, prep.spec.name)
    original = trained.units()
    units = W.renamed_units(original, prep.params.model_name)
    parts = {u.model_name: o.model_name for u, o in zip(units, original, strict=True)}
    W.check_configs(Path(prep.params.artifacts), units, prep.params.max_batch_size)
    plan = prep.features
    raw_held = prep.raw_heldout if prep.raw_heldout is not None else prep.x_heldout
    raw_train = prep.raw_train if prep.raw_train is not None else prep.x_train
    x_parity, n_synthetic = D.parity_rows(raw_held, raw_train, minimum=PARITY_MIN_ROWS, seed=prep.params.seed)
    # unseen IDs, unknown codes, non-integers, NaN: the OOV paths must agree too
    probes = F.probe_rows(plan, x_parity)
    x_parity, n_probes = np.concatenate([x_parity, probes]), len(probes)
    built: list[tuple[ExportUnit, bytes, ParityResult]] = []
    for unit in units:
        sub = plan.subset(unit.feature_columns)
        atol, rtol = prep.tolerances(unit)
        model_bytes = build_onnx(unit, sub)
        idx = [prep.columns.index(c) for c in unit.feature_columns]
        parity = check_parity(
            unit,
            model_bytes,
            np.ascontiguousarray(x_parity[:, idx]),
            len(x_parity) - n_synthetic - n_probes,
            atol,
            sub,
            rtol=rtol,
        )
        parity.probe_rows = n_probes
        built.append((unit, model_bytes, parity))
    failed = [p for _, _, p in built if not p.passed]
    if failed:
        raise ParityError("parity check failed, nothing was written: " + "; ".join(p.failure() for p in failed))
    return W.write_versions(prep, trained, evaluation, built, parts, raw_held)


def run(
    params: ExportParams,
    echo: Callable[[str], None] | None = None,
    before_export: Callable[[Prepared, Trained, Evaluation], None] | None = None,
    prepared: Callable[[Prepared], None] | None = None,
) -> RunResult:
    """prepare -> fit -> evaluate -> export, each step timed; ``echo`` receives the feature schema before
    training; ``prepared`` is called once every input is checked (tracking warms up there, beside training);
    ``before_export`` once the model is evaluated and before anything is written (the tracking run starts
    there, so metadata.json can name it, and a refused input never opens one)."""
    timings: dict[str, float] = {}
    start = last = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[step], last = now - last, now

    prep = prepare(params)
    lap("prepare")
    if echo is not None:
        echo(prep.schema_text())
    if prepared is not None:
        prepared(prep)
    trained = fit(prep)
    lap("fit")
    evaluation = evaluate(prep, trained)
    lap("evaluate")
    if before_export is not None:
        before_export(prep, trained, evaluation)
        last = time.perf_counter()
    started = time.perf_counter()
    artifacts = export(prep, trained, evaluation)
    ST.record_phase(prep, "export", time.perf_counter() - started)
    lap("export")
    return RunResult(prep, trained, evaluation, artifacts, time.perf_counter() - start, timings)
