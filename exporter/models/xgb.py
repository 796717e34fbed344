"""XGBoost binary CTR classifier.

Converted to an ai.onnx.ml TreeEnsembleClassifier (opset 15; :mod:`exporter.models.xgb_trees`, onnxmltools for
other model shapes), then wrapped so that the graph speaks the contract: ``features`` tensor(double) in,
``predictions`` tensor(double) [-1] out (the click probability). Load mode takes any JSON/UBJ model saved
by ``save_model``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter import contract as C
from exporter.errors import ExporterError
from exporter.features import FeaturePlan
from exporter.models.base import ExportUnit, Model, NotebookInfo, TrainData, Trained
from exporter.models.threads import MAX_THREADS, check_threads, xgboost_threads
from exporter.training.data import DEFAULT_FEATURES, LABEL
from exporter.training.metrics import ctr_metrics

XGB_OPSET = 15
FEATURE_META = "feature_meta.json"
SUPPORTED_OBJECTIVES = ("binary:logistic",)


def native_params(hparams: Mapping[str, Any], *, seed: int, nthread: int) -> dict[str, Any]:
    """``xgb.train``'s parameters for the model's hyper-parameters (every path that boosts natively uses them)."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": int(hparams["max_depth"]),
        "eta": float(hparams["learning_rate"]),
        "subsample": float(hparams["subsample"]),
        "colsample_bytree": float(hparams["colsample_bytree"]),
        "min_child_weight": float(hparams["min_child_weight"]),
        "lambda": float(hparams["reg_lambda"]),
        "seed": seed,
        "nthread": nthread,
    }


