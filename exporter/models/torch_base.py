"""Turns a small torch model definition into a :class:`ModelSpec`: train, load, checkpoint, export units.

A torch model file declares only what is its own (network, loss, heads, which serving modules it
exports); fitting, checkpoints with ``weights_only=True`` and native predictors are shared here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from exporter.models import torch_common as tc
from exporter.errors import ExporterError
from exporter.features import FeaturePlan
from exporter.models.base import Evaluated, ExportUnit, LabelNeed, ModelSpec, NotebookInfo, Progress, Trained

CHECKPOINT_NAME = "checkpoint.pt"
#: the fitted feature plan inside a checkpoint's config (load mode rebuilds the in-graph preprocessing from it)
FEATURES_KEY = "features"


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


@dataclass(frozen=True)
class TorchModelDef:
    name: str
    description: str
    label_columns: tuple[str, ...]
    default_features: tuple[str, ...]
    default_hparams: Mapping[str, Any]
    metrics: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], dict[str, float]]
    model_names: tuple[str, ...]
    #: (columns, hparams, x_train, y_train, feature plan) -> JSON-able architecture config (incl. fitted target
    #: stats and the embedding rows of each categorical column)
    make_config: Callable[[list[str], Mapping[str, Any], np.ndarray | None, Mapping[str, np.ndarray] | None, FeaturePlan], dict[str, Any]]
    #: config -> network; the network reads prepared features and holds its standardisation and embeddings
    build: Callable[[Mapping[str, Any]], nn.Module]
    #: (network, x_train) fits the scalers in place
    fit_scalers: Callable[[nn.Module, np.ndarray], None]
    #: labels -> training target tensors (after the feature tensor)
    targets: Callable[[Mapping[str, np.ndarray]], list[torch.Tensor]]
    #: (network, [x, *targets]) -> scalar loss
    loss: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
    #: (network, x float64 tensor) -> {label column: prediction}
    heads: Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]
    #: (network, config, columns) -> exported parts
    parts: Callable[[nn.Module, Mapping[str, Any], list[str]], list[ServedPart]]
    atol: float = 1e-5
    notebook: NotebookInfo | None = None
    test_hparams: Mapping[str, Any] = field(default_factory=dict)
    hparam_rules: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: (config, x_train, y_train) -> the training tensors (features first); ``None``: ``[x, *targets(y)]``.
    #: two_tower keeps only positive pairs and adds item identities and log sampling probabilities.
    training_tensors: Callable[[Mapping[str, Any], np.ndarray, Mapping[str, np.ndarray]], list[torch.Tensor]] | None = None
    #: see :class:`ModelSpec`: the labels a run needs, its split, its own evaluation
    labels_for: Callable[[Mapping[str, Any]], list[LabelNeed]] | None = None
    split: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
    evaluate: Callable[[Any, Trained], Evaluated] | None = None


def make_spec(d: TorchModelDef) -> ModelSpec:
    def train(
        x_train: np.ndarray,
        y_train: Mapping[str, np.ndarray],
        x_heldout: np.ndarray,
        y_heldout: Mapping[str, np.ndarray],
        columns: Sequence[str],
        hparams: Mapping[str, Any],
        seed: int,
        progress: Progress | None,
        features: FeaturePlan,
    ) -> Trained:
        tc.seed_everything(seed)
        columns = list(columns)
        config = d.make_config(columns, hparams, x_train, y_train, features)
        config[FEATURES_KEY] = features.to_dict()
        net = d.build(config).to(tc.DTYPE)
        d.fit_scalers(net, x_train)

        def tensors(x: np.ndarray, y: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
            if d.training_tensors is not None:
                return d.training_tensors(config, x, y)
            return [torch.from_numpy(x), *d.targets(y)]

        history = tc.fit_loop(
            model=net,
            loss_fn=d.loss,
            train_tensors=tensors(x_train, y_train),
            heldout_tensors=tensors(x_heldout, y_heldout),
            epochs=int(hparams["epochs"]),
            batch_size=int(hparams["batch_size"]),
            learning_rate=float(hparams["learning_rate"]),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
            seed=seed,
            progress=progress,
        )
        return _trained(net, config, columns, dict(hparams), history, features)

    def load(path: str | Path, columns: Sequence[str] | None, hparams: Mapping[str, Any]) -> Trained:
        ckpt = tc.load_checkpoint(path, model_type=d.name)
        cols = tc.checkpoint_columns(ckpt, columns, path=path)
        try:
            net = d.build(ckpt["config"]).to(tc.DTYPE)
        except (KeyError, TypeError, ValueError) as exc:
            raise ExporterError(f"checkpoint {path} has an unusable {d.name} config: {exc!r}") from exc
        tc.restore_state(net, ckpt["state_dict"], path=path)
        used = dict(ckpt.get("hparams") or {})
        used["source_file"] = str(path)
        stored = ckpt["config"].get(FEATURES_KEY)
        plan = FeaturePlan.from_dict(stored, source=f"checkpoint {path}") if stored is not None else None
        if plan is not None:
            plan = FeaturePlan([replace(f, spec=replace(f.spec, name=c)) for f, c in zip(plan.features, cols)])
        return _trained(net, ckpt["config"], cols, used, [], plan)

    def _trained(
        net: nn.Module, config: Mapping[str, Any], columns: list[str], hparams: dict[str, Any],
        history: list[dict[str, float]], features: FeaturePlan | None,
    ) -> Trained:
        net.eval()

        def predict(x: np.ndarray) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                out = d.heads(net, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))
            return {k: v.double().numpy() for k, v in out.items()}

        def write_checkpoint(directory: Path) -> None:
            tc.save_checkpoint(
                directory / CHECKPOINT_NAME, model_type=d.name, config=config,
                feature_columns=columns, hparams=hparams, module=net,
            )

        def units() -> list[ExportUnit]:
            parts = d.parts(net, config, columns)
            names = [p.model_name for p in parts]
            return [
                ExportUnit(
                    model_name=p.model_name,
                    feature_columns=p.feature_columns,
                    output_width=p.output_width,
                    prediction_format=p.prediction_format,
                    native_predict=tc.eager_predictor(p.module),
                    build_onnx=(lambda m=p.module, n=len(p.feature_columns): tc.export_onnx(m, n)),
                    reference="torch eager (inference_mode)",
                    framework="torch",
                    framework_version=tc.torch_version(),
                    output_columns=p.output_columns,
                    embed_dim=p.embed_dim,
                    metadata=dict(p.metadata),
                    # the first part carries the checkpoint; towers share one network
                    write_native_files=write_checkpoint if i == 0 else None,
                    related_models=[n for n in names if n != p.model_name],
                )
                for i, p in enumerate(parts)
            ]

        return Trained(d.name, columns, hparams, history, predict, units, model=net, features=features)

    def native_from_dir(model_name: str, version_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
        """Rebuild the eager module of ``model_name`` from the checkpoint of its network.

        The predictor takes the raw FP64 features (as the ONNX graph does) and prepares them with the
        checkpoint's feature plan (the numpy twin of the graph's preprocessing).
        """
        version_dir = Path(version_dir)
        ckpt_path = version_dir / CHECKPOINT_NAME
        if not ckpt_path.exists():  # a tower without its own checkpoint: the first part has it
            related = _related_first(version_dir)
            ckpt_path = version_dir.parent.parent / related / version_dir.name / CHECKPOINT_NAME
        trained = load(ckpt_path, None, {})
        units = trained.units()
        part = _model_part(version_dir, model_name)  # the spec's own name of a model exported under another
        unit = next(u for u in units if u.model_name == part)
        plan = trained.features.subset(unit.feature_columns) if trained.features is not None else None
        native = unit.native_predict
        return (lambda x: native(plan.prepare(x))) if plan is not None else native

    return ModelSpec(
        name=d.name,
        description=d.description,
        framework="torch",
        label_columns=d.label_columns,
        default_features=d.default_features,
        default_hparams=d.default_hparams,
        train=train,
        load=load,
        metrics=d.metrics,
        model_names=d.model_names,
        progress_total=lambda hp, rows: int(hp["epochs"]) * tc.steps_per_epoch(rows, int(hp["batch_size"])),
        atol=d.atol,
        native_from_dir=native_from_dir,
        notebook=d.notebook,
        test_hparams=d.test_hparams,
        hparam_rules=d.hparam_rules,
        labels_for=d.labels_for,
        split=d.split,
        evaluate=d.evaluate,
    )


def _related_first(version_dir: Path) -> str:
    """The model name that holds the checkpoint of a tower's network (the first of its related models)."""
    import json

    meta = json.loads((version_dir / "metadata.json").read_text(encoding="utf-8"))
    related = list(meta.get("related_models") or [])
    return related[0] if related else version_dir.parent.name


def _model_part(version_dir: Path, model_name: str) -> str:
    import json

    meta = json.loads((version_dir / "metadata.json").read_text(encoding="utf-8"))
    return str(meta.get("model_part") or model_name)


def label_tensor(y: Mapping[str, np.ndarray], name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y[name], dtype=np.float64))
