"""Evaluation beyond AUC (average precision, calibration, feature importance), the label and column options
(--positive-class, --exclude-columns) and the warnings for features that carry nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter import cli
from exporter.export import pipeline
from exporter.models import get_spec
from exporter.tools import summary
from exporter.training import diagnostics as DG

ROWS = 1500


def session_log(n: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """A table with one informative column, a noise column and four that carry nothing; label 'cp'/'no'."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    return pd.DataFrame(
        {
            "session_id": np.arange(n) + 10_000,
            "visitor_name": [f"visitor {i}" for i in range(n)],
            "signal": signal,
            "noise": rng.normal(size=n),
            "constant": 7.0,
            "empty": np.nan,
            "city": rng.choice(["north", "south", "east"], n),
            "outcome": np.where(rng.random(n) < 1 / (1 + np.exp(-3 * signal)), "cp", "no"),
            "tier": rng.choice(["gold", "silver", "bronze"], n),
        }
    )


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sessions") / "sessions.csv"
    session_log().to_csv(path, index=False)
    return path


def export_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["export", *args, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- metrics


def test_average_precision_equals_sklearns():
    from sklearn.metrics import average_precision_score

    y = np.array([0, 1, 1, 0, 1, 0, 0, 1, 0, 0], dtype=float)
    score = np.array([0.1, 0.9, 0.35, 0.4, 0.8, 0.2, 0.65, 0.3, 0.05, 0.5])
    assert DG.average_precision(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)
    assert DG.average_precision(y, score) == pytest.approx((1 + 1 + 3 / 6 + 4 / 7) / 4, abs=1e-12)  # by hand
    assert np.isnan(DG.average_precision(np.zeros(5), np.linspace(0, 1, 5)))


def test_expected_calibration_error_is_near_zero_when_calibrated_and_large_when_shifted():
    rng = np.random.default_rng(0)
    p = rng.random(50_000)
    y = (rng.random(50_000) < p).astype(float)
    assert DG.expected_calibration_error(y, p) < 0.015
    shifted = np.clip(p + 0.25, 0, 1)
    assert DG.expected_calibration_error(y, shifted) > 0.2
    curve = DG.reliability(y, p)
    assert len(curve["predicted"]) == DG.CALIBRATION_BINS and sum(curve["rows"]) == 50_000


def test_permutation_importance_ranks_an_informative_column_above_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 3))
    y = (rng.random(3000) < 1 / (1 + np.exp(-3 * x[:, 1]))).astype(float)
    target = 2.0 * x[:, 2] + rng.normal(0, 0.1, 3000)

    def predict(m: np.ndarray) -> dict[str, np.ndarray]:
        return {"label": 1 / (1 + np.exp(-3 * m[:, 1])), "amount": 2.0 * m[:, 2]}

    found = DG.permutation_importance(
        predict,
        x,
        {"label": y, "amount": target},
        {"label": "binary", "amount": "regression"},
        ["noise", "informative", "amount_driver"],
        max_rows=2000,
    )
    ranked = [c for c, _ in DG.ranked(found["label"])]
    assert ranked[0] == "informative" and found["label"]["informative"] > 0.2
    assert abs(found["label"]["noise"]) < 0.01
    assert DG.ranked(found["amount"])[0][0] == "amount_driver" and found["amount"]["amount_driver"] > 1.0


# --------------------------------------------------------------------------- options and their bad inputs


def test_unknown_positive_class_is_exit_2_naming_the_values_seen(capsys, log_csv, tmp_path):
    code, _, err = export_cli(
        capsys,
        "xgb",
        "--data",
        str(log_csv),
        "--label",
        "outcome",
        "--positive-class",
        "yes",
        "--artifacts",
        str(tmp_path),
    )
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "--positive-class 'yes' is not a value of label column 'outcome'" in line
    assert "'cp' (" in line and "'no' (" in line  # the values seen, with counts
    assert not list(tmp_path.iterdir())


def test_positive_class_applies_to_an_mmoe_task_naming_its_column(log_csv, tmp_path):
    tasks = [
        {"name": "conv", "label": "outcome", "type": "binary"},
        {"name": "other", "label": "noise", "type": "regression"},
    ]
    result = pipeline.run(
        pipeline.ExportParams(
            model="mmoe", data_path=log_csv, positive_class="cp", hparams={"tasks": tasks, "max_epochs": 4},
            exclude_columns="session_id,visitor_name,constant,empty", artifacts=tmp_path, progress=False,
        )
    )  # fmt: skip
    metadata = result.artifacts[0].metadata
    assert metadata["training"]["positive_class"] == "cp"
    assert result.evaluation.metrics["conv_auc"] > 0.6  # 'cp' read as 1: the signal ranks it, inverted it would not
    # the plots and the summary say what 1 means for that task ("outcome = cp"), as for the other models
    assert result.evaluation.diagnostics["heads"]["conv"]["positive_class"] == "cp"


