"""Notebook glue (exporter.tools.notebook_support) and the runner's planning (exporter.tools.notebooks).

All without kernels.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.errors import ExporterError
from exporter.models import get_spec
from exporter.tools import notebook_support as nbs
from exporter.tools import notebooks as runner
from tests.conftest import REPO, run_cli

# --------------------------------------------------------------------------- paths and parameters


def test_relative_paths_resolve_against_the_repository_root(tmp_path):
    assert nbs.repo_root() == REPO
    assert nbs.resolve_path(None, "data_path") is None
    assert nbs.resolve_path("data/clicks.csv", "data_path") == REPO / "data" / "clicks.csv"
    assert nbs.resolve_path("x.csv", "data_path", root=tmp_path) == tmp_path / "x.csv"
    assert nbs.resolve_path(str(tmp_path / "abs.csv"), "data_path") == tmp_path / "abs.csv"


@pytest.mark.parametrize("bad", [3, True, "", "  ", ["a.csv"]])
def test_a_path_parameter_that_is_not_a_path_is_rejected(bad):
    with pytest.raises(nbs.ParameterError, match="data_path must be a file path"):
        nbs.resolve_path(bad, "data_path")


def test_artifacts_dir_default_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(nbs.ARTIFACTS_ENV, raising=False)
    assert nbs.resolve_artifacts_dir(None) == REPO / "artifacts"
    monkeypatch.setenv(nbs.ARTIFACTS_ENV, str(tmp_path / "env"))
    assert nbs.resolve_artifacts_dir(None) == tmp_path / "env"
    assert nbs.resolve_artifacts_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"  # an explicit value wins
    (tmp_path / "file").write_text("x")
    with pytest.raises(nbs.ParameterError, match="is not a directory"):
        nbs.resolve_artifacts_dir(str(tmp_path / "file"))


def test_feature_columns_accept_a_list_or_a_comma_separated_string():
    assert nbs.feature_columns_param(None) is None
    assert nbs.feature_columns_param(["a", "b"]) == ["a", "b"]
    assert nbs.feature_columns_param("a, b,c") == ["a", "b", "c"]
    for bad in ([], "", [1, 2], {"a": 1}):
        with pytest.raises(nbs.ParameterError, match="feature_columns must be"):
            nbs.feature_columns_param(bad)


def test_cli_wording_in_pipeline_messages_becomes_notebook_parameters():
    msg = "load mode needs --checkpoint; pass --data with a file; --feature-meta lists; --mode load; --database"
    assert nbs.notebook_terms(msg) == (
        "load mode needs checkpoint_path; pass data_path with a file; feature_meta_path lists; "
        'mode = "load"; --database'
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "sideways"}, "unknown mode 'sideways': expected 'train' or 'load'"),
        ({"mode": "load"}, "mode 'load' needs checkpoint_path"),
        ({"checkpoint_path": "m.ubj"}, "checkpoint_path is set ('m.ubj') but mode is 'train'"),
        ({"data_path": "no/such.csv"}, "data file not found"),
        ({"feature_columns": ["item_ctr", "nope"]}, "nope"),
        ({"rows": 5}, "rows must be an integer >= 10"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"hparams": {"n_estimators": 0}}, "n_estimators of xgb must be a positive integer up to 10,000, got 0"),
        ({"hparams": {"epochs": 3}}, "unknown hyper-parameter(s) epochs for xgb"),
        ({"atol": -1.0}, "atol must be a finite non-negative number"),
        ({"atol": float("inf")}, "atol must be a finite non-negative number, got inf"),
        ({"model_version": 0}, "version must be a positive integer"),
        ({"mode": "load", "checkpoint_path": "missing.ubj"}, "xgboost model file not found"),
    ],
)
def test_wrong_parameters_raise_parameter_error_before_training(kwargs, message, tmp_path):
    with pytest.raises(nbs.ParameterError) as info:
        nbs.prepare("xgb", artifacts_dir=str(tmp_path), root=tmp_path, **kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ExporterError)
    assert not any(tmp_path.iterdir()) or not (tmp_path / "xgb").exists()


@pytest.mark.parametrize(
    "model, hparams, message",
    [
        ("deepfm", {"hidden": "abc"}, "hidden of deepfm must be a non-empty list of positive integers"),
        ("deepfm", {"hidden": [64, 0]}, "hidden of deepfm must be a non-empty list"),
        ("two_tower", {"hidden": 2.5}, "hidden of two_tower must be a positive integer up to 4,096, got 2.5"),
        ("deepfm", {"embed_dim": 0}, "embed_dim of deepfm must be a positive integer"),
        ("mmoe", {"n_experts": -1}, "n_experts of mmoe must be a positive integer"),
        ("xgb", {"subsample": 3}, "subsample of xgb must be a number in (0, 1]"),
        ("xgb", {"min_child_weight": float("nan")}, "min_child_weight of xgb must be a non-negative number"),
        ("mmoe", {"weight_decay": -0.1}, "weight_decay of mmoe must be a non-negative number, or auto"),
        ("two_tower", {"user_columns": 3}, "user_columns of two_tower must be None or a non-empty list"),
        ("two_tower", {"item_columns": "item_id,,"}, "item_columns of two_tower must be None or a non-empty list"),
    ],
)
def test_architecture_hparams_are_checked_before_training(model, hparams, message, tmp_path):
    with pytest.raises(nbs.ParameterError, match=re.escape(message)):
        nbs.prepare(model, rows=200, artifacts_dir=str(tmp_path), hparams=hparams)


def test_tower_columns_as_text_are_a_list(tmp_path):
    """``"a, b"`` (as ``--param user_columns=a,b`` arrives) names two columns, as ``--exclude-columns`` reads it."""
    hparams = {"user_columns": "user_id, user_age"}
    prep = nbs.prepare("two_tower", rows=200, artifacts_dir=str(tmp_path), hparams=hparams)
    assert prep.hparams["user_columns"] == ["user_id", "user_age"]


def test_good_architecture_hparams_pass(tmp_path):
    prep = nbs.prepare("deepfm", rows=200, artifacts_dir=str(tmp_path), hparams={"hidden": [16], "weight_decay": 0})
    assert prep.hparams["hidden"] == [16]


def test_atol_sets_the_parity_tolerance_without_a_warning(tmp_path, recwarn):
    prep = nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), atol=0.25)
    assert prep.atol == 0.25 and prep.params.atol == 0.25
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    assert nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path)).atol == get_spec("xgb").atol


def test_parity_atol_is_a_deprecated_alias_of_atol(tmp_path):
    spec_atol = get_spec("xgb").atol
    # a notebook always passes atol (its default is the model's tolerance) next to the alias
    with pytest.warns(FutureWarning, match="parity_atol is deprecated: use atol"):
        prep = nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), atol=spec_atol, parity_atol=0.25)
    assert prep.atol == 0.25
    with pytest.warns(FutureWarning):
        assert nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), atol=0.25, parity_atol=0.25).atol == 0.25
    with (
        pytest.warns(FutureWarning),
        pytest.raises(nbs.ParameterError, match=r"atol = 0\.1 and parity_atol = 0\.2 .* disagree"),
    ):
        nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), atol=0.1, parity_atol=0.2)
    with (
        pytest.warns(FutureWarning),
        pytest.raises(nbs.ParameterError, match="atol must be a finite non-negative number"),
    ):
        nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), atol=spec_atol, parity_atol=-1.0)


def test_runner_passes_the_deprecated_parity_atol_as_atol(tmp_path):
    pairs, notes = runner.rename_deprecated([("rows", "500"), ("parity_atol", "0.5")])
    assert pairs == [("rows", "500"), ("atol", "0.5")]
    assert notes == ["note: -p parity_atol is deprecated, taken as -p atol 0.5"]
    plans = runner.plan(["xgb"], runner.resolve_overrides(pairs, tmp_path), tmp_path / "artifacts")
    assert plans[0].parameters["atol"] == 0.5 and "parity_atol" not in plans[0].parameters
    with pytest.raises(ExporterError, match="parameter atol is given twice"):
        runner.resolve_overrides(runner.rename_deprecated([("atol", "0"), ("parity_atol", "0")])[0], tmp_path)


def test_unknown_model_is_a_parameter_error(tmp_path):
    with pytest.raises(nbs.ParameterError, match="unknown model 'gbm'"):
        nbs.prepare("gbm", artifacts_dir=str(tmp_path))


def test_parameter_error_shows_as_two_lines_in_a_notebook():
    lines = nbs.ParameterError("unknown mode 'x'")._render_traceback_()
    assert lines[0] == "ParameterError: unknown mode 'x'" and len(lines) == 2 and "parameters cell" in lines[1]


def test_an_existing_model_version_is_refused_before_training(tmp_path):
    (tmp_path / "two_tower_item" / "3").mkdir(parents=True)
    with pytest.raises(
        nbs.ParameterError, match=r"model_version 3 already exists for two_tower_item.*next free version \(4\)"
    ):
        nbs.prepare("two_tower", rows=200, artifacts_dir=str(tmp_path), model_version=3)


def _existing_model(artifacts: Path, name: str, width: int) -> None:
    """A model directory as an earlier export leaves it: its config.pbtxt with a ``[-1, width]`` input."""
    from exporter import contract as C
    from exporter.export import triton

    inputs, outputs = C.tensor_specs(width, [-1])
    (artifacts / name).mkdir(parents=True)
    (artifacts / name / "config.pbtxt").write_text(
        triton.config_pbtxt({"name": name, "inputs": inputs, "outputs": outputs}, max_batch_size=1024, warmup=False)
    )


def test_a_model_name_clash_stops_before_training(tmp_path, monkeypatch):
    """model_name into a model with other inputs fails in the cell right after the imports, not after training."""
    _existing_model(tmp_path, "clicks", 3)
    spec = get_spec("deepfm")
    monkeypatch.setattr(type(spec), "train", lambda *a, **k: pytest.fail("trained despite the clash"))
    with pytest.raises(nbs.ParameterError, match=r"model_name 'clicks'.*input \[-1, 3\].*\[-1, 10\].*model_name"):
        nbs.prepare("deepfm", rows=200, artifacts_dir=str(tmp_path), model_name="clicks")
    assert sorted(p.name for p in (tmp_path / "clicks").iterdir()) == ["config.pbtxt"]
    # the same inputs are no clash: the export adds a version
    _existing_model(tmp_path, "clicks10", 10)
    prep = nbs.prepare("deepfm", rows=200, artifacts_dir=str(tmp_path), model_name="clicks10")
    assert prep.params.model_name == "clicks10"


def test_model_name_is_checked_with_the_notebooks_words(tmp_path):
    with pytest.raises(nbs.ParameterError, match="model name 'a/b' is not usable as a repository directory"):
        nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), model_name="a/b")
    (tmp_path / "tt_item" / "2").mkdir(parents=True)
    with pytest.raises(nbs.ParameterError, match=r"model_version 2 already exists for tt_item.*\(3\)"):
        nbs.prepare("two_tower", rows=200, artifacts_dir=str(tmp_path), model_name="tt", model_version=2)
    # the default names do not hide a clash under the new name, and vice versa
    nbs.prepare("two_tower", rows=200, artifacts_dir=str(tmp_path), model_version=2)


def test_none_hparams_mean_the_model_default(tmp_path):
    prep = nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), hparams={"n_estimators": 7, "max_depth": None})
    assert prep.hparams["n_estimators"] == 7 and prep.hparams["max_depth"] == prep.spec.default_hparams["max_depth"]
    prep = nbs.prepare(
        "two_tower",
        rows=200,
        artifacts_dir=str(tmp_path),
        hparams={"epochs": 1, "user_columns": None, "item_columns": None},  # epochs: the old name of max_epochs
    )
    assert prep.hparams["max_epochs"] == 1 and prep.hparams["user_columns"] is None
    text = nbs.describe_run(prep)
    assert "two_tower: train on built-in synthetic data" in text
    # two_tower holds out user-item pairs (a repeated pair stays on one side): about a fifth of the 200 rows
    found = re.search(
        r"rows: (\d+) training, (\d+) validation \(early stopping; the refit trains on them too\), (\d+) held-out test",
        text,
    )
    train, valid, held = map(int, found.groups())
    assert train + valid + held == 200 and 25 <= held <= 55 and 8 <= valid <= 35
    assert "max_epochs=1" in text and "user_columns" not in text  # None: the default applies, not worth a mention
    towers = nbs.prepare(
        "two_tower",
        rows=200,
        artifacts_dir=str(tmp_path),
        hparams={"user_columns": ["user_age"], "item_columns": ["item_ctr", "user_gender"]},
    )
    assert towers.hparams["user_columns"] == ["user_age"] and "user_columns=['user_age']" in nbs.describe_run(towers)


def test_describe_run_in_load_mode(exported_artifacts, tmp_path):
    prep = nbs.prepare(
        "deepfm",
        mode="load",
        checkpoint_path=str(exported_artifacts / "deepfm" / "1" / "checkpoint.pt"),
        rows=500,
        artifacts_dir=str(tmp_path / "again"),
        root=tmp_path,
    )
    text = nbs.describe_run(prep)
    assert text.startswith("deepfm: load ") and "checkpoint.pt on built-in synthetic data" in text
    held = int(re.search(r"rows: (\d+) held-out of 500 for evaluation and the parity check", text).group(1))
    assert 70 <= held <= 130 and "source_file" not in text


def test_data_tables(tmp_path):
    prep = nbs.prepare("mmoe", rows=200, artifacts_dir=str(tmp_path))
    head = nbs.preview(prep)
    assert list(head.columns) == prep.columns + ["label", "watch_time", "gmv"] and len(head) == nbs.PREVIEW_ROWS
    summary = nbs.column_summary(prep)
    assert summary.loc["item_price", "role"] == "feature" and summary.loc["gmv", "role"] == "label"
    assert summary.loc["user_gender", "distinct"] == 3
    assert list(summary["role"]) == sorted(summary["role"], key=["feature", "label", "unused"].index)
    xgb_prep = nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), feature_columns="item_ctr,user_age")
    assert set(nbs.column_summary(xgb_prep)["role"]) == {"feature", "label", "unused"}


def test_column_summary_shows_ids_and_categories_by_their_values_not_a_mean(tmp_path):
    prep = nbs.prepare("xgb", rows=400, artifacts_dir=str(tmp_path), feature_columns="item_ctr,user_age")
    table = nbs.column_summary(prep)
    for column in ("user_id", "item_id", "item_category"):  # unused here: still IDs and categories
        row = table.loc[column]
        assert pd.isna(row["mean"]) and pd.isna(row["min"]), column
        assert row["distinct"] > 1 and "(" in row["top values"], column
    frame = pd.concat([prep.train, prep.validation, prep.heldout])  # every row of the data
    top = frame["item_category"].value_counts().index[0]
    assert table.loc["item_category", "top values"].startswith(f"{top} (")
    assert table.loc["item_ctr", "mean"] == pytest.approx(frame["item_ctr"].mean())
    assert table.loc["item_ctr", "top values"] == ""


def test_data_tables_show_a_history_as_its_one_list_column(tmp_path):
    """A history feature is tensor columns ``recent[0..k]`` to the model but one list column of the data: the
    preview shows that column, the summary its lengths and items; an unused list column is counted too."""
    rng = np.random.default_rng(1)
    n = 400
    recent = [list(rng.integers(1, 30, rng.integers(0, 4))) for _ in range(n)]
    pd.DataFrame(
        {
            "user_id": rng.integers(1, 40, n),
            "item_id": rng.integers(1, 30, n),
            "recent": recent,
            "tags": [["a", "b"][: i % 3] for i in range(n)],
            "clicked": rng.integers(0, 2, n),
        }
    ).to_parquet(tmp_path / "log.parquet")
    prep = nbs.prepare(
        "deepfm", data_path=str(tmp_path / "log.parquet"), label="clicked", exclude_columns="tags",
        artifacts_dir=str(tmp_path / "art"),
    )  # fmt: skip
    assert any(c.startswith("recent[") for c in prep.columns)
    assert list(nbs.preview(prep).columns) == ["user_id", "item_id", "recent", "clicked"]
    table = nbs.column_summary(prep)
    row = table.loc["recent"]
    lengths = [len(r) for r in recent]
    assert row["role"] == "feature" and row["dtype"].startswith("history")
    assert (row["min"], row["max"]) == (min(lengths), max(lengths)) and row["mean"] == pytest.approx(np.mean(lengths))
    counts = pd.Series([v for r in recent for v in r]).value_counts()
    first = re.fullmatch(r"(\d+) \((\d+)\)", row["top values"].split(", ")[0])
    assert row["distinct"] == len(counts) and int(first.group(2)) == counts.iloc[0] == counts[int(first.group(1))]
    assert table.loc["tags", "role"] == "unused" and table.loc["tags", "distinct"] == 3


def test_positive_class_and_exclude_columns_parameters(tmp_path):
    data = tmp_path / "log.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "row": np.arange(300),
            "x": rng.normal(size=300),
            "y": rng.normal(size=300),
            "answer": rng.choice(["yes", "no"], 300),
        }
    ).to_csv(data, index=False)
    prep = nbs.prepare(
        "xgb",
        data_path=str(data),
        label="answer",
        positive_class="yes",
        exclude_columns="row",
        artifacts_dir=str(tmp_path),
    )
    assert prep.columns == ["x", "y"] and "1 = yes" in nbs.describe_run(prep)
    with pytest.raises(nbs.ParameterError, match=r"exclude_columns names column\(s\) the data does not have: nope"):
        nbs.prepare("xgb", data_path=str(data), label="answer", positive_class="yes", exclude_columns=["nope"])
    with pytest.raises(nbs.ParameterError, match=r"positive_class 'maybe' is not a value of label column 'answer'"):
        nbs.prepare("xgb", data_path=str(data), label="answer", positive_class="maybe")
    with pytest.raises(nbs.ParameterError, match="exclude_columns must be None, a list of column names"):
        nbs.prepare("xgb", data_path=str(data), label="answer", positive_class="yes", exclude_columns=[3])
    kept = nbs.prepare(
        "xgb", data_path=str(data), label="answer", positive_class="yes", artifacts_dir=str(tmp_path / "b")
    )
    text = nbs.describe_run(kept)
    assert "WARNING: column 'row' carries nothing: it counts the rows" in text and "exclude_columns row" in text


# --------------------------------------------------------------------------- printouts and smoke test


def test_contract_and_parity_text_are_deterministic(exported_runs):
    _, runs = exported_runs
    text = nbs.contract_text(runs["mmoe"].artifacts)
    assert text.splitlines() == [
        "mmoe  (platform onnxruntime_onnx)",
        "  input  features  FP64  [-1, 10]",
        "  output predictions  FP64  [-1, 3]",
        "  feature_columns: item_ctr, item_cvr, item_price, user_age, user_gender, cross_age_x_ctr, "
        "cross_gender_x_price, "
        "user_id, item_id, item_category",
        "  output_columns:  ctr, watch_time, gmv",
        "  TorchServe-style answer: one object per row with the output columns",
    ]
    towers = nbs.contract_text(runs["two_tower"].artifacts)
    width = get_spec("two_tower").default_hparams["embed_dim"]
    assert "two_tower_item  (platform onnxruntime_onnx)" in towers and f"embed_dim:       {width}" in towers
    parity = nbs.parity_text(runs["xgb"].artifacts)
    assert parity == (
        "parity xgb: passed (max |native - onnxruntime| <= atol 1e-05 on 1064 rows (553 held-out, 447 sampled "
        "from the data's values, 64 probes with unseen IDs, unknown codes and missing values))"
    )


def test_describe_exports_names_version_and_files(exported_runs):
    _, runs = exported_runs
    text = nbs.describe_exports(runs["xgb"].artifacts)
    assert text.startswith("xgb version 1 -> ") and "model.onnx" in text and "feature_meta.json" in text


@pytest.mark.parametrize("model", ["xgb", "deepfm", "mmoe", "two_tower"])
def test_smoke_test_passes_on_real_artifacts(exported_runs, model):
    _, runs = exported_runs
    r = runs[model]
    text = nbs.smoke_test(r.prepared, r.trained, r.artifacts)
    assert text.count("smoke test ") == len(r.artifacts)
    # torch networks compute in float32: their tolerance has the relative term the parity gate used
    bound = "1e-05" if model == "xgb" else "1e-05 + 0.0001 * |native|"
    assert f"for {nbs.SMOKE_ROWS} held-out rows agree with the native model (|diff| <= {bound})" in text
    if model == "two_tower":
        assert f"a one-row request gets a flat vector of {get_spec('two_tower').default_hparams['embed_dim']}" in text


def test_smoke_test_fails_when_handler_and_native_model_disagree(exported_runs):
    _, runs = exported_runs
    r = runs["deepfm"]
    real_units = r.trained.units

    def shifted_units():
        return [dataclasses.replace(u, native_predict=lambda x, f=u.native_predict: f(x) + 1e-3) for u in real_units()]

    broken = dataclasses.replace(r.trained, units=shifted_units)
    with pytest.raises(AssertionError, match="deepfm: TorchServe-style answer != native model"):
        nbs.smoke_test(r.prepared, broken, r.artifacts)


def test_torchserve_predictions_checks_the_answer_shape():
    assert nbs.torchserve_predictions({"predictions": [0.1, 0.2]}, "scalar", [], 2).shape == (2,)
    named = nbs.torchserve_predictions({"predictions": [{"a": 1.0, "b": 2.0}]}, "named_columns", ["a", "b"], 1)
    np.testing.assert_array_equal(named, [[1.0, 2.0]])
    assert nbs.torchserve_predictions({"predictions": [1.0, 2.0, 3.0]}, "vector", [], 1).shape == (1, 3)
    with pytest.raises(AssertionError, match="vector itself"):
        nbs.torchserve_predictions({"predictions": [[1.0, 2.0]]}, "vector", [], 1)
    with pytest.raises(AssertionError, match="expected 3 predictions"):
        nbs.torchserve_predictions({"predictions": [0.1]}, "scalar", [], 3)
    with pytest.raises(AssertionError, match="keys"):
        nbs.torchserve_predictions({"predictions": [{"b": 1.0, "a": 2.0}]}, "named_columns", ["a", "b"], 1)
    with pytest.raises(AssertionError, match=r"\{'predictions'"):
        nbs.torchserve_predictions({"error": "x"}, "scalar", [], 1)


def test_request_builders():
    import pandas as pd

    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5], "label": [0, 1]})
    assert nbs.torchserve_request(frame, ["b", "a"]) == {"data": [{"b": 0.5, "a": 1.0}, {"b": 1.5, "a": 2.0}]}
    body = nbs.v2_request(np.array([[1.0, 2.0], [3.0, 4.0]]), "r1")
    assert body["id"] == "r1" and body["inputs"][0] == {
        "name": "features",
        "shape": [2, 2],
        "datatype": "FP64",
        "data": [1.0, 2.0, 3.0, 4.0],
    }


def test_format_metrics():
    from exporter.export.pipeline import Evaluation

    text = nbs.format_metrics(Evaluation({"gmv_rmse": 2.0, "gmv_rmse_baseline": 3.0, "base_rate": 0.25}, {}, {}))
    assert "gmv_rmse           2.0000  (predicting the mean: 3)" in text and "(share of clicks)" in text
    assert "_baseline" not in text
    assert "none" in nbs.format_metrics(Evaluation({}, {}, {}))


RETRIEVAL_METRICS = {
    "recall@10": 0.31,
    "recall@50": 0.62,
    "popularity_recall@10": 0.2,
    "popularity_recall@50": 0.5,
    "auc": 0.54,
    "catalogue_items": 400.0,
    "users_evaluated": 90.0,
}


def _retrieval_evaluation():
    from exporter.export.pipeline import Evaluation
    from exporter.training.quality_gate import assess

    return Evaluation(RETRIEVAL_METRICS, {}, {}, assess(RETRIEVAL_METRICS, {}))


def test_format_metrics_says_a_retrieval_model_is_judged_by_recall_not_auc():
    evaluation = _retrieval_evaluation()
    assert "warning" not in evaluation.quality  # auc 0.54 < 0.55, but retrieval is judged by recall@K
    text = nbs.format_metrics(evaluation)
    assert re.search(r"^  auc +0\.5400  \(not judged: see below\)$", text, re.M), text
    assert "judged by recall@50 against recommending the most popular items; auc" in text
    assert "is reported, not judged" in text


def test_format_metrics_says_what_the_progress_bars_heldout_loss_is():
    from exporter.export.pipeline import Evaluation
    from exporter.training.quality_gate import assess

    metrics = {"auc": 0.71, "logloss": 0.01126, "base_rate": 0.01}
    evaluation = Evaluation(metrics, {}, {}, assess(metrics, {}))
    history = [
        {"step": 0, "train_loss": 0.7, "validation_loss": 0.69},
        {"step": 1, "train_loss": 0.05, "validation_loss": 0.031},
    ]
    text = nbs.format_metrics(evaluation, history)
    assert "judged by auc: a warning below 0.55" in text
    assert "the progress bar's validation figure, last 0.031, is the training loss on the validation rows" in text
    assert "validation figure" not in nbs.format_metrics(evaluation, [])  # load mode: no progress bar, no note


def test_cli_summary_says_what_each_figure_is():
    from types import SimpleNamespace

    from exporter.tools import summary

    evaluation = _retrieval_evaluation()
    history = [{"step": 1, "train_loss": 6.9, "validation_loss": 6.02}]
    result = SimpleNamespace(
        prepared=SimpleNamespace(spec=SimpleNamespace(name="two_tower")),
        evaluation=evaluation,
        trained=SimpleNamespace(history=history),
        artifacts=[],
        seconds=1.0,
    )
    lines = summary.format_result(result).splitlines()
    assert lines[0].startswith("two_tower: held-out recall@10=0.31 recall@50=0.62 auc=0.54 (not judged)"), lines[0]
    assert "judged by recall@50 against recommending the most popular items" in lines[1]
    assert "the progress bar's validation figure, last 6.02, is the training loss" in lines[2]


# --------------------------------------------------------------------------- the runner, before any kernel


def test_parse_value_like_papermill_plus_json():
    assert runner.parse_value("3") == 3 and runner.parse_value("1e-3") == 0.001
    assert runner.parse_value("True") is True and runner.parse_value("false") is False
    assert runner.parse_value("None") is None and runner.parse_value("null") is None
    assert runner.parse_value('["a","b"]') == ["a", "b"] and runner.parse_value("[64, 32]") == [64, 32]
    assert runner.parse_value("load") == "load" and runner.parse_value("a,b") == "a,b"


def test_overrides_make_file_paths_absolute_against_the_callers_directory(tmp_path):
    out = runner.resolve_overrides(
        [("data_path", "d/x.csv"), ("rows", "5000"), ("checkpoint_path", "/abs/m.ubj")], tmp_path
    )
    assert out == {"data_path": str(tmp_path / "d" / "x.csv"), "rows": 5000, "checkpoint_path": "/abs/m.ubj"}
    with pytest.raises(ExporterError, match="--artifacts"):
        runner.resolve_overrides([("artifacts_dir", "x")], tmp_path)
    with pytest.raises(ExporterError, match="given twice"):
        runner.resolve_overrides([("rows", "1"), ("rows", "2")], tmp_path)


def test_select_notebooks():
    assert runner.select([]) == ["xgb", "deepfm", "mmoe", "two_tower"]
    assert runner.select(["mmoe", "xgb"]) == ["mmoe", "xgb"]
    with pytest.raises(ExporterError, match="unknown notebook 'gbm': expected one of xgb, deepfm, mmoe, two_tower"):
        runner.select(["gbm"])
    with pytest.raises(ExporterError, match="named twice"):
        runner.select(["xgb", "xgb"])


def test_plan_leaves_the_version_to_the_export_and_routes_parameters(tmp_path):
    (tmp_path / "xgb" / "1").mkdir(parents=True)
    plans = runner.plan(["xgb", "two_tower"], {"max_epochs": 2, "rows": 3000}, tmp_path)
    xgb, towers = plans
    # the next free version is taken when the notebook writes (two runs at once never claim the same one)
    assert (xgb.version, towers.version) == (None, None)
    assert xgb.parameters == {"rows": 3000, "artifacts_dir": str(tmp_path), "model_version": None}
    assert xgb.ignored == ["max_epochs"] and towers.parameters["max_epochs"] == 2
    assert towers.model_names == ("two_tower", "two_tower_item")
    assert runner.plan(["deepfm"], {"model_version": 7}, tmp_path)[0].version == 7


def test_plan_exports_under_model_name(tmp_path):
    (tmp_path / "two_tower" / "6").mkdir(parents=True)  # the default names do not count for another name
    (tmp_path / "tt_item" / "2").mkdir(parents=True)
    [towers] = runner.plan(["two_tower"], {"model_name": "tt"}, tmp_path)
    assert towers.model_names == ("tt", "tt_item")
    assert towers.parameters["model_name"] == "tt"
    with pytest.raises(ExporterError, match="would export xgb, deepfm under one name: run one notebook per model name"):
        runner.plan(["xgb", "deepfm"], {"model_name": "clicks"}, tmp_path)
    with pytest.raises(ExporterError, match="model name 'a/b' is not usable"):
        runner.plan(["xgb"], {"model_name": "a/b"}, tmp_path)


def test_plan_rejects_unknown_parameters_and_bad_versions(tmp_path):
    with pytest.raises(ExporterError, match="unknown parameter 'epoch' for xgb, deepfm: known parameters are"):
        runner.plan(["xgb", "deepfm"], {"epoch": 2}, tmp_path)
    with pytest.raises(ExporterError, match="model_version must be a positive integer, got 0"):
        runner.plan(["xgb"], {"model_version": 0}, tmp_path)


def test_plan_reports_a_missing_notebook(tmp_path):
    with pytest.raises(ExporterError, match="notebook .*xgb.ipynb not found"):
        runner.plan(["xgb"], {}, tmp_path, directory=tmp_path / "nowhere")


def test_copy_report_replaces_atomically(tmp_path):
    src = tmp_path / "executed.ipynb"
    src.write_text('{"new": 1}')
    version_dir = tmp_path / "xgb" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "report.ipynb").write_text('{"old": 1}')
    target = runner.copy_report(src, version_dir)
    assert json.loads(target.read_text()) == {"new": 1}
    assert sorted(p.name for p in version_dir.iterdir()) == ["report.ipynb"]


def test_the_stored_report_names_no_local_directories(tmp_path, monkeypatch):
    """report.ipynb travels with the artifact: papermill's paths become file names, paths under the working
    directory relative to it, paths under the home directory ``~/...``."""
    home, project = tmp_path / "home" / "ada", tmp_path / "home" / "ada" / "clicks-project"
    project.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    notebook = {
        "metadata": {"papermill": {"input_path": "/opt/repo/notebooks/xgb.ipynb", "output_path": "/tmp/x/xgb.ipynb"}},
        "cells": [
            {"source": f'data_path = "{project}/data/clicks.csv"\nartifacts_dir = "{home}/models"'},
            {"outputs": [{"text": f"xgb: train on data file {project}/data/clicks.csv\n"}]},
        ],
    }
    src = tmp_path / "executed.ipynb"
    src.write_text(json.dumps(notebook))
    (tmp_path / "v").mkdir()
    stored = runner.copy_report(src, tmp_path / "v").read_text()
    assert str(tmp_path) not in stored and "/opt/repo" not in stored and "/tmp/x" not in stored
    out = json.loads(stored)
    assert out["metadata"]["papermill"] == {"input_path": "xgb.ipynb", "output_path": "xgb.ipynb"}
    assert out["cells"][0]["source"] == 'data_path = "data/clicks.csv"\nartifacts_dir = "~/models"'
    assert out["cells"][1]["outputs"][0]["text"] == "xgb: train on data file data/clicks.csv\n"


def test_failure_exit_codes_follow_the_error_kind(tmp_path):
    class Fake(Exception):
        def __init__(self, ename: str) -> None:
            super().__init__(ename)
            self.ename, self.evalue, self.exec_count = ename, "what went wrong", 4

    for ename, code in (("ParameterError", 2), ("ParityError", 3), ("AssertionError", 1), ("ValueError", 1)):
        err = runner._failure("xgb", Fake(ename), tmp_path / "xgb.ipynb")
        assert err.exit_code == code
        assert str(err).startswith(f"notebook xgb failed in cell [4]: {ename}: what went wrong")
        assert "executed notebook" not in str(err)  # nothing was written: no pointer to it
    (tmp_path / "xgb.ipynb").write_text("{}")
    err = runner._failure("xgb", RuntimeError("Kernel died"), tmp_path / "xgb.ipynb")
    assert str(err) == f"notebook xgb failed: RuntimeError: Kernel died\n  executed notebook: {tmp_path / 'xgb.ipynb'}"
    assert err.exit_code == 1


@pytest.mark.slow
def test_cli_errors_before_any_kernel(tmp_path):
    result = run_cli("notebooks", "gbm", "--artifacts", str(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error: unknown notebook 'gbm'")
    result = run_cli("notebooks", "xgb", "-p", "epochs", "3", "--artifacts", str(tmp_path))
    assert result.returncode == 2 and "unknown parameter 'max_epochs' for xgb" in result.stderr
    assert "-p epochs is deprecated, taken as -p max_epochs 3" in result.stderr
    result = run_cli("notebooks", "xgb", "--kernel", "no-such-kernel", "--artifacts", str(tmp_path))
    assert result.returncode == 2 and "no Jupyter kernel named 'no-such-kernel'; installed kernels: " in result.stderr
    (tmp_path / "a-file").write_text("x")
    result = run_cli(
        "notebooks", "xgb", "--output-dir", str(tmp_path / "a-file" / "reports"), "--artifacts", str(tmp_path / "art")
    )
    assert result.returncode == 2 and "cannot create --output-dir" in result.stderr
    (tmp_path / "a-file").unlink()
    help_text = run_cli("notebooks", "--help").stdout
    assert "-p NAME VALUE" in help_text and "report.ipynb" in help_text
    assert not any(Path(tmp_path).iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deepfm", "two_tower"])
def test_smoke_test_and_run_description_with_a_history(tmp_path, model):
    """The smoke test sends a history as the JSON list serving takes; the run lists it once by its name."""
    from tests.conftest import export_small

    rng = np.random.default_rng(2)
    n = 1500
    pd.DataFrame(
        {
            "user_id": rng.integers(1, 60, n),
            "item_id": rng.integers(1, 40, n),
            "recent": [list(rng.integers(1, 40, rng.integers(0, 5))) for _ in range(n)],
            "label": rng.integers(0, 2, n),
        }
    ).to_parquet(tmp_path / "log.parquet")
    r = export_small(model, tmp_path / "art", data_path=tmp_path / "log.parquet")
    text = nbs.smoke_test(r.prepared, r.trained, r.artifacts)
    assert text.count("smoke test ") == len(r.artifacts)
    width = len(r.prepared.columns)
    assert f"  features (3; {width} tensor columns): user_id, item_id, recent  [" in nbs.describe_run(r.prepared)


@pytest.mark.parametrize(
    ("tracking", "uri", "message"),
    [("no", None, "tracking must be True or False, got 'no'"), (True, "ftp://nowhere/x", "tracking_uri: ")],
)
def test_the_tracking_parameters_are_checked_before_training(tmp_path, monkeypatch, tracking, uri, message):
    """They are used by the export cell, after training: a typo would cost the whole run."""
    from exporter.export import pipeline

    prep = nbs.prepare("xgb", rows=300, artifacts_dir=str(tmp_path))
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("trained before checking the parameters"))
    with pytest.raises(nbs.ParameterError, match=re.escape(message)):
        nbs.train(prep, tracking=tracking, tracking_uri=uri)


def test_extra_hparams_mistakes_are_parameter_errors():
    """The notebook's glue merges its own knobs with extra_hparams: a mistake there was a raw TypeError (exit 1)."""
    assert nbs.knobs({"subsample": 0.8}, n_estimators=10) == {"n_estimators": 10, "subsample": 0.8}
    with pytest.raises(nbs.ParameterError, match="extra_hparams must be a dict of hyper-parameters .* got 'notadict'"):
        nbs.knobs("notadict", n_estimators=10)
    with pytest.raises(nbs.ParameterError, match="extra_hparams sets n_estimators, which the notebook has as its own"):
        nbs.knobs({"n_estimators": 5}, n_estimators=10)
