"""Two-tower retrieval model: a user tower and an item tower whose dot product scores a pair.

Both towers end in an L2 normalisation, so the dot product of their vectors is a cosine. Trained as
retrieval models are (``loss: softmax``, the default): on positive pairs (rows whose label is 1, or every
row of an interactions table without a label) with an in-batch sampled softmax over ``cosine / temperature``
and the log-popularity correction (:mod:`exporter.models.two_tower.sampled_softmax`); ``loss: bce`` trains pointwise on
clicks instead. Judged by recall@K and NDCG@K over the whole item catalogue next to popularity
(:mod:`exporter.models.two_tower.towers`), on a held-out set split by user-item pairs. Exported as two graphs, the user
tower (``two_tower``) and the item tower (``two_tower_item``, with the catalogue ``items.parquet`` beside
it), each ``[-1, embed_dim]`` float64.
Columns named ``user_*`` (or with ``tower: user`` in the feature schema) feed the user tower and the rest
the item tower, unless the hyper-parameters ``user_columns`` / ``item_columns`` say otherwise. Each tower
embeds its categorical columns (``field_embed_dim``) beside its standardised numeric ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter import features as F
from exporter.errors import ExporterError
from exporter.models import history_pool as HP
from exporter.models import torch_common as tc
from exporter.models.base import BINARY, Evaluated, LabelNeed, NotebookInfo, Towers, TrainData, Trained
from exporter.models.torch_base import ServedPart, TorchModel, label_tensor
from exporter.models.two_tower import sampled_softmax as S
from exporter.models.two_tower import towers as TW
from exporter.training.data import ITEM_FEATURES, LABEL, USER_FEATURES
from exporter.training.metrics import retrieval_metrics

LOSSES = ("softmax", "bce")


class Tower(nn.Module):
    """One tower: its prepared columns in (numeric standardised, categorical embedded), a (unit) vector out."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        field_dim: int,
        hidden: int,
        embed_dim: int,
        normalize: bool = False,
        histories: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.fields = tc.FieldInput(cardinalities, field_dim, histories)
        self.mlp = tc.mlp([self.fields.width, hidden, hidden, embed_dim])
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.mlp(self.fields(x))
        return nn.functional.normalize(v, dim=1) if self.normalize else v