def test_positive_class_with_two_binary_tasks_and_no_label_is_exit_2(capsys, log_csv, tmp_path):
    tasks = [{"name": "a", "label": "outcome", "type": "binary"}, {"name": "b", "label": "tier", "type": "binary"}]
    code, _, err = export_cli(
        capsys, "mmoe", "--data", str(log_csv), "--positive-class", "cp", "--param", f"tasks={json.dumps(tasks)}",
        "--artifacts", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    assert "reads 2 binary labels (outcome, tier), so it cannot tell which" in err and "--label" in err
    assert not list(tmp_path.iterdir())


def test_a_missing_label_of_mmoes_default_tasks_says_how_to_name_tasks(capsys, log_csv, tmp_path):
    code, _, err = export_cli(
        capsys, "mmoe", "--data", str(log_csv), "--label", "outcome", "--positive-class", "cp",
        "--artifacts", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    assert "label column 'watch_time'" in err and "these are mmoe's default tasks" in err
    assert "--param 'tasks=[" in err
    # tasks of its own: no hint about the defaults
    tasks = [
        {"name": "a", "label": "outcome", "type": "binary"},
        {"name": "r", "label": "revenue", "type": "regression"},
    ]
    code, _, err = export_cli(
        capsys, "mmoe", "--data", str(log_csv), "--positive-class", "cp", "--param", f"tasks={json.dumps(tasks)}",
        "--artifacts", str(tmp_path),
    )  # fmt: skip
    assert code == 2 and "label column 'revenue'" in err and "default tasks" not in err


def test_a_two_valued_label_without_positive_class_says_how_to_name_it(capsys, log_csv, tmp_path):
    code, _, err = export_cli(capsys, "xgb", "--data", str(log_csv), "--label", "outcome", "--artifacts", str(tmp_path))
    assert code == 2
    assert "is not a binary label; expected 0 or 1 (or true/false); or name the value that means 1 with " in err
    assert "--positive-class" in err


def test_a_three_valued_label_is_the_existing_error_or_names_its_values(capsys, log_csv, tmp_path):
    code, _, err = export_cli(capsys, "xgb", "--data", str(log_csv), "--label", "tier", "--artifacts", str(tmp_path))
    assert code == 2
    assert err.strip().endswith("is not a binary label; expected 0 or 1 (or true/false)")
    code, _, err = export_cli(
        capsys,
        "xgb",
        "--data",
        str(log_csv),
        "--label",
        "tier",
        "--positive-class",
        "gold",
        "--artifacts",
        str(tmp_path),
    )
    assert code == 2 and "label column 'tier' holds 3 distinct values" in err and "'silver' (" in err


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        (
            "signal,nope",
            "--exclude-columns names column(s) the data does not have: nope; available columns: session_id",
        ),
        ("outcome", "--exclude-columns outcome: a label column is never a feature"),
        (
            "session_id,visitor_name,signal,noise,constant,empty,city,tier",
            "leaves no feature column: exclude fewer columns",
        ),
    ],
)
def test_bad_exclude_columns_are_exit_2(capsys, log_csv, tmp_path, exclude, message):
    args = ["xgb", "--data", str(log_csv), "--label", "outcome", "--positive-class", "cp", "--artifacts", str(tmp_path)]
    code, _, err = export_cli(capsys, *args, "--exclude-columns", exclude)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_exclude_columns_with_explicit_feature_columns_is_refused(capsys, log_csv, tmp_path):
    code, _, err = export_cli(
        capsys,
        *["xgb", "--data", str(log_csv), "--label", "outcome", "--positive-class", "cp"],
        *["--feature-columns", "signal,noise", "--exclude-columns", "noise", "--artifacts", str(tmp_path)],
    )
    assert code == 2 and "the feature columns are given" in err


def test_exclude_columns_drops_them_from_the_chosen_features(log_csv, tmp_path):
    prep = pipeline.prepare(
        pipeline.ExportParams(
            model="xgb",
            data_path=log_csv,
            label="outcome",
            positive_class="cp",
            exclude_columns="session_id,visitor_name",
            artifacts=tmp_path,
            progress=False,
        )
    )
    assert prep.columns == ["signal", "noise", "constant", "empty", "city", "tier"]
    assert "excluded session_id, visitor_name" in prep.columns_note
    labels = session_log()["outcome"].to_numpy()
    train_rows = np.concatenate([prep.y_train["label"], prep.y_valid["label"], prep.y_heldout["label"]])
    assert train_rows.sum() == (labels == "cp").sum()  # cp is 1, no is 0
    # the default schema: an excluded default column need not be in the data
    synthetic = pipeline.prepare(
        pipeline.ExportParams(model="xgb", rows=200, exclude_columns=["item_cvr"], artifacts=tmp_path, progress=False)
    )
    assert "item_cvr" not in synthetic.columns and len(synthetic.columns) == 9


