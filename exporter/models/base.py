"""The declarative shape of a model: what it reads, how it trains or loads, what it exports.

A model is one :class:`ModelSpec`. The pipeline (:mod:`exporter.export.pipeline`) knows nothing model
specific: it asks the spec to train or load a :class:`Trained` model, evaluates it with the spec's
metrics and exports every :class:`ExportUnit` the trained model yields (two for the two-tower model)
through one generic ONNX check, parity gate and artifact writer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

BINARY = "binary"
REGRESSION = "regression"
LABEL_KINDS = (BINARY, REGRESSION)


class Progress(Protocol):
    """What a trainer needs from a progress bar (tqdm satisfies it)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> Any: ...


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

    @property
    def output_shape(self) -> list[int]:
        return [-1] if self.output_width is None else [-1, self.output_width]


@dataclass
class Trained:
    """A trained or loaded model, framework objects included, ready to evaluate and export."""

    spec_name: str
    feature_columns: list[str]
    hparams: dict[str, Any]
    #: Per round/epoch: ``{"step": i, "train_loss": ..., "heldout_loss": ...}``.
    history: list[dict[str, float]]
    #: prepared float64 feature matrix -> ``{head: predictions}`` in the units of the labels.
    predict: Callable[[np.ndarray], dict[str, np.ndarray]]
    units: Callable[[], list[ExportUnit]]
    model: Any = None
    #: the fitted feature plan the model was trained with (``None``: a loaded model that stores none)
    features: Any = None


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
    """What a spec's own held-out evaluation returns (see :attr:`ModelSpec.evaluate`)."""

    metrics: dict[str, float]
    #: head -> held-out predictions; ``labels`` holds the matching truth under the same keys
    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    #: further results the notebook and metadata show (per-head kinds, retrieval curves, ...)
    details: dict[str, Any] = field(default_factory=dict)
    #: spec part name (e.g. ``two_tower_item``) -> files written beside that part
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
class ModelSpec:
    """Everything model specific, declared once. Adding a model means adding one such spec."""

    name: str
    description: str
    framework: str
    #: Label columns the trainer needs; ``label`` first for CTR models.
    label_columns: tuple[str, ...]
    default_features: tuple[str, ...]
    default_hparams: Mapping[str, Any]
    #: (X_train, y_train, X_heldout, y_heldout, columns, hparams, seed, progress, feature plan) -> Trained,
    #: X prepared (numeric NaN filled, categorical values replaced by embedding rows)
    train: Callable[..., Trained]
    #: (checkpoint path, feature columns or None, hparams) -> Trained
    load: Callable[..., Trained]
    #: (predictions by head, labels by name) -> metrics
    metrics: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], dict[str, float]]
    #: names of the repository entries this spec writes (two_tower writes two)
    model_names: tuple[str, ...]
    #: total training steps for the progress bar, given hparams and number of training rows
    progress_total: Callable[[Mapping[str, Any], int], int]
    atol: float = 1e-5
    checkpoint_hint: str = "checkpoint.pt written by train mode"
    #: Rebuilds the native predictor of one model name from its version directory (benchmarks).
    native_from_dir: Callable[[str, Path], Callable[[np.ndarray], np.ndarray]] | None = None
    #: The model's notebook (``notebooks/<name>.ipynb``, generated from this).
    notebook: NotebookInfo | None = None
    #: Small hyper-parameters that train in seconds: what the tests and smoke runs use.
    test_hparams: Mapping[str, Any] = field(default_factory=dict)
    #: Rules for hyper-parameters the common table (:data:`exporter.training.hparams.RULES`) does not know.
    hparam_rules: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Largest feature magnitude the framework represents (xgboost: float32); larger values fail before training.
    max_abs_feature: float | None = None
    #: hparams -> the labels a run needs (mmoe: its tasks'); ``None``: :attr:`label_columns`, ``label`` binary
    labels_for: Callable[[Mapping[str, Any]], list[LabelNeed]] | None = None
    #: (frame, feature columns, hparams, column -> schema tower, seed) -> (train rows, held-out rows);
    #: ``None``: the exporter's seeded 80/20 row split
    split: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
    #: (prepared run, trained) -> :class:`Evaluated`; ``None``: ``metrics(predict(x_heldout), y_heldout)``
    evaluate: Callable[[Any, Trained], Evaluated] | None = None

    def label_needs(self, hparams: Mapping[str, Any]) -> list[LabelNeed]:
        """The label columns a run with ``hparams`` needs (the pipeline reads and checks exactly these)."""
        if self.labels_for is not None:
            return list(self.labels_for(hparams))
        return [LabelNeed(c, BINARY if c == "label" else REGRESSION,
                          "the click label" if c == "label" else f"regression label '{c}'") for c in self.label_columns]

    def columns(self, override: Sequence[str] | None) -> list[str]:
        return list(override) if override else list(self.default_features)

    def native_predictor(self, version_dir: str | Path) -> Callable[[np.ndarray], np.ndarray]:
        """The native model of an exported version (``<artifacts>/<model_name>/<version>``), for benchmarks."""
        if self.native_from_dir is None:
            raise NotImplementedError(f"{self.name} cannot rebuild its native model from an artifact")
        version_dir = Path(version_dir)
        return self.native_from_dir(version_dir.parent.name, version_dir)
