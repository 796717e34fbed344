"""Refit: the validation rows choose how long to train, then the exported model trains on training + validation
rows for exactly that long; the test rows stay out of both fits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from exporter import cli
from exporter.errors import ExporterError
from exporter.export import pipeline
from exporter.models import get_spec
from exporter.models import torch_common as tc
from exporter.training import refit as RF
from exporter.training.hparams import resolve_hparams


def _params(model: str, tmp_path: Path, **hparams: Any) -> pipeline.ExportParams:
    small = {"max_epochs": 4} if model != "xgb" else {"n_estimators": 40}
    return pipeline.ExportParams(
        model=model, rows=1500, seed=3, hparams={**small, **hparams}, artifacts=tmp_path, progress=False
    )


def test_auto_refits_up_to_the_row_cap_and_true_or_false_decide_alone() -> None:
    assert RF.decide({"refit": "auto"}, 70_000, 10_000) == (True, "refit: auto, 80,000 training and validation rows "
                                                           f"(at most {RF.AUTO_MAX_ROWS:,})")  # fmt: skip
    wanted, why = RF.decide({"refit": "auto"}, RF.AUTO_MAX_ROWS, 1)
    assert not wanted and f"more than {RF.AUTO_MAX_ROWS:,}" in why
    assert RF.decide({"refit": True}, 10 * RF.AUTO_MAX_ROWS, 1)[0] is True
    assert RF.decide({"refit": False}, 90, 10)[0] is False
    # nothing chose an epoch or round without validation rows: no refit, whatever the setting
    assert RF.decide({"refit": True}, 100, 0) == (False, "no validation rows chose an epoch or round")


@pytest.mark.parametrize("model", ["xgb", "deepfm", "mmoe", "two_tower"])
@pytest.mark.parametrize("value", ["yes", 1, None, "true"])
def test_refit_is_auto_true_or_false(model: str, value: object) -> None:
    with pytest.raises(ExporterError, match=f"refit of {model} must be auto .*, true or false, got"):
        resolve_hparams(get_spec(model), {"refit": value})
    assert resolve_hparams(get_spec(model), {})["refit"] == "auto"  # the default


def test_a_replayed_schedule_sets_each_epochs_learning_rate() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 2, dtype=torch.float64)
    y = (x[:, 0] > 0).double()

    def loss(net: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(net(batch[0]).squeeze(1), batch[1])

    net = torch.nn.Linear(2, 1).double()
    fitted = tc.fit_loop(
        model=net,
        loss_fn=loss,
        train_tensors=[x, y],
        validation_tensors=[x[:0], y[:0]],
        max_epochs=3,
        batch_size=50,
        learning_rate=0.1,
        weight_decay=0.0,
        seed=0,
        progress=None,
        patience=0,
        lr_schedule="plateau",  # replaced by the replayed rates
        learning_rates=(0.1, 0.05, 0.0125),
    )
    assert [h["learning_rate"] for h in fitted.history if h["step"] >= 1] == [0.1, 0.05, 0.0125]


@pytest.mark.parametrize("model", ["xgb", "deepfm", "mmoe", "two_tower"])
def test_the_exported_model_is_the_refit_on_training_and_validation_rows(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refit sees every training and validation row and no test row, for the first fit's chosen count; the
    artifact is the refit's model; the first fit's curve and record stay."""
    spec = get_spec(model)
    seen: dict[str, Any] = {}
    original = type(spec).refit

    def spy(self: Any, data: Any, first: Any) -> Any:
        seen.update(rows=len(data.x_train), valid=len(data.x_valid), x=data.x_train.copy(), first=first)
        again = original(self, data, first)
        seen["again"] = again
        return again

    monkeypatch.setattr(type(spec), "refit", spy)
    result = pipeline.run(_params(model, tmp_path))
    prep, trained = result.prepared, result.trained
    assert seen["rows"] == len(prep.x_train) + len(prep.x_valid) and seen["valid"] == 0
    np.testing.assert_array_equal(seen["x"], np.concatenate([prep.x_train, prep.x_valid]))
    assert trained is seen["again"] and trained.history == seen["first"].history
    first_choice = seen["first"].stopping.get("best_epoch") or seen["first"].stopping.get("best_round")
    meta = json.loads((Path(result.artifacts[0].path) / "metadata.json").read_text())
    refit = meta["training"]["early_stopping"]["refit"]
    assert refit["applied"] is True and refit["rows"] == seen["rows"]
    assert refit.get("epochs", refit.get("rounds")) == first_choice >= 1
    # the artifact answers as the refit model, not as the first fit
    x = prep.x_heldout[:64]
    head = next(iter(trained.predict(x)))
    refit_answer, first_answer = trained.predict(x)[head], seen["first"].predict(x)[head]
    assert not np.allclose(refit_answer, first_answer)
    np.testing.assert_allclose(result.evaluation.predictions[head][:64], refit_answer, rtol=1e-6, atol=1e-9)


