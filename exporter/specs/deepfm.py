"""DeepFM binary CTR model over numeric fields.

Each field i owns an embedding v_i scaled by its standardised value x_i: a linear term, the FM
second-order interactions 0.5 * ((sum x_i v_i)^2 - sum (x_i v_i)^2) and a deep MLP over the
concatenated field embeddings add up to the click logit.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from exporter import torch_common as tc
from exporter.data import DEFAULT_FEATURES, LABEL
from exporter.metrics import ctr_metrics
from exporter.specs.base import NotebookInfo
from exporter.specs.torch_spec import ServedPart, TorchModelDef, label_tensor, make_spec


class DeepFMCore(nn.Module):
    def __init__(self, n_fields: int, embed_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.linear = nn.Linear(n_fields, 1)
        self.embedding = nn.Parameter(torch.randn(n_fields, embed_dim) * 0.05)
        self.deep = tc.mlp([n_fields * embed_dim, *hidden, 1])

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        emb = z.unsqueeze(-1) * self.embedding  # [B, n, k]
        fm = 0.5 * (emb.sum(dim=1).pow(2) - emb.pow(2).sum(dim=1)).sum(dim=1)
        return self.linear(z).squeeze(-1) + fm + self.deep(emb.flatten(1)).squeeze(-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


def _config(columns: list[str], hp: Mapping[str, Any], x: np.ndarray | None, y: Any) -> dict[str, Any]:
    return {"n_fields": len(columns), "embed_dim": int(hp["embed_dim"]), "hidden": [int(h) for h in hp["hidden"]]}


def _build(cfg: Mapping[str, Any]) -> nn.Module:
    n = int(cfg["n_fields"])
    return tc.ServingModule(tc.Standardize(n), DeepFMCore(n, int(cfg["embed_dim"]), list(cfg["hidden"])))


def _loss(net: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(net.core.logits(net.scaler(x)), y)


SPEC = make_spec(
    TorchModelDef(
        name="deepfm",
        description="DeepFM (torch) binary CTR model",
        label_columns=(LABEL,),
        default_features=DEFAULT_FEATURES,
        default_hparams={"epochs": 6, "batch_size": 256, "learning_rate": 0.005, "embed_dim": 8, "hidden": [64, 32], "weight_decay": 0.0},
        metrics=ctr_metrics,
        model_names=("deepfm",),
        make_config=_config,
        build=_build,
        fit_scalers=lambda net, x: net.scaler.fit(x),
        targets=lambda y: [label_tensor(y, LABEL)],
        loss=_loss,
        heads=lambda net, x: {LABEL: net(x)},
        parts=lambda net, cfg, cols: [
            ServedPart("deepfm", net, cols, list(range(len(cols))), None, "scalar")
        ],
        notebook=NotebookInfo(
            title='DeepFM CTR model → ONNX',
            what='a DeepFM click-through-rate model (PyTorch)',
            native='PyTorch',
            checkpoint='load mode: checkpoint.pt written by train mode, e.g. "artifacts/deepfm/1/checkpoint.pt"',
            knobs=(
                ('epochs', 'passes over the training rows'),
                ('batch_size', 'rows per optimiser step'),
                ('learning_rate', 'Adam learning rate'),
                ('embed_dim', "size of each feature's embedding (FM and deep part)"),
                ('hidden', "widths of the deep part's hidden layers"),
            ),
            extra='other hyper-parameters, e.g. {"weight_decay": 1e-5}',
            step='epoch',
            eval_md='ROC curve of the click probability on held-out rows.',
            example='-p epochs 10 -p learning_rate 0.002',
        ),
        test_hparams={'epochs': 3},
    )
)
