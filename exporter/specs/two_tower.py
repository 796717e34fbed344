"""Two-tower retrieval model: a user tower and an item tower whose dot product scores a pair.

Trained pointwise on clicks (logistic loss on the dot product). Exported as two graphs, the user
tower (``two_tower``) and the item tower (``two_tower_item``), each ``[-1, embed_dim]`` float64.
Columns named ``user_*`` (or with ``tower: user`` in the feature schema) feed the user tower and the rest
the item tower, unless the hyper-parameters ``user_columns`` / ``item_columns`` say otherwise. Each tower
embeds its categorical columns (``field_embed_dim``) beside its standardised numeric ones.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from exporter import torch_common as tc
from exporter.data import ITEM_FEATURES, LABEL, USER_FEATURES
from exporter.errors import ExporterError
from exporter.features import FeaturePlan
from exporter.metrics import retrieval_metrics
from exporter.specs.base import NotebookInfo
from exporter.specs.torch_spec import ServedPart, TorchModelDef, label_tensor, make_spec


class Tower(nn.Module):
    """One tower: its prepared columns in (numeric standardised, categorical embedded), a vector out."""

    def __init__(self, cardinalities: Sequence[int], field_dim: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.fields = tc.FieldInput(cardinalities, field_dim)
        self.mlp = tc.mlp([self.fields.width, hidden, hidden, embed_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.fields(x))


class TwoTower(nn.Module):
    def __init__(self, cardinalities: Sequence[int], user_idx: Sequence[int], item_idx: Sequence[int],
                 embed_dim: int, hidden: int, field_dim: int) -> None:
        super().__init__()
        self.register_buffer("user_idx", torch.tensor(list(user_idx), dtype=torch.long))
        self.register_buffer("item_idx", torch.tensor(list(item_idx), dtype=torch.long))
        self.user = Tower([cardinalities[j] for j in user_idx], field_dim, hidden, embed_dim)
        self.item = Tower([cardinalities[j] for j in item_idx], field_dim, hidden, embed_dim)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return (self.user(x[:, self.user_idx]) * self.item(x[:, self.item_idx])).sum(dim=1)


def split_columns(columns: list[str], hp: Mapping[str, Any],
                  towers: Mapping[str, str | None] | None = None) -> tuple[list[str], list[str]]:
    """User and item columns: the hyper-parameters' lists, else the schema's ``tower``, else ``user_*`` by name."""
    towers = towers or {}

    def default_user(c: str) -> bool:
        tower = towers.get(c)
        return tower == "user" if tower else c.startswith("user_")

    user = list(hp.get("user_columns") or [c for c in columns if default_user(c)])
    item = list(hp.get("item_columns") or [c for c in columns if c not in user])
    unknown = [c for c in user + item if c not in columns]
    if unknown:
        raise ExporterError(f"two_tower: tower columns {unknown} are not among the feature columns {columns}")
    if not user or not item:
        raise ExporterError(
            f"two_tower needs user and item columns; got user={user} item={item} from {columns} "
            "(user columns are those with tower 'user' in the schema or named user_*, or set user_columns/item_columns)"
        )
    return user, item


def _config(columns: list[str], hp: Mapping[str, Any], x: Any, y: Any, plan: FeaturePlan) -> dict[str, Any]:
    user, item = split_columns(columns, hp, {f.name: f.spec.tower for f in plan.features})
    return {
        "cardinalities": plan.cardinalities,
        "user_idx": [columns.index(c) for c in user], "item_idx": [columns.index(c) for c in item],
        "embed_dim": int(hp["embed_dim"]), "hidden": int(hp["hidden"]), "field_embed_dim": int(hp["field_embed_dim"]),
    }


def _build(cfg: Mapping[str, Any]) -> nn.Module:
    return TwoTower(list(cfg["cardinalities"]), cfg["user_idx"], cfg["item_idx"], int(cfg["embed_dim"]),
                    int(cfg["hidden"]), int(cfg["field_embed_dim"]))


def _fit_scalers(net: nn.Module, x: np.ndarray) -> None:
    net.user.fields.fit(x[:, net.user_idx.numpy()])
    net.item.fields.fit(x[:, net.item_idx.numpy()])


def _loss(net: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(net.score(x), y)


def _parts(net: nn.Module, cfg: Mapping[str, Any], cols: list[str]) -> list[ServedPart]:
    e = int(cfg["embed_dim"])
    u, i = list(cfg["user_idx"]), list(cfg["item_idx"])
    return [
        ServedPart("two_tower", net.user, [cols[k] for k in u], u, e, "vector", embed_dim=e),
        ServedPart("two_tower_item", net.item, [cols[k] for k in i], i, e, "vector", embed_dim=e),
    ]


SPEC = make_spec(
    TorchModelDef(
        name="two_tower",
        description="Two-tower retrieval model (user tower two_tower, item tower two_tower_item)",
        label_columns=(LABEL,),
        default_features=USER_FEATURES + ITEM_FEATURES,
        default_hparams={"epochs": 6, "batch_size": 256, "learning_rate": 0.005, "embed_dim": 16, "hidden": 32, "field_embed_dim": 8,
                         "weight_decay": 0.0,
                         "user_columns": None, "item_columns": None},
        metrics=retrieval_metrics,
        model_names=("two_tower", "two_tower_item"),
        make_config=_config,
        build=_build,
        fit_scalers=_fit_scalers,
        targets=lambda y: [label_tensor(y, LABEL)],
        loss=_loss,
        heads=lambda net, x: {LABEL: torch.sigmoid(net.score(x))},
        parts=_parts,
        notebook=NotebookInfo(
            title='Two-tower retrieval model (user and item towers) → ONNX',
            what='a two-tower retrieval model (PyTorch)',
            native='PyTorch',
            checkpoint='load mode: checkpoint.pt written by train mode, e.g. "artifacts/two_tower/1/checkpoint.pt"',
            knobs=(
                ('epochs', 'passes over the training rows'),
                ('batch_size', 'rows per optimiser step'),
                ('learning_rate', 'Adam learning rate'),
                ('embed_dim', 'size of the user and item embeddings'),
                ('hidden', "width of each tower's hidden layers"),
            ),
            extra='other hyper-parameters, e.g. {"weight_decay": 1e-5}',
            step='epoch',
            eval_md="ROC curve of the user·item score (sigmoid of the embeddings' dot product) against clicks on held-out pairs.",
            example='-p epochs 10 -p embed_dim 32',
            note='The user tower (`two_tower`) and the item tower (`two_tower_item`) become two artifacts sharing one version; a retrieval system embeds users and items with them and ranks by dot product.',
            towers=True,
        ),
        test_hparams={'epochs': 5},
    )
)
