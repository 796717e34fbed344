"""Input drift (``serving/drift.py``): quiet for rows drawn like the training rows, loud for shifted ones, bounded,
exposed as JSON at ``GET /models/{model}/drift``, as Prometheus gauges and as one log line per crossing."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.serving.drift import DriftMonitor, _Window, psi
from exporter.serving.server import ModelRegistry, create_app
from exporter.training.data import split_indices, synthetic_dataset
from tests.conftest import SMALL_ROWS, export_small

SEED = 7  # export_small's seed: the synthetic rows below are the export's own


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift")
    export_small("xgb", root)
    return root


@pytest.fixture(scope="module")
def registry(artifacts: Path) -> ModelRegistry:
    return ModelRegistry.from_artifacts(artifacts)


def _client(registry: ModelRegistry, monitor: DriftMonitor | None) -> Any:
    from starlette.testclient import TestClient

    return TestClient(create_app(registry, drift=monitor))


def _rows(which: str) -> list[dict[str, Any]]:
    """The export's training (or held-out) rows as request rows; rows with an empty cell are left out (the
    columns are not optional, so a request cannot carry them)."""
    frame = synthetic_dataset(SMALL_ROWS, SEED)
    train, held = split_indices(len(frame), seed=SEED)
    frame = frame.iloc[train if which == "train" else held]
    columns = ["item_ctr", "item_cvr", "item_price", "user_age", "user_gender", "cross_age_x_ctr"]
    columns += ["cross_gender_x_price", "user_id", "item_id", "item_category"]
    frame = frame[columns].dropna()
    rows = frame.to_dict(orient="records")
    for row in rows:
        row["user_id"], row["item_id"] = int(row["user_id"]), int(row["item_id"])
    return rows


def _send(client: Any, rows: list[dict[str, Any]], batch: int = 100) -> None:
    for start in range(0, len(rows), batch):
        response = client.post("/predictions/xgb", json={"data": rows[start : start + batch]})
        assert response.status_code == 200, response.text


def _shifted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every numeric value far above the training range, every category and ID unseen in training."""
    out = []
    for i, row in enumerate(rows):
        shifted = {c: v * 100 + 1000 for c, v in row.items() if c not in ("user_id", "item_id", "item_category")}
        shifted.update(user_id=9_000_000 + i, item_id=8_000_000 + i, item_category=f"unseen-{i % 7}")
        out.append(shifted)
    return out


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("exporter.serve")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_rows_like_the_training_rows_stay_quiet(registry: ModelRegistry, log_lines: list[str]) -> None:
    monitor = DriftMonitor(window=5000, min_rows=200)
    with _client(registry, monitor) as client:
        _send(client, _rows("train"))
        answer = client.get("/models/xgb/drift").json()
    (version,) = answer["versions"]
    assert answer["model"] == "xgb" and answer["enabled"] is True
    assert version["judged"] and version["rows_in_window"] > 2000 and version["sampling_ratio"] == 1.0
    features = version["features"]
    assert set(features) == set(registry.latest["xgb"].feature_columns)
    for name, stats in features.items():
        assert stats["psi"] is not None and stats["psi"] < 0.1, (name, stats)
        if stats["kind"] == "numeric":
            assert stats["out_of_range"] == 0.0, (name, stats)
        else:
            assert stats["oov_increase"] is not None and stats["oov_increase"] < 0.05, (name, stats)
    assert version["crossed"] == []
    assert not [line for line in log_lines if line.startswith("drift")]


def test_held_out_rows_stay_below_the_warning(registry: ModelRegistry) -> None:
    monitor = DriftMonitor(window=5000, min_rows=200)
    with _client(registry, monitor) as client:
        _send(client, _rows("held"))
        (version,) = client.get("/models/xgb/drift").json()["versions"]
    assert version["judged"]
    assert all(s["psi"] < 0.1 for s in version["features"].values()), version["features"]


