"""The epoch loop of a torch model over a streamed table (the in-memory loop is :mod:`torch_common`'s).

Each epoch reads every train row once through a seeded shuffle buffer (:mod:`exporter.models.streamed`); the
model's own hooks (:meth:`~exporter.models.torch_base.TorchModel.make_config`, ``build``, ``fit_scalers``,
``training_tensors``, ``loss``) are used unchanged, on bounded samples where they need statistics
(standardisation, regression target statistics: the train sample) and on each shuffled block for the training
tensors (two_tower's positive pairs and log sampling probabilities are those of the block).

After each epoch the loss on the validation sample is computed; as in memory, training stops after ``patience``
epochs without a lower validation loss (at most ``max_epochs``), the best epoch's weights are restored, and
``lr_schedule: plateau`` halves the learning rate after an epoch without improvement.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exporter.errors import ExporterError
from exporter.models import torch_common as tc
from exporter.models.base import Trained
from exporter.models.streamed import StreamTrainData, shuffled_blocks
from exporter.models.threads import torch_threads
from exporter.models.torch_base import DTYPE_KEY, FEATURES_KEY, TorchModel, targets_as


def train_stream(model: TorchModel[Any], stream: StreamTrainData) -> Trained:
    """Fit ``model`` on the streamed train rows (seeded: the same data and seed give the same weights)."""
    data = stream.data
    hparams, seed = data.hparams, data.seed
    tc.seed_everything(seed)
    config = model.make_config(data)
    config[FEATURES_KEY] = data.features.to_dict()
    config[DTYPE_KEY] = str(hparams.get("dtype", tc.LEGACY_DTYPE))
    dtype = tc.compute_dtype(config[DTYPE_KEY])
    net = tc.set_compute_dtype(model.build(config), dtype)
    model.fit_scalers(net, data.x_train)
    sample = targets_as(model.training_tensors(config, data.x_train, data.y_train), dtype)
    validation = targets_as(model.training_tensors(config, data.x_valid, data.y_valid), dtype)
    counter = model.log_counter(config)
    if counter is not None:  # one more read of the train rows: counts over the whole log (two_tower's logQ)
        for x, y in stream.chunks(0):
            counter.add(x, y)
    # the rows trained on: two_tower's positive pairs when they were counted, else every train row
    trained_rows = int(getattr(counter, "total", 0)) or stream.train_rows
    settings = tc.LoopSettings.of(hparams, rows=trained_rows, decay_scale=model.weight_decay_scale)
    epochs, batch_size = settings.max_epochs, settings.batch_size
    optimizer = settings.optimizer(net)
    progress = data.progress
    threads = torch_threads(data.threads, batch_size)
    with tc.intra_op_threads(threads):
        stopping = settings.stopping(
            net,
            optimizer,
            has_validation=len(validation[0]) > 0,
            first_point=tc._losses_before_training(net, model.loss, sample, validation),
            on_epoch=data.on_epoch,
        )
        steps = 0
        for epoch in range(1, epochs + 1):
            net.train()
            total, seen = 0.0, 0
            rng = np.random.default_rng([seed, epoch])
            for x, y in shuffled_blocks(stream.chunks(epoch), stream.buffer_rows, rng):
                tensors = targets_as(model.block_tensors(config, x, y, counter), dtype)
                for start in range(0, len(tensors[0]), batch_size):
                    batch = [t[start : start + batch_size] for t in tensors]
                    total += tc.train_step(net, model.loss, optimizer, batch, epoch) * len(batch[0])
                    stopping.after_step()
                    steps += 1
                    seen += len(batch[0])
                if progress is not None:
                    progress.update(len(x))
            if not seen:
                raise ExporterError("no training rows left after holding out evaluation rows")
            with stopping.judged():
                held = tc.validation_loss(net, model.loss, validation)
                if progress is not None:
                    progress.set_postfix({"epoch": epoch, "loss": f"{total / seen:.4f}", "validation": f"{held:.4f}"})
                stop = stopping.end_epoch(epoch, total / seen, held)
            if stop:
                break
        fit = stopping.finish(batch_size=batch_size, optimiser_steps=steps)
    trained = model._trained(net, config, list(data.columns), dict(hparams), fit.history, data.features)
    trained.threads = threads
    trained.stopping = fit.stopping
    return trained
