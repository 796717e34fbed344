"""Pieces every torch model shares: in-graph standardisation, the training loop, checkpoints, ONNX export.

A network reads the *prepared* float64 matrix (numeric NaN filled, categorical values replaced by embedding
rows: :mod:`exporter.features`); :class:`FieldInput` standardises the numeric fields with statistics fitted on
training data and embeds the categorical ones, so the exported graph (preprocessing in front, see
:mod:`exporter.features.onnx_prep`) carries all of it and its tensors are exactly the contract's.
Networks compute in float32 by default (hyper-parameter ``dtype``; ``float64`` keeps the old end-to-end FP64):
the graph's tensors stay FP64 as the contract says. :class:`FieldInput` standardises numeric fields and reads
categorical row indices in float64 (exact beyond float32's 2^24), then casts to the compute dtype;
:class:`Float64Output` casts what a served network answers back to float64. Regression heads de-standardise in
float64, so outputs in the hundreds (watch_time, gmv) carry only the float32 error of their standardised value;
the parity gate compares with ``atol + rtol * |native|`` (:mod:`exporter.export.convert`).

Why this module is long: the layers, the training loop with its early stopping, checkpoints and the ONNX
export are what every torch model shares; split apart they would import each other.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from exporter import contract as C
from exporter.errors import ExporterError
from exporter.models import history_pool as HP
from exporter.models import optimiser as opt
from exporter.models import weight_average as wa
from exporter.models.base import Progress
from exporter.models.threads import available_cores

if TYPE_CHECKING:
    import onnx

CHECKPOINT_FORMAT = "exporter.torch-checkpoint/1"
TORCH_OPSET = 18
#: hyper-parameter ``dtype`` -> the torch dtype a network trains and computes in
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_DTYPE = "float32"
#: what a checkpoint without ``dtype`` in its config computed in (every checkpoint before float32 training)
LEGACY_DTYPE = "float64"
#: the dtype of the graph's tensors and of the prepared matrix (contract section 1)
IO_DTYPE = torch.float64
#: key prefix of the per-node source metadata torch's ONNX exporter writes (see :func:`strip_source_metadata`)
TORCH_SOURCE_METADATA = "pkg.torch.onnx."
#: the network a training loop fits (its loss function receives it as it is)
ModuleT = TypeVar("ModuleT", bound=nn.Module)


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on training rows; constant columns pass through."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("std", torch.ones(n_features, dtype=torch.float64))

    def fit(self, x: np.ndarray) -> Standardize:
        if x.shape[1] == 0:
            return self
        std = x.std(axis=0)
        self.mean.copy_(torch.from_numpy(x.mean(axis=0)))
        self.std.copy_(torch.from_numpy(np.where(std > 1e-12, std, 1.0)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FieldInput(nn.Module):
    """The prepared feature matrix -> standardised numeric fields and one embedding per categorical field.

    ``cardinalities[j]`` is 0 for a numeric column and the number of embedding rows (OOV row 0 included) of a
    categorical one; the prepared matrix holds row indices in those columns (see :mod:`exporter.features`).
    All categorical fields share one table with per-field offsets, so a lookup is one Gather in the graph.
    Each field's OOV row starts at zero: a model never trained on it (no rare values) answers neutrally.

    ``histories`` (:meth:`exporter.features.FeaturePlan.histories`) are lists of item IDs: each becomes one
    more field, the masked mean of its items' embeddings (padding -1 masked; an empty history gives zeros),
    and with ``attention`` a second one when the candidate item (the categorical column whose vocabulary the
    history shares, ``target``) is a field here: target attention over the history (DIN), the candidate's
    embedding scoring each item. A history sharing a field's vocabulary shares its embedding rows too.
    """

    num_idx: torch.Tensor
    cat_idx: torch.Tensor
    offsets: torch.Tensor

    def __init__(
        self,
        cardinalities: Sequence[int],
        embed_dim: int,
        histories: Sequence[Mapping[str, Any]] = (),
        attention: bool = False,
    ) -> None:
        super().__init__()
        cards = [int(c) for c in cardinalities]
        in_history = {int(j) for h in histories for j in h["columns"]}
        num = [j for j, c in enumerate(cards) if c == 0 and j not in in_history]
        cat = [j for j, c in enumerate(cards) if c > 0 and j not in in_history]
        self.n_num, self.n_cat, self.embed_dim = len(num), len(cat), int(embed_dim)
        offsets = (
            np.concatenate([[0], np.cumsum([cards[j] for j in cat])[:-1]]).astype(np.int64)
            if cat
            else np.zeros(0, np.int64)
        )
        size = sum(cards[j] for j in cat)
        self.register_buffer("num_idx", torch.tensor(num, dtype=torch.long))
        self.register_buffer("cat_idx", torch.tensor(cat, dtype=torch.long))
        self.register_buffer("offsets", torch.from_numpy(offsets))
        specs, own_offsets, size = HP.layout(histories, cards, cat, offsets, size, attention)
        self.scaler = Standardize(len(num))
        self.embedding = nn.Embedding(max(1, size), self.embed_dim)
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 0.05)
            self.embedding.weight[self.offsets] = 0.0
            for offset in own_offsets:
                self.embedding.weight[offset] = 0.0
        #: the history fields (none for a model without history columns: its state is as before them)
        self.pool = HP.HistoryPool(specs, self.embed_dim)
        self.n_hist = self.pool.n_fields

    @property
    def width(self) -> int:
        """Width of :meth:`forward`'s output: numeric fields plus the flattened embeddings."""
        return self.n_num + (self.n_cat + self.n_hist) * self.embed_dim

    def fit(self, x: np.ndarray) -> None:
        """Fit the numeric standardisation on prepared training rows."""
        if self.n_num:
            self.scaler.fit(x[:, self.num_idx.numpy()])

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the embedding table (the network's parameters)."""
        return self.embedding.weight.dtype

    def numeric(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised in float64 (the statistics stay float64), then cast to the compute dtype."""
        return self.scaler(x[:, self.num_idx]).to(self.dtype)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_cat] rows of the shared table (row indices plus each field's offset)."""
        return x[:, self.cat_idx].to(torch.long) + self.offsets

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_cat, embed_dim]."""
        return self.embedding(self.rows(x))

    def history(self, x: torch.Tensor, fields: torch.Tensor | None = None) -> torch.Tensor | None:
        """[B, n_hist, embed_dim] history fields (:class:`~exporter.models.history_pool.HistoryPool`), or None."""
        if self.n_hist and fields is None and self.n_cat:
            fields = self.embed(x)
        return self.pool(x, self.embedding, fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.n_num:
            parts.append(self.numeric(x))
        fields = self.embed(x) if self.n_cat else None
        if fields is not None:
            parts.append(fields.flatten(1))
        pooled = self.history(x, fields)
        if pooled is not None:
            parts.append(pooled.flatten(1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class Float64Output(nn.Module):
    """A served network whose answer is cast to float64: the graph's ``predictions`` are FP64 whatever the
    network computes in (its input is the FP64 prepared matrix already)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).to(IO_DTYPE)