def test_torch_refit_replays_the_chosen_epochs_at_their_learning_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    original = tc.fit_loop

    def spy(**kwargs: Any) -> Any:
        calls.append({k: kwargs[k] for k in ("max_epochs", "patience", "learning_rates")})
        calls[-1]["rows"] = len(kwargs["train_tensors"][0])
        return original(**kwargs)

    monkeypatch.setattr(tc, "fit_loop", spy)
    result = pipeline.run(_params("deepfm", tmp_path, max_epochs=6, learning_rate=0.05))
    first, again = calls
    stop = result.trained.stopping
    assert first["max_epochs"] == 6 and first["patience"] == 3 and first["learning_rates"] == ()
    assert again["max_epochs"] == stop["best_epoch"] and again["patience"] == 0
    rates = [h["learning_rate"] for h in result.trained.history if h["step"] >= 1]
    assert list(again["learning_rates"]) == rates[: stop["best_epoch"]]
    assert again["rows"] == first["rows"] + len(result.prepared.x_valid)


def test_refit_false_exports_the_first_fit_and_says_so(tmp_path: Path) -> None:
    result = pipeline.run(_params("deepfm", tmp_path, refit=False))
    refit = result.trained.stopping["refit"]
    assert refit == {"applied": False, "why": "refit: false"}
    again = pipeline.run(_params("deepfm", tmp_path / "b", refit=True))
    assert again.trained.stopping["refit"]["applied"] is True
    x = result.prepared.x_heldout[:32]
    assert not np.allclose(result.trained.predict(x)["label"], again.trained.predict(x)["label"])
    # the summary and the model card say what was exported
    from exporter.tools.summary import format_result

    assert "exported: the first fit (refit: false)" in format_result(result)
    rows = len(again.prepared.x_train) + len(again.prepared.x_valid)
    line = f"exported: refit on {rows:,} training + validation rows for {again.trained.stopping['best_epoch']} epochs"
    assert line in format_result(again)
    assert line in (Path(again.artifacts[0].path) / "README.md").read_text()
    from exporter.tools.notebook_support import describe_run

    assert "the refit trains on them too" in describe_run(again.prepared)
    assert "the refit trains on them too" not in describe_run(result.prepared)


def test_a_refit_run_fits_its_vocabulary_on_the_validation_rows_too(tmp_path: Path) -> None:
    """A category seen only in validation rows gets its own embedding row when the model refits on them."""
    frame = pd.DataFrame({"item_id": np.arange(400) % 40, "x": np.linspace(0, 1, 400)})
    frame["label"] = (frame["item_id"] % 2).astype(np.int64)
    from exporter.training import data as D

    # rows split by their content: give item 999 to rows that then fall on the validation side
    for row in range(len(frame)):
        before = frame.loc[row, "item_id"]
        frame.loc[row, "item_id"] = 999
        _, valid, _, _ = D.three_way_split(frame, seed=0)
        if row not in set(valid):
            frame.loc[row, "item_id"] = before
        elif (frame["item_id"] == 999).sum() == 3:
            break
    train, valid, _, _ = D.three_way_split(frame, seed=0)
    assert set(np.flatnonzero(frame["item_id"] == 999)) <= set(valid)
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)

    def vocabulary(refit: bool) -> int:
        prep = pipeline.prepare(
            pipeline.ExportParams(
                model="deepfm",
                data_path=path,
                feature_columns=["item_id", "x"],
                hparams={"max_epochs": 1, "refit": refit},
                artifacts=tmp_path / str(refit),
                progress=False,
            )
        )
        item = next(f for f in prep.features.features if f.name == "item_id")
        return len(item.keys)

    assert vocabulary(True) == vocabulary(False) + 1


def test_refit_true_on_a_streamed_run_fails_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "log.csv"
    from exporter.training import data as D

    D.synthetic_dataset(300, 0).to_csv(data, index=False)
    code = cli.main(
        ["export", "deepfm", "--data", str(data), "--streaming", "on", "--param", "refit=true",
         "--artifacts", str(tmp_path / "a"), "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "refit: true refits in memory only" in err and "--streaming off" in err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("metadata.json"))


def test_a_streamed_run_records_why_it_did_not_refit(tmp_path: Path) -> None:
    data = tmp_path / "log.csv"
    from exporter.training import data as D

    D.synthetic_dataset(600, 0).to_csv(data, index=False)
    result = pipeline.run(
        pipeline.ExportParams(
            model="deepfm",
            data_path=data,
            streaming="on",
            hparams={"max_epochs": 2},
            artifacts=tmp_path / "a",
            progress=False,
        )
    )
    refit = result.trained.stopping["refit"]
    assert refit["applied"] is False and "streamed run does not refit" in refit["why"]


def test_a_tuners_trials_do_not_refit_and_its_chosen_trial_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.tracking.tune import SearchOptions, tune

    flags: list[bool] = []
    original = pipeline.fit

    def spy(prep: Any, *, refit: bool = True) -> Any:
        flags.append(refit)
        return original(prep, refit=refit)

    monkeypatch.setattr(pipeline, "fit", spy)
    found = tune(
        _params("deepfm", tmp_path, max_epochs=2),
        trials=2,
        options=SearchOptions(tracking_enabled=False, echo=lambda _: None),
    )
    assert flags == [False, False]
    stop = found.export.trained.stopping
    assert stop["refit"]["applied"] is True
    meta = json.loads((Path(found.export.artifacts[0].path) / "metadata.json").read_text())
    assert meta["training"]["early_stopping"]["refit"]["applied"] is True
