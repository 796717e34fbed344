"""The epoch loop of a torch model over a streamed table (the in-memory loop is :mod:`torch_common`'s).

Each epoch reads every train row once through a seeded shuffle buffer (:mod:`exporter.models.streamed`); the
model's own hooks (:meth:`~exporter.models.torch_base.TorchModel.make_config`, ``build``, ``fit_scalers``,
``training_tensors``, ``loss``) are used unchanged, on bounded samples where they need statistics
(standardisation, regression target statistics: the train sample) and on each shuffled block for the training
tensors (two_tower's positive pairs and log sampling probabilities are those of the block).

After each epoch the loss on the validation sample is computed; with a ``patience`` hyper-parameter, training
stops after that many epochs without a lower validation loss and the best epoch's weights are restored.
Without one it runs every epoch (kept simple on purpose: no learning-rate schedule, no checkpoint on disk).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from exporter.errors import ExporterError
from exporter.models import torch_common as tc
from exporter.models.base import Trained
from exporter.models.streamed import StreamTrainData, shuffled_blocks
from exporter.models.torch_base import FEATURES_KEY, TorchModel


def train_stream(model: TorchModel[Any], stream: StreamTrainData) -> Trained:
    """Fit ``model`` on the streamed train rows (seeded: the same data and seed give the same weights)."""
    data = stream.data
    hparams, seed = data.hparams, data.seed
    tc.seed_everything(seed)
    config = model.make_config(data)
    config[FEATURES_KEY] = data.features.to_dict()
    net = model.build(config).to(tc.DTYPE)
    model.fit_scalers(net, data.x_train)
    sample = model.training_tensors(config, data.x_train, data.y_train)
    validation = model.training_tensors(config, data.x_heldout, data.y_heldout)
    epochs, batch_size = int(hparams["epochs"]), int(hparams["batch_size"])
    patience = hparams.get("patience")
    patience = int(patience) if patience is not None else None
    optimizer = torch.optim.Adam(
        net.parameters(), lr=float(hparams["learning_rate"]), weight_decay=float(hparams.get("weight_decay", 0.0))
    )
    progress = data.progress
    with tc.single_thread():
        history = [tc._losses_before_training(net, model.loss, sample, validation)]
        best, best_state, since = math.inf, None, 0
        for epoch in range(1, epochs + 1):
            net.train()
            total, seen = 0.0, 0
            rng = np.random.default_rng([seed, epoch])
            for x, y in shuffled_blocks(stream.chunks(epoch), stream.buffer_rows, rng):
                tensors = model.training_tensors(config, x, y)
                for start in range(0, len(tensors[0]), batch_size):
                    batch = [t[start : start + batch_size] for t in tensors]
                    optimizer.zero_grad(set_to_none=True)
                    loss = model.loss(net, batch)
                    if not torch.isfinite(loss):
                        raise ExporterError(
                            f"training diverged at epoch {epoch} (loss {loss.item()}); lower learning_rate"
                        )
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(batch[0])
                    seen += len(batch[0])
                if progress is not None:
                    progress.update(len(x))
            if not seen:
                raise ExporterError("no training rows left after holding out evaluation rows")
            net.eval()
            with torch.inference_mode():
                held = float(model.loss(net, validation)) if len(validation[0]) else float("nan")
            history.append({"step": epoch, "train_loss": total / seen, "heldout_loss": held})
            if progress is not None:
                progress.set_postfix({"epoch": epoch, "loss": f"{total / seen:.4f}", "validation": f"{held:.4f}"})
            if patience is None or not math.isfinite(held):
                continue
            if held < best:
                best, since = held, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since += 1
                if since >= patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
    net.eval()
    return model._trained(net, config, list(data.columns), dict(hparams), history, data.features)