class XGBoostModel(Model):
    """The XGBoost CTR classifier as a model: boosted on the prepared matrix, saved as ``model.ubj``."""

    name = "xgb"
    description = "XGBoost binary CTR classifier"
    framework = "xgboost"
    label_columns = (LABEL,)
    default_features = DEFAULT_FEATURES
    default_hparams = {
        # deeper, slower trees with each tree seeing 60 % of the columns and a stronger L2 on leaf weights:
        # +0.006 AUC over depth 6 / eta 0.1 / every column / lambda 1 on four seeded splits of MovieLens-100k,
        # the same AUC on the synthetic click log (docs/benchmark-history.md); early stopping on the validation rows
        # ends boosting long before the budget, with as much patience in learning-rate terms as 50 rounds at eta 0.1
        "n_estimators": 2000,
        "early_stopping_rounds": 100,
        "refit": "auto",
        "max_depth": 8,
        "learning_rate": 0.05,
        "subsample": 0.9,
        "colsample_bytree": 0.6,
        "min_child_weight": 5.0,
        "reg_lambda": 10.0,
        "n_jobs": None,
    }
    model_names = ("xgb",)
    tunable = {
        "max_depth": ("int", 2, 8),
        "min_child_weight": ("log", 0.5, 20.0),
        "learning_rate": ("log", 0.02, 0.3),
        "subsample": ("float", 0.6, 1.0),
        "colsample_bytree": ("float", 0.4, 1.0),
        "reg_lambda": ("log", 0.5, 50.0),
    }
    checkpoint_hint = "an XGBoost model saved as .json or .ubj (Booster.save_model / XGBClassifier.save_model)"
    notebook = NotebookInfo(
        title="XGBoost CTR model → ONNX",
        what="an XGBoost click-through-rate classifier",
        native="XGBoost",
        checkpoint='load mode: an XGBoost model saved as .json or .ubj, e.g. "artifacts/xgb/1/model.ubj"',
        knobs=(
            ("n_estimators", "most boosting rounds (trees); early stopping usually ends sooner"),
            ("early_stopping_rounds", "rounds without a better validation logloss before boosting stops"),
            ("max_depth", "depth of each tree"),
            ("learning_rate", "shrinkage applied to each tree"),
        ),
        extra=(
            'other XGBoost settings, e.g. {"subsample": 0.8}; '
            "known: subsample, colsample_bytree, min_child_weight, reg_lambda, n_jobs"
        ),
        step="boosting round",
        eval_md="ROC curve of the click probability on held-out rows.",
        example="-p rows 50000 -p n_estimators 300 -p max_depth 6",
    )
    test_hparams = {"n_estimators": 40}
    hparam_rules = {
        "n_jobs": (
            lambda value, hparams: value is None or check_threads(value, "hyper-parameter n_jobs of xgb") is not None,
            f"None (the run's threads: --threads, else every core) or a positive integer up to {MAX_THREADS}",
        ),
    }
    max_abs_feature = float(np.finfo(np.float32).max)

    def metrics(self, predictions: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
        return ctr_metrics(predictions, labels)

    def progress_total(self, hparams: Mapping[str, Any], rows: int) -> int:
        return int(hparams["n_estimators"])

    def native_importance(self, trained: Trained) -> tuple[str, dict[str, float]] | None:
        """Average gain of each column's splits (``get_score(importance_type="gain")``), by column name; a column
        no tree splits on has 0."""
        columns = list(trained.feature_columns)
        scores = trained.model.get_score(importance_type="gain")
        by_index = {f"f{i}": c for i, c in enumerate(columns)}  # a booster without feature names says f0, f1, ...
        out = dict.fromkeys(columns, 0.0)
        for key, value in scores.items():
            column = key if key in out else by_index.get(key)
            if column is not None:
                out[column] = float(value)
        return "gain", out

    def check_histories(self, names: Sequence[str]) -> None:
        if names:
            raise ExporterError(
                f"xgb takes no history column ({', '.join(names)}): a tree ensemble has no embedding to pool a list "
                "of item IDs; leave the column out of xgb's features (--exclude-columns), or use deepfm, mmoe or "
                "two_tower, which embed it"
            )

    def train(self, data: TrainData) -> Trained:
        """Boost on the prepared matrix: a categorical column is its embedding row (frequency rank, 0 = OOV)."""
        import xgboost as xgb

        self.check_histories([h["name"] for h in (data.features.histories() if data.features is not None else [])])
        columns = list(data.columns)
        params = self.params(data)
        names = xgboost_names(columns)
        dtrain = xgb.DMatrix(data.x_train, label=data.y_train[LABEL], feature_names=names)
        dvalid = xgb.DMatrix(data.x_valid, label=data.y_valid[LABEL], feature_names=names)
        return self.boost(data, params, dtrain, dvalid)

    def refit(self, data: TrainData, first: Trained) -> Trained | None:
        """Boost afresh on ``data`` (training + validation rows) for exactly ``first``'s best round count, the same
        parameters and seed; ``first``'s training curve and stopping record are kept."""
        import xgboost as xgb

        rounds = int(first.stopping.get("best_round") or 0)
        if rounds < 1:
            return None
        columns = list(data.columns)
        dall = xgb.DMatrix(data.x_train, label=data.y_train[LABEL], feature_names=xgboost_names(columns))
        booster = xgb.train(self.params(data), dall, num_boost_round=rounds, verbose_eval=False)
        if data.progress is not None:
            data.progress.update(rounds)
        again = self._trained(booster, columns, dict(first.hparams), first.history, data.features)
        again.stopping = {**first.stopping, "refit": {"rounds": rounds}}
        again.threads = first.threads
        return again

    def params(self, data: TrainData) -> dict[str, Any]:
        """XGBoost's parameters of a run."""
        hparams = data.hparams
        nthread = xgboost_threads(hparams.get("n_jobs"), data.threads)
        return native_params(hparams, seed=int(data.seed), nthread=nthread)

    def boost(self, data: TrainData, params: Mapping[str, Any], dtrain: Any, dvalid: Any) -> Trained:
        """Boost on prepared DMatrix objects (in memory, or built from streamed batches by
        :mod:`exporter.models.xgb_stream`) with the progress bar, early stopping on the validation rows and the
        training curve."""
        import xgboost as xgb

        hparams, columns, progress = data.hparams, list(data.columns), data.progress
        evals_result: dict[str, dict[str, list[float]]] = {}

        class _Bar(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                if progress is not None:
                    progress.update(1)
                    if epoch % 10 == 0:
                        progress.set_postfix({"validation_logloss": f"{evals_log['validation']['logloss'][-1]:.4f}"})
                return False

        budget = int(hparams["n_estimators"])
        patience = int(hparams.get("early_stopping_rounds", budget))
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=budget,
            evals=[(dtrain, "train"), (dvalid, "validation")],  # the last one decides early stopping
            evals_result=evals_result,
            early_stopping_rounds=patience,
            verbose_eval=False,
            callbacks=[_Bar()],
        )
        history = [
            {"step": i + 1, "train_loss": tr, "validation_loss": va}
            for i, (tr, va) in enumerate(
                zip(evals_result["train"]["logloss"], evals_result["validation"]["logloss"], strict=True)
            )
        ]
        best = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
        booster, stopping = keep_best_round(
            booster, best, columns, evals_result["validation"]["logloss"], budget=budget, patience=patience
        )
        trained = self._trained(booster, columns, dict(hparams), history, data.features)
        trained.stopping = stopping
        trained.threads = int(params["nthread"])
        return trained

    def load(self, path: str | Path, columns: Sequence[str] | None, hparams: Mapping[str, Any]) -> Trained:
        """Any binary:logistic model saved as JSON or UBJ; the columns come from feature-meta or the model."""
        import xgboost as xgb

        path = Path(path)
        if not path.exists():
            raise ExporterError(f"xgboost model file not found: {path}")
        booster = xgb.Booster()
        try:
            booster.load_model(str(path))
        except Exception as exc:  # XGBoostError, or UnicodeDecodeError when its message quotes foreign bytes
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExporterError(
                f"cannot load {path} as an XGBoost model ({first[:200]}); expected a JSON or UBJ file written by "
                "Booster.save_model / XGBClassifier.save_model"
            ) from exc
        config = json.loads(booster.save_config())
        objective = config["learner"]["objective"]["name"]
        if objective not in SUPPORTED_OBJECTIVES:
            raise ExporterError(
                f"xgboost model {path} has objective '{objective}'; the xgb CTR export expects "
                f"{' or '.join(SUPPORTED_OBJECTIVES)}"
            )
        n = booster.num_features()
        stored = list(booster.feature_names) if booster.feature_names else None
        if columns is None:
            # a model this exporter wrote without names (a column named like age<30) has them beside it
            columns = stored or _meta_columns(path.parent / FEATURE_META) or None
            if columns is None:
                raise ExporterError(
                    f"xgboost model {path} stores no feature names: pass --feature-meta with its feature_columns"
                )
        columns = list(columns)
        if len(columns) != n:
            raise ExporterError(
                f"feature-meta lists {len(columns)} columns but xgboost model {path} expects {n} features"
            )
        if stored is not None and stored != columns:
            raise ExporterError(
                f"feature-meta columns {columns} differ from the names stored in xgboost model {path}: {stored}"
            )
        booster.feature_names = xgboost_names(columns)
        used = {"n_estimators": booster.num_boosted_rounds(), "objective": objective, "source_file": str(path)}
        return self._trained(booster, columns, used, [], _plan_beside(path, columns))

    def _trained(
        self,
        booster: Any,
        columns: list[str],
        hparams: dict[str, Any],
        history: list[dict[str, float]],
        features: FeaturePlan | None,
    ) -> Trained:
        native = _native(booster)

        def predict(x: np.ndarray) -> dict[str, np.ndarray]:
            return {LABEL: native(x)}

        # feature_meta.json: the columns, and the plan the model was trained with (or found beside it)
        meta: dict[str, Any] = {"feature_columns": columns}
        if features is not None:
            meta["features"] = features.to_dict()
        return self.trained(columns, hparams, history, predict, model=booster, features=features, config=meta)

    def export_units(self, trained: Trained) -> list[ExportUnit]:
        import xgboost as xgb

        booster, columns, meta = trained.model, trained.feature_columns, trained.config

        def write_native(directory: Path) -> None:
            booster.save_model(str(directory / "model.ubj"))
            (directory / FEATURE_META).write_text(json.dumps(meta, indent=2) + "\n")

        return [
            ExportUnit(
                model_name=self.name,
                feature_columns=columns,
                output_width=None,
                prediction_format=self.prediction_format,
                native_predict=_native(booster),
                build_onnx=lambda: booster_to_onnx(booster, len(columns)),
                reference="xgboost Booster.inplace_predict",
                framework=self.framework,
                framework_version=xgb.__version__,
                write_native_files=write_native,
            )
        ]

    def native_predictor(self, version_dir: str | Path) -> Callable[[np.ndarray], np.ndarray]:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(Path(version_dir) / "model.ubj"))
        columns = list(booster.feature_names or _meta_columns(Path(version_dir) / FEATURE_META))
        plan = _plan_beside(Path(version_dir) / "model.ubj", columns)
        if plan is None:
            return lambda x: np.asarray(booster.inplace_predict(x), dtype=np.float64)
        return lambda x: np.asarray(booster.inplace_predict(plan.prepare(x)), dtype=np.float64)