def test_shifted_rows_cross_the_thresholds_once(registry: ModelRegistry, log_lines: list[str]) -> None:
    monitor = DriftMonitor(window=1000, min_rows=200)
    with _client(registry, monitor) as client:
        held = _rows("held")
        _send(client, _shifted(held))
        first = client.get("/models/xgb/drift").json()["versions"][0]
        _send(client, _shifted(held[:500]))
        monitor.refresh()
        second = client.get("/models/xgb/drift").json()["versions"][0]
    price, category, item = (first["features"][c] for c in ("item_price", "item_category", "item_id"))
    assert price["psi"] > 0.25 and price["out_of_range"] == 1.0
    assert category["oov_rate"] == 1.0 and category["oov_increase"] > 0.9 and category["psi"] > 0.25
    assert item["oov_rate"] == 1.0  # integer IDs: against the keys of the graph's lookup
    crossed = {(c["feature"], c["statistic"]): c["level"] for c in first["crossed"]}
    assert crossed[("item_price", "psi")] == "alert" and crossed[("item_category", "oov_increase")] == "alert"
    assert len(held) > 500 and first["rows_observed"] == len(held)
    assert second["rows_observed"] == len(held) + 500 and second["rows_in_window"] == 1000
    # one log line per crossing, however often the statistics are computed
    price_lines = [line for line in log_lines if "feature=item_price psi=" in line]
    assert len(price_lines) == 1 and price_lines[0].startswith("drift alert: model=xgb version=1")


