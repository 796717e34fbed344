"""Tracking: an export's MLflow run read back, the registered model's answers, an unreachable server, concurrent
exports, ``track`` and ``runs``; the store's location rules."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporter.errors import ExporterError
from exporter.tracking import store as S

REPO = Path(__file__).resolve().parents[2]
#: small and quick: the data and trees of these tests
FAST = ("--rows", "2000", "--param", "n_estimators=8", "--quiet")


def _tracked_env(**env: str) -> dict[str, str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "EXPORTER_TRACKING": "on", **env}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return full_env


def cli(*args: str, cwd: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """``python -m exporter ARGS`` with tracking on (the suite turns it off for every other test)."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=cwd,
        env=_tracked_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_process(*args: str, cwd: Path) -> subprocess.Popen:
    """:func:`cli` started, not waited for (two at once, or one to be stopped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", *args],
        cwd=cwd,
        env=_tracked_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------ store rules


def test_the_embedded_store_sits_beside_the_artifacts_tree(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = S.resolve(tmp_path / "artifacts")
    assert store.embedded and store.directory == tmp_path / "mlruns"
    assert store.uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert S.portable_uri(store, tmp_path / "artifacts") == "sqlite:///mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert S.resolve(tmp_path / "artifacts").uri == "http://tracking.example:5000"
    assert S.resolve(tmp_path / "artifacts", "sqlite:////x/y.db").directory == Path("/x")


def test_a_store_is_created_whole_and_a_half_created_one_says_how_to_recover(tmp_path: Path, monkeypatch) -> None:
    """A process stopped while MLflow created the store's tables left a store no later run could open (every
    later export untracked): the tables are now made in a file beside it, linked to its name when complete."""
    import sqlite3

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # an earlier test's mlflow.set_tracking_uri sets it
    store = S.resolve(tmp_path / "artifacts")
    store.directory.mkdir(parents=True)
    left = store.directory / f".{S.DB_FILE}.new-99999"  # what a process killed mid-creation leaves
    with sqlite3.connect(left) as db:
        db.execute("CREATE TABLE evaluation_datasets (x INTEGER)")
    monkeypatch.setattr(S, "_clients", {})
    S.client(store).search_experiments()
    assert store.sqlite_path.is_file() and not left.exists()
    assert not list(store.directory.glob(f".{S.DB_FILE}.new-*"))

    broken = S.resolve(tmp_path / "other" / "artifacts")  # a half-made store from before
    broken.directory.mkdir(parents=True)
    with sqlite3.connect(broken.sqlite_path) as db:
        db.execute("CREATE TABLE evaluation_datasets (x INTEGER)")
    with pytest.raises(S.TrackingUnavailable, match=r"was left half-created .*delete .*mlflow\.db"):
        S.client(broken)


def test_credentials_never_leave_the_uri_shown() -> None:
    assert S.redact("https://user:token@mlflow.example.com/") == "https://mlflow.example.com/"
    assert S.portable_uri(S.Store("https://u:p@h:1"), "artifacts") == "https://h:1"


def test_a_uri_that_is_not_one_is_refused() -> None:
    with pytest.raises(ExporterError, match="not a tracking URI"):
        S.resolve("artifacts", "ftp://somewhere")


def test_tracking_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setenv("EXPORTER_TRACKING", "off")
    assert not S.enabled()
    monkeypatch.setenv("EXPORTER_TRACKING", "on")
    assert S.enabled() and not S.enabled(no_tracking=True)


def test_an_unreachable_server_is_a_tracking_error_at_once() -> None:
    with pytest.raises(S.TrackingUnavailable, match="unreachable"):
        S.check_reachable(S.Store(f"http://127.0.0.1:{closed_port()}"))


# ------------------------------------------------------------------------------------------------ one export


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tracked xgb export into a fresh tree (its store in mlruns/ beside it)."""
    root = tmp_path_factory.mktemp("tracked")
    done = cli("export", "xgb", "--artifacts", "artifacts", *FAST, cwd=root)
    assert done.returncode == 0, done.stderr
    return root, done


@pytest.mark.slow
def test_exports_of_one_process_each_log_into_the_store_beside_their_own_tree(tmp_path: Path, monkeypatch) -> None:
    """A notebook's kernel exports twice, into two trees: each run lands in its own tree's store (MLflow's
    set_tracking_uri sets $MLFLOW_TRACKING_URI for the whole process; left set, the second export followed it)."""
    from exporter.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("EXPORTER_TRACKING", "on")
    for tree in ("first", "second"):
        assert main(["export", "xgb", "--artifacts", str(tmp_path / tree / "artifacts"), *FAST]) == 0
        assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    for tree in ("first", "second"):
        store = client(f"sqlite:///{tmp_path / tree / 'mlruns' / 'mlflow.db'}")
        runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
        assert len(runs) == 1, (tree, [r.info.run_id for r in runs])
        (mv,) = store.search_model_versions("name='xgb'")
        assert mv.run_id == runs[0].info.run_id


