"""``tune``: the search space rules, and a 3-trial search on small data exported as a normal version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.errors import ExporterError
from exporter.models import get_spec, model_names
from exporter.tracking.tune import parse_search
from exporter.training.hparams import check_search_space
from tests.tracking.test_tracking import cli, cli_process, client


@pytest.mark.parametrize("model", model_names())
def test_every_model_declares_a_valid_search_space(model: str) -> None:
    spec = get_spec(model)
    assert spec.tunable, f"{model} declares nothing tunable"
    check_search_space(spec, spec.tunable, {})


def test_the_defaults_are_the_first_trial_unless_the_ranges_exclude_them() -> None:
    from exporter.tracking.tune import default_point

    deepfm, xgb = get_spec("deepfm"), get_spec("xgb")
    point = default_point(deepfm, deepfm.tunable, 70_000)
    assert point == {"learning_rate": 0.005, "embed_dim": 16, "weight_decay": pytest.approx(20.0 / 70_000)}
    assert isinstance(point["embed_dim"], int)
    assert default_point(xgb, xgb.tunable, 70_000) == {
        "max_depth": 8,
        "min_child_weight": 5.0,
        "learning_rate": 0.05,
        "subsample": 0.9,
        "colsample_bytree": 0.6,
        "reg_lambda": 10.0,
    }
    # --search moved a range past the default: the search starts from its sampler alone
    assert default_point(xgb, {"n_estimators": ("int", 5, 20)}, 70_000) is None
    assert default_point(xgb, {**xgb.tunable, "max_depth": ("int", 2, 6)}, 70_000) is None


def test_search_ranges_parse_with_their_kind() -> None:
    assert parse_search(["max_depth=2:6", "learning_rate=0.01:0.3:log", "subsample=0.5:1"]) == {
        "max_depth": ("int", 2.0, 6.0),
        "learning_rate": ("log", 0.01, 0.3),
        "subsample": ("float", 0.5, 1.0),
    }
    for bad in ("max_depth", "max_depth=2", "max_depth=a:b", "=1:2"):
        with pytest.raises(ExporterError, match="--search"):
            parse_search([bad])


@pytest.mark.parametrize(
    ("space", "fixed", "message"),
    [
        ({"depth": ("int", 2, 6)}, {}, "not a hyper-parameter of xgb; known: n_estimators"),
        ({"max_depth": ("int", 6, 2)}, {}, "LOW < HIGH"),
        ({"max_depth": ("int", 2, 60)}, {}, "max_depth of xgb must be a positive integer up to 30"),
        ({"learning_rate": ("log", 0, 0.3)}, {}, "above 0"),
        ({"max_depth": ("int", 2.5, 6)}, {}, "integer bounds"),
        ({"max_depth": ("float", 2.5, 7.5)}, {}, "integer bounds"),  # an integer knob: not truncated silently
        ({"max_depth": ("int", 2, 6)}, {"max_depth": 4}, "both fixed"),
        ({"subsample": ("float", 0.5, 1.5)}, {}, r"subsample of xgb must be a number in \(0, 1\]"),
    ],
)
def test_a_bad_range_is_named(space, fixed, message) -> None:
    with pytest.raises(ExporterError, match=message):
        check_search_space(get_spec("xgb"), space, fixed)


def test_a_bad_range_on_the_command_line_exits_2_before_any_work(tmp_path: Path) -> None:
    done = cli("tune", "xgb", "--trials", "2", "--search", "max_depth=2:99", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "max_depth" in done.stderr and "Traceback" not in done.stderr
    done = cli("tune", "xgb", "--trials", "2", "--search", "depth=2:9", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "cannot tune 'depth'" in done.stderr
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_three_trials_then_the_best_exported_with_its_trial(tmp_path: Path) -> None:
    done = cli(
        "tune",
        "xgb",
        "--trials",
        "3",
        "--rows",
        "2000",
        "--quiet",
        "--artifacts",
        "artifacts",
        "--search",
        "n_estimators=5:20",
        "--study",
        "small",
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    trials = [line for line in done.stdout.splitlines() if line.startswith("trial ")]
    assert len(trials) == 3
    meta = json.loads((tmp_path / "artifacts" / "xgb" / "1" / "metadata.json").read_text())
    tuning = meta["tuning"]
    # the validation rows choose; the test rows (metadata's quality) only report the chosen trial
    assert tuning["study"] == "small" and tuning["trials"] == 3 and tuning["objective"] == "validation auc"
    assert tuning["trial"] in (0, 1, 2)
    assert meta["training"]["hyperparameters"]["n_estimators"] == tuning["params"]["n_estimators"]
    assert 5 <= tuning["params"]["n_estimators"] <= 20
    assert meta["quality"]["metric"] == "auc" and tuning["value"] != pytest.approx(meta["quality"]["value"], abs=1e-9)

    c = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("xgb").experiment_id])
    kinds = sorted(r.data.tags["exporter.kind"] for r in runs)
    assert kinds == ["export", "trial", "trial", "trial", "tune"]
    (parent,) = [r for r in runs if r.data.tags["exporter.kind"] == "tune"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4  # three trials and the best's export
    trial_runs = [r for r in children if r.data.tags["exporter.kind"] == "trial"]
    assert all(r.data.metrics["objective"] == r.data.metrics["validation.auc"] for r in trial_runs)
    assert not any(k.startswith("heldout.") for r in trial_runs for k in r.data.metrics)
    best_objective = max(r.data.metrics["objective"] for r in trial_runs)
    assert best_objective == pytest.approx(tuning["value"], abs=1e-6)
    assert (tmp_path / "mlruns" / "optuna.db").is_file()
    # the same seed draws the same trials
    again = cli(
        "tune",
        "xgb",
        "--trials",
        "3",
        "--rows",
        "2000",
        "--quiet",
        "--artifacts",
        "again",
        "--search",
        "n_estimators=5:20",
        "--no-tracking",
        "--storage",
        f"sqlite:///{tmp_path / 'other.db'}",
        cwd=tmp_path,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert [t.split("(")[0] for t in trials] == [
        t.split("(")[0] for t in again.stdout.splitlines() if t.startswith("trial ")
    ]


@pytest.mark.parametrize("trials", [-1, 1.5, True, "3"])
def test_the_notebook_parameter_tune_trials_is_checked(trials: object) -> None:
    from exporter.tools import notebook_support as nbs

    with pytest.raises(nbs.ParameterError, match="tune_trials must be 0 .no search. or a positive integer"):
        nbs.train(object(), tune_trials=trials)  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_notebook_train_cell_tunes_then_exports_the_chosen_trial(tmp_path: Path) -> None:
    from exporter.export import pipeline
    from exporter.tools import notebook_support as nbs

    prep = nbs.prepare(
        "xgb", rows=2000, artifacts_dir=str(tmp_path / "art"), hparams={"n_estimators": 10}, progress=False
    )
    trained = nbs.train(prep, tune_trials=2, tracking=False)
    tuning = prep.params.tuning
    assert tuning["trials"] == 2 and tuning["objective"] == "validation auc" and tuning["trial"] in (0, 1)
    assert prep.hparams["max_depth"] == tuning["params"]["max_depth"] == trained.hparams["max_depth"]
    evaluation = pipeline.evaluate(prep, trained)
    nbs.export(prep, trained, evaluation, tracking=False)
    meta = json.loads((tmp_path / "art" / "xgb" / "1" / "metadata.json").read_text())
    assert meta["tuning"] == json.loads(json.dumps(tuning))
    assert meta["training"]["hyperparameters"]["max_depth"] == tuning["params"]["max_depth"]


@pytest.mark.slow
def test_torch_trials_report_each_epoch_and_a_pruned_trial_stops(tmp_path: Path, monkeypatch) -> None:
    import optuna

    from exporter.export import pipeline
    from exporter.tracking import tune as T

    params = pipeline.ExportParams(
        model="deepfm", rows=1500, hparams={"max_epochs": 3, "patience": 0}, artifacts=tmp_path / "art", progress=False
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    options = T.SearchOptions(tracking_enabled=False, storage=storage, study_name="reports", echo=lambda _: None)
    T.tune(params, trials=2, options=options)
    trials = optuna.load_study(study_name="reports", storage=storage).trials
    # a new study's first trial is the untuned model (weight_decay auto: 20 / ~1,050 rows, capped at 1e-3)
    assert trials[0].params == {"learning_rate": 0.005, "embed_dim": 16, "weight_decay": 1e-3}
    assert trials[1].params != trials[0].params
    for trial in trials:  # the negated validation loss after every epoch: what the median pruner compares
        assert sorted(trial.intermediate_values) == [1, 2, 3]
        assert all(v < 0 for v in trial.intermediate_values.values())

    # a pruner that stops every trial at its first report: no trial is complete, nothing is exported
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **_: optuna.pruners.ThresholdPruner(lower=0.0))
    lines: list[str] = []
    params = pipeline.ExportParams(
        model="deepfm", rows=1500, hparams={"max_epochs": 3}, artifacts=tmp_path / "pruned", progress=False
    )
    monkeypatch.setenv("EXPORTER_TRACKING", "on")  # pruned trials are runs too: the search's every point shows
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store beside the tree
    with pytest.raises(ExporterError, match="no trial of pruned finished"):
        options = T.SearchOptions(tracking_enabled=True, storage=storage, study_name="pruned", echo=lines.append)
        T.tune(params, trials=2, options=options)
    store = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    trial_runs = [r for r in runs if r.data.tags.get("exporter.kind") == "trial"]
    assert sorted(r.data.params["tune.trial"] for r in trial_runs) == ["0", "1"]
    assert {r.data.tags["exporter.trial_state"] for r in trial_runs} == {"PRUNED"}
    assert all("worse than the trials' median" in r.data.tags["exporter.trial_reason"] for r in trial_runs)
    assert all(r.data.params["hp.embed_dim"] and "objective" not in r.data.metrics for r in trial_runs)
    assert [r.info.status for r in runs if r.data.tags.get("exporter.kind") == "tune"] == ["FAILED"]
    assert [line.split(":")[1] for line in lines if line.startswith("trial ")] == [" pruned", " pruned"]
    study = optuna.load_study(study_name="pruned", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert [sorted(t.intermediate_values) for t in study.trials] == [[1], [1]]
    assert not (tmp_path / "pruned" / "deepfm").exists()


def _xgb_search(
    tmp_path: Path, study: str | None, trials: int, lines: list[str], rows: int = 1500, tracking: bool = False
) -> object:
    from exporter.export import pipeline
    from exporter.tracking import tune as T

    params = pipeline.ExportParams(model="xgb", rows=rows, artifacts=tmp_path / "art", progress=False)
    options = T.SearchOptions(
        tracking_enabled=tracking,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        study_name=study,
        search={"n_estimators": ("int", 5, 12)},
        echo=lines.append,
    )
    return T.tune(params, trials=trials, options=options)


@pytest.mark.slow
def test_a_continued_study_draws_new_points_exports_its_best_and_refuses_other_data(tmp_path: Path) -> None:
    import optuna

    lines: list[str] = []
    _xgb_search(tmp_path, "s", 3, lines)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="s", storage=storage)
    first = [t.params for t in study.trials]
    # an earlier search's trial better than any this search will find
    top = study.trials[1]
    study.add_trial(
        optuna.trial.create_trial(params=top.params, distributions=top.distributions, value=0.999)
    )  # fmt: skip
    lines.clear()
    found = _xgb_search(tmp_path, "s", 2, lines)
    study = optuna.load_study(study_name="s", storage=storage)
    again = [t.params for t in study.trials[4:]]
    assert len(again) == 2 and not any(p in first[1:] for p in again), (first, again)  # the sampler moved on
    assert found.best_trial == 3 and any("the study's best is trial 3" in line for line in lines)
    assert "study s continues with 4 trial(s) (continue it later with --study s)" in lines
    meta = json.loads((found.export.artifacts[0].path / "metadata.json").read_text())
    assert meta["tuning"]["trial"] == 3 and meta["tuning"]["params"] == top.params

    with pytest.raises(
        ExporterError, match=r"study 's' holds trials of data synthetic \(\d+ training.*choose another --study"
    ):
        _xgb_search(tmp_path, "s", 1, lines, rows=1800)


@pytest.mark.slow
def test_a_failing_trial_is_counted_and_the_search_goes_on(tmp_path: Path, monkeypatch) -> None:
    import optuna

    from exporter.export import pipeline

    real, calls = pipeline.fit, []

    def fit(prep, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise ExporterError("training diverged at epoch 1 (loss inf)")
        return real(prep, **kw)

    monkeypatch.setattr(pipeline, "fit", fit)
    monkeypatch.setenv("EXPORTER_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store beside the tree
    lines: list[str] = []
    found = _xgb_search(tmp_path, "f", 3, lines, tracking=True)
    assert [line.split(":")[1].strip() for line in lines if line.startswith("trial ")][1].startswith("failed")
    states = [t.state for t in optuna.load_study(study_name="f", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert found.best_trial in (0, 2) and found.export.artifacts
    store = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    trial_runs = {r.data.params["tune.trial"]: r for r in runs if r.data.tags.get("exporter.kind") == "trial"}
    assert sorted(trial_runs) == ["0", "1", "2"]  # the failed one too, FAILED with why
    assert trial_runs["1"].info.status == "FAILED" and trial_runs["1"].data.tags["exporter.trial_state"] == "FAILED"
    assert trial_runs["1"].data.tags["exporter.trial_reason"] == "training diverged at epoch 1 (loss inf)"
    assert [trial_runs[n].info.status for n in ("0", "2")] == ["FINISHED", "FINISHED"]
    assert "objective" in trial_runs["0"].data.metrics and "objective" not in trial_runs["1"].data.metrics


def test_unnamed_searches_started_in_the_same_second_get_their_own_study(tmp_path: Path, monkeypatch) -> None:
    import optuna

    from exporter.tracking import study as ST

    monkeypatch.setattr(ST.time, "strftime", lambda *_: "20261207-120000")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ident = ST.identity("xgb", "data log.csv")
    names = [ST.open_study(None, "xgb", storage, 0, ident, optuna.pruners.NopPruner())[1] for _ in range(3)]
    assert names == ["xgb-20261207-120000", "xgb-20261207-120000-2", "xgb-20261207-120000-3"]


@pytest.mark.slow
def test_a_trial_whose_process_died_is_failed_when_the_study_continues(tmp_path: Path, monkeypatch) -> None:
    """A search killed outright (SIGKILL, out of memory) cannot close its trial: its heartbeats stop, and the next
    search of the study marks it failed instead of leaving it RUNNING for ever."""
    import time

    import optuna

    from exporter.tracking import study as ST

    lines: list[str] = []
    _xgb_search(tmp_path, "h", 1, lines)
    monkeypatch.setattr(ST, "HEARTBEAT_SECONDS", 1)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=2)
    dead = optuna.load_study(study_name="h", storage=storage).ask()  # a process that died in this trial
    storage.record_heartbeat(dead._trial_id)
    time.sleep(4)  # the database clock counts whole seconds: more than the 2 s grace period for sure
    _xgb_search(tmp_path, "h", 1, lines)
    states = [t.state for t in optuna.load_study(study_name="h", storage=storage).trials]
    assert states[dead.number] == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.RUNNING not in states and states.count(optuna.trial.TrialState.COMPLETE) == 2


@pytest.mark.slow
def test_a_search_stopped_by_sigterm_closes_its_run_as_killed(tmp_path: Path) -> None:
    """Stopped by the user (SIGTERM, as Ctrl-C), the tuning run is KILLED in MLflow, not FAILED, and no run is
    left RUNNING."""
    import signal

    run = cli_process(
        *"tune deepfm --trials 50 --rows 20000 --artifacts artifacts --param max_epochs=200".split(), cwd=tmp_path
    )
    assert run.stdout is not None
    for line in run.stdout:  # the first trial done: the second one is training
        if line.startswith("trial 0:"):
            break
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    store = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    statuses = {r.data.tags.get("exporter.kind"): r.info.status for r in runs}
    assert statuses["tune"] == "KILLED" and "RUNNING" not in {r.info.status for r in runs}, statuses
