"""The shape of a model: one class that declares what it reads, how it trains or loads, what it exports.

A model is a subclass of :class:`Model` (torch models: of :class:`exporter.models.torch_base.TorchModel`):
the declarative facts are class attributes (name, repository names, defaults, rules, tolerance, notebook),
the behaviour is methods (:meth:`Model.train` on one :class:`TrainData`, :meth:`Model.load`,
:meth:`Model.export_units`, :meth:`Model.metrics`). The pipeline (:mod:`exporter.export.pipeline`) knows
nothing model specific: it asks the model to train or load a :class:`Trained` model, to evaluate it, and
exports every :class:`ExportUnit` the trained model yields (two for the two-tower model) through one
generic ONNX check, parity gate and artifact writer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:  # the registry imports this module: it stays free of pandas and the frameworks
    from exporter.features import FeaturePlan

BINARY = "binary"
REGRESSION = "regression"
LABEL_KINDS = (BINARY, REGRESSION)


class Progress(Protocol):
    """What a trainer needs from a progress bar (tqdm satisfies it)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(
        self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> Any: ...


@dataclass(frozen=True)
class ExportUnit:
    """One ONNX artifact: a model name in the repository, its tensors and how to check it."""

    model_name: str
    feature_columns: list[str]
    #: ``None`` for a ``[-1]`` output, else the width k of a ``[-1, k]`` output.
    output_width: int | None
    prediction_format: str
    #: *prepared* float64 ``[n, len(feature_columns)]`` (see :mod:`exporter.features`) -> float64 predictions,
    #: computed by the native framework.
    native_predict: Callable[[np.ndarray], np.ndarray]
    #: Builds the ONNX model of the prepared matrix (input ``features``, output ``predictions``, tensor(double));
    #: the pipeline puts the in-graph preprocessing in front of it.
    build_onnx: Callable[[], Any]
    #: Short description of the native reference used by the parity gate.
    reference: str
    framework: str
    framework_version: str
    output_columns: list[str] | None = None
    embed_dim: int | None = None
    #: further metadata.json keys of this artifact (mmoe: ``tasks``)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Writes native files (checkpoint, model.ubj, feature_meta.json) into a version directory.
    write_native_files: Callable[[Path], None] | None = None
    related_models: list[str] = field(default_factory=list)
    #: parity tolerances of this graph (``None``: the model's ``atol``/``rtol``); torch models computing in
    #: float32 set their own (see :class:`Model`)
    atol: float | None = None
    rtol: float | None = None

    @property
    def output_shape(self) -> list[int]:
        return [-1] if self.output_width is None else [-1, self.output_width]


@dataclass
class Trained:
    """A trained or loaded model, framework objects included, ready to evaluate and export."""

    spec_name: str
    feature_columns: list[str]
    hparams: dict[str, Any]
    #: Per round/epoch: ``{"step": i, "train_loss": ..., "validation_loss": ...}`` (the held-out test rows are
    #: never in it: they only report, after training)
    history: list[dict[str, float]]
    #: prepared float64 feature matrix -> ``{head: predictions}`` in the units of the labels.
    predict: Callable[[np.ndarray], dict[str, np.ndarray]]
    units: Callable[[], list[ExportUnit]]
    model: Any = None
    #: the fitted feature plan the model was trained with (``None``: a loaded model that stores none)
    features: Any = None
    #: what the native files store beside the framework object (torch: the network config of the checkpoint;
    #: xgb: the feature-meta), fixed when the model is trained or loaded
    config: Mapping[str, Any] | None = None
    #: how training stopped (metadata ``training.early_stopping``): best step, last step, why, budget, optimiser
    #: steps; empty for a loaded model
    stopping: dict[str, Any] = field(default_factory=dict)
    #: threads training ran on (torch intra-op threads, xgboost's nthread); ``None`` for a loaded model
    threads: int | None = None


@dataclass(frozen=True)
class LabelNeed:
    """One label column a run needs: the model's name for it, its kind, and what it is for (error messages)."""

    name: str
    #: ``binary`` (0/1, checked) or ``regression`` (finite numbers)
    kind: str = BINARY
    #: what the label is for, e.g. "the click label" or "label of task 'rating'"
    role: str = "the label"
    #: ``False``: the model trains without it (two_tower on an interactions table); used when present
    required: bool = True
    #: what to do when the column is missing, added to the error (e.g. how to name other tasks)
    hint: str = ""


@dataclass(frozen=True)
class SideFile:
    """A small file written beside one exported part (e.g. the item catalogue beside the item tower)."""

    name: str
    data: bytes
    #: metadata.json key that records ``{"file", "sha256", **info}``
    metadata_key: str
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Evaluated:
    """What a model's held-out evaluation returns (see :meth:`Model.evaluate`)."""

    metrics: dict[str, float]
    #: head -> held-out predictions; ``labels`` holds the matching truth under the same keys
    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    #: further results the notebook and metadata show (per-head kinds, retrieval curves, ...)
    details: dict[str, Any] = field(default_factory=dict)
    #: the model's part name (e.g. ``two_tower_item``) -> files written beside that part
    files: dict[str, list[SideFile]] = field(default_factory=dict)


@dataclass(frozen=True)
class NotebookInfo:
    """What the generated notebook of a model says about it (``tools/build_notebooks.py`` renders it)."""

    title: str
    #: "a ... model" completing "This notebook trains (or loads) ..."
    what: str
    #: the native framework, as the parity text names it
    native: str
    #: help of the checkpoint_path parameter
    checkpoint: str
    #: (hyper-parameter, comment) pairs that become typed notebook parameters
    knobs: tuple[tuple[str, str], ...]
    #: comment of ``extra_hparams``
    extra: str
    #: what one training step is called ("epoch", "boosting round")
    step: str
    #: markdown above the evaluation plots
    eval_md: str
    #: example ``-p`` overrides for the notebook's intro
    example: str
    note: str = ""
    #: the model has user/item towers (adds user_columns / item_columns parameters)
    towers: bool = False


@dataclass(frozen=True)
class TrainData:
    """Everything a trainer reads, as one value: the prepared split, the run's settings and its progress bar.

    The matrices are *prepared* (numeric NaN filled, categorical values replaced by embedding rows; see
    :mod:`exporter.features`); ``features`` is the fitted plan that prepared them. The validation rows drive
    early stopping and the choice of the best epoch or round; the held-out test rows are not here at all, so
    no trainer can use them for a decision.
    """

    x_train: np.ndarray
    y_train: Mapping[str, np.ndarray]
    x_valid: np.ndarray
    y_valid: Mapping[str, np.ndarray]
    columns: Sequence[str]
    hparams: Mapping[str, Any]
    seed: int
    features: FeaturePlan
    progress: Progress | None = None
    #: threads training may use (``--threads``); ``None``: the model's default (:mod:`exporter.models.threads`)
    threads: int | None = None
    #: called after each epoch with its number and the monitored (validation) loss; a tuner prunes with it (what
    #: it raises stops training and propagates). Trainers without epochs do not call it.
    on_epoch: Callable[[int, float], None] | None = None


#: column -> tower declared for it, computed only for a model that splits by towers (see :meth:`Model.split`)
Towers = Callable[[], Mapping[str, "str | None"]]
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Model(ABC):
    """A model, declared once: facts as class attributes, behaviour as methods. Adding a model means one subclass.

    Instances hold no state (the registry keeps one of each); everything a run produces lives in the
    :class:`Trained` value that :meth:`train` and :meth:`load` return. A subclass that misses a fact or
    one of the abstract methods cannot be instantiated, so an incomplete model fails when it is first
    looked up, not half-way through an export.
    """

    #: the facts every model declares (the others have defaults)
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "name",
        "description",
        "framework",
        "label_columns",
        "default_features",
        "default_hparams",
        "model_names",
    )

    name: ClassVar[str]
    description: ClassVar[str]
    framework: ClassVar[str]
    #: Label columns the trainer needs; ``label`` first for CTR models.
    label_columns: ClassVar[tuple[str, ...]]
    default_features: ClassVar[tuple[str, ...]]
    default_hparams: ClassVar[Mapping[str, Any]]
    #: names of the repository entries this model writes (two_tower writes two)
    model_names: ClassVar[tuple[str, ...]]
    #: what its exported graphs answer (see ``PREDICTION_FORMATS`` in :mod:`exporter.runtime.rules`)
    prediction_format: ClassVar[str] = "scalar"
    #: parity tolerances between the native model and onnxruntime: each output value must satisfy
    #: ``|onnxruntime - native| <= atol + rtol * |native|`` (``--atol`` replaces ``atol``)
    atol: ClassVar[float] = 1e-5
    rtol: ClassVar[float] = 0.0
    checkpoint_hint: ClassVar[str] = "checkpoint.pt written by train mode"
    #: The model's notebook (``notebooks/<name>.ipynb``, generated from this).
    notebook: ClassVar[NotebookInfo | None] = None
    #: Small hyper-parameters that train in seconds: what the tests and smoke runs use.
    test_hparams: ClassVar[Mapping[str, Any]] = _EMPTY
    #: hyper-parameter -> (rule, what is expected) for those the common table
    #: (:data:`exporter.training.hparams.RULES`) does not know; a rule is a rule name of that module or a
    #: callable ``(value, all hparams) -> bool`` that may raise its own :class:`ExporterError`
    hparam_rules: ClassVar[Mapping[str, tuple[Any, str]]] = _EMPTY
    #: what ``python -m exporter tune`` searches: hyper-parameter -> (``"int"``, ``"float"`` or ``"log"``, low,
    #: high), each bound within the parameter's rule (checked by :func:`exporter.training.hparams.check_search_space`)
    tunable: ClassVar[Mapping[str, tuple[str, float, float]]] = _EMPTY
    #: Largest feature magnitude the framework represents (xgboost: float32); larger values fail before training.
    max_abs_feature: ClassVar[float | None] = None

    def check_histories(self, names: Sequence[str]) -> None:
        """Refuse history columns (``names``) this model cannot embed, before any data is read (every model but
        xgb embeds them)."""
        return None

    def column_warnings(
        self, frame: Any, rows: np.ndarray | None, plan: Any, hparams: Mapping[str, Any]
    ) -> list[dict[str, str]]:
        """Warnings (``{"column", "reason", "message"}``) about how this model would use the columns of the
        training rows ``rows`` of ``frame`` (``None``: all of them) under the fitted feature ``plan``, beside those of
        :mod:`exporter.training.column_checks`; none by default (two_tower: item-tower columns that are not
        properties of the item)."""
        return []

    # ------------------------------------------------------------------ what every model implements

    @abstractmethod
    def train(self, data: TrainData) -> Trained:
        """Fit on ``data`` (seeded by ``data.seed``: the same data and seed give the same model)."""
        raise NotImplementedError

    @abstractmethod
    def load(self, path: str | Path, columns: Sequence[str] | None, hparams: Mapping[str, Any]) -> Trained:
        """Read a model saved by this exporter or the native framework (load mode)."""
        raise NotImplementedError

    @abstractmethod
    def export_units(self, trained: Trained) -> list[ExportUnit]:
        """The ONNX artifacts of a trained model (``Trained.units`` calls this)."""
        raise NotImplementedError

    @abstractmethod
    def metrics(self, predictions: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Held-out metrics of predictions by head against labels by name."""
        raise NotImplementedError

    @abstractmethod
    def progress_total(self, hparams: Mapping[str, Any], rows: int) -> int:
        """Total training steps for the progress bar."""
        raise NotImplementedError

    # ------------------------------------------------------------------ what a model may override

    def refit(self, data: TrainData, first: Trained) -> Trained | None:
        """A fresh model fitted on ``data`` (training and validation rows together: :mod:`exporter.training.refit`)
        for as long as the validation rows chose in ``first``; ``None`` when ``first`` chose nothing to replay
        (or the model cannot refit)."""
        return None

    def label_needs(self, hparams: Mapping[str, Any]) -> list[LabelNeed]:
        """The label columns a run with ``hparams`` needs (the pipeline reads and checks exactly these)."""
        return [
            LabelNeed(
                c,
                BINARY if c == "label" else REGRESSION,
                "the click label" if c == "label" else f"regression label '{c}'",
            )
            for c in self.label_columns
        ]

    def split(
        self, frame: Any, columns: Sequence[str], hparams: Mapping[str, Any], towers: Towers, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """(train, validation, test rows, the rule as metadata records it) of ``frame``: the exporter's seeded
        70/10/20 split by a hash of each row's content unless overridden."""
        from exporter.training.data import three_way_split

        return three_way_split(frame, seed=seed)

    def split_keys(
        self, columns: Sequence[str], hparams: Mapping[str, Any], towers: Mapping[str, str | None]
    ) -> list[str] | None:
        """The columns whose hash decides a row's side of the split (:mod:`exporter.training.split`), or ``None``
        for the whole row. A model whose held-out rows must be unseen groups (two_tower: user-item pairs) names
        the group's columns."""
        return None

    def metric_heads(self, trained: Trained) -> list[tuple[str, str, str]]:
        """(prediction head, label name, kind) of each head :meth:`metrics` judges: by default one head per label,
        named as it is (``label`` for the click label)."""
        return [(n.name, n.name, n.kind) for n in self.label_needs(trained.hparams)]

    def spark_evaluation_inputs(
        self,
        df: Any,
        split_column: str,
        columns: Sequence[str],
        hparams: Mapping[str, Any],
        towers: Mapping[str, str | None],
        labels: Mapping[str, str],
        seed: int,
    ) -> Any:
        """What :meth:`evaluate` needs from the whole table when Spark trains (``df``: the rows with their split code
        in ``split_column``), gathered while the session is open; ``None`` when the driver's samples suffice
        (two_tower: its catalogue and the evaluated users' pairs)."""
        return None

    def evaluate(self, prep: Any, trained: Trained) -> Evaluated:
        """Held-out evaluation of a prepared run (empty metrics when a load-mode data file has no labels)."""
        predictions = trained.predict(prep.x_heldout)
        metrics = self.metrics(predictions, prep.y_heldout) if prep.y_heldout else {}
        return Evaluated(metrics, predictions, dict(prep.y_heldout))

    def native_importance(self, trained: Trained) -> tuple[str, dict[str, float]] | None:
        """The model's own feature importance as ``(method, {column: value})`` (XGBoost: gain); ``None``: the
        pipeline measures permutation importance on held-out rows instead."""
        return None

    def native_predictor(self, version_dir: str | Path) -> Callable[[np.ndarray], np.ndarray]:
        """The native model of an exported version (``<artifacts>/<model_name>/<version>``), for benchmarks."""
        raise NotImplementedError(f"{self.name} cannot rebuild its native model from an artifact")

    # ------------------------------------------------------------------ shared

    def __init__(self) -> None:
        missing = [a for a in self.REQUIRED if not hasattr(type(self), a)]
        if missing:
            raise TypeError(f"model class {type(self).__name__} declares no {', '.join(missing)}")

    def trained(
        self,
        columns: list[str],
        hparams: dict[str, Any],
        history: list[dict[str, float]],
        predict: Callable[[np.ndarray], dict[str, np.ndarray]],
        *,
        model: Any,
        features: Any,
        config: Mapping[str, Any] | None,
        stopping: Mapping[str, Any] | None = None,
    ) -> Trained:
        """A :class:`Trained` of this model whose ``units`` are :meth:`export_units` of it."""
        result = Trained(
            self.name,
            columns,
            hparams,
            history,
            predict,
            lambda: self.export_units(result),
            model=model,
            features=features,
            config=config,
            stopping=dict(stopping or {}),
        )
        return result

    def __repr__(self) -> str:
        return f"<model {self.name} ({type(self).__name__})>"


#: The name callers type against (``get_spec`` returns a :class:`Model`).
ModelSpec = Model
