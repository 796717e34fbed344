"""The moving average of a network's weights: its arithmetic, that the training loops judge, keep and export the
average, and that ``ema_decay`` is checked and recorded."""

from __future__ import annotations

import pytest
import torch

from exporter.errors import ExporterError
from exporter.models import get_spec
from exporter.models import torch_common as tc
from exporter.models import weight_average as wa
from exporter.training import hparams as H


def _net(value: float) -> torch.nn.Linear:
    net = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        net.weight.fill_(value)
        net.bias.fill_(-value)
    return net


def _set(net: torch.nn.Linear, value: float) -> None:
    with torch.no_grad():
        net.weight.fill_(value)
        net.bias.fill_(-value)


def _expected(values: list[float], decay: float, every: int, read_at: tuple[int, ...] = ()) -> float:
    """The bias-corrected average, written out: the weights at each fold (every ``every`` steps after the last
    fold, when the average is read at a step of ``read_at``, and at the end), each weighted by its block's
    ``1 - decay ** n`` and the later blocks' ``decay ** n``."""
    folds: list[tuple[float, int]] = []
    last = 0
    for step in range(1, len(values) + 1):
        if step - last >= every or step == len(values) or step in read_at:
            folds.append((values[step - 1], step - last))
            last = step
    total, weight = 0.0, 0.0
    for value, n in folds:
        total = total * decay**n + (1 - decay**n) * value
        weight = weight * decay**n + (1 - decay**n)
    return total / weight


@pytest.mark.parametrize("every", [1, 3])
def test_the_average_is_the_bias_corrected_moving_average_of_the_steps(every: int) -> None:
    values = [1.0, 4.0, -2.0, 0.5, 3.0, 7.0, -1.0]
    net = _net(0.0)
    avg = wa.WeightAverage(net, 0.8, every=every)
    for v in values:
        _set(net, v)
        avg.update()
    state = avg.averaged_state()
    want = _expected(values, 0.8, every)
    assert float(state["weight"][0, 0]) == pytest.approx(want, rel=1e-12)
    assert float(state["bias"][0]) == pytest.approx(-want, rel=1e-12)
    assert float(net.weight.detach()[0, 0]) == -1.0  # the live weights are untouched


def test_constant_weights_average_to_themselves_however_short_the_run() -> None:
    """The bias correction: an average started at zero is not pulled towards zero (nor towards the initial
    weights) after a few steps of a slow decay."""
    net = _net(2.5)
    avg = wa.WeightAverage(net, 0.999, every=4)
    for _ in range(6):
        avg.update()
    assert float(avg.averaged_state()["weight"][0, 0]) == pytest.approx(2.5, rel=1e-12)


def test_applied_swaps_the_average_in_and_the_live_weights_back_even_on_an_error() -> None:
    net = _net(1.0)
    avg = wa.WeightAverage(net, 0.5, every=1)
    avg.update()
    _set(net, 3.0)
    avg.update()  # average (0.5 * 1 + 1 * 3... bias corrected): between 1 and 3
    with avg.applied():
        inside = float(net.weight.detach()[0, 0])
    assert 1.0 < inside < 3.0 and float(net.weight.detach()[0, 0]) == 3.0
    with pytest.raises(RuntimeError), avg.applied():
        raise RuntimeError("validation failed")
    assert float(net.weight.detach()[0, 0]) == 3.0


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_the_open_unit_interval_is_no_average(decay: float) -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        wa.WeightAverage(_net(0.0), decay)


def _loop(patience: int, ema_decay: float) -> tuple[torch.nn.Linear, list[float], dict]:
    """A tiny loop driving :class:`tc.EarlyStopping` as the training loops do; the weights of step k are k."""
    net = _net(0.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    stopping = tc.EarlyStopping(
        net,
        optimizer,
        max_epochs=3,
        patience=patience,
        lr_schedule="none",
        learning_rate=0.0,
        has_validation=True,
        ema_decay=ema_decay,
    )
    values: list[float] = []
    judged: list[float] = []
    for epoch in (1, 2, 3):
        for _ in range(5):
            values.append(float(len(values) + 1))
            _set(net, values[-1])
            stopping.after_step()
        with stopping.judged():
            judged.append(float(net.weight.detach()[0, 0]))
            # the validation loss falls at epochs 1 and 2 and rises at 3: epoch 2 is the best
            stopping.end_epoch(epoch, 1.0, {1: 0.5, 2: 0.4, 3: 0.6}[epoch])
        assert float(net.weight.detach()[0, 0]) == values[-1]  # training goes on from the live weights
    fit = stopping.finish()
    return net, judged, fit.stopping


def test_early_stopping_judges_and_restores_the_averaged_weights_of_the_best_epoch() -> None:
    net, judged, record = _loop(patience=3, ema_decay=0.9)
    steps = [float(k) for k in range(1, 16)]
    want = [_expected(steps[: 5 * e], 0.9, wa.EVERY, read_at=(5, 10)) for e in (1, 2, 3)]
    assert judged == pytest.approx(want, rel=1e-12)
    assert all(j < s for j, s in zip(judged, (5.0, 10.0, 15.0), strict=True))  # the average lags the live weights
    assert record["best_epoch"] == 2 and record["ema_decay"] == 0.9
    assert float(net.weight.detach()[0, 0]) == pytest.approx(want[1], rel=1e-12)


def test_without_early_stopping_the_run_ends_on_the_average_and_without_averaging_on_the_live_weights() -> None:
    net, _, record = _loop(patience=0, ema_decay=0.9)
    steps = [float(k) for k in range(1, 16)]
    assert float(net.weight.detach()[0, 0]) == pytest.approx(
        _expected(steps, 0.9, wa.EVERY, read_at=(5, 10)), rel=1e-12
    )
    net, judged, record = _loop(patience=0, ema_decay=0.0)
    assert judged == [5.0, 10.0, 15.0] and float(net.weight.detach()[0, 0]) == 15.0 and record["ema_decay"] == 0.0


@pytest.mark.parametrize(("model", "decay"), [("deepfm", 0.999), ("mmoe", 0.999), ("two_tower", 0.998)])
def test_every_torch_model_averages_by_default(model: str, decay: float) -> None:
    assert get_spec(model).default_hparams["ema_decay"] == decay and tc.DEFAULT_EMA_DECAY == 0.999


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0, True),
        (0.0, True),
        (0.99, True),
        (1, False),
        (1.0, False),
        (-0.01, False),
        ("0.9", False),
        (True, False),
        (float("nan"), False),
    ],
)
def test_ema_decay_is_zero_or_in_the_unit_interval(value: object, ok: bool) -> None:
    spec = get_spec("deepfm")
    if ok:
        H.check_hparam_values(spec, {"ema_decay": value})
    else:
        with pytest.raises(ExporterError, match=r"ema_decay of deepfm must be 0 \(no averaging"):
            H.check_hparam_values(spec, {"ema_decay": value})
