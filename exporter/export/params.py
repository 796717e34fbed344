"""What an export carries from step to step: the run's parameters (:class:`ExportParams`), the prepared data
(:class:`Prepared`) and the evaluation (:class:`Evaluation`). The steps (:mod:`~exporter.export.pipeline`,
:mod:`~exporter.export.metadata`, :mod:`~exporter.export.write`) all import these from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter import features as F
from exporter.models import ExportUnit, ModelSpec, Trained
from exporter.models.base import SideFile

MODES = ("train", "load")
#: seeds go to numpy, torch and xgboost alike: the range all three accept
MAX_SEED = 2**32 - 1


@dataclass
class ExportParams:
    """Everything a run depends on; the notebooks' ``parameters`` cell and the CLI options map onto it."""

    model: str
    mode: str = "train"
    data_path: str | Path | None = None
    rows: int = 20_000
    seed: int = 0
    feature_columns: Sequence[str] | None = None
    checkpoint: str | Path | None = None
    feature_meta: str | Path | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    atol: float | None = None
    artifacts: str | Path = "artifacts"
    version: int | None = None
    progress: bool = True
    #: Triton config.pbtxt: largest batch; KServe manifest: where the artifacts tree will live
    max_batch_size: int = 1024
    storage_uri: str | None = None
    #: the binary label column (default: the schema's ``label``, else ``label``)
    label: str | None = None
    #: feature schema: a JSON file path, a dict or a list (see docs/features.md); None: defaults or inferred
    schema: Any = None
    #: refuse to export (exit 4, nothing written) when the held-out AUC is below this
    min_auc: float | None = None
    #: export under this repository name instead of the model's own (two_tower: NAME and NAME_item)
    model_name: str | None = None
    #: the value of the label column that means 1 when the column holds two other values (``cp``/``yes``)
    positive_class: Any = None
    #: columns left out of the automatically chosen features (a list, or "a,b")
    exclude_columns: Sequence[str] | str | None = None
    #: read ``data_path`` in memory (``off``), streamed in record batches (``on``), or by its size (``auto``)
    streaming: str = "auto"
    #: where the run's notes go (which reading path ran and why, the passes); ``None``: printed on stdout
    log: Callable[[str], None] | None = None
    #: threads training uses (torch intra-op threads, xgboost's nthread); ``None``: xgboost every core, torch one per
    #: 2,048 rows of its batch (:func:`exporter.models.threads.torch_threads`)
    threads: int | None = None
    #: the experiment-tracking run this export is logged to (``run_id``, ``tracking_uri``, ...), recorded in
    #: metadata.json and the model card; set by the caller (exporter.tracking) once the run exists, so the
    #: export itself never needs the tracking library
    tracking: Mapping[str, Any] | None = None
    #: the hyper-parameter search this export's settings won (study, trial number, its params and objective),
    #: recorded in metadata.json
    tuning: Mapping[str, Any] | None = None


@dataclass
class Prepared:
    """Validated parameters, resolved columns and the data split (train / validation / held-out test), before any
    training."""

    spec: ModelSpec
    params: ExportParams
    columns: list[str]
    hparams: dict[str, Any]
    data_source: str
    train: pd.DataFrame
    heldout: pd.DataFrame
    #: prepared matrices (numeric NaN filled, categorical values as embedding rows): what models see
    x_train: np.ndarray
    x_heldout: np.ndarray
    y_train: dict[str, np.ndarray]
    y_heldout: dict[str, np.ndarray]
    #: the fitted feature plan (kinds, fills, vocabularies, statistics) of ``columns``
    features: F.FeaturePlan
    loaded: Trained | None = None
    #: raw FP64 matrices as serving sends them (NaN where missing, IDs, string codes): what the graph takes
    raw_train: np.ndarray | None = None
    raw_heldout: np.ndarray | None = None
    #: model label name -> data column (``--label`` renames ``label``)
    label_columns: dict[str, str] = field(default_factory=dict)
    #: where each column's kind came from (declared, default, inferred, stored), and how the columns were chosen
    origins: dict[str, str] = field(default_factory=dict)
    columns_note: str = ""
    #: the validation rows (early stopping and the best epoch or round); ``heldout``/``x_heldout`` are the test
    #: rows, which only report
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)
    x_valid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    y_valid: dict[str, np.ndarray] = field(default_factory=dict)
    #: how the rows were split (metadata ``training.split``)
    split: dict[str, Any] = field(default_factory=dict)
    #: what the training record of metadata adds or overrides: the engine that trained and the true row counts
    #: when ``train``/``heldout`` are bounded samples of a larger table
    training_record: dict[str, Any] = field(default_factory=dict)
    #: features that carry nothing (unique per row, constant, all empty) or that the model misuses (two_tower: an
    #: item-tower column that differs within one item's rows): ``{"column", "reason", "message"}``
    column_warnings: list[dict[str, str]] = field(default_factory=list)
    #: the label value that was read as 1 (``--positive-class`` or the schema's), None for a 0/1 label
    positive_class: Any = None
    #: a streamed run: what pass 2 re-reads (:class:`exporter.export.streaming.StreamState`); ``None`` in memory
    stream: Any = None
    #: what an engine gathered from the whole table for the model's evaluation (Spark, two_tower: the catalogue
    #: and the evaluated users' pairs; :meth:`~exporter.models.base.ModelSpec.spark_evaluation_inputs`)
    evaluation_inputs: Any = None
    #: metrics an engine computed over every held-out row (Spark): they replace the same names computed on the
    #: driver's test sample (:mod:`exporter.export.spark_metrics`)
    heldout_metrics: dict[str, float] = field(default_factory=dict)
    #: an engine that trains elsewhere (Spark: the session and encoded rows prepared for it):
    #: :func:`exporter.export.pipeline.fit` calls it once, instead of training here; ``None`` for the local engine
    fit_elsewhere: Callable[[Prepared], Trained] | None = None
    #: :attr:`exporter.models.TrainData.on_epoch` for this run's training (``tune`` prunes trials with it)
    on_epoch: Callable[[int, float], None] | None = None
    #: how the data was read: path (in memory / streaming) and why, rows per split, passes, phases (metadata)
    reading: dict[str, Any] = field(default_factory=dict)

    def schema_text(self) -> str:
        """The feature schema as the user should see it before training (kinds, inferred ones marked)."""
        return F.format_schema([f.spec for f in self.features.features], self.origins, note=self.columns_note)

    @property
    def atol(self) -> float:
        return float(self.params.atol if self.params.atol is not None else self.spec.atol)

    def tolerances(self, unit: ExportUnit) -> tuple[float, float]:
        """(atol, rtol) of one graph's parity check: ``--atol`` replaces the absolute term, the relative term is
        the graph's own (0 unless its network computes in float32)."""
        atol = self.params.atol if self.params.atol is not None else (unit.atol if unit.atol is not None else None)
        rtol = unit.rtol if unit.rtol is not None else self.spec.rtol
        return float(atol if atol is not None else self.spec.atol), float(rtol)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    labels: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]
    #: metrics against baselines, with ``warning`` when the model is no better than chance (metadata ``quality``)
    quality: dict[str, Any] = field(default_factory=dict)
    #: what the notebook shows beyond the metrics (each head's kind, retrieval curves)
    details: dict[str, Any] = field(default_factory=dict)
    #: spec part name -> small files written beside that part (two_tower: the item catalogue)
    files: dict[str, list[SideFile]] = field(default_factory=dict)
    #: precision-recall, calibration and feature importance (:mod:`exporter.training.diagnostics`)
    diagnostics: dict[str, Any] = field(default_factory=dict)