@pytest.mark.slow
def test_an_export_is_a_run_with_params_metrics_files_and_a_registered_model(tracked) -> None:
    root, done = tracked
    version = root / "artifacts" / "xgb" / "1"
    meta = json.loads((version / "metadata.json").read_text())
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    run_id = meta["tracking"]["run_id"]
    assert meta["tracking"]["tracking_uri"] == "sqlite:///mlruns/mlflow.db"
    assert run_id in (version / "README.md").read_text()
    assert f"tracking: run {run_id}" in done.stdout

    c = client(uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    p, m = run.data.params, run.data.metrics
    assert p["hp.n_estimators"] == "8" and p["seed"] == "0" and p["engine"] == "xgboost"
    assert p["data.source"] == "synthetic" and p["data.rows"] == "2000"
    assert int(p["split.train_rows"]) + int(p["split.validation_rows"]) + int(p["split.test_rows"]) == 2000
    assert int(p["split.validation_rows"]) > 0 and int(p["split.test_rows"]) > int(p["split.validation_rows"])
    assert "user_id" in p["features.categorical"] and "item_ctr" in p["features.numeric"]
    stop = meta["training"]["early_stopping"]  # where training stopped and why: runs compare by it
    assert (p["stop.best_epoch"], p["stop.epochs_run"]) == (str(stop["best_round"]), str(stop["rounds_run"]))
    assert p["stop.reason"] == "n_estimators" and p["stop.refit"] == "true"  # 2,000 rows: refit on train + validation
    assert m["heldout.auc"] == pytest.approx(meta["training"]["metrics"]["auc"], abs=1e-6)
    assert m["parity.max_abs_diff"] == pytest.approx(meta["parity"]["max_abs_diff"])
    assert m["seconds.total"] > 0 and m["objective"] == pytest.approx(m["heldout.auc"], abs=1e-6)
    curve = c.get_metric_history(run_id, "curve.train_loss")
    assert sorted(x.step for x in curve) == list(range(1, 9))  # one point per boosting round
    validation = c.get_metric_history(run_id, "curve.validation_loss")
    assert sorted(x.step for x in validation) == list(range(1, 9))
    last = max(validation, key=lambda x: x.step)
    assert last.value == pytest.approx(meta["training"]["final_loss"]["validation_loss"])
    files = {f.path for f in c.list_artifacts(run_id, "version")}
    assert {"version/README.md", "version/metadata.json"} <= files

    (mv,) = c.search_model_versions("name='xgb'")
    assert mv.run_id == run_id
    assert mv.tags["artifact_version"] == "1" and mv.tags["sha256"] == meta["sha256"]

    verified = cli("verify", str(version), cwd=root)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_the_registered_model_answers_as_the_handler(tracked) -> None:
    from exporter.handler import ModelHandler

    root, _ = tracked
    version = root / "artifacts" / "xgb" / "1"
    mlflow_model = _load(root, "models:/xgb/1")
    handler = ModelHandler.load(version)
    request = json.loads((version / "sample_request.json").read_text())
    decoded = handler.decode(payload=request)
    rng = np.random.default_rng(0)
    rows = np.concatenate([decoded.matrix, decoded.matrix[rng.integers(0, len(decoded.matrix), 50)] * 1.5])
    got = mlflow_model.predict({"features": rows})["predictions"]
    # the same ONNX file in another onnxruntime session: its tree ensemble may sum in another thread order,
    # so float32 rounding (one ulp, ~6e-8 here) is the only difference allowed
    np.testing.assert_allclose(np.asarray(got).reshape(-1), handler.run(rows).reshape(-1), rtol=1e-6, atol=1e-7)
    answered = handler.predict(request)["predictions"]
    np.testing.assert_allclose(
        np.asarray(got[: len(answered)]).reshape(-1), np.asarray(answered, dtype=float), rtol=1e-6, atol=1e-7
    )


def _load(root: Path, uri: str):
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    return mlflow.pyfunc.load_model(uri)


@pytest.mark.slow
def test_runs_lists_the_export(tracked) -> None:
    root, _ = tracked
    shown = cli("runs", "xgb", "--artifacts", "artifacts", cwd=root)
    assert shown.returncode == 0, shown.stderr
    meta = json.loads((root / "artifacts" / "xgb" / "1" / "metadata.json").read_text())
    assert meta["tracking"]["run_id"] in shown.stdout
    as_json = json.loads(cli("runs", "xgb", "--artifacts", "artifacts", "--json", cwd=root).stdout)
    assert as_json[0]["version"] == "1" and as_json[0]["auc"] == pytest.approx(meta["training"]["metrics"]["auc"])
    none = cli("runs", "deepfm", "--artifacts", "artifacts", cwd=root)
    assert none.returncode == 0 and "no runs of deepfm" in none.stdout
    elsewhere = cli("runs", "xgb", "--artifacts", str(root / "other" / "artifacts"), cwd=root)
    assert elsewhere.returncode == 2 and "no tracking store at" in elsewhere.stderr
    assert not (root / "other").exists()


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.slow
def test_an_unreachable_server_still_writes_the_artifact_and_track_logs_it_later(tmp_path: Path) -> None:
    # the subprocess timeout is the bound: MLflow's own retries would take minutes
    done = cli(
        "export",
        "xgb",
        *FAST,
        "--artifacts",
        "artifacts",
        "--tracking-uri",
        f"http://127.0.0.1:{closed_port()}",
        cwd=tmp_path,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: tracking:")]
    assert len(warnings) == 1 and "unreachable" in warnings[0]
    version = tmp_path / "artifacts" / "xgb" / "1"
    meta = json.loads((version / "metadata.json").read_text())
    assert "tracking" not in meta
    assert not (tmp_path / "mlruns").exists()

    logged = cli("track", str(version), cwd=tmp_path)
    assert logged.returncode == 0, logged.stderr
    c = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (mv,) = c.search_model_versions("name='xgb'")
    assert mv.tags["sha256"] == meta["sha256"]
    again = cli("track", str(version), cwd=tmp_path)  # the same bytes: not a second registry version
    assert again.returncode == 2 and "is already logged as run" in again.stderr, again.stderr
    bad = cli("track", str(tmp_path / "artifacts"), cwd=tmp_path)
    assert bad.returncode == 2 and "metadata.json" in bad.stderr


@pytest.mark.slow
def test_two_exports_at_once_log_two_runs(tmp_path: Path) -> None:
    procs = [
        cli_process("export", "xgb", "--artifacts", "artifacts", *FAST, "--seed", str(seed), cwd=tmp_path)
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert all("warning" not in err for _, err in outs)
    c = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("xgb")
    found = c.search_runs([exp.experiment_id])
    assert len(found) == 2 and {r.data.params["seed"] for r in found} == {"1", "2"}
    assert sorted(int(v.version) for v in c.search_model_versions("name='xgb'")) == [1, 2]
    run_ids = {
        json.loads((tmp_path / "artifacts" / "xgb" / v / "metadata.json").read_text())["tracking"]["run_id"]
        for v in ("1", "2")
    }
    assert run_ids == {r.info.run_id for r in found}


def test_no_tracking_writes_no_store(tmp_path: Path) -> None:
    from tests.conftest import export_small

    export_small("xgb", tmp_path / "artifacts")
    assert not (tmp_path / "mlruns").exists()
    meta = json.loads((tmp_path / "artifacts" / "xgb" / "1" / "metadata.json").read_text())
    assert "tracking" not in meta


@pytest.mark.slow
def test_the_executed_notebook_is_attached_to_the_versions_run(tracked, tmp_path: Path) -> None:
    from exporter.tracking.session import attach_files

    root, _ = tracked
    report = tmp_path / "report.ipynb"
    report.write_text('{"cells": []}')
    assert attach_files(root / "artifacts" / "xgb" / "1", [report]) is None
    meta = json.loads((root / "artifacts" / "xgb" / "1" / "metadata.json").read_text())
    c = client(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    assert "version/report.ipynb" in {f.path for f in c.list_artifacts(meta["tracking"]["run_id"], "version")}
    gone = attach_files(root / "artifacts" / "xgb" / "1", [report], f"http://127.0.0.1:{closed_port()}")
    assert gone is not None and gone.startswith("warning: tracking: report.ipynb not attached")


@pytest.mark.slow
def test_a_notebook_export_is_a_run_with_its_plots_and_the_executed_notebook(tmp_path: Path) -> None:
    done = cli(
        "notebooks",
        "xgb",
        "--artifacts",
        "artifacts",
        "-p",
        "rows",
        "2000",
        "-p",
        "n_estimators",
        "8",
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    meta = json.loads((tmp_path / "artifacts" / "xgb" / "1" / "metadata.json").read_text())
    c = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run_id = meta["tracking"]["run_id"]
    assert {f.path for f in c.list_artifacts(run_id, "plots")} == {
        "plots/training_curve.png",
        "plots/evaluation.png",
        "plots/parity.png",
    }
    assert "version/report.ipynb" in {f.path for f in c.list_artifacts(run_id, "version")}
    assert len(c.get_metric_history(run_id, "curve.train_loss")) == 8
    report = json.loads((tmp_path / "artifacts" / "xgb" / "1" / "report.ipynb").read_text())
    (runs_cell,) = [cell for cell in report["cells"] if cell.get("id") == "runs"]
    assert run_id in "".join("".join(o.get("text", "")) for o in runs_cell["outputs"])


@pytest.mark.slow
def test_track_logs_a_version_once_and_refuses_damaged_metadata_without_leaving_a_run(tmp_path: Path) -> None:
    assert cli("export", "xgb", *FAST, "--artifacts", "artifacts", "--no-tracking", cwd=tmp_path).returncode == 0
    version = "artifacts/xgb/1"
    first = cli("track", version, version, cwd=tmp_path)  # named twice: one run, one registered version
    assert first.returncode == 0, first.stderr
    again = cli("track", version, cwd=tmp_path)  # the same model bytes: not a second registry version
    assert again.returncode == 2 and "is already logged as run" in again.stderr, again.stderr
    c = client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert len(c.search_model_versions("name='xgb'")) == 1

    meta = json.loads((tmp_path / version / "metadata.json").read_text())
    for key, value, said in [
        ("versions", [], '"versions" must be a non-empty list'),
        ("training", ["x"], '"training" must be an object'),
        ("tracking", "oops", '"tracking" must be an object'),
    ]:
        damaged = tmp_path / "damaged" / "xgb" / "1"
        damaged.mkdir(parents=True, exist_ok=True)
        (damaged / "metadata.json").write_text(json.dumps({**meta, key: value}))
        done = cli("track", str(damaged), cwd=tmp_path)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, (key, done.stderr)
    assert not (tmp_path / "damaged" / "mlruns").exists()  # refused before any store is opened: no run left
    experiment = c.get_experiment_by_name("xgb").experiment_id
    assert [r.info.status for r in c.search_runs([experiment])] == ["FINISHED"]


def test_runs_never_writes_mlflow_tables_into_a_file_that_is_no_store(tmp_path: Path) -> None:
    import sqlite3

    store_dir = tmp_path / "mlruns"
    store_dir.mkdir()
    with sqlite3.connect(store_dir / S.DB_FILE) as db:  # someone's own database where the store would be
        db.execute("CREATE TABLE foo (x INTEGER)")
    before = (store_dir / S.DB_FILE).read_bytes()
    done = cli("runs", "xgb", "--artifacts", "artifacts", cwd=tmp_path)
    assert done.returncode == 2 and "is not an MLflow tracking store" in done.stderr, done.stderr
    assert (store_dir / S.DB_FILE).read_bytes() == before


def test_the_runs_table_shows_the_parameters_that_vary_and_a_trials_objective() -> None:
    """A tuning run logs no hp.* (its choice is best.*): it must not make every constant parameter look varied and
    push the searched ones out of the table; trials show their validation objective."""
    from types import SimpleNamespace

    from exporter.tracking import compare

    def run(i: int, kind: str, params: dict, metrics: dict) -> SimpleNamespace:
        return SimpleNamespace(
            info=SimpleNamespace(run_id=f"r{i}", start_time=1_765_000_000_000 + i, status="FINISHED"),
            data=SimpleNamespace(
                params={f"hp.{k}": v for k, v in params.items()}, metrics=metrics, tags={"exporter.kind": kind}
            ),
        )

    constant = {f"knob_{c}": "1" for c in "abcdefgh"}  # more constant knobs than the table shows
    found = [
        run(0, "tune", {}, {"objective": 0.74}),
        run(1, "trial", {**constant, "learning_rate": "0.01"}, {"objective": 0.73}),
        run(2, "trial", {**constant, "learning_rate": "0.02"}, {"objective": 0.74}),
    ]
    frame = compare._frame(found)
    assert list(frame.columns)[5] == "learning_rate"
    assert frame["objective"].tolist() == [0.74, 0.73, 0.74]
    assert "parity_max_diff" not in frame.columns  # no run has it: no column of None
