"""Early stopping: the validation rows decide, the best epoch (round) is what is exported, the test rows never
decide, and an under-trained or trivial model is flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from exporter import cli
from exporter.export import pipeline
from exporter.models import torch_common as tc
from exporter.training import data as D
from exporter.training import quality_gate as Q


def _loss(net: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(net(batch[0]).squeeze(1), batch[1])


def _validation_loss(net: torch.nn.Module, tensors: list[torch.Tensor]) -> float:
    with torch.inference_mode():
        return float(_loss(net, tensors))


def test_a_rising_validation_loss_stops_training_and_restores_the_best_epoch() -> None:
    """Validation labels are the training labels flipped: the better the fit, the worse the validation loss."""
    torch.manual_seed(0)
    x = torch.randn(600, 3, dtype=torch.float64)
    y = (x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) > 0).double()
    net = torch.nn.Linear(3, 1).double()
    validation = [x[500:], 1.0 - y[500:]]
    fitted = tc.fit_loop(
        model=net,
        loss_fn=_loss,
        train_tensors=[x[:500], y[:500]],
        validation_tensors=validation,
        max_epochs=40,
        batch_size=50,
        learning_rate=0.5,  # large: every epoch fits the (flipped) truth better
        weight_decay=0.0,
        seed=0,
        progress=None,
        patience=3,
    )
    s, history = fitted.stopping, fitted.history
    assert s["stopped_because"] == "patience" and s["epochs_run"] == s["best_epoch"] + 3 < 40
    losses = {h["step"]: h["validation_loss"] for h in history}
    assert s["best_epoch"] == min((k for k in losses if k > 0), key=losses.__getitem__)
    assert losses[s["epochs_run"]] > losses[s["best_epoch"]]  # the last epoch was worse ...
    assert _validation_loss(net, validation) == pytest.approx(losses[s["best_epoch"]], rel=1e-12)  # ... not kept


def test_max_epochs_is_the_budget_when_validation_keeps_improving() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 2, dtype=torch.float64)
    y = (x[:, 0] > 0).double()
    fitted = tc.fit_loop(
        model=torch.nn.Linear(2, 1).double(),
        loss_fn=_loss,
        train_tensors=[x[:300], y[:300]],
        validation_tensors=[x[300:], y[300:]],
        max_epochs=4,
        batch_size=32,
        learning_rate=0.01,
        weight_decay=0.0,
        seed=0,
        progress=None,
        patience=3,
    )
    assert fitted.stopping["stopped_because"] == "max_epochs" and fitted.stopping["epochs_run"] == 4
    assert [h["step"] for h in fitted.history] == [0, 1, 2, 3, 4]
    assert "under-trained" in " ".join(Q.training_warnings(fitted.stopping))


def test_a_small_table_gets_smaller_batches_so_an_epoch_has_enough_steps() -> None:
    assert tc.effective_batch_size(256, 236) == 16  # 15 steps an epoch instead of 1
    assert tc.effective_batch_size(256, 14_000) == 256
    assert tc.effective_batch_size(8, 236) == 8  # a batch asked smaller stays


@pytest.mark.parametrize("model", ["deepfm", "xgb"])
def test_the_test_rows_never_decide_when_training_stops(model: str, tmp_path: Path) -> None:
    """Poisoned test labels and features (flipped, noise) change nothing of the training run."""
    params = pipeline.ExportParams(
        model=model,
        rows=1500,
        seed=3,
        hparams={"max_epochs": 8} if model == "deepfm" else {"n_estimators": 60},
        artifacts=tmp_path,
        progress=False,
    )
    prep = pipeline.prepare(params)
    clean = pipeline.fit(prep)
    prep.y_heldout = {k: 1.0 - v for k, v in prep.y_heldout.items()}
    prep.x_heldout = np.random.default_rng(0).normal(size=prep.x_heldout.shape) * 1e3
    poisoned = pipeline.fit(prep)
    for run in (clean, poisoned):  # the refit's wall time differs between runs
        run.stopping["refit"].pop("seconds", None)
    assert poisoned.stopping == clean.stopping and poisoned.history == clean.history
    x = prep.x_valid[:50]
    np.testing.assert_array_equal(poisoned.predict(x)["label"], clean.predict(x)["label"])


def test_the_split_has_train_validation_and_test_rows_recorded_in_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.models.deepfm import DeepFMModel

    monkeypatch.setattr(DeepFMModel, "weight_decay_scale", 1.0)  # 1 / ~1,400 rows: under the cap
    result = pipeline.run(
        pipeline.ExportParams(
            model="deepfm", rows=2000, seed=1, hparams={"max_epochs": 2}, artifacts=tmp_path, progress=False
        )
    )
    training = result.artifacts[0].metadata["training"]
    assert training["train_rows"] + training["validation_rows"] + training["test_rows"] == 2000
    assert training["heldout_rows"] == training["test_rows"] and 0.15 < training["test_rows"] / 2000 < 0.25
    assert 0.05 < training["validation_rows"] / 2000 < 0.15
    assert training["split"]["rule"].startswith("xxhash64") and training["split"]["seed"] == 1
    stop = training["early_stopping"]
    assert stop["max_epochs"] == 2 and stop["best_epoch"] in (1, 2) and stop["stopped_because"] == "max_epochs"
    assert {"train_loss", "validation_loss"} <= set(training["final_loss"])
    # deepfm's default weight_decay is auto: its scale over the rows trained on, recorded as the value used
    assert training["hyperparameters"]["weight_decay"] == "auto"
    assert stop["weight_decay"] == pytest.approx(1.0 / training["train_rows"])


def test_auto_weight_decay_shrinks_with_the_rows_and_is_capped() -> None:
    assert tc.resolve_weight_decay("auto", 70_000, 20.0) == pytest.approx(20.0 / 70_000)
    assert tc.resolve_weight_decay("auto", 700_000, 20.0) == pytest.approx(20.0 / 700_000)
    assert tc.resolve_weight_decay("auto", 236, 20.0) == tc.AUTO_WEIGHT_DECAY_CAP  # 0.085 would pin every weight
    assert tc.resolve_weight_decay("auto", 0, 20.0) == tc.AUTO_WEIGHT_DECAY_CAP
    assert tc.resolve_weight_decay(1e-5, 70_000, 20.0) == 1e-5  # a number is used as given
    assert tc.resolve_weight_decay(0, 70_000, 20.0) == 0.0


@pytest.mark.parametrize(
    ("value", "ok"), [("auto", True), (0, True), (3e-4, True), ("fast", False), (-1e-5, False), (True, False)]
)
def test_weight_decay_is_a_non_negative_number_or_auto(value: object, ok: bool) -> None:
    from exporter.errors import ExporterError
    from exporter.models import get_spec
    from exporter.training.hparams import resolve_hparams

    if ok:
        assert resolve_hparams(get_spec("mmoe"), {"weight_decay": value})["weight_decay"] == value
    else:
        with pytest.raises(ExporterError, match="weight_decay of mmoe must be a non-negative number, or auto"):
            resolve_hparams(get_spec("mmoe"), {"weight_decay": value})


def test_a_rows_side_depends_on_the_row_alone() -> None:
    frame = D.synthetic_dataset(400, 0)
    train, valid, test, _ = D.three_way_split(frame, seed=5)
    more = pd.concat([frame, D.synthetic_dataset(100, 1)], ignore_index=True)
    train2, valid2, test2, _ = D.three_way_split(more, seed=5)
    assert set(test) == set(test2[test2 < 400]) and set(valid) == set(valid2[valid2 < 400])
    tiny = frame.head(10)
    assert all(len(part) for part in D.three_way_split(tiny, seed=0)[:3])  # every part gets a row


def test_xgb_exports_only_the_best_rounds_trees(tmp_path: Path) -> None:
    result = pipeline.run(
        pipeline.ExportParams(
            model="xgb",
            rows=3000,
            seed=2,
            artifacts=tmp_path,
            progress=False,
            hparams={"n_estimators": 400, "learning_rate": 0.9, "max_depth": 6, "early_stopping_rounds": 5},
        )
    )
    stop = result.trained.stopping
    assert stop["stopped_because"] == "early_stopping_rounds" and stop["best_round"] < stop["rounds_run"] < 400
    version = Path(result.artifacts[0].path)
    graph = onnx.load(str(version / "model.onnx")).graph
    ensemble = next(n for n in graph.node if n.op_type.startswith("TreeEnsemble"))
    tree_ids = next(a.ints for a in ensemble.attribute if a.name == "nodes_treeids")
    assert len(set(tree_ids)) == stop["best_round"]  # binary:logistic: one tree a round

    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(version / "model.ubj"))
    assert booster.num_boosted_rounds() == stop["best_round"]
    x = result.prepared.x_heldout[:200]
    raw = result.prepared.raw_heldout[:200]
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["predictions"], {"features": np.ascontiguousarray(raw)})[0]
    np.testing.assert_allclose(got, booster.inplace_predict(x), atol=1e-5)
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["training"]["early_stopping"]["best_round"] == stop["best_round"]


def test_a_tiny_table_is_flagged_under_trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = D.synthetic_dataset(80, 4)
    frame.to_csv(tmp_path / "tiny.csv", index=False)
    code = cli.main(
        [
            "export",
            "deepfm",
            "--data",
            str(tmp_path / "tiny.csv"),
            "--param",
            "max_epochs=2",
            "--artifacts",
            str(tmp_path / "art"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "WARNING" in out and "under-trained" in out
    meta = json.loads(next((tmp_path / "art").glob("deepfm/*/metadata.json")).read_text())
    assert "under-trained" in meta["quality"]["warning"]


def test_a_model_no_better_than_a_constant_is_flagged() -> None:
    labels = {"label": np.array([0.0, 1.0] * 50)}
    quality = Q.assess({"auc": 0.62, "logloss": 0.75, "base_rate": 0.5}, labels)
    assert "no better than always predicting the base rate" in quality["warning"]
    assert "warning" not in Q.assess({"auc": 0.62, "logloss": 0.6, "base_rate": 0.5}, labels)
    assert Q.training_warnings({"best_epoch": 0, "epochs_run": 3, "monitor": "validation_loss"})


class _Stop(Exception):
    pass


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_every_epoch_reports_its_validation_loss_and_a_raising_hook_stops_training(
    streaming: str, tmp_path: Path
) -> None:
    """``Prepared.on_epoch`` (what ``tune`` prunes with): once per epoch, the loss the curve records; what the
    hook raises ends training, in memory and streamed."""
    data = tmp_path / "log.parquet"
    D.synthetic_dataset(3000, 4).to_parquet(data, index=False)
    params = pipeline.ExportParams(
        model="deepfm",
        data_path=data,
        streaming=streaming,
        hparams={"max_epochs": 4, "patience": 0},
        artifacts=tmp_path / "art",
        progress=False,
    )
    prep = pipeline.prepare(params)
    assert (prep.stream is not None) == (streaming == "on")
    seen: list[tuple[int, float]] = []
    prep.on_epoch = lambda epoch, loss: seen.append((epoch, loss))
    trained = pipeline.fit(prep)
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert [loss for _, loss in seen] == [h["validation_loss"] for h in trained.history[1:]]

    def stop_at_two(epoch: int, loss: float) -> None:
        if epoch == 2:
            raise _Stop(loss)

    prep = pipeline.prepare(params)
    prep.on_epoch = stop_at_two
    with pytest.raises(_Stop):
        pipeline.fit(prep)
