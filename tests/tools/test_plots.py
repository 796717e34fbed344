"""Notebook figures (exporter.tools.plots): right panels for each model, notes instead of empty axes, small PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.export.pipeline import Evaluation
from exporter.tools import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_training_curve_draws_train_and_validation_loss_and_marks_the_best_epoch():
    validation = [1.1, 0.55, 0.37, 0.30, 0.22, 0.35]  # epoch 6 got worse: epoch 5 is the one kept
    history = [{"step": i, "train_loss": 1.0 / i, "validation_loss": v} for i, v in enumerate(validation, start=1)]
    fig = plots.training_curve(history, step="epoch", title="deepfm: loss per epoch")
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["train", "validation"] and "best epoch 5 (kept)" in labels
    star = ax.get_lines()[labels.index("best epoch 5 (kept)")]
    assert list(star.get_xdata()) == [5] and list(star.get_ydata()) == [0.22]
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), validation)
    assert plots.best_step(history) == 5 and plots.best_step([]) is None
    assert ax.get_xlabel() == "epoch" and ax.get_title() == "deepfm: loss per epoch"
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_training_curve_in_load_mode_is_a_note():
    fig = plots.training_curve([])
    assert any("loaded, not trained" in t for t in texts(fig))


def _evaluation(heads: list[str], n: int = 400, seed: int = 0) -> Evaluation:
    rng = np.random.default_rng(seed)
    labels, preds = {}, {}
    for h in heads:
        if h == "label":
            labels[h] = (rng.random(n) < 0.3).astype(float)
            preds[h] = np.clip(labels[h] * 0.3 + rng.random(n) * 0.7, 0, 1)
        else:
            labels[h] = rng.gamma(2.0, 10.0, n)
            preds[h] = labels[h] + rng.normal(0, 3, n)
    return Evaluation({}, labels, preds)


def test_ctr_models_get_roc_precision_recall_and_calibration_panels():
    fig = plots.evaluation_plots(_evaluation(["label"]))
    assert [ax.get_title() for ax in fig.axes] == ["ROC: label", "precision-recall: label", "calibration: label"]
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("AUC 0.")
    assert fig.axes[1].get_legend().get_texts()[0].get_text().startswith("AP 0.")
    assert fig.axes[2].get_legend().get_texts()[1].get_text().startswith("ECE 0.")


def test_mmoe_gets_roc_and_predicted_vs_true_panels():
    fig = plots.evaluation_plots(_evaluation(["label", "watch_time", "gmv"]))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "ROC: label",
        "precision-recall: label",
        "calibration: label",
        "watch_time: predicted vs true",
        "gmv: predicted vs true",
    ]
    assert len(fig.axes[3].collections[0].get_offsets()) == 400


def _axis_texts(fig) -> list[str]:
    return [t for ax in fig.axes for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]


def test_plots_name_the_label_column_and_its_positive_value_never_clicks():
    ev = _evaluation(["label"])
    ev.diagnostics = {
        "heads": {"label": {"kind": "binary", "column": "outcome", "positive_class": "cp"}},
        "importance": {
            "method": "permutation",
            "rows": 400,
            "heads": {"label": {"metric": "auc_drop", "values": {"signal": 0.2, "noise": 0.0}}},
        },
    }
    fig = plots.evaluation_plots(ev)
    shown = _axis_texts(fig)
    assert [ax.get_title() for ax in fig.axes] == [
        "ROC: outcome",
        "precision-recall: outcome",
        "calibration: outcome",
        "feature importance: outcome",
    ]
    assert fig.axes[0].get_ylabel() == "true positive rate (share of outcome = cp)"
    assert fig.axes[0].get_xlabel() == "false positive rate (share of outcome \u2260 cp)"
    assert fig.axes[2].get_xlabel() == "predicted P(outcome = cp)"
    assert not [t for t in shown if "click" in t.lower()]
    bars = fig.axes[3]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["noise", "signal"]  # the largest on top
    assert bars.get_xlabel().startswith("AUC drop")


def test_regression_heads_are_named_by_their_label_column():
    ev = _evaluation(["watch_time"])
    ev.diagnostics = {"heads": {"watch_time": {"kind": "regression", "column": "minutes_watched"}}}
    (ax,) = plots.evaluation_plots(ev).axes
    assert ax.get_title() == "watch_time (minutes_watched): predicted vs true"
    assert ax.get_xlabel().startswith("true minutes_watched")


def test_scatter_is_subsampled_deterministically():
    ev = _evaluation(["watch_time"], n=5000)
    a = plots.evaluation_plots(ev).axes[0].collections[0].get_offsets()
    b = plots.evaluation_plots(ev).axes[0].collections[0].get_offsets()
    assert len(a) == plots.MAX_POINTS
    np.testing.assert_array_equal(a, b)


def test_no_labels_or_one_class_give_notes_not_errors():
    assert any(
        "no held-out labels" in t for t in texts(plots.evaluation_plots(Evaluation({}, {}, {"label": np.ones(3)})))
    )
    one_class = Evaluation({}, {"label": np.zeros(20)}, {"label": np.linspace(0, 1, 20)})
    assert any("one class" in t for t in texts(plots.evaluation_plots(one_class)))


def test_parity_scatter_has_one_panel_per_artifact_and_per_mmoe_head(exported_runs):
    _, runs = exported_runs
    fig = plots.parity_scatter(runs["two_tower"].artifacts)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["two_tower", "two_tower_item"]
    assert fig.axes[0].get_xlabel() == "native model (embedding value)"
    fig = plots.parity_scatter(runs["mmoe"].artifacts)
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["mmoe ctr", "mmoe watch_time", "mmoe gmv"]
    assert [ax.get_xlabel() for ax in fig.axes] == [
        "native model (P(label = 1))",
        "native model (watch_time, its own units)",
        "native model (gmv, its own units)",
    ]
    ctr_axis = fig.axes[0]
    # each head on its own scale: ctr stays within 0..1 instead of sharing gmv's axis
    assert ctr_axis.get_xlim()[1] < 1.5 and "max |diff|" in ctr_axis.get_title()


@pytest.mark.parametrize("heads", [1, 3])
def test_pngs_stay_small(heads):
    fig = plots.evaluation_plots(_evaluation(["label", "watch_time", "gmv"][:heads], n=20_000))
    png = plots.to_png(fig)
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) < 40_000 * len(fig.axes)


def test_figures_are_readable_at_notebook_width():
    fig = plots.evaluation_plots(_evaluation(["label", "watch_time", "gmv"]))
    assert fig.dpi >= 100
    width_px = fig.get_size_inches()[0] * fig.dpi
    assert 900 <= width_px <= 1200  # three panels fill a notebook's output width
    for ax in fig.axes:
        assert ax.xaxis.label.get_fontsize() >= 9 and ax.title.get_fontsize() >= 10
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 8
        assert "(" in ax.get_xlabel() and "(" in ax.get_ylabel(), "axes name their units"


def test_more_than_three_panels_wrap_onto_rows():
    fig, axes = plots._figure(5)
    assert len(axes) == 5 and len(fig.axes) == 5
    assert fig.get_size_inches()[0] == plots.PANEL[0] * plots.PANELS_PER_ROW


def test_training_curve_starts_before_training():
    history = [{"step": i, "train_loss": 1.0 / (i + 1), "validation_loss": 1.1 / (i + 1)} for i in range(0, 4)]
    (ax,) = plots.training_curve(history).axes
    assert list(ax.get_lines()[0].get_xdata()) == [0, 1, 2, 3]
    assert ax.get_xlabel() == "epoch (0: before training)" and "loss per row" in ax.get_ylabel()


def test_training_curve_keeps_the_epoch_0_loss_from_flattening_the_curve():
    history = [{"step": 0, "train_loss": 5.0, "validation_loss": 5.2}] + [
        {"step": i, "train_loss": 0.5 - 0.01 * i, "validation_loss": 0.52 - 0.005 * i} for i in range(1, 6)
    ]
    (ax,) = plots.training_curve(history).axes
    low, high = ax.get_ylim()
    assert high < 1.0 and low > 0.3, "the y-axis fits epochs >= 1"
    assert list(ax.get_lines()[0].get_xdata())[0] == 0, "epoch 0 is still drawn"
    assert any("off scale" in t and "5.2" in t for t in texts(plots.training_curve(history)))
    calm = [{"step": i, "train_loss": 1.0 - 0.1 * i, "validation_loss": 1.0 - 0.09 * i} for i in range(0, 4)]
    assert not any("off scale" in t for t in texts(plots.training_curve(calm)))
