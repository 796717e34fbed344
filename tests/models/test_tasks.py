"""MMoE on a team's own tasks: the ``tasks`` hyper-parameter, its checks, and a two-task model end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.cli import main as cli_main
from exporter.errors import ExporterError
from exporter.models import get_spec
from exporter.models.mmoe import tasks as T
from exporter.training import data as D
from exporter.training import hparams as H

#: a team's pair of tasks on the synthetic log, with its own column names
CLICK_DWELL = [
    {"name": "click", "label": "clicked", "type": "binary"},
    {"name": "dwell", "label": "dwell_seconds", "type": "regression"},
]


def two_task_log(rows: int = 3000, seed: int = 11) -> pd.DataFrame:
    """The synthetic log with the click as ``clicked`` and the watch time as ``dwell_seconds``; no gmv."""
    frame = D.synthetic_dataset(rows, seed)
    return frame.rename(columns={"label": "clicked", "watch_time": "dwell_seconds"}).drop(columns=["gmv"])


# --------------------------------------------------------------------------- the hyper-parameter


def test_default_tasks_are_the_contracts_three_heads():
    tasks = T.from_hparams(get_spec("mmoe").default_hparams)
    assert [(t.name, t.label, t.type) for t in tasks] == [
        ("ctr", "label", "binary"),
        ("watch_time", "watch_time", "regression"),
        ("gmv", "gmv", "regression"),
    ]
    needs = get_spec("mmoe").label_needs(get_spec("mmoe").default_hparams)
    assert [(n.name, n.kind) for n in needs] == [
        ("label", "binary"),
        ("watch_time", "regression"),
        ("gmv", "regression"),
    ]


def test_labels_a_run_needs_come_from_its_tasks():
    needs = get_spec("mmoe").label_needs({"tasks": CLICK_DWELL})
    assert [(n.name, n.kind, n.required) for n in needs] == [
        ("clicked", "binary", True),
        ("dwell_seconds", "regression", True),
    ]
    assert "task 'dwell'" in needs[1].role


def test_task_weights_from_the_task_or_the_separate_hyper_parameter():
    tasks = T.parse_tasks([{**CLICK_DWELL[0], "weight": 2}, CLICK_DWELL[1]])
    assert [t.weight for t in tasks] == [2.0, 1.0]
    assert [t.weight for t in T.parse_tasks(CLICK_DWELL, {"dwell": 0.25})] == [1.0, 0.25]
    assert [t.weight for t in T.parse_tasks(CLICK_DWELL, [3, 0])] == [3.0, 0.0]
    assert [t.name for t in T.parse_tasks(json.dumps(CLICK_DWELL))] == ["click", "dwell"]  # JSON text, as -p gives it


@pytest.mark.parametrize(
    "tasks, weights, message",
    [
        ([], None, "hyper-parameter tasks: got []"),
        (
            [{"name": "click", "label": "clicked"}],
            None,
            "task 1 ('click'): type must be one of binary, regression, got None",
        ),
        ([{"name": "click", "label": "clicked", "type": "ranking"}], None, "got 'ranking'"),
        ([{"name": "9lives", "type": "binary"}], None, "task 1 needs a name of letters"),
        ([{"name": "click", "type": "binary", "labl": "x"}], None, "task 1 has unknown key(s) labl"),
        (CLICK_DWELL + [{"name": "click", "label": "other", "type": "binary"}], None, "click repeats"),
        (
            [{"name": "a", "label": "y", "type": "binary"}, {"name": "b", "label": "y", "type": "regression"}],
            None,
            "label column 'y' is used as binary",
        ),
        (CLICK_DWELL, {"clik": 1.0}, "task_weights names unknown task(s) clik"),
        (CLICK_DWELL, [1.0], "lists 1 weight(s) for 2 tasks"),
        (CLICK_DWELL, {"click": -1}, "must be a non-negative number, got -1"),
        (CLICK_DWELL, [0, 0], "task weights are all zero"),
        ([{**CLICK_DWELL[0], "weight": 2}, CLICK_DWELL[1]], {"click": 1}, "has a weight in tasks and in task_weights"),
        ("[{not json", None, "is not JSON"),
    ],
)
def test_bad_tasks_are_refused_before_training_naming_what_is_wrong(tasks, weights, message):
    spec = get_spec("mmoe")
    overrides = {"tasks": tasks} if weights is None else {"tasks": tasks, "task_weights": weights}
    with pytest.raises(ExporterError) as info:
        H.resolve_hparams(spec, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_per_task_metrics_follow_each_tasks_type():
    tasks = T.parse_tasks(CLICK_DWELL)
    labels = {"click": np.array([0.0, 1.0, 1.0, 0.0]), "dwell": np.array([1.0, 2.0, 3.0, 6.0])}
    pred = {"click": np.array([0.1, 0.9, 0.4, 0.6]), "dwell": np.array([1.0, 2.0, 3.0, 4.0])}
    m = T.task_metrics(tasks, pred, labels)
    assert m["click_auc"] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ordered right
    assert m["click_base_rate"] == 0.5
    assert m["click_logloss"] == pytest.approx(-np.mean(np.log([0.9, 0.9, 0.4, 0.4])))
    assert m["dwell_rmse"] == pytest.approx(1.0)  # one error of 2 over 4 rows
    assert m["dwell_rmse_baseline"] == pytest.approx(np.sqrt(np.mean((labels["dwell"] - 3.0) ** 2)))
    assert not any(k.startswith("dwell_auc") or k.startswith("click_rmse") for k in m)


# --------------------------------------------------------------------------- missing labels: exit 2


def test_a_missing_task_label_names_the_task_and_the_column(tmp_path, capsys):
    path = tmp_path / "log.csv"
    two_task_log(200).drop(columns=["dwell_seconds"]).to_csv(path, index=False)
    code = cli_main(
        [
            "export",
            "mmoe",
            "--data",
            str(path),
            "--artifacts",
            str(tmp_path / "a"),
            "--quiet",
            "--param",
            "tasks=" + json.dumps(CLICK_DWELL),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "label column 'dwell_seconds'" in err and "task 'dwell'" in err and "\n" not in err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_the_default_tasks_on_a_table_without_them_name_the_default_task(tmp_path, capsys):
    path = tmp_path / "log.csv"
    two_task_log(200).to_csv(path, index=False)
    code = cli_main(
        ["export", "mmoe", "--data", str(path), "--label", "clicked", "--artifacts", str(tmp_path / "a"), "--quiet"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "label column 'watch_time'" in err and "task 'watch_time'" in err


# --------------------------------------------------------------------------- two tasks end to end


@pytest.fixture(scope="module")
def two_task_export(tmp_path_factory):
    """``python -m exporter export mmoe --data log.csv --param tasks=[click, dwell]`` (in process)."""
    import contextlib
    import io

    d = tmp_path_factory.mktemp("two-tasks")
    two_task_log().to_csv(d / "log.csv", index=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(
            [
                "export",
                "mmoe",
                "--data",
                str(d / "log.csv"),
                "--artifacts",
                str(d / "artifacts"),
                "--quiet",
                "--param",
                "tasks=" + json.dumps(CLICK_DWELL),
                "--param",
                "epochs=4",
            ]
        )
    assert code == 0, out.getvalue()
    return d / "artifacts" / "mmoe" / "1", out.getvalue()


@pytest.mark.slow
def test_two_tasks_give_two_named_outputs_metadata_and_metrics(two_task_export):
    version, stdout = two_task_export
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1, 2]}]
    assert meta["output_columns"] == ["click", "dwell"]
    assert meta["tasks"] == [
        {"name": "click", "label": "clicked", "type": "binary"},
        {"name": "dwell", "label": "dwell_seconds", "type": "regression"},
    ]
    assert meta["training"]["label_columns"] == ["clicked", "dwell_seconds"]
    metrics = meta["training"]["metrics"]
    assert {"click_auc", "click_logloss", "dwell_rmse", "dwell_rmse_baseline"} <= set(metrics)
    assert not any(k.startswith(("ctr", "watch_time", "gmv")) for k in metrics)
    assert metrics["click_auc"] > 0.65 and metrics["dwell_rmse"] < metrics["dwell_rmse_baseline"]
    assert meta["quality"]["metric"] == "click_auc" and "dwell_rmse" in meta["quality"]["regression"]
    assert "click_auc=" in stdout and "dwell_rmse=" in stdout
    config = (version.parent / "config.pbtxt").read_text()
    # batched Triton config: dims leave out the batch axis, which max_batch_size adds
    assert re.search(r'name: "predictions"\s+data_type: TYPE_FP64\s+dims: \[\s*2\s*\]', config), config
    assert re.search(r"max_batch_size: [1-9]", config), config


@pytest.mark.slow
def test_two_tasks_are_served_by_name(two_task_export):
    from starlette.testclient import TestClient

    from exporter.serving.server import ModelRegistry, create_app

    version, _ = two_task_export
    request = json.loads((version / "sample_request.json").read_text())
    client = TestClient(create_app(ModelRegistry.from_artifacts(version.parent.parent)))
    answer = client.post("/predictions/mmoe", json=request)
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert len(predictions) == len(request["data"])
    for p in predictions:
        assert list(p) == ["click", "dwell"]
        assert 0 < p["click"] < 1 and p["dwell"] >= 0  # a probability; seconds, never negative in training
    # the same numbers as the graph's columns, in output column order
    v2 = client.post(
        "/predictions/mmoe",
        json={
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 10],
                    "datatype": "FP64",
                    "data": [_codes(version, request["data"][0])],
                }
            ]
        },
    )
    assert v2.status_code == 200
    assert v2.json()["outputs"][0]["data"] == pytest.approx(
        [predictions[0]["click"], predictions[0]["dwell"]], abs=1e-12
    )


def _codes(version: Path, row: dict) -> list[float]:
    """One TorchServe row as the v2 form takes it: strings as their vocabulary code."""
    meta = json.loads((version / "metadata.json").read_text())
    vocab = json.loads((version / "vocab.json").read_text()) if (version / "vocab.json").exists() else {}
    return [float(vocab[c].index(row[c])) if c in vocab else float(row[c]) for c in meta["feature_columns"]]


@pytest.mark.slow
def test_two_task_checkpoint_loads_back_with_its_tasks(two_task_export, tmp_path, capsys):
    from exporter.runtime.handler import ModelHandler

    version, _ = two_task_export
    data = tmp_path / "eval.csv"
    two_task_log(400, seed=12).to_csv(data, index=False)
    code = cli_main(
        [
            "export",
            "mmoe",
            "--mode",
            "load",
            "--checkpoint",
            str(version / "checkpoint.pt"),
            "--data",
            str(data),
            "--artifacts",
            str(tmp_path / "again"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    again = ModelHandler.load(tmp_path / "again" / "mmoe" / "1")
    assert again.output_columns == ["click", "dwell"]
    meta = again.metadata
    assert meta["tasks"][1] == {"name": "dwell", "label": "dwell_seconds", "type": "regression"}
    assert {"click_auc", "dwell_rmse"} <= set(meta["training"]["metrics"])
    request = json.loads((version / "sample_request.json").read_text())
    first = ModelHandler.load(version)
    assert again.predict(request) == first.predict(request)


@pytest.mark.slow
def test_the_mmoe_notebook_trains_two_tasks_given_as_json_text(tmp_path):
    """``papermill -p tasks '[...]'`` hands the notebook a string: it becomes the tasks, served by name."""
    from exporter.runtime.handler import ModelHandler
    from exporter.tools.verify import verify
    from tests.tools.test_notebooks import execute, outputs_text

    two_task_log(2000, seed=13).to_csv(tmp_path / "log.csv", index=False)
    artifacts = tmp_path / "artifacts"
    nb = execute(
        "mmoe", tmp_path, artifacts, data_path=str(tmp_path / "log.csv"), tasks=json.dumps(CLICK_DWELL), epochs=2
    )
    report = verify(artifacts)
    assert report.ok, report.problems
    assert "output_columns:  click, dwell" in outputs_text(nb, "contract")
    assert "smoke test mmoe:" in outputs_text(nb, "smoke")
    handler = ModelHandler.load(artifacts / "mmoe" / "1")
    assert [t["name"] for t in handler.metadata["tasks"]] == ["click", "dwell"]
    request = json.loads((artifacts / "mmoe" / "1" / "sample_request.json").read_text())
    assert all(list(p) == ["click", "dwell"] for p in handler.predict(request)["predictions"])
