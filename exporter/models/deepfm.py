"""DeepFM binary CTR model over numeric and categorical fields.

Every field owns a k-dimensional embedding: a categorical field looks up its value's row (the OOV row for
unknown values), a numeric field scales one learned vector by its standardised value. A linear term (one
weight per numeric field, one per categorical value), the FM second-order interactions
0.5 * ((sum e_i)^2 - sum e_i^2) and a deep MLP over the concatenated field embeddings add up to the click logit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter.models import torch_common as tc
from exporter.models.base import NotebookInfo, TrainData
from exporter.models.torch_base import TorchModel
from exporter.training.data import DEFAULT_FEATURES, LABEL
from exporter.training.metrics import ctr_metrics


class DeepFM(nn.Module):
    """Prepared features in (see :mod:`exporter.features`), click probability out."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        embed_dim: int,
        hidden: Sequence[int],
        histories: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.fields = tc.FieldInput(cardinalities, embed_dim, histories, attention=True)
        n_num, n_cat = self.fields.n_num, self.fields.n_cat + self.fields.n_hist
        self.bias = nn.Parameter(torch.zeros(1))
        self.linear = nn.Linear(max(1, n_num), 1, bias=False)
        self.num_embedding = nn.Parameter(torch.randn(max(1, n_num), embed_dim) * 0.05)
        self.cat_weight = nn.Embedding(self.fields.embedding.num_embeddings, 1)
        nn.init.zeros_(self.cat_weight.weight)
        self.deep = tc.mlp([(n_num + n_cat) * embed_dim, *hidden, 1])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fields
        linear = self.bias.expand(x.shape[0])
        embs = []
        if f.n_num:
            z = f.numeric(x)
            embs.append(z.unsqueeze(-1) * self.num_embedding)  # [B, n_num, k]
            linear = linear + self.linear(z).squeeze(-1)
        fields = None
        if f.n_cat:
            rows = f.rows(x)
            fields = f.embedding(rows)
            embs.append(fields)  # [B, n_cat, k]
            linear = linear + self.cat_weight(rows).squeeze(-1).sum(dim=1)
        pooled = f.history(x, fields) if f.n_hist else None
        if pooled is not None:
            embs.append(pooled)  # [B, n_hist, k]: the history fields join FM and deep part
        emb = embs[0] if len(embs) == 1 else torch.cat(embs, dim=1)
        fm = 0.5 * (emb.sum(dim=1).pow(2) - emb.pow(2).sum(dim=1)).sum(dim=1)
        return linear + fm + self.deep(emb.flatten(1)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class DeepFMModel(TorchModel[DeepFM]):
    """DeepFM as a model: its facts, its network config and its loss (the rest is :class:`TorchModel`'s)."""

    name = "deepfm"
    description = "DeepFM (torch) binary CTR model"
    label_columns = (LABEL,)
    default_features = DEFAULT_FEATURES
    default_hparams = {
        "max_epochs": 50,
        "patience": 3,
        "lr_schedule": "plateau",
        "batch_size": 256,
        "learning_rate": 0.005,
        "embed_dim": 16,
        "hidden": [64, 32],
        "weight_decay": "auto",
        "ema_decay": tc.DEFAULT_EMA_DECAY,
        "refit": "auto",
        "dtype": tc.DEFAULT_DTYPE,
        "embedding_gradients": "auto",
    }
    model_names = ("deepfm",)
    tunable = {"learning_rate": ("log", 0.001, 0.03), "embed_dim": ("int", 4, 32), "weight_decay": ("log", 1e-7, 1e-3)}
    notebook = NotebookInfo(
        title="DeepFM CTR model → ONNX",
        what="a DeepFM click-through-rate model (PyTorch)",
        native="PyTorch",
        checkpoint='load mode: checkpoint.pt written by train mode, e.g. "artifacts/deepfm/1/checkpoint.pt"',
        knobs=(
            ("max_epochs", "most passes over the training rows (early stopping usually ends sooner)"),
            ("patience", "epochs without a better validation loss before training stops (best epoch restored)"),
            ("batch_size", "rows per optimiser step"),
            ("learning_rate", "Adam learning rate"),
            ("embed_dim", "size of each feature's embedding (FM and deep part)"),
            ("hidden", "widths of the deep part's hidden layers"),
        ),
        extra='other hyper-parameters, e.g. {"weight_decay": 1e-5} (default auto: 20 / training rows)',
        step="epoch",
        eval_md="ROC curve of the click probability on held-out rows.",
        example="-p max_epochs 10 -p learning_rate 0.002",
    )
    test_hparams = {"max_epochs": 3}

    def metrics(self, predictions: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
        return ctr_metrics(predictions, labels)

    def make_config(self, data: TrainData) -> dict[str, Any]:
        hp = data.hparams
        return {
            "cardinalities": data.features.cardinalities,
            "embed_dim": int(hp["embed_dim"]),
            "hidden": [int(h) for h in hp["hidden"]],
            "histories": data.features.histories(),
        }

    def build(self, config: Mapping[str, Any]) -> DeepFM:
        return DeepFM(
            list(config["cardinalities"]),
            int(config["embed_dim"]),
            list(config["hidden"]),
            config.get("histories") or (),
        )

    def loss(self, net: DeepFM, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(net.logits(x), y)
