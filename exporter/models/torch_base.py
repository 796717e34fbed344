"""The base class of torch models: train, load, checkpoint, export units and native predictors, shared.

A torch model subclasses :class:`TorchModel` and declares only what is its own: its facts (class
attributes) and its network (:meth:`~TorchModel.make_config`, :meth:`~TorchModel.build`,
:meth:`~TorchModel.loss`; heads, training tensors and exported parts when the defaults do not fit). Fitting,
checkpoints with ``weights_only=True`` and native predictors are shared here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from exporter.errors import ExporterError
from exporter.features import FeaturePlan
from exporter.models import optimiser as opt
from exporter.models import torch_common as tc
from exporter.models.base import ExportUnit, Model, TrainData, Trained
from exporter.models.threads import torch_threads
from exporter.runtime.rules import MetadataError, read_metadata

CHECKPOINT_NAME = "checkpoint.pt"
#: epochs without a better validation loss before a torch model stops (its best epoch's weights restored)
DEFAULT_PATIENCE = tc.DEFAULT_PATIENCE
#: the training budget and stopping rule every torch model declares among its defaults
TRAINING_DEFAULTS: dict[str, Any] = {"max_epochs": 50, "patience": DEFAULT_PATIENCE, "lr_schedule": "plateau"}
#: the compute dtype inside a checkpoint's config (``float32``/``float64``; absent: float64, the old networks)
DTYPE_KEY = "dtype"
#: the fitted feature plan inside a checkpoint's config (load mode rebuilds the in-graph preprocessing from it)
FEATURES_KEY = "features"

#: the network class of a torch model (its methods receive the network :meth:`TorchModel.build` returns)
NetT = TypeVar("NetT", bound=nn.Module)


@dataclass(frozen=True)
class ServedPart:
    """One exported graph of a torch network (the whole net, or one tower of it)."""

    model_name: str
    module: nn.Module
    feature_columns: list[str]
    #: indices of ``feature_columns`` within the network's full feature list
    column_index: list[int]
    output_width: int | None
    prediction_format: str
    output_columns: list[str] | None = None
    embed_dim: int | None = None
    #: further metadata.json keys of this part (mmoe: ``tasks``)
    metadata: Mapping[str, Any] = field(default_factory=dict)


class TorchModel(Model, Generic[NetT]):
    """A torch model: a network over the prepared features, fitted with Adam, saved as ``checkpoint.pt``.

    Parametrised by its network class (``TorchModel[DeepFM]``), so the hooks see the network's own attributes.
    """

    framework: ClassVar[str] = "torch"
    #: ``weight_decay: auto`` is this divided by the rows trained on (:func:`torch_common.resolve_weight_decay`)
    weight_decay_scale: ClassVar[float] = 20.0
    #: parity of a network computing in float32: float32 rounding (~1e-7 relative per operation, summed over
    #: a layer) differs between torch's and onnxruntime's kernels; FP64 networks keep :attr:`Model.atol` alone
    fp32_atol: ClassVar[float] = 1e-5
    fp32_rtol: ClassVar[float] = 1e-4

    # ------------------------------------------------------------------ what a torch model declares

    @abstractmethod
    def make_config(self, data: TrainData) -> dict[str, Any]:
        """The JSON-able architecture config (incl. fitted target statistics and each categorical column's
        embedding rows); it is stored in the checkpoint and :meth:`build` rebuilds the network from it."""
        raise NotImplementedError

    @abstractmethod
    def build(self, config: Mapping[str, Any]) -> NetT:
        """The network of ``config``; it reads prepared features and holds its standardisation and embeddings."""
        raise NotImplementedError

    @abstractmethod
    def loss(self, net: NetT, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scalar loss of one batch of the :meth:`training_tensors`."""
        raise NotImplementedError

    def fit_scalers(self, net: NetT, x: np.ndarray) -> None:
        """Fit the network's standardisation on the training matrix, in place (by default its ``fields``)."""
        fields = getattr(net, "fields", None)
        if not isinstance(fields, tc.FieldInput):
            raise TypeError(
                f"{type(net).__name__} has no FieldInput 'fields'; model {self.name} must override fit_scalers"
            )
        fields.fit(x)

    def training_tensors(
        self, config: Mapping[str, Any], x: np.ndarray, y: Mapping[str, np.ndarray]
    ) -> list[torch.Tensor]:
        """The training tensors: the features, then one target per label column (mmoe: per task; two_tower
        keeps only positive pairs and adds item identities)."""
        return [torch.from_numpy(x), *(label_tensor(y, c) for c in self.label_columns)]

    def log_counter(self, config: Mapping[str, Any]) -> Any | None:
        """What a streamed or distributed fit must count over every training row before it trains, as an object
        with ``add(x, y)`` (None: nothing; two_tower's softmax counts the positives per item)."""
        return None

    def kept_rows(self, config: Mapping[str, Any], y: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """Which rows of a block :meth:`training_tensors` trains on, as a mask (None: every row). A distributed fit
        batches the kept rows, so ``batch_size`` means what it means on one machine (two_tower: positive pairs)."""
        return None

    def block_tensors(
        self, config: Mapping[str, Any], x: np.ndarray, y: Mapping[str, np.ndarray], counter: Any | None
    ) -> list[torch.Tensor]:
        """The training tensors of one block of a streamed or distributed fit, given :meth:`log_counter`'s
        counts over the whole log (by default the block's :meth:`training_tensors`)."""
        return self.training_tensors(config, x, y)

    def heads(self, net: NetT, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """label column -> prediction of a float64 feature tensor."""
        return {self.label_columns[0]: net(x)}

    def parts(self, net: NetT, config: Mapping[str, Any], columns: list[str]) -> list[ServedPart]:
        """The exported graphs: by default the whole network under the model's name."""
        return [ServedPart(self.name, net, columns, list(range(len(columns))), None, self.prediction_format)]

    # ------------------------------------------------------------------ shared

    def progress_total(self, hparams: Mapping[str, Any], rows: int) -> int:
        batch = tc.effective_batch_size(int(hparams["batch_size"]), rows)
        return max_epochs(hparams) * tc.steps_per_epoch(rows, batch)

    def train(self, data: TrainData) -> Trained:
        return self._fit(data)

    def refit(self, data: TrainData, first: Trained) -> Trained | None:
        """The network trained afresh on ``data`` (training + validation rows) for ``first``'s best epoch count,
        at the learning rate each of those epochs had, with the same seed and settings; ``first``'s training curve
        and stopping record are kept (the refit has no validation rows to draw)."""
        epochs = int(first.stopping.get("best_epoch") or 0)
        if epochs < 1:
            return None
        rates = [float(p["learning_rate"]) for p in first.history if p.get("step", 0) >= 1][:epochs]
        again = self._fit(
            replace(data, hparams={**data.hparams, "max_epochs": epochs, "patience": 0}), learning_rates=rates
        )
        again.hparams = dict(first.hparams)
        again.history = first.history
        again.stopping = {
            **first.stopping,
            "refit": {
                "epochs": epochs,
                "optimiser_steps": again.stopping.get("optimiser_steps"),
                "weight_decay": again.stopping.get("weight_decay"),
            },
        }
        return again

    def _fit(self, data: TrainData, learning_rates: Sequence[float] = ()) -> Trained:
        hparams, seed = data.hparams, data.seed
        batch = tc.effective_batch_size(int(hparams["batch_size"]), len(data.x_train))
        threads = torch_threads(data.threads, batch)
        tc.seed_everything(seed)
        columns = list(data.columns)
        config = self.make_config(data)
        config[FEATURES_KEY] = data.features.to_dict()
        # a model without the ``dtype`` hyper-parameter computes in float64 (its network may not cast its input)
        config[DTYPE_KEY] = str(hparams.get("dtype", tc.LEGACY_DTYPE))
        dtype = tc.compute_dtype(config[DTYPE_KEY])
        net = tc.set_compute_dtype(self.build(config), dtype)
        self.fit_scalers(net, data.x_train)
        train = targets_as(self.training_tensors(config, data.x_train, data.y_train), dtype)
        settings = tc.LoopSettings.of(hparams, rows=len(train[0]), decay_scale=self.weight_decay_scale)
        fitted = tc.fit_loop(
            model=net,
            loss_fn=self.loss,
            train_tensors=train,
            validation_tensors=targets_as(self.training_tensors(config, data.x_valid, data.y_valid), dtype),
            seed=seed,
            progress=data.progress,
            threads=threads,
            on_epoch=data.on_epoch,
            **asdict(replace(settings, learning_rates=tuple(learning_rates))),
        )
        trained = self._trained(net, config, columns, dict(hparams), fitted.history, data.features)
        trained.stopping = fitted.stopping
        trained.threads = threads
        return trained

    def load(self, path: str | Path, columns: Sequence[str] | None, hparams: Mapping[str, Any]) -> Trained:
        ckpt = tc.load_checkpoint(path, model_type=self.name)
        cols = tc.checkpoint_columns(ckpt, columns, path=path)
        dtype_name = ckpt["config"].get(DTYPE_KEY, tc.LEGACY_DTYPE)
        try:
            dtype = tc.compute_dtype(dtype_name)
        except ExporterError as exc:
            raise ExporterError(f"checkpoint {path}: {exc}") from exc
        try:
            net = tc.set_compute_dtype(self.build(ckpt["config"]), dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise ExporterError(f"checkpoint {path} has an unusable {self.name} config: {exc!r}") from exc
        tc.restore_state(net, ckpt["state_dict"], path=path)
        # a checkpoint trained before the optimiser flushed denormals may hold some: they would slow every
        # product they enter, in the parity probe and in serving; zeroing them moves no output it can represent
        opt.flush_denormals(net.state_dict().values())
        used = dict(ckpt.get("hparams") or {})
        used["dtype"] = dtype_name  # what the loaded network computes in (older checkpoints: float64)
        used["source_file"] = str(path)
        stored = ckpt["config"].get(FEATURES_KEY)
        plan = FeaturePlan.from_dict(stored, source=f"checkpoint {path}") if stored is not None else None
        if plan is not None:
            if len(plan.features) != len(cols):
                raise ExporterError(
                    f"checkpoint {path} stores a feature plan of {len(plan.features)} columns "
                    f"for {len(cols)} feature columns"
                )
            plan = FeaturePlan(
                [
                    f if f.history else replace(f, spec=replace(f.spec, name=c))  # a history names its columns
                    for f, c in zip(plan.features, cols, strict=True)
                ]
            )
        return self._trained(net, ckpt["config"], cols, used, [], plan)

    def _trained(
        self,
        net: NetT,
        config: Mapping[str, Any],
        columns: list[str],
        hparams: dict[str, Any],
        history: list[dict[str, float]],
        features: FeaturePlan | None,
    ) -> Trained:
        net.eval()

        def predict(x: np.ndarray) -> dict[str, np.ndarray]:
            return dict(tc.in_chunks(lambda t: self.heads(net, t), x))

        return self.trained(columns, hparams, history, predict, model=net, features=features, config=config)

    def export_units(self, trained: Trained) -> list[ExportUnit]:
        net, config, columns, hparams = trained.model, trained.config or {}, trained.feature_columns, trained.hparams

        def write_checkpoint(directory: Path) -> None:
            tc.save_checkpoint(
                directory / CHECKPOINT_NAME,
                model_type=self.name,
                config=config,
                feature_columns=columns,
                hparams=hparams,
                module=net,
            )

        parts = self.parts(net, config, columns)
        names = [p.model_name for p in parts]
        fp32 = config.get(DTYPE_KEY, tc.LEGACY_DTYPE) == "float32"
        served = [tc.Float64Output(p.module).eval() for p in parts]
        return [
            ExportUnit(
                model_name=p.model_name,
                feature_columns=p.feature_columns,
                output_width=p.output_width,
                prediction_format=p.prediction_format,
                native_predict=tc.eager_predictor(module),
                build_onnx=partial(tc.export_onnx, module, len(p.feature_columns)),
                reference="torch eager (inference_mode)",
                framework="torch",
                framework_version=tc.torch_version(),
                output_columns=p.output_columns,
                embed_dim=p.embed_dim,
                metadata=dict(p.metadata),
                # the first part carries the checkpoint; towers share one network
                write_native_files=write_checkpoint if i == 0 else None,
                related_models=[n for n in names if n != p.model_name],
                atol=self.fp32_atol if fp32 else self.atol,
                rtol=self.fp32_rtol if fp32 else self.rtol,
            )
            for i, (p, module) in enumerate(zip(parts, served, strict=True))
        ]

    def native_predictor(self, version_dir: str | Path) -> Callable[[np.ndarray], np.ndarray]:
        """Rebuild the eager module of an exported version from the checkpoint of its network.

        The predictor takes the raw FP64 features (as the ONNX graph does) and prepares them with the
        checkpoint's feature plan (the numpy twin of the graph's preprocessing).
        """
        version_dir = Path(version_dir)
        ckpt_path = version_dir / CHECKPOINT_NAME
        if not ckpt_path.exists():  # a tower without its own checkpoint: the first part has it
            related = _related_first(version_dir)
            ckpt_path = version_dir.parent.parent / related / version_dir.name / CHECKPOINT_NAME
        trained = self.load(ckpt_path, None, {})
        part = _model_part(
            version_dir, version_dir.parent.name
        )  # the model's own name of a part exported under another
        unit = next(u for u in trained.units() if u.model_name == part)
        plan = trained.features.subset(unit.feature_columns) if trained.features is not None else None
        native = unit.native_predict
        return (lambda x: native(plan.prepare(x))) if plan is not None else native


def _version_metadata(version_dir: Path) -> dict[str, Any]:
    """The checked ``metadata.json`` of an exported version (exit 2 naming the file when it is unusable)."""
    try:
        return read_metadata(version_dir)
    except MetadataError as exc:
        raise ExporterError(str(exc)) from exc


def _related_first(version_dir: Path) -> str:
    """The model name that holds the checkpoint of a tower's network (the first of its related models)."""
    meta = _version_metadata(version_dir)
    related = list(meta.get("related_models") or [])
    return related[0] if related else version_dir.parent.name


def _model_part(version_dir: Path, model_name: str) -> str:
    meta = _version_metadata(version_dir)
    return str(meta.get("model_part") or model_name)


max_epochs = tc.max_epochs


def targets_as(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """The features stay float64 (:class:`~exporter.models.torch_common.FieldInput` reads them); floating
    targets follow the network's compute dtype, so losses compare like with like."""
    return [tensors[0], *(t.to(dtype) if t.is_floating_point() else t for t in tensors[1:])]


def label_tensor(y: Mapping[str, np.ndarray], name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y[name], dtype=np.float64))