def keep_best_round(
    booster: Any,
    best: int,
    columns: Sequence[str] | None,
    validation_losses: Sequence[float],
    *,
    budget: int,
    patience: int | None,
) -> tuple[Any, dict[str, Any]]:
    """The booster cut to its best round's trees (rounds ``0..best``; the native model, model.ubj and the ONNX
    graph are then one model) and metadata's ``training.early_stopping`` record; local and Spark boosting both
    end here."""
    rounds = booster.num_boosted_rounds()
    kept = booster[: best + 1]
    kept.feature_names = xgboost_names(columns) if columns is not None else None
    stopping = {
        "monitor": "validation_logloss",
        "best_round": best + 1,
        "best_loss": float(validation_losses[best]) if len(validation_losses) > best else None,
        "rounds_run": rounds,
        "n_estimators": budget,
        "early_stopping_rounds": patience,
        "stopped_because": "early_stopping_rounds" if rounds < budget else "n_estimators",
        "trees_kept": kept.num_boosted_rounds(),
    }
    return kept, stopping


def _native(booster: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The booster's click probability of a prepared float64 matrix."""

    def native(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(np.ascontiguousarray(x, dtype=np.float64)), dtype=np.float64)

    return native


def xgboost_names(columns: Sequence[str]) -> list[str] | None:
    """The feature names a booster stores: the columns, or none at all (XGBoost then says f0, f1, ...) when a
    column's name holds a character XGBoost refuses in one (``[``, ``]``, ``<``: ``age<30``); feature_meta.json
    beside model.ubj names the columns either way."""
    return None if any(c in name for name in columns for c in "[]<") else list(columns)


def _meta_columns(meta_file: Path) -> list[str]:
    """feature_meta.json's columns (for a booster stored without names), or none when it cannot be read."""
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    columns = meta.get("feature_columns") if isinstance(meta, dict) else None
    return [str(c) for c in columns] if isinstance(columns, list) else []


def _plan_beside(path: Path, columns: list[str]) -> FeaturePlan | None:
    """The feature plan of a model this exporter wrote (feature_meta.json beside model.ubj), if any."""
    meta_file = path.parent / FEATURE_META
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("feature_columns") != columns or "features" not in meta:
        return None
    return FeaturePlan.from_dict(meta["features"], source=f"feature-meta file {meta_file}")


def booster_to_onnx(booster: Any, n_features: int) -> Any:
    """The booster as ONNX, wrapped to the contract's double ``features`` -> ``predictions`` [-1].

    The tree ensemble comes from :func:`~exporter.models.xgb_trees.tree_ensemble_node` (the model's JSON read once),
    or, for a model outside its shape, from onnxmltools; both give the same node."""
    from onnx import TensorProto, helper

    from exporter.models.xgb_trees import INPUT, PROBABILITIES, tree_ensemble_node

    ensemble = tree_ensemble_node(booster)
    if ensemble is not None:
        trees, initializers = [ensemble], []
        opsets = {"ai.onnx.ml": 1, "": XGB_OPSET}
        ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", XGB_OPSET)])
    else:
        converted = _onnxmltools_convert(booster, n_features)
        trees, initializers = list(converted.graph.node), list(converted.graph.initializer)
        opsets = {o.domain: o.version for o in converted.opset_import}
        opsets.setdefault("", XGB_OPSET)  # the wrapper's Cast and Gather live in the default domain
        ir_version = converted.ir_version
    nodes = [helper.make_node("Cast", [C.INPUT_NAME], [INPUT], to=TensorProto.FLOAT, name="features_to_float")]
    nodes += trees
    nodes += [
        helper.make_node("Gather", [PROBABILITIES, "positive_class"], ["p_click_f32"], axis=1, name="take_positive"),
        helper.make_node("Cast", ["p_click_f32"], [C.OUTPUT_NAME], to=TensorProto.DOUBLE, name="to_double"),
    ]
    new_graph = helper.make_graph(
        nodes,
        "xgb_ctr",
        [helper.make_tensor_value_info(C.INPUT_NAME, TensorProto.DOUBLE, ["batch", n_features])],
        [helper.make_tensor_value_info(C.OUTPUT_NAME, TensorProto.DOUBLE, ["batch"])],
        initializer=initializers + [helper.make_tensor("positive_class", TensorProto.INT64, [], [1])],
    )
    model = helper.make_model(
        new_graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="exporter",
    )
    model.ir_version = ir_version
    return model


def _onnxmltools_convert(booster: Any, n_features: int) -> Any:
    """onnxmltools' conversion (its ``probabilities`` output is what the wrapper reads)."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    from exporter.models.xgb_trees import INPUT, PROBABILITIES

    anonymous = booster.copy()
    anonymous.feature_names = None  # the converter parses split features as f0, f1, ...
    converted = onnxmltools.convert_xgboost(
        anonymous, initial_types=[(INPUT, FloatTensorType([None, n_features]))], target_opset=XGB_OPSET
    )
    if not any(o.name == PROBABILITIES for o in converted.graph.output):
        raise ExporterError(f"xgb: onnxmltools' graph has no '{PROBABILITIES}' output")
    return converted
