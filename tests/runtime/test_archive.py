"""``python -m exporter archive``: which version it archives, what it refuses (exit 2), and that the .mar
appears whole or not at all. (Loading and serving the archive: tests/runtime/test_torchserve_entry.py.)"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from exporter import cli
from exporter.errors import ExporterError
from exporter.export import archive as A
from tests.handler_fixtures import build_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("artifacts"))


def manifest(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        return json.loads(z.read("MAR-INF/MANIFEST.json"))


def test_archive_builds_the_highest_version_by_default_and_refuses_to_overwrite(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"  # created by the command
    assert cli.main(["archive", "xgb", "--artifacts", str(tree), "--export-path", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {store / 'xgb.mar'} (xgb version 2: model.onnx, metadata.json" in out
    assert "--models xgb=xgb.mar" in out
    model = manifest(store / "xgb.mar")["model"]
    assert (model["modelName"], model["modelVersion"], model["handler"]) == ("xgb", "2", "torchserve_entry.py")
    with zipfile.ZipFile(store / "xgb.mar") as z:
        assert json.loads(z.read("metadata.json")) == json.loads((tree / "xgb" / "2" / "metadata.json").read_text())
        assert "exporter/runtime/handler.py" in z.namelist() and "exporter/features/__init__.py" not in z.namelist()
    before = (store / "xgb.mar").read_bytes()
    assert cli.main(["archive", "xgb/1", "--artifacts", str(tree), "--export-path", str(store)]) == 2
    assert "xgb.mar' already exists; pass --force to replace it" in capsys.readouterr().err
    assert (store / "xgb.mar").read_bytes() == before
    assert cli.main(["archive", "xgb/1", "--artifacts", str(tree), "--export-path", str(store), "--force"]) == 0
    assert manifest(store / "xgb.mar")["model"]["modelVersion"] == "1"
    assert sorted(p.name for p in store.iterdir()) == ["xgb.mar"]  # no staging directory left behind


@pytest.mark.parametrize(
    "model, message",
    [
        ("nope", "model 'nope' not found in"),
        ("xgb/7", "model 'xgb' has no version 7 (versions: 1, 2)"),
        ("xgb/01", "'01' is not a version directory name"),
        ("xgb/config.pbtxt", "'config.pbtxt' is not a version directory name"),
        ("xgb/1/model.onnx", "'1/model.onnx' is not a version directory name"),
        ("../xgb", "model '..' not found in"),
    ],
)
def test_archive_names_what_is_wrong_with_the_model_argument(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, message: str
) -> None:
    assert cli.main(["archive", model, "--artifacts", str(tree), "--export-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_archive_refuses_a_version_the_handler_would_refuse(tree: Path, tmp_path: Path) -> None:
    broken = tmp_path / "artifacts"
    (broken / "xgb" / "1").mkdir(parents=True)
    for f in (tree / "xgb" / "1").iterdir():
        (broken / "xgb" / "1" / f.name).write_bytes(f.read_bytes())
    (broken / "xgb" / "1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ExporterError, match="cannot archive .*sha256 of .* is .* but metadata.json records"):
        A.build_archive("xgb", tmp_path / "store", broken)
    assert not (tmp_path / "store").exists()


def test_a_failed_build_leaves_no_file(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "mmoe.mar").write_bytes(b"the previous archive")

    def fail(*args: object) -> Path:
        raise ExporterError("torch-model-archiver failed (exit 1): simulated")

    monkeypatch.setattr(A, "_run_archiver", fail)
    with pytest.raises(ExporterError, match="simulated"):
        A.build_archive("mmoe", store, tree, force=True)
    assert sorted(p.name for p in store.iterdir()) == ["mmoe.mar"]
    assert (store / "mmoe.mar").read_bytes() == b"the previous archive"