def test_positive_class_from_the_schema(tmp_path, log_csv):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"label": "outcome", "positive_class": "no"}))
    prep = pipeline.prepare(
        pipeline.ExportParams(model="xgb", data_path=log_csv, schema=str(schema), artifacts=tmp_path, progress=False)
    )
    assert prep.positive_class == "no"
    labels = np.concatenate([prep.y_train["label"], prep.y_valid["label"], prep.y_heldout["label"]])
    assert labels.sum() == (session_log()["outcome"] == "no").sum()


# --------------------------------------------------------------------------- one export, read back


@pytest.fixture(scope="module")
def xgb_run(log_csv, tmp_path_factory):
    return pipeline.run(
        pipeline.ExportParams(
            model="xgb",
            data_path=log_csv,
            label="outcome",
            positive_class="cp",
            hparams={"n_estimators": 20},
            artifacts=tmp_path_factory.mktemp("xgb-sessions"),
            progress=False,
        )
    )


def test_columns_that_carry_nothing_are_warned_about_in_metadata_and_summary(xgb_run):
    metadata = xgb_run.artifacts[0].metadata
    found = {w["column"]: w["reason"] for w in metadata["training"]["column_warnings"]}
    assert found == {
        "session_id": "unique_per_row",
        "visitor_name": "unique_per_row",
        "constant": "constant",
        "empty": "all_empty",
    }
    name = next(w for w in metadata["training"]["column_warnings"] if w["column"] == "visitor_name")
    assert "vocab_size 0" in name["message"] and "--exclude-columns visitor_name" in name["message"]
    text = summary.format_result(xgb_run)
    for column in found:
        assert f"WARNING: column '{column}' carries nothing" in text
    assert not any(w["column"] in ("signal", "noise", "city", "tier") for w in metadata["training"]["column_warnings"])
    card = (Path(xgb_run.artifacts[0].path) / "README.md").read_text()
    assert "column 'empty' carries nothing" in card


def test_metadata_evaluation_has_average_precision_calibration_and_gain_of_real_columns(xgb_run):
    metadata = xgb_run.artifacts[0].metadata
    ev = metadata["evaluation"]
    assert ev["label_column"] == "outcome" and metadata["training"]["positive_class"] == "cp"
    heads = xgb_run.evaluation.diagnostics["heads"]
    y, p = xgb_run.evaluation.labels["label"], xgb_run.evaluation.predictions["label"]
    assert ev["average_precision"] == pytest.approx(DG.average_precision(y, p), abs=1e-6)
    assert ev["calibration_error"] == pytest.approx(DG.expected_calibration_error(y, p), abs=1e-6)
    assert heads["label"]["column"] == "outcome"
    importance = ev["feature_importance"]
    assert importance["method"] == "gain"
    top = importance["heads"]["label"]["top"]
    assert {t["column"] for t in top} <= set(metadata["feature_columns"])
    assert top[0]["column"] == "signal"
    gains = get_spec("xgb").native_importance(xgb_run.trained)
    assert gains is not None and list(gains[1]) == list(metadata["feature_columns"])
    assert gains[1]["constant"] == 0.0  # never split on
    card = (Path(xgb_run.artifacts[0].path) / "README.md").read_text()
    assert "average precision" in card and "Feature importance of `label`" in card


def test_permutation_importance_of_a_torch_model_ranks_the_signal_first(log_csv, tmp_path):
    prep = pipeline.prepare(
        pipeline.ExportParams(
            model="deepfm",
            data_path=log_csv,
            label="outcome",
            positive_class="cp",
            exclude_columns="session_id,visitor_name,constant,empty",
            hparams={"epochs": 4},
            artifacts=tmp_path,
            progress=False,
        )
    )
    evaluation = pipeline.evaluate(prep, pipeline.fit(prep))
    importance = evaluation.diagnostics["importance"]
    assert importance["method"] == "permutation" and importance["rows"] == len(prep.x_heldout)
    values = importance["heads"]["label"]["values"]
    assert DG.ranked(values)[0][0] == "signal" and values["signal"] > values["noise"] + 0.05


def test_the_plots_of_a_run_name_its_label_column(xgb_run):
    from exporter.tools import plots

    fig = plots.evaluation_plots(xgb_run.evaluation)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "ROC: outcome",
        "precision-recall: outcome",
        "calibration: outcome",
        "feature importance: outcome",
    ]
    shown = [t for ax in fig.axes for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]
    assert "true positive rate (share of outcome = cp)" in shown
    assert not [t for t in shown if "click" in t.lower()]
    scatter = plots.parity_scatter(xgb_run.artifacts)
    assert scatter.axes[0].get_xlabel() == "native model (P(outcome = cp))"
