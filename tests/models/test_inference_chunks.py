"""Forward passes outside training take bounded chunks of rows: the memory of a history model's activations
(DIN's [rows, max_length, 4 x embed_dim] tensors) stays flat whatever the held-out, validation or parity rows."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from exporter.export import pipeline
from exporter.models import torch_common as tc
from exporter.training import data as D


class Recorder(nn.Module):
    """A linear layer that remembers the largest batch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2).double()
        self.largest = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, len(x))
        return self.linear(x)


def test_in_chunks_gives_the_single_pass_answer_in_bounded_batches():
    net = Recorder()
    x = np.random.default_rng(0).normal(size=(3 * tc.INFERENCE_ROWS + 5, 3))
    with torch.inference_mode():
        whole = net(torch.from_numpy(x)).numpy()
    net.largest = 0
    got = tc.in_chunks(net, x)
    assert net.largest == tc.INFERENCE_ROWS
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-12)
    as_dict = tc.in_chunks(lambda t: {"a": net(t), "b": net(t)[:, :1]}, x)
    assert as_dict["a"].shape == (len(x), 2) and as_dict["b"].shape == (len(x), 1)
    assert tc.in_chunks(net, x[:0]).shape == (0, 2)  # no rows: one empty call, the right shape


def test_the_mean_loss_in_chunks_is_the_mean_over_every_row():
    net = Recorder()
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2 * tc.INFERENCE_ROWS + 17, 3)))
    y = torch.from_numpy(rng.integers(0, 2, (len(x), 2)).astype(np.float64))

    def loss(m: Recorder, batch: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(m(batch[0]), batch[1])

    with torch.inference_mode():
        whole = float(loss(net, [x, y]))
    net.largest = 0
    assert abs(tc.validation_loss(net, loss, [x, y]) - whole) < 1e-12
    assert net.largest == tc.INFERENCE_ROWS


def test_a_trained_models_predictions_and_validation_loss_take_bounded_batches(tmp_path):
    rows = 3 * tc.INFERENCE_ROWS
    frame = D.synthetic_dataset(rows, 4)
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    params = pipeline.ExportParams(
        model="deepfm", data_path=tmp_path / "log.parquet", hparams={"epochs": 1, "refit": False}, artifacts=tmp_path
    )
    params.progress = False
    prep = pipeline.prepare(params)
    trained = pipeline.fit(prep, refit=False)
    seen: list[int] = []
    trained.model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    big = np.concatenate([prep.x_heldout] * 3)  # more rows than one chunk
    assert len(big) > tc.INFERENCE_ROWS
    trained.predict(big)
    assert seen and max(seen) <= tc.INFERENCE_ROWS and sum(seen) == len(big)
    first = trained.history[0]
    assert first["step"] == 0 and np.isfinite(first["train_loss"]) and np.isfinite(first["validation_loss"])


def test_the_curves_first_point_uses_a_bounded_sample_of_the_training_rows():
    net = Recorder()
    n = tc.FIRST_POINT_ROWS + 1000
    x = torch.zeros((n, 3), dtype=torch.float64)  # every row scores the same: the loss depends on the labels only
    y = torch.zeros((n, 2), dtype=torch.float64)
    y[tc.FIRST_POINT_ROWS :] = 1.0  # rows past the sample are the only positives

    def loss(m: Recorder, batch: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(m(batch[0]), batch[1])

    sample = tc.mean_loss(net, loss, [x[: tc.FIRST_POINT_ROWS], y[: tc.FIRST_POINT_ROWS]])
    every_row = tc.mean_loss(net, loss, [x, y])
    assert abs(sample - every_row) > 1e-3
    result = tc.fit_loop(
        model=net, loss_fn=loss, train_tensors=[x, y], validation_tensors=[x[:10], y[:10]], max_epochs=1,
        batch_size=4096, learning_rate=1e-3, weight_decay=0.0, seed=0, progress=None, threads=1,
    )  # fmt: skip
    first = result.history[0]
    assert first["step"] == 0 and abs(first["train_loss"] - sample) < 1e-12
