"""One bad entry in the artifacts tree (a model directory whose name is not UTF-8, a metadata.json holding a lone
surrogate) never stops a reload: it is listed as failed and good new versions are still served; at start it is
a clean refusal (exit 2). A version first seen half-written is tried again once its files change."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from exporter.errors import ExporterError
from exporter.serving.live_registry import LiveRegistry, ModelRegistry
from exporter.serving.server import create_app
from tests.handler_fixtures import build_artifact, build_tree
from tests.serving.test_live_reload import publish


def _non_utf8_model(tree: Path) -> str:
    """A copy of xgb/1 under a model directory named b"bad\\xff"; returns the name as JSON shows it."""
    bad = os.path.join(os.fsencode(tree), b"bad\xff")
    os.mkdir(bad)
    shutil.copytree(tree / "xgb" / "1", os.path.join(os.fsdecode(bad), "1"))
    return "bad\\udcff"


def _surrogate_metadata(tree: Path, where: str) -> str:
    """A new version mmoe/2 whose metadata.json holds ``"\\ud800"`` (a JSON escape) at ``where``."""
    vdir = build_artifact(tree, "mmoe", version="2")
    text = (vdir / "metadata.json").read_text()
    if where == "value":
        text = text.replace('"created_at": "', '"created_at": "\\ud800', 1)
    else:
        text = text.replace('"seed": 0', '"seed\\ud800": 0', 1)
    assert "\\ud800" in text
    (vdir / "metadata.json").write_text(text)
    return "mmoe"


CASES = {
    "non-UTF-8 model directory": (_non_utf8_model, "not valid UTF-8"),
    "lone surrogate in a metadata value": (lambda tree: _surrogate_metadata(tree, "value"), "not valid Unicode"),
    "lone surrogate in a metadata key": (lambda tree: _surrogate_metadata(tree, "key"), "not valid Unicode"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_entry_is_listed_as_failed_and_new_versions_still_load(tmp_path: Path, case: str) -> None:
    from starlette.testclient import TestClient

    tree = build_tree(tmp_path / "artifacts")
    live = LiveRegistry(ModelRegistry.from_artifacts(tree), tree)
    make_bad, reason = CASES[case]
    name = make_bad(tree)
    publish(tree, "xgb", "3", tmp_path / "staging")
    after = live.reload("test")
    assert after.latest["xgb"].version == "3"  # the good new version is served
    assert after.latest["mmoe"].version == "1"
    (failure,) = json.loads(after.models_body)["failed"]
    assert failure["name"] == name and reason in failure["error"], failure
    with TestClient(create_app(live)) as client:
        listing = client.get("/models")
        assert listing.status_code == 200 and listing.json()["failed"] == [failure]
        assert client.get("/ping").status_code == 200
    # at start the same entry is a clean refusal naming it (serve exits 2)
    with pytest.raises(ExporterError, match=reason):
        ModelRegistry.from_artifacts(tree)


def test_an_empty_non_utf8_directory_is_ignored_like_any_non_model(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "artifacts")
    os.mkdir(os.path.join(os.fsencode(tree), b"junk\xff"))
    assert ModelRegistry.from_artifacts(tree).failed == {}


def test_a_half_written_version_loads_once_its_files_are_complete(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "artifacts")
    live = LiveRegistry(ModelRegistry.from_artifacts(tree), tree)
    vdir = publish(tree, "xgb", "3", tmp_path / "staging")
    model = vdir / "model.onnx"
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) // 2])  # seen half-written
    dir_mtime = os.stat(vdir).st_mtime_ns
    first = live.reload("test")
    assert first.latest["xgb"].version == "2" and ("xgb", "3") in first.failed
    assert live.reload("test").failed == first.failed  # nothing changed: not tried again
    model.write_bytes(whole)  # completed in place: the directory itself does not change
    assert os.stat(vdir).st_mtime_ns == dir_mtime
    after = live.reload("test")
    assert after.latest["xgb"].version == "3" and after.failed == {}


def test_a_served_version_damaged_in_place_is_no_longer_served_and_listed_as_failed(tmp_path: Path) -> None:
    """Overwritten in place (the directory unchanged), a served version is loaded again: damaged, it is dropped
    and listed as failed, as a worker started now would find it, so that every worker serves the same versions;
    restored, it is served again."""
    tree = build_tree(tmp_path / "artifacts")
    live = LiveRegistry(ModelRegistry.from_artifacts(tree), tree)
    vdir = publish(tree, "xgb", "3", tmp_path / "staging")
    assert live.reload("test").latest["xgb"].version == "3"
    model = vdir / "model.onnx"
    whole = model.read_bytes()
    dir_mtime = os.stat(vdir).st_mtime_ns
    model.write_bytes(whole[:100])
    assert os.stat(vdir).st_mtime_ns == dir_mtime
    damaged = live.reload("test")
    assert "3" not in damaged.versions["xgb"] and damaged.latest["xgb"].version == "2"
    assert "files changed on disk after it was loaded" in damaged.failed[("xgb", "3")]
    with pytest.raises(ExporterError, match="xgb/3"):  # what a worker started now finds: the same failure
        ModelRegistry.from_artifacts(tree)
    model.write_bytes(whole)
    restored = live.reload("test")
    assert restored.latest["xgb"].version == "3" and restored.failed == {}
    assert live.reload("test").latest["xgb"] is restored.latest["xgb"]  # unchanged: the same handler, not reloaded


@pytest.mark.parametrize("case", list(CASES))
def test_serve_refuses_a_bad_entry_at_start_with_exit_2(tmp_path: Path, case: str) -> None:
    import subprocess
    import sys

    from tests.handler_fixtures import REPO

    tree = build_tree(tmp_path / "artifacts")
    make_bad, reason = CASES[case]
    make_bad(tree)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--artifacts", str(tree), "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and reason in done.stderr, done.stderr