class TwoTower(nn.Module):
    """Checkpoints from before retrieval training (no ``normalize`` in their config) keep their plain dot product."""

    user_idx: torch.Tensor
    item_idx: torch.Tensor

    def __init__(
        self,
        cardinalities: Sequence[int],
        user_idx: Sequence[int],
        item_idx: Sequence[int],
        embed_dim: int,
        hidden: int,
        field_dim: int,
        normalize: bool = False,
        loss: str = "bce",
        temperature: float = 1.0,
        logq: bool = True,
        chunk: int = 1024,
        histories: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.register_buffer("user_idx", torch.tensor(list(user_idx), dtype=torch.long))
        self.register_buffer("item_idx", torch.tensor(list(item_idx), dtype=torch.long))
        self.user = Tower(
            [cardinalities[j] for j in user_idx],
            field_dim,
            hidden,
            embed_dim,
            normalize,
            HP.tower_histories(histories, user_idx),
        )
        self.item = Tower(
            [cardinalities[j] for j in item_idx],
            field_dim,
            hidden,
            embed_dim,
            normalize,
            HP.tower_histories(histories, item_idx),
        )
        #: pointwise loss only: the click logit's offset (cosines are centred on zero, click rates are not)
        self.bias = nn.Parameter(torch.zeros(1)) if normalize else None
        self.loss_kind, self.temperature, self.logq, self.chunk = loss, float(temperature), bool(logq), int(chunk)
        #: set by a process that trains with others (Spark ranks): the in-batch softmax then spans their batches
        self.batch_gather: S.Gather | None = None

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The click logit of each row's pair: dot product (/ temperature, + bias for normalised towers)."""
        dot = (self.user(x[:, self.user_idx]) * self.item(x[:, self.item_idx])).sum(dim=1)
        return dot if self.bias is None else dot / self.temperature + self.bias


def split_columns(
    columns: list[str], hp: Mapping[str, Any], towers: Mapping[str, str | None] | None = None
) -> tuple[list[str], list[str]]:
    """User and item columns: the hyper-parameters' lists, else the schema's ``tower``, else ``user_*`` by name."""
    towers = towers or {}

    def default_user(c: str) -> bool:
        tower = towers.get(c)
        return tower == "user" if tower else c.startswith("user_")

    def expand(names: Any) -> list[str] | None:  # a history's name stands for its columns name[0] ...
        if not names:
            return None
        return [
            p for n in names for p in ([n] if n in columns else [c for c in columns if c.startswith(f"{n}[")] or [n])
        ]

    user = expand(hp.get("user_columns")) or [c for c in columns if default_user(c)]
    item = expand(hp.get("item_columns")) or [c for c in columns if c not in user]
    unknown = [c for c in user + item if c not in columns]
    if unknown:
        raise ExporterError(f"two_tower: tower columns {unknown} are not among the feature columns {columns}")
    if not user or not item:
        raise ExporterError(
            f"two_tower needs user and item columns; got user={user} item={item} from {columns} "
            "(user columns are those with tower 'user' in the schema or named user_*, or set user_columns/item_columns)"
        )
    return user, item


class TwoTowerModel(TorchModel[TwoTower]):
    """The two-tower model: two exported towers, a pair split, retrieval evaluation against the catalogue."""

    name = "two_tower"
    description = "Two-tower retrieval model (user tower two_tower, item tower two_tower_item)"
    label_columns = (LABEL,)
    default_features = USER_FEATURES + ITEM_FEATURES
    default_hparams = {
        # early stopping off: the in-batch softmax loss on validation pairs stops too early for recall (it kept
        # epoch 3 and tied popularity on the synthetic log; 12 fixed epochs beat it, 2026-12-06)
        "max_epochs": 12,
        "patience": 0,
        "lr_schedule": "none",
        "batch_size": 256,
        "learning_rate": 0.005,
        "embed_dim": 32,
        "hidden": 64,
        "field_embed_dim": 16,
        "weight_decay": 0.0,
        # a shorter average than deepfm's: 12 epochs of MovieLens are 1,800 steps, and 0.999 lagged (recall@50
        # 0.5775 against 0.5861 at 0.998, docs/benchmark-history.md)
        "ema_decay": 0.998,
        "refit": "auto",
        "user_columns": None,
        "item_columns": None,
        "loss": "softmax",
        "temperature": 0.1,
        "logq_correction": True,
        "dtype": tc.DEFAULT_DTYPE,
        "embedding_gradients": "auto",
    }
    model_names = ("two_tower", "two_tower_item")
    tunable = {"learning_rate": ("log", 0.001, 0.03), "temperature": ("log", 0.02, 0.2), "embed_dim": ("int", 8, 64)}
    prediction_format = "vector"
    hparam_rules = {
        "loss": (
            "one_of:" + "|".join(LOSSES),
            "softmax (in-batch sampled softmax on positive pairs) or bce (pointwise on clicks)",
        ),
        "temperature": ("positive_number", "a positive number (the softmax divides cosines by it)"),
        "logq_correction": ("bool", "true or false"),
    }
    notebook = NotebookInfo(
        title="Two-tower retrieval model (user and item towers) → ONNX",
        what="a two-tower retrieval model (PyTorch)",
        native="PyTorch",
        checkpoint='load mode: checkpoint.pt written by train mode, e.g. "artifacts/two_tower/1/checkpoint.pt"',
        knobs=(
            (
                "loss",
                '"softmax": in-batch sampled softmax on positive pairs (label 1, or every row without a label); '
                '"bce": pointwise on clicks',
            ),
            ("temperature", "the softmax divides the towers' cosines by it"),
            ("max_epochs", "most passes over the training rows (early stopping usually ends sooner)"),
            ("patience", "epochs without a better validation loss before training stops (best epoch restored)"),
            ("batch_size", "positive pairs per optimiser step (the other items of a batch are the negatives)"),
            ("learning_rate", "Adam learning rate"),
            ("embed_dim", "size of the user and item embeddings"),
            ("hidden", "width of each tower's hidden layers"),
        ),
        extra='other hyper-parameters, e.g. {"weight_decay": 1e-5, "logq_correction": False, "field_embed_dim": 16}',
        step="epoch",
        eval_md=(
            "Retrieval on held-out user-item pairs: for every user, all items of the catalogue are ranked by the "
            "towers' dot product (the user's training items removed); recall@K is the share of the user's held-out "
            "positives found in the top K, for the model and for recommending the most popular items. "
            "With 0/1 labels, the ROC curve of the score against them is beside it."
        ),
        example="-p max_epochs 10 -p embed_dim 32",
        note=(
            "The user tower (`two_tower`) and the item tower (`two_tower_item`) become two artifacts sharing "
            "one version; a retrieval system embeds users and items with them and ranks by dot product."
        ),
        towers=True,
    )
    test_hparams = {"max_epochs": 5}

    def metrics(self, predictions: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, float]:
        return retrieval_metrics(predictions, labels)

    def label_needs(self, hparams: Mapping[str, Any]) -> list[LabelNeed]:
        """bce needs clicks; softmax reads positives from the label when the data has one, else every row is one."""
        if hparams.get("loss", "softmax") == "bce":
            return [LabelNeed(LABEL, BINARY, "the click label the pointwise loss (loss bce) learns")]
        return [
            LabelNeed(LABEL, BINARY, "1 marks a positive pair; without the column every row is one", required=False)
        ]

    def split_keys(
        self, columns: Sequence[str], hparams: Mapping[str, Any], towers: Mapping[str, str | None]
    ) -> list[str] | None:
        """The user's and the item's key columns (their ID columns, else all of a tower's columns), sorted: every
        row of one user-item pair lands on the same side, also when another column of the pair's rows has a gap
        (hashing every tower column split a pair whose rows differ in one missing cell)."""
        user, item = split_columns(list(columns), hparams, towers)
        return TW.pair_keys(user, item)

    def split(
        self, frame: Any, columns: Sequence[str], hparams: Mapping[str, Any], towers: Towers, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """By user-item pairs, so no validation or test pair was seen in training."""
        user, item = split_columns(list(columns), hparams, towers())
        return TW.split_by_pairs(frame, user, item, seed)  # by split_keys' columns

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
        from exporter.models.two_tower.spark_eval import from_spark

        user, item = split_columns(list(columns), hparams, towers)
        user_key, item_key = TW.entity_keys(user, item)
        return from_spark(df, split_column, user, item, user_key, item_key, labels.get(LABEL), seed)

    def evaluate(self, prep: Any, trained: Trained) -> Evaluated:
        return TW.evaluate_two_tower(prep, trained)

    def column_warnings(
        self, frame: Any, rows: np.ndarray | None, plan: Any, hparams: Mapping[str, Any]
    ) -> list[dict[str, str]]:
        """Item-tower columns that differ between one item's rows (:func:`~.towers.varying_item_columns`)."""
        _, item = split_columns(list(plan.columns), hparams, {f.name: f.spec.tower for f in plan.features})
        item = [c for c in F.input_columns(item, list(frame.columns)) if c in frame.columns]
        return TW.varying_item_columns(frame[item] if rows is None else frame[item].iloc[rows], item)

    def make_config(self, data: TrainData) -> dict[str, Any]:
        columns, hp, x, y, plan = list(data.columns), data.hparams, data.x_train, data.y_train, data.features
        user, item = split_columns(columns, hp, {f.name: f.spec.tower for f in plan.features})
        if hp["loss"] == "softmax" and y is not None:
            S.check_positives(int(np.sum(y[LABEL] == 1)) if LABEL in y else len(x), LABEL, LABEL in y)
        return {
            "cardinalities": plan.cardinalities,
            "user_idx": [columns.index(c) for c in user],
            "item_idx": [columns.index(c) for c in item],
            "embed_dim": int(hp["embed_dim"]),
            "hidden": int(hp["hidden"]),
            "field_embed_dim": int(hp["field_embed_dim"]),
            "normalize": True,
            "loss": str(hp["loss"]),
            "temperature": float(hp["temperature"]),
            "logq_correction": bool(hp["logq_correction"]),
            "batch_size": int(hp["batch_size"]),
            "histories": plan.histories(),
        }

    def build(self, config: Mapping[str, Any]) -> TwoTower:
        c = config
        return TwoTower(
            list(c["cardinalities"]),
            c["user_idx"],
            c["item_idx"],
            int(c["embed_dim"]),
            int(c["hidden"]),
            int(c["field_embed_dim"]),
            bool(c.get("normalize", False)),
            str(c.get("loss", "bce")),
            float(c.get("temperature", 1.0)),
            bool(c.get("logq_correction", True)),
            int(c.get("batch_size", 1024)),
            c.get("histories") or (),
        )

    def fit_scalers(self, net: TwoTower, x: np.ndarray) -> None:
        net.user.fields.fit(x[:, net.user_idx.numpy()])
        net.item.fields.fit(x[:, net.item_idx.numpy()])

    def loss(self, net: TwoTower, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        if net.loss_kind == "bce":
            x, y = batch
            return nn.functional.binary_cross_entropy_with_logits(net.score(x), y)
        x, ids, log_q = batch
        if not torch.is_grad_enabled() and len(x) > net.chunk:  # held-out loss: batches of the training size
            sizes = [min(net.chunk, len(x) - i) for i in range(0, len(x), net.chunk)]
            parts = [
                self.loss(net, [x[i : i + net.chunk], ids[i : i + net.chunk], log_q[i : i + net.chunk]])
                for i in range(0, len(x), net.chunk)
            ]
            total = x.new_zeros(())
            for p, n in zip(parts, sizes, strict=True):
                total = total + p * n
            return total / len(x)
        return S.in_batch_softmax_loss(
            net.user(x[:, net.user_idx]),
            net.item(x[:, net.item_idx]),
            ids,
            log_q if net.logq else None,
            net.temperature,
            net.batch_gather if torch.is_grad_enabled() else None,
        )

    def training_tensors(
        self, config: Mapping[str, Any], x: np.ndarray, y: Mapping[str, np.ndarray]
    ) -> list[torch.Tensor]:
        """bce: every row and its click; softmax: the positive pairs, their item identities and log sampling
        probabilities."""
        if config.get("loss", "bce") == "bce":
            return [torch.from_numpy(x), label_tensor(y, LABEL)]
        pos, ids, log_q = S.positive_pairs(x, y, LABEL, np.asarray(config["item_idx"]))
        return [torch.from_numpy(pos), torch.from_numpy(ids), torch.from_numpy(log_q)]

    def log_counter(self, config: Mapping[str, Any]) -> S.ItemCounts | None:
        """softmax with the logQ correction: the positives per item over the whole log."""
        if config.get("loss", "bce") == "bce" or not config.get("logq_correction", True):
            return None
        return S.ItemCounts(config["item_idx"], LABEL)

    def kept_rows(self, config: Mapping[str, Any], y: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """softmax trains on the positive pairs only (:func:`~.sampled_softmax.positive_pairs`)."""
        if config.get("loss", "bce") == "bce" or LABEL not in y:
            return None
        return np.asarray(y[LABEL]) == 1

    def block_tensors(
        self, config: Mapping[str, Any], x: np.ndarray, y: Mapping[str, np.ndarray], counter: Any | None
    ) -> list[torch.Tensor]:
        """A block's positive pairs, with each item's sampling probability from the whole log's counts."""
        tensors = self.training_tensors(config, x, y)
        if isinstance(counter, S.ItemCounts) and len(tensors) == 3:
            tensors[2] = torch.from_numpy(counter.log_q(tensors[0].numpy()))
        return tensors

    def heads(self, net: TwoTower, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {LABEL: torch.sigmoid(net.score(x))}

    def parts(self, net: TwoTower, config: Mapping[str, Any], columns: list[str]) -> list[ServedPart]:
        e = int(config["embed_dim"])
        u, i = list(config["user_idx"]), list(config["item_idx"])
        return [
            ServedPart("two_tower", net.user, [columns[k] for k in u], u, e, self.prediction_format, embed_dim=e),
            ServedPart("two_tower_item", net.item, [columns[k] for k in i], i, e, self.prediction_format, embed_dim=e),
        ]