def compute_dtype(name: str) -> torch.dtype:
    """The torch dtype of the hyper-parameter ``dtype`` (``float32`` or ``float64``)."""
    if name not in DTYPES:
        raise ExporterError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def set_compute_dtype(module: ModuleT, dtype: torch.dtype) -> ModuleT:
    """Cast the parameters (not the buffers) to ``dtype``, in place.

    Buffers keep their own dtypes: the standardisation statistics and regression target statistics stay
    float64 (the inputs are standardised and the outputs de-standardised in float64), indices stay integers.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.data = p.data.to(dtype)
    return module


def mlp(sizes: Sequence[int], *, final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


#: an epoch has at least this many optimiser steps: on a small table the batch shrinks (down to MIN_BATCH)
MIN_STEPS_PER_EPOCH = 20
MIN_BATCH = 16
#: ``lr_schedule: plateau`` multiplies the learning rate by this after an epoch without a better validation loss
PLATEAU_FACTOR = 0.5
STOP_PATIENCE = "patience"
STOP_MAX_EPOCHS = "max_epochs"


#: epochs without a lower validation loss before training stops, when a model's hyper-parameters do not say
DEFAULT_PATIENCE = 3
#: the torch models' default ``ema_decay``: their weights are averaged (:mod:`exporter.models.weight_average`)
DEFAULT_EMA_DECAY = wa.DEFAULT_DECAY
#: ``weight_decay: auto`` never exceeds this (a few hundred rows would otherwise pin every weight to zero)
AUTO_WEIGHT_DECAY_CAP = 1e-3


def resolve_weight_decay(value: Any, rows: int, scale: float) -> float:
    """The L2 coefficient of a run: a number as given; ``auto``: ``scale / rows`` (at most
    :data:`AUTO_WEIGHT_DECAY_CAP`), with ``rows`` the rows (or positive pairs) trained on.

    The loss is a mean over the training rows, so a penalty of fixed strength (a prior on the weights, above all
    on the ID embeddings that overfit) must shrink as 1 / rows: measured for deepfm, 3e-4 was best on 70,000
    MovieLens rows and 3e-5 on 700,000 synthetic ones (and each cost AUC on the other table).
    """
    if value == "auto":
        return min(AUTO_WEIGHT_DECAY_CAP, float(scale) / max(int(rows), 1))
    return float(value)


def max_epochs(hparams: Mapping[str, Any]) -> int:
    """The epoch budget: ``max_epochs``, or ``epochs`` for a model class that still declares the old name."""
    return int(hparams["max_epochs"] if "max_epochs" in hparams else hparams["epochs"])


@dataclass(frozen=True)
class LoopSettings:
    """A torch model's training-loop settings, read from its hyper-parameters in one place for every epoch loop
    (in memory, streamed, each Spark rank), with the optimiser and the stopping rule they make."""

    max_epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    patience: int
    lr_schedule: str
    embedding_gradients: str
    ema_decay: float = 0.0
    #: the learning rate of each epoch, replayed (a refit's, from its first fit); empty: ``lr_schedule`` decides
    learning_rates: tuple[float, ...] = ()

    @classmethod
    def of(cls, hparams: Mapping[str, Any], *, rows: int, decay_scale: float) -> LoopSettings:
        """The settings of ``hparams`` for a fit on ``rows`` training rows (``weight_decay: auto`` is
        ``decay_scale / rows``: :func:`resolve_weight_decay`)."""
        return cls(
            max_epochs=max_epochs(hparams),
            batch_size=int(hparams["batch_size"]),
            learning_rate=float(hparams["learning_rate"]),
            weight_decay=resolve_weight_decay(hparams.get("weight_decay", 0.0), rows, decay_scale),
            patience=int(hparams.get("patience", DEFAULT_PATIENCE) or 0),
            lr_schedule=str(hparams.get("lr_schedule", "none")),
            embedding_gradients=str(hparams.get("embedding_gradients", opt.DEFAULT_EMBEDDING_GRADIENTS)),
            ema_decay=float(hparams.get("ema_decay", 0.0) or 0.0),
        )

    def optimizer(self, net: nn.Module, *, sparse_allowed: bool = True) -> torch.optim.Adam:
        """Adam for ``net`` (:func:`exporter.models.optimiser.make_optimizer`: sparse rows for large tables)."""
        return opt.make_optimizer(
            net, self.learning_rate, self.weight_decay, self.embedding_gradients, sparse_allowed=sparse_allowed
        )

    def stopping(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        has_validation: bool,
        first_point: dict[str, float] | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> EarlyStopping:
        """The stopping rule and learning-rate schedule of these settings."""
        return EarlyStopping(
            net,
            optimizer,
            weight_decay=self.weight_decay,
            max_epochs=self.max_epochs,
            patience=self.patience,
            lr_schedule=self.lr_schedule,
            learning_rate=self.learning_rate,
            has_validation=has_validation,
            first_point=first_point,
            on_epoch=on_epoch,
            ema_decay=self.ema_decay,
            learning_rates=self.learning_rates,
        )


@dataclass
class FitResult:
    """The training curve and how the run stopped (metadata ``training.early_stopping``)."""

    history: list[dict[str, float]]
    stopping: dict[str, Any] = field(default_factory=dict)


class EarlyStopping:
    """What happens after each epoch, one rule for every epoch loop (in memory, streamed, each Spark rank): the
    training curve, the best epoch's weights (restored by :meth:`finish`), stopping after ``patience`` epochs
    without a lower monitored loss (0 or None: never; the last epoch is kept), and ``lr_schedule: plateau``
    (the learning rate times :data:`PLATEAU_FACTOR` after an epoch without improvement).

    The validation loss is monitored; without validation rows (a softmax model whose validation rows hold no
    positive pair) the train loss is. With ``ema_decay`` the weights judged, kept and exported are a moving
    average of the live ones (:mod:`exporter.models.weight_average`): a loop calls :meth:`after_step` after
    each optimiser step and computes the validation loss and calls :meth:`end_epoch` inside :meth:`judged`.
    ``learning_rates`` (a refit's) sets each epoch's learning rate, in place of the schedule.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        weight_decay: float = 0.0,
        max_epochs: int,
        patience: int | None,
        lr_schedule: str,
        learning_rate: float,
        has_validation: bool,
        first_point: dict[str, float] | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
        ema_decay: float = 0.0,
        learning_rates: Sequence[float] = (),
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.learning_rates = [float(r) for r in learning_rates]
        self.ema_decay = float(ema_decay)
        self.average = wa.WeightAverage(model, self.ema_decay) if self.ema_decay > 0 else None
        self.max_epochs, self.patience, self.lr_schedule, self.lr = max_epochs, patience, lr_schedule, learning_rate
        self.monitor = "validation_loss" if has_validation else "train_loss"
        self.history: list[dict[str, float]] = [first_point] if first_point else []
        self.best_loss, self.best_epoch, self.since_best, self.reason = math.inf, 0, 0, STOP_MAX_EPOCHS
        self.best_state = _copy_state(model)
        self.on_epoch = on_epoch
        self.weight_decay = weight_decay
        if self.learning_rates:
            self._set_learning_rate(self.learning_rates[0])

    def _set_learning_rate(self, value: float) -> None:
        self.lr = value
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def after_step(self) -> None:
        """After each optimiser step (the weight average folds the new weights in)."""
        if self.average is not None:
            self.average.update()

    def judged(self) -> contextlib.AbstractContextManager[None]:
        """The weights an epoch is judged by, in the model for the block: the average (when on), else the live
        weights; the validation loss and :meth:`end_epoch` (which keeps the best) belong inside."""
        return self.average.applied() if self.average is not None else contextlib.nullcontext()

    def end_epoch(self, epoch: int, train_loss: float, validation_loss: float) -> bool:
        """Record the epoch's losses; True when training stops here."""
        point = {"step": epoch, "train_loss": train_loss, "validation_loss": validation_loss, "learning_rate": self.lr}
        self.history.append(point)
        if epoch < len(self.learning_rates):  # a replayed schedule: the next epoch's rate
            self._set_learning_rate(self.learning_rates[epoch])
        current = point[self.monitor]
        if self.on_epoch is not None:  # a tuner's pruning: raising here ends training
            self.on_epoch(epoch, current)
        if math.isfinite(current) and current < self.best_loss:
            self.best_loss, self.best_epoch, self.since_best = current, epoch, 0
            self.best_state = _copy_state(self.model)
            return False
        self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            self.reason = STOP_PATIENCE
            return True
        if self.lr_schedule == "plateau" and not self.learning_rates:
            self._set_learning_rate(self.lr * PLATEAU_FACTOR)
        return False

    def finish(self, **record: Any) -> FitResult:
        """Restore the best epoch's weights (unless early stopping is off) and say how training stopped; ``record``
        adds to metadata's ``training.early_stopping`` (batch size, optimiser steps, ...)."""
        last = int(self.history[-1]["step"]) if self.history else 0
        monitor, best_epoch = self.monitor, self.best_epoch
        if not self.patience:  # early stopping off (patience 0): every epoch ran and the last one is kept
            best_epoch, monitor = last, "none"
            if self.average is not None:
                self.average.load()
        elif self.best_epoch:
            self.model.load_state_dict(self.best_state)
        opt.flush_denormals(self.model.state_dict().values())  # the exported weights (optimiser.py)
        self.model.eval()
        stopping = {
            "monitor": monitor,
            "best_epoch": best_epoch,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "epochs_run": last,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "stopped_because": self.reason,
            **record,
            "embedding_gradients": opt.embedding_gradients(self.model),
            "lr_schedule": self.lr_schedule,
            "final_learning_rate": self.lr,
            "weight_decay": self.weight_decay,
            "ema_decay": self.ema_decay,
        }
        return FitResult(self.history, stopping)


def effective_batch_size(batch_size: int, rows: int) -> int:
    """``batch_size``, made smaller on a small table so an epoch has at least :data:`MIN_STEPS_PER_EPOCH` steps
    (never below :data:`MIN_BATCH`): 236 rows at 256 a batch were one step an epoch, too few to learn."""
    return max(1, min(int(batch_size), max(MIN_BATCH, -(-rows // MIN_STEPS_PER_EPOCH))))


def fit_loop(
    *,
    model: ModuleT,
    loss_fn: Callable[[ModuleT, Sequence[torch.Tensor]], torch.Tensor],
    train_tensors: Sequence[torch.Tensor],
    validation_tensors: Sequence[torch.Tensor],
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    progress: Progress | None,
    patience: int | None = None,
    lr_schedule: str = "none",
    threads: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    embedding_gradients: str = opt.DEFAULT_EMBEDDING_GRADIENTS,
    ema_decay: float = 0.0,
    learning_rates: Sequence[float] = (),
) -> FitResult:
    """Mini-batch Adam on ``threads`` intra-op threads (None: every core; the models pass
    :func:`~exporter.models.threads.torch_threads`) with early stopping on the validation
    loss: at most ``max_epochs`` epochs, stopped after ``patience`` epochs without a better validation loss
    (``None``: never), the best epoch's weights restored; with ``ema_decay`` the weights validated, kept and
    returned are a moving average of the live ones (:mod:`exporter.models.weight_average`).

    The validation rows decide (stopping, the best epoch, the learning-rate schedule); no other held-out rows
    are seen here. Returns the per-epoch train and validation loss (the training curve) and how it stopped.
    """
    n = len(train_tensors[0])
    if n == 0:
        raise ExporterError("no training rows left after holding out evaluation rows")
    with intra_op_threads(threads):
        return _fit_epochs(
            model,
            loss_fn,
            train_tensors,
            validation_tensors,
            max_epochs,
            effective_batch_size(batch_size, n),
            learning_rate,
            weight_decay,
            seed,
            progress,
            patience,
            lr_schedule,
            on_epoch,
            embedding_gradients,
            ema_decay,
            tuple(learning_rates),
        )


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Any:
    """torch's intra-op threads for the block (None: every core this process may use), restored after.

    Several threads do not collapse on a loaded machine because OpenMP threads sleep at a barrier instead of
    spinning (``OMP_WAIT_POLICY=PASSIVE``, set before torch loads: :mod:`exporter.models.threads`).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads if threads is not None else available_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_epochs(
    model: ModuleT,
    loss_fn: Callable[[ModuleT, Sequence[torch.Tensor]], torch.Tensor],
    train_tensors: Sequence[torch.Tensor],
    validation_tensors: Sequence[torch.Tensor],
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    progress: Progress | None,
    patience: int | None,
    lr_schedule: str,
    on_epoch: Callable[[int, float], None] | None = None,
    embedding_gradients: str = opt.DEFAULT_EMBEDDING_GRADIENTS,
    ema_decay: float = 0.0,
    learning_rates: tuple[float, ...] = (),
) -> FitResult:
    n = len(train_tensors[0])
    generator = torch.Generator().manual_seed(seed)
    settings = LoopSettings(
        max_epochs,
        batch_size,
        learning_rate,
        weight_decay,
        patience or 0,
        lr_schedule,
        embedding_gradients,
        ema_decay,
        learning_rates,
    )
    optimizer = settings.optimizer(model)
    stopping = settings.stopping(
        model,
        optimizer,
        has_validation=len(validation_tensors[0]) > 0,
        # the curve's start: the untrained loss on at most FIRST_POINT_ROWS training rows (a streamed run: its sample)
        first_point=_losses_before_training(
            model, loss_fn, [t[:FIRST_POINT_ROWS] for t in train_tensors], validation_tensors
        ),
        on_epoch=on_epoch,
    )
    steps = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = [t[idx] for t in train_tensors]
            total += train_step(model, loss_fn, optimizer, batch, epoch) * len(idx)
            stopping.after_step()
            steps += 1
            seen += len(idx)
            if progress is not None:
                progress.update(1)
        with stopping.judged():
            valid = validation_loss(model, loss_fn, validation_tensors)
            if progress is not None:
                progress.set_postfix({"epoch": epoch, "loss": f"{total / seen:.4f}", "validation": f"{valid:.4f}"})
            stop = stopping.end_epoch(epoch, total / seen, valid)
        if stop:
            break
    return stopping.finish(batch_size=batch_size, steps_per_epoch=steps_per_epoch(n, batch_size), optimiser_steps=steps)


def train_step(
    model: ModuleT,
    loss_fn: Callable[[ModuleT, Sequence[torch.Tensor]], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch: Sequence[torch.Tensor],
    epoch: int,
    after_backward: Callable[[], None] | None = None,
) -> float:
    """One optimiser step on ``batch``; its loss. A non-finite loss stops training with a clear error.
    ``after_backward`` runs between the backward pass and the step (a data-parallel rank averages gradients)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    if not torch.isfinite(loss):
        raise ExporterError(f"training diverged at epoch {epoch} (loss {loss.item()}); lower learning_rate")
    loss.backward()
    if after_backward is not None:
        after_backward()
    optimizer.step()
    return float(loss.detach())


#: rows of one forward pass outside training (validation loss, evaluation, the parity reference): bounds the
#: memory of the activations whatever the rows (a DIN history's [rows, max_length, 4 x embed_dim] tensors took
#: 5 GB for 200,000 held-out rows in one pass); a multiple of every power-of-two batch size, so a model that
#: splits its held-out loss into training-size batches (two_tower) sees the same batches
INFERENCE_ROWS = 8192


def mean_loss(
    model: ModuleT,
    loss_fn: Callable[[ModuleT, Sequence[torch.Tensor]], torch.Tensor],
    tensors: Sequence[torch.Tensor],
    chunk: int = INFERENCE_ROWS,
) -> float:
    """The model's mean loss per row on ``tensors`` in eval mode, :data:`INFERENCE_ROWS` rows at a time (NaN
    without rows)."""
    model.eval()
    n = len(tensors[0])
    if not n:
        return float("nan")
    total = 0.0
    with torch.inference_mode():
        for start in range(0, n, chunk):
            part = [t[start : start + chunk] for t in tensors]
            total += float(loss_fn(model, part)) * len(part[0])
    return total / n


def validation_loss(
    model: ModuleT, loss_fn: Callable[[ModuleT, Sequence[torch.Tensor]], torch.Tensor], tensors: Sequence[torch.Tensor]
) -> float:
    """The model's loss on the validation tensors in eval mode (NaN without validation rows)."""
    return mean_loss(model, loss_fn, tensors)


def in_chunks(forward: Callable[[torch.Tensor], Any], x: np.ndarray, chunk: int = INFERENCE_ROWS) -> Any:
    """``forward`` (a network in inference mode: rows are independent) over float64 ``x`` :data:`INFERENCE_ROWS`
    rows at a time, its tensor outputs (one, or a dict of them) joined as float64 numpy arrays."""
    parts: list[Any] = []
    with torch.inference_mode():
        for start in range(0, max(len(x), 1), chunk):
            out = forward(torch.from_numpy(np.ascontiguousarray(x[start : start + chunk], dtype=np.float64)))
            if isinstance(out, dict):
                parts.append({k: v.double().numpy() for k, v in out.items()})
            else:
                parts.append(out.double().numpy())
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor of the module (the best epoch's weights, restored at the end)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


#: training rows the curve's step 0 (the untrained loss) is measured on: a whole forward pass over a large table
#: cost most of a one-epoch run (a million rows with a history column); the rows are in split-hash order
FIRST_POINT_ROWS = 65_536


def _losses_before_training(
    model: ModuleT,
    loss_fn: Callable[[ModuleT, Sequence[torch.Tensor]], torch.Tensor],
    train_tensors: Sequence[torch.Tensor],
    validation_tensors: Sequence[torch.Tensor],
    chunk: int = INFERENCE_ROWS,
) -> dict[str, float]:
    """Step 0 of the training curve: train and validation loss of the untrained model (per row, in chunks).

    Without it the curve starts at epoch 1, whose train loss averages the whole first epoch, and every
    torch model's curve looks like a cliff."""
    return {
        "step": 0,
        "train_loss": mean_loss(model, loss_fn, train_tensors, chunk),
        "validation_loss": mean_loss(model, loss_fn, validation_tensors, chunk),
    }


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return max(1, -(-rows // batch_size))


def eager_predictor(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """The native reference: the serving module (:class:`Float64Output`) in torch eager mode, float64 in and out."""
    module.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(in_chunks(module, x))

    return predict


def export_onnx(module: nn.Module, n_features: int) -> onnx.ModelProto:
    """torch.export-based ONNX export with a dynamic batch axis, without torch's source locations."""
    module.eval()
    example = (torch.zeros(4, n_features, dtype=torch.float64),)
    batch = torch.export.Dim("batch", min=1)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        # torch.onnx prints progress lines to stdout: keep CLI and notebook output readable.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                example,
                input_names=[C.INPUT_NAME],
                output_names=[C.OUTPUT_NAME],
                dynamic_shapes=({0: batch},),  # positional: the modules' forward argument names vary
                opset_version=TORCH_OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        if program is None:  # only the legacy exporter (dynamo=False) returns nothing
            raise ExporterError(f"torch.onnx.export returned no ONNX program for {type(module).__name__}")
        model = program.model_proto
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    strip_source_metadata(model)
    return model


def strip_source_metadata(model: onnx.ModelProto) -> None:
    """Remove torch's ``pkg.torch.onnx.*`` metadata from every node, graph and function, in place.

    torch's exporter records on each node a stack trace (absolute paths of the exporting machine's source
    files, line numbers), the module class hierarchy and the FX node. Kept, they would put local paths into
    ``model.onnx`` and make its bytes depend on the checkout directory and on where a line of the network
    sits. Other keys (``namespace``, the graph's ``pkg.torch.export.*`` signature) stay.
    """
    _strip_graph(model.graph)
    for function in model.functions:
        _strip_props(function.metadata_props)
        _strip_nodes(function.node)


def _strip_graph(graph: onnx.GraphProto) -> None:
    _strip_props(graph.metadata_props)
    _strip_nodes(graph.node)


def _strip_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
    for node in nodes:
        _strip_props(node.metadata_props)
        for attr in node.attribute:  # control-flow nodes hold subgraphs
            if attr.HasField("g"):
                _strip_graph(attr.g)
            for sub in attr.graphs:
                _strip_graph(sub)


def _strip_props(props: MutableSequence[onnx.StringStringEntryProto]) -> None:
    for i in reversed(range(len(props))):
        if props[i].key.startswith(TORCH_SOURCE_METADATA):
            del props[i]


def save_checkpoint(
    path: Path,
    *,
    model_type: str,
    config: Mapping[str, Any],
    feature_columns: Sequence[str],
    hparams: Mapping[str, Any],
    module: nn.Module,
) -> None:
    """A checkpoint loadable with ``torch.load(weights_only=True)``: tensors and plain values only."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_type": model_type,
            "config": dict(config),
            "feature_columns": list(feature_columns),
            "hparams": {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool, list))},
            "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
        },
        path,
    )


def load_checkpoint(path: str | Path, *, model_type: str) -> dict[str, Any]:
    """Read and sanity-check a checkpoint; every failure names the file and what was expected."""
    path = Path(path)
    if not path.exists():
        raise ExporterError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise ExporterError(
            f"cannot load checkpoint {path} with weights_only=True ({first}): not a torch checkpoint of "
            f"tensors and plain values; expected a {model_type} "
            "checkpoint written by `python -m exporter export` in train mode"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ExporterError(
            f"checkpoint {path} is not an exporter checkpoint (no format '{CHECKPOINT_FORMAT}'); "
            f"expected a {model_type} checkpoint written by train mode"
        )
    if ckpt.get("model_type") != model_type:
        raise ExporterError(f"checkpoint {path} holds a '{ckpt.get('model_type')}' model, expected '{model_type}'")
    for key in ("config", "feature_columns", "state_dict"):
        if key not in ckpt:
            raise ExporterError(f"checkpoint {path} lacks '{key}'")
    return ckpt


def restore_state(module: nn.Module, state: Mapping[str, torch.Tensor], *, path: str | Path) -> None:
    """load_state_dict(strict=True) with a one-line error naming the mismatching tensors."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + ", ".join(wrong[:4]))
        if missing:
            parts.append("missing tensors: " + ", ".join(missing[:4]))
        if unexpected:
            parts.append("unexpected tensors: " + ", ".join(unexpected[:4]))
        raise ExporterError(f"checkpoint {path} does not fit the model its config describes: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    module.eval()


def checkpoint_columns(ckpt: Mapping[str, Any], override: Sequence[str] | None, *, path: str | Path) -> list[str]:
    """Feature columns of a loaded model: the feature-meta override if given, else the checkpoint's."""
    stored = list(ckpt["feature_columns"])
    if override is None:
        return stored
    if len(override) != len(stored):
        raise ExporterError(
            f"feature-meta lists {len(override)} columns but checkpoint {path} was trained on "
            f"{len(stored)} ({', '.join(stored)})"
        )
    return list(override)


def torch_version() -> str:
    return torch.__version__