def _gauges() -> dict[tuple[str, ...], float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            if sample.name.startswith("exporter_drift") and sample.labels.get("model") == "xgb":
                key = (sample.name, sample.labels.get("feature", ""), sample.labels.get("statistic", ""))
                found[key] = sample.value
    return found


def test_the_gauges_follow_the_window_and_parse(registry: ModelRegistry) -> None:
    monitor = DriftMonitor(window=400, min_rows=100)
    with _client(registry, monitor) as client:
        _send(client, _rows("train")[:400])
        monitor.refresh()
        quiet = _gauges()
        _send(client, _shifted(_rows("held")[:400]))
        monitor.refresh()
        loud = _gauges()
    assert quiet[("exporter_drift", "item_ctr", "psi")] < 0.1
    assert loud[("exporter_drift", "item_ctr", "psi")] > 0.25
    assert loud[("exporter_drift", "item_ctr", "out_of_range")] == 1.0
    assert loud[("exporter_drift", "item_category", "oov_rate")] == 1.0
    assert loud[("exporter_drift_window_rows", "", "")] == 400


def test_the_window_never_holds_more_than_its_rows(registry: ModelRegistry) -> None:
    monitor = DriftMonitor(window=50, min_rows=10)
    handler = registry.latest["xgb"]
    matrix = np.arange(20 * handler.n_features, dtype=np.float64).reshape(20, handler.n_features)
    for _ in range(10):
        monitor.observe(handler, matrix)
    (report,) = monitor.report([handler])
    window = monitor._window(handler)
    assert window is not None
    assert report["rows_in_window"] == 50 and report["rows_observed"] == report["rows_seen"] == 200
    assert window.rows.shape == (50, handler.n_features)  # allocated once, never grown
    monitor.observe(handler, np.repeat(matrix, 10, axis=0))  # one request larger than the window
    assert monitor.report([handler])[0]["rows_in_window"] == 50 and window.rows.shape[0] == 50


def test_the_ring_keeps_the_latest_rows_in_any_batch_sizes(registry: ModelRegistry) -> None:
    handler = registry.latest["xgb"]
    window = _Window(handler, 7)
    sent = 0
    for size in (3, 3, 5, 1, 9, 2):
        rows = np.arange(sent, sent + size, dtype=np.float64)[:, None].repeat(handler.n_features, axis=1)
        window.add(rows)
        sent += size
    assert sorted(window.snapshot()[:, 0].tolist()) == list(map(float, range(sent - 7, sent)))


def test_high_traffic_is_sampled(registry: ModelRegistry) -> None:
    monitor = DriftMonitor(window=1000, max_rows_per_second=100)
    handler = registry.latest["xgb"]
    row = np.ones((1, handler.n_features))
    for _ in range(1000):
        monitor.observe(handler, row)
    monitor.refresh(elapsed=1.0)  # 1000 rows in a second: 1 row in 10 from now on
    for _ in range(1000):
        monitor.observe(handler, row)
    (report,) = monitor.report([handler])
    assert report["sampling_ratio"] == 0.1
    assert report["rows_seen"] == 2000 and report["rows_observed"] == 1000 + 100


def test_unknown_model_is_a_404_and_drift_off_says_so(registry: ModelRegistry) -> None:
    with _client(registry, DriftMonitor()) as client:
        response = client.get("/models/nope/drift")
        assert response.status_code == 404
        assert response.json()["error"].startswith('model "nope" not found; loaded models:')
        empty = client.get("/models/xgb/drift").json()["versions"][0]
        assert empty["rows_in_window"] == 0 and empty["judged"] is False and empty["features"] == {}
    with _client(registry, None) as client:
        assert client.get("/models/xgb/drift").json() == {"model": "xgb", "enabled": False, "versions": []}


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    even = np.full(4, 0.25)
    assert psi(even, even) == 0.0
    assert 0 < psi(np.array([0.3, 0.2, 0.25, 0.25]), even) < psi(np.array([0.7, 0.1, 0.1, 0.1]), even)
    assert math.isfinite(psi(np.array([1.0, 0.0, 0.0, 0.0]), even))


def test_the_command_default_is_the_monitors() -> None:
    from exporter.commands.serve import DEFAULT_DRIFT_WINDOW
    from exporter.serving.drift import DEFAULT_WINDOW

    assert DEFAULT_DRIFT_WINDOW == DEFAULT_WINDOW == DriftMonitor().window


def test_a_history_is_watched_by_its_empty_share_not_per_position(tmp_path: Path) -> None:
    """Short histories leave later positions empty (no item): the model's own training rows raise nothing; a
    window of rows without any history crosses the history's missing_increase (training's empty share)."""
    import json

    import pandas as pd

    from exporter.export import pipeline

    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame({"user_id": rng.integers(0, 80, n), "item_id": rng.integers(0, 60, n)})
    frame["price"] = rng.uniform(1, 100, n).round(2)
    frame["recent"] = [[int(x) for x in rng.integers(0, 60, rng.integers(1, 6))] for _ in range(n)]  # 1-5 items
    frame["label"] = (rng.random(n) < 0.3).astype(int)
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": ["user_id", "item_id", "price", {"name": "recent", "kind": "history",
                                                                                "max_length": 5}]}))  # fmt: skip
    params = pipeline.ExportParams(
        model="deepfm", data_path=tmp_path / "log.parquet", schema=schema, hparams={"max_epochs": 1},
        artifacts=tmp_path / "art", progress=False,
    )  # fmt: skip
    pipeline.run(params)
    registry = ModelRegistry.from_artifacts(tmp_path / "art")
    rows = [dict(r, recent=list(r["recent"])) for r in frame.drop(columns=["label"]).to_dict(orient="records")]
    monitor = DriftMonitor(window=5000, min_rows=200)
    with _client(registry, monitor) as client:
        for start in range(0, len(rows), 500):
            assert client.post("/predictions/deepfm", json={"data": rows[start : start + 500]}).status_code == 200
        (version,) = client.get("/models/deepfm/drift").json()["versions"]
        assert version["crossed"] == [], version["crossed"]
        assert "recent" in version["features"] and not [f for f in version["features"] if f.startswith("recent[")]
        assert version["features"]["recent"]["kind"] == "history"
        assert version["features"]["recent"]["missing_rate"] == 0.0
    empty = [dict(r, recent=[]) for r in rows[:1000]]
    with _client(registry, DriftMonitor(window=1000, min_rows=200)) as client:
        assert client.post("/predictions/deepfm", json={"data": empty}).status_code == 200
        (version,) = client.get("/models/deepfm/drift").json()["versions"]
    crossed = {(c["feature"], c["statistic"]) for c in version["crossed"]}
    assert ("recent", "missing_increase") in crossed and version["features"]["recent"]["missing_rate"] == 1.0
