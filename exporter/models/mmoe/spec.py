"""Multi-gate Mixture-of-Experts: one head per task of the ``tasks`` hyper-parameter
(:mod:`exporter.models.mmoe.tasks`).

Numeric fields (standardised) and categorical fields (one embedding each) feed shared experts, one softmax
gate and one tower per task. A binary head answers a probability (sigmoid in the graph). A regression head
learns its standardised target; the de-standardisation lives in the graph (and, for a target that was never
negative in training, the clamp at zero), so the ONNX output is in the labels' own units:
``predictions`` [-1, n_tasks] with the task names as columns. The default tasks are ctr, watch_time, gmv.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter.models import torch_common as tc
from exporter.models.base import Evaluated, LabelNeed, NotebookInfo, TrainData, Trained
from exporter.models.mmoe import tasks as T
from exporter.models.torch_base import ServedPart, TorchModel, label_tensor
from exporter.training.data import DEFAULT_FEATURES

LABELS = tuple(t["label"] for t in T.DEFAULT_TASKS)


class MMoE(nn.Module):
    """Prepared features in (see :mod:`exporter.features`); [B, n_tasks] out, one column per task, in task order."""

    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(
        self,
        cardinalities: Sequence[int],
        embed_dim: int,
        n_experts: int,
        expert_dim: int,
        tower_dim: int,
        tasks: Sequence[T.Task],
        target_mean: Sequence[float],
        target_std: Sequence[float],
        floors: Sequence[float | None],
        histories: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        n = len(self.tasks)
        self.fields = tc.FieldInput(cardinalities, embed_dim, histories, attention=True)
        width = self.fields.width
        self.experts = nn.ModuleList(
            tc.mlp([width, expert_dim, expert_dim], final_activation=True) for _ in range(n_experts)
        )
        self.gates = nn.ModuleList(nn.Linear(width, n_experts) for _ in range(n))
        self.towers = nn.ModuleList(tc.mlp([expert_dim, tower_dim, 1]) for _ in range(n))
        # statistics of the regression targets only, in task order (the layout older checkpoints have)
        self.register_buffer("target_mean", torch.tensor(list(target_mean), dtype=torch.float64))
        self.register_buffer("target_std", torch.tensor(list(target_std), dtype=torch.float64))
        #: per task: its column among the regression statistics (None for a binary task)
        self.reg_pos: list[int | None] = []
        k = 0
        for t in self.tasks:
            self.reg_pos.append(None if t.binary else k)
            k += 0 if t.binary else 1
        self.floors = list(floors)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_tasks]: binary logits and standardised regression outputs."""
        z = self.fields(x)
        experts = torch.stack([e(z) for e in self.experts], dim=1)  # [B, E, D]
        outs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            w = torch.softmax(gate(z), dim=-1).unsqueeze(-1)  # [B, E, 1]
            outs.append(tower((w * experts).sum(dim=1)))
        return torch.cat(outs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.raw(x)
        cols = []
        for i, k in enumerate(self.reg_pos):
            ri = r[:, i : i + 1]
            if k is None:
                cols.append(torch.sigmoid(ri).to(self.target_std.dtype))
                continue
            # de-standardised in float64: a head in the hundreds keeps only its standardised value's rounding
            value = ri.to(self.target_std.dtype) * self.target_std[k] + self.target_mean[k]
            floor = self.floors[k]
            cols.append(value if floor is None else torch.clamp(value, min=float(floor)))
        return torch.cat(cols, dim=1)


def _tasks_of(cfg: Mapping[str, Any]) -> list[T.Task]:
    """The config's tasks; checkpoints from before tasks existed hold the default three heads."""
    return T.parse_tasks(cfg.get("tasks") or T.DEFAULT_TASKS)


def _check_tasks(value: Any, hparams: Mapping[str, Any]) -> bool:
    """The rule of ``tasks``: names the task and key at fault itself (and checks ``task_weights`` against them)."""
    T.check(value, hparams.get("task_weights"))
    return True


class MMoEModel(TorchModel[MMoE]):
    """MMoE as a model: one head per task of its ``tasks`` hyper-parameter."""

    name = "mmoe"
    description = "MMoE (torch) multi-task model, one head per task (default: ctr, watch_time, gmv)"
    label_columns = LABELS
    default_features = DEFAULT_FEATURES
    default_hparams = {
        "max_epochs": 50,
        "patience": 3,
        "lr_schedule": "plateau",
        "batch_size": 256,
        "learning_rate": 0.005,
        # 16 against 8: liked-head AUC +0.001 to +0.004 on three MovieLens splits, ctr AUC +0.0015 on the synthetic
        # 1M-row log (docs/benchmark-history.md)
        "embed_dim": 16,
        "n_experts": 4,
        "expert_dim": 32,
        "tower_dim": 16,
        # L2 on every weight: +0.005 liked-head AUC on MovieLens-100k (two of three splits) and +0.0015 ctr AUC on
        # the synthetic log over none (docs/benchmark-history.md)
        "weight_decay": 1e-4,
        "ema_decay": tc.DEFAULT_EMA_DECAY,
        "refit": "auto",
        "tasks": [dict(t) for t in T.DEFAULT_TASKS],
        "task_weights": None,
        "dtype": tc.DEFAULT_DTYPE,
        "embedding_gradients": "auto",
    }
    model_names = ("mmoe",)
    tunable = {"learning_rate": ("log", 0.001, 0.03), "n_experts": ("int", 2, 6), "expert_dim": ("int", 8, 64)}
    prediction_format = "named_columns"
    notebook = NotebookInfo(
        title="MMoE multi-task model (one head per task) → ONNX",
        what=(
            "a multi-gate mixture-of-experts model (PyTorch) with one head per task "
            "(by default click probability, watch time and GMV)"
        ),
        native="PyTorch",
        checkpoint='load mode: checkpoint.pt written by train mode, e.g. "artifacts/mmoe/1/checkpoint.pt"',
        knobs=(
            (
                "tasks",
                "one head per task: name (output column), label (data column), type binary|regression; optional weight",
            ),
            ("max_epochs", "most passes over the training rows (early stopping usually ends sooner)"),
            ("patience", "epochs without a better validation loss before training stops (best epoch restored)"),
            ("batch_size", "rows per optimiser step"),
            ("learning_rate", "Adam learning rate"),
            ("n_experts", "shared experts the task gates mix"),
            ("expert_dim", "width of each expert"),
            ("tower_dim", "width of each task tower"),
        ),
        extra='other hyper-parameters, e.g. {"weight_decay": 1e-5, "task_weights": {"ctr": 2.0}}',
        step="epoch",
        eval_md=(
            "Per task on held-out rows: the ROC curve of each binary head, predicted against true values "
            "for each regression head (the dashed line is a perfect prediction)."
        ),
        example="-p max_epochs 10 -p n_experts 6",
    )
    test_hparams = {"max_epochs": 5}
    hparam_rules = {
        "tasks": (
            _check_tasks,
            f"a list of 1 to {T.MAX_TASKS} {{name, label, type: binary|regression}} objects",
        ),
        "task_weights": (
            lambda value, hparams: value is None or isinstance(value, (dict, list)),
            "None, {task name: weight} or a list of weights in task order",
        ),
    }

    def label_needs(self, hparams: Mapping[str, Any]) -> list[LabelNeed]:
        needs = T.label_needs(T.from_hparams(hparams))
        if hparams.get("tasks") and [dict(t) for t in hparams["tasks"]] != T.DEFAULT_TASKS:
            return needs
        return [dataclasses.replace(n, hint=T.DEFAULT_TASKS_HINT) for n in needs]

    def metrics(self, predictions: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The default heads' metrics; a run uses its own tasks' (:meth:`evaluate`)."""
        return T.task_metrics(T.from_hparams({}), predictions, labels)

    def make_config(self, data: TrainData) -> dict[str, Any]:
        hp, y = data.hparams, data.y_train
        tasks = T.from_hparams(hp)
        reg = [t for t in tasks if not t.binary]
        return {
            "cardinalities": data.features.cardinalities,
            "embed_dim": int(hp["embed_dim"]),
            "n_experts": int(hp["n_experts"]),
            "expert_dim": int(hp["expert_dim"]),
            "tower_dim": int(hp["tower_dim"]),
            "tasks": [t.to_dict() for t in tasks],
            "target_mean": [float(np.mean(y[t.label])) for t in reg],
            "target_std": [float(max(np.std(y[t.label]), 1e-6)) for t in reg],
            # a target never negative in training (seconds, money, ratings) is never predicted negative
            "floors": [0.0 if float(np.min(y[t.label])) >= 0 else None for t in reg],
            "histories": data.features.histories(),
        }

    def build(self, config: Mapping[str, Any]) -> MMoE:
        tasks = _tasks_of(config)
        n_reg = sum(not t.binary for t in tasks)
        floors = config.get("floors", [0.0] * n_reg)  # older checkpoints clamped every regression head at zero
        return MMoE(
            list(config["cardinalities"]),
            int(config["embed_dim"]),
            int(config["n_experts"]),
            int(config["expert_dim"]),
            int(config["tower_dim"]),
            tasks,
            config["target_mean"],
            config["target_std"],
            floors,
            config.get("histories") or (),
        )

    def loss(self, net: MMoE, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Weighted sum over tasks: logistic loss of binary heads, squared error of standardised regression heads."""
        x, targets = batch[0], batch[1:]
        r = net.raw(x)
        total = r.new_zeros(())
        for i, (task, k, y) in enumerate(zip(net.tasks, net.reg_pos, targets, strict=True)):
            if task.weight == 0:
                continue
            if k is None:
                term = nn.functional.binary_cross_entropy_with_logits(r[:, i], y)
            else:
                term = nn.functional.mse_loss(r[:, i], (y - net.target_mean[k]) / net.target_std[k])
            total = total + task.weight * term
        return total

    def training_tensors(
        self, config: Mapping[str, Any], x: np.ndarray, y: Mapping[str, np.ndarray]
    ) -> list[torch.Tensor]:
        """The features and one target per task of the config, in task order."""
        return [torch.from_numpy(x), *(label_tensor(y, t.label) for t in _tasks_of(config))]

    def heads(self, net: MMoE, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = net(x)
        return {t.name: out[:, i] for i, t in enumerate(net.tasks)}

    def parts(self, net: MMoE, config: Mapping[str, Any], columns: list[str]) -> list[ServedPart]:
        tasks = net.tasks
        return [
            ServedPart(
                self.name,
                net,
                columns,
                list(range(len(columns))),
                len(tasks),
                self.prediction_format,
                output_columns=[t.name for t in tasks],
                metadata={"tasks": [{"name": t.name, "label": t.label, "type": t.type} for t in tasks]},
            )
        ]

    def metric_heads(self, trained: Trained) -> list[tuple[str, str, str]]:
        """One head per task, judged against its label column."""
        return [(t.name, t.label, t.type) for t in trained.model.tasks]

    def evaluate(self, prep: Any, trained: Trained) -> Evaluated:
        """Held-out metrics per task (AUC/logloss or RMSE against predicting the mean), keyed by task name."""
        tasks: list[T.Task] = trained.model.tasks
        predictions = trained.predict(prep.x_heldout)
        y = prep.y_heldout
        details = {"heads": {t.name: t.type for t in tasks}, "label_columns": {t.name: t.label for t in tasks}}
        if not y or not all(t.label in y for t in tasks):
            return Evaluated({}, predictions, {}, details)
        labels = {t.name: np.asarray(y[t.label], dtype=np.float64) for t in tasks}
        return Evaluated(T.task_metrics(tasks, predictions, labels), predictions, labels, details)
