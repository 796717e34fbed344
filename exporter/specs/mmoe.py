"""Multi-gate Mixture-of-Experts with three heads: ctr (probability), watch_time and gmv (>= 0).

Numeric fields (standardised) and categorical fields (one embedding each) feed shared experts, one
softmax gate and one tower per task. The regression heads learn standardised
targets; the de-standardisation (and the clamp at zero) lives in the graph, so the ONNX output is in
the labels' own units: ``predictions`` [-1, 3] with columns ctr, watch_time, gmv.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from exporter import torch_common as tc
from exporter.data import DEFAULT_FEATURES, LABEL
from exporter.features import FeaturePlan
from exporter.metrics import mmoe_metrics
from exporter.specs.base import NotebookInfo
from exporter.specs.torch_spec import ServedPart, TorchModelDef, label_tensor, make_spec

OUTPUT_COLUMNS = ["ctr", "watch_time", "gmv"]
LABELS = (LABEL, "watch_time", "gmv")


class MMoE(nn.Module):
    """Prepared features in (see :mod:`exporter.features`); [B, 3] out: ctr probability, watch_time, gmv."""

    def __init__(self, cardinalities: Sequence[int], embed_dim: int, n_experts: int, expert_dim: int, tower_dim: int,
                 target_mean: Sequence[float], target_std: Sequence[float]) -> None:
        super().__init__()
        self.fields = tc.FieldInput(cardinalities, embed_dim)
        width = self.fields.width
        self.experts = nn.ModuleList(tc.mlp([width, expert_dim, expert_dim], final_activation=True) for _ in range(n_experts))
        self.gates = nn.ModuleList(nn.Linear(width, n_experts) for _ in range(3))
        self.towers = nn.ModuleList(tc.mlp([expert_dim, tower_dim, 1]) for _ in range(3))
        self.register_buffer("target_mean", torch.tensor(list(target_mean), dtype=torch.float64))
        self.register_buffer("target_std", torch.tensor(list(target_std), dtype=torch.float64))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3]: the ctr logit and the two standardised regression outputs."""
        z = self.fields(x)
        experts = torch.stack([e(z) for e in self.experts], dim=1)  # [B, E, D]
        outs = []
        for gate, tower in zip(self.gates, self.towers):
            w = torch.softmax(gate(z), dim=-1).unsqueeze(-1)  # [B, E, 1]
            outs.append(tower((w * experts).sum(dim=1)))
        return torch.cat(outs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.raw(x)
        ctr = torch.sigmoid(r[:, :1])
        reg = torch.relu(r[:, 1:] * self.target_std + self.target_mean)
        return torch.cat([ctr, reg], dim=1)


def _config(columns: list[str], hp: Mapping[str, Any], x: np.ndarray | None, y: Mapping[str, np.ndarray] | None,
            plan: FeaturePlan) -> dict[str, Any]:
    assert y is not None
    return {
        "cardinalities": plan.cardinalities, "embed_dim": int(hp["embed_dim"]),
        "n_experts": int(hp["n_experts"]), "expert_dim": int(hp["expert_dim"]), "tower_dim": int(hp["tower_dim"]),
        "target_mean": [float(np.mean(y[c])) for c in LABELS[1:]],
        "target_std": [float(max(np.std(y[c]), 1e-6)) for c in LABELS[1:]],
    }


def _build(cfg: Mapping[str, Any]) -> nn.Module:
    return MMoE(list(cfg["cardinalities"]), int(cfg["embed_dim"]), int(cfg["n_experts"]), int(cfg["expert_dim"]),
                int(cfg["tower_dim"]), cfg["target_mean"], cfg["target_std"])


def _loss(net: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    x, click, watch, gmv = batch
    r = net.raw(x)
    bce = nn.functional.binary_cross_entropy_with_logits(r[:, 0], click)
    mse_w = nn.functional.mse_loss(r[:, 1], (watch - net.target_mean[0]) / net.target_std[0])
    mse_g = nn.functional.mse_loss(r[:, 2], (gmv - net.target_mean[1]) / net.target_std[1])
    return bce + 0.5 * (mse_w + mse_g)


def _heads(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = net(x)
    return {name: out[:, i] for i, name in enumerate(LABELS)}


SPEC = make_spec(
    TorchModelDef(
        name="mmoe",
        description="MMoE (torch) with ctr, watch_time and gmv heads",
        label_columns=LABELS,
        default_features=DEFAULT_FEATURES,
        default_hparams={"epochs": 6, "batch_size": 256, "learning_rate": 0.005, "embed_dim": 8, "n_experts": 4, "expert_dim": 32, "tower_dim": 16, "weight_decay": 0.0},
        metrics=mmoe_metrics,
        model_names=("mmoe",),
        make_config=_config,
        build=_build,
        fit_scalers=lambda net, x: net.fields.fit(x),
        targets=lambda y: [label_tensor(y, c) for c in LABELS],
        loss=_loss,
        heads=_heads,
        parts=lambda net, cfg, cols: [
            ServedPart("mmoe", net, cols, list(range(len(cols))), 3, "named_columns", output_columns=list(OUTPUT_COLUMNS))
        ],
        notebook=NotebookInfo(
            title='MMoE multi-task model (CTR, watch time, GMV) → ONNX',
            what='a multi-gate mixture-of-experts model (PyTorch) with three heads: click probability, watch time and GMV',
            native='PyTorch',
            checkpoint='load mode: checkpoint.pt written by train mode, e.g. "artifacts/mmoe/1/checkpoint.pt"',
            knobs=(
                ('epochs', 'passes over the training rows'),
                ('batch_size', 'rows per optimiser step'),
                ('learning_rate', 'Adam learning rate'),
                ('n_experts', 'shared experts the task gates mix'),
                ('expert_dim', 'width of each expert'),
                ('tower_dim', 'width of each task tower'),
            ),
            extra='other hyper-parameters, e.g. {"weight_decay": 1e-5}',
            step='epoch',
            eval_md='ROC curve of the click head; predicted against true watch time and GMV on held-out rows (the dashed line is a perfect prediction).',
            example='-p epochs 10 -p n_experts 6',
        ),
        test_hparams={'epochs': 5},
    )
)
