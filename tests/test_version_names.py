"""Directories that are not version names (``²``, ``01``, ``١``, ``0``) beside real versions.

``"²".isdigit()`` is true and ``int("²")`` raises, so every command lists versions with the one rule of
:mod:`exporter.runtime.rules`: each command below ignores such directories (verify names them as a layout
problem) and picks the real latest version; none crashes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exporter.commands import bench as bench_command
from exporter.errors import ExporterError
from exporter.export import kserve, repository
from exporter.runtime import rules
from exporter.scoring import bench as score_bench
from exporter.scoring.artifact import resolve_artifact, resolve_version
from exporter.serving.live_registry import ModelRegistry, scan
from exporter.tools.verify import verify
from tests.handler_fixtures import build_tree

NOT_VERSIONS = ["²", "01", "١", "0", "007", str(2**63)]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The tiny tree (xgb 1 and 2) plus copies of xgb/2 under names that are not versions."""
    root = build_tree(tmp_path / "artifacts")
    shutil.rmtree(root / "xgb" / ".staging-123")
    for name in NOT_VERSIONS:
        shutil.copytree(root / "xgb" / "2", root / "xgb" / name)
    return root


def test_the_names_pass_isdigit_or_look_numeric_but_are_not_versions() -> None:
    assert "²".isdigit() and "١".isdigit()
    with pytest.raises(ValueError):
        int("²")
    assert not any(rules.is_version_name(n) for n in NOT_VERSIONS)


def test_serve_registry_scan_ignores_them(tree: Path) -> None:
    registry = scan(tree)
    assert sorted(registry.versions["xgb"]) == ["1", "2"] and registry.latest["xgb"].version == "2"
    assert registry.failed == {}
    assert ModelRegistry.from_artifacts(tree).latest["xgb"].version == "2"


def test_verify_names_them_and_checks_the_real_versions(tree: Path) -> None:
    report = verify(tree)
    for name in NOT_VERSIONS:
        assert f"xgb/{name}: not a version directory (Triton expects positive integers: 1, 2, ...)" in report.problems
    assert len(report.problems) == len(NOT_VERSIONS), report.problems
    assert sorted(line.split(":")[0] for line in report.passed) == ["mmoe/1", "two_tower/1", "xgb/1", "xgb/2"]


def test_score_picks_the_latest_real_version_and_refuses_the_names(tree: Path) -> None:
    assert resolve_artifact("xgb", tree) == tree / "xgb" / "2"
    artifact = resolve_version("xgb", tree)
    assert artifact.path == tree / "xgb" / "2" and artifact.metadata["versions"] == ["2"]
    assert resolve_artifact("xgb/1", tree) == tree / "xgb" / "1"
    for name in NOT_VERSIONS:
        with pytest.raises(ExporterError, match="expected MODEL or MODEL/VERSION with a positive integer version"):
            resolve_artifact(f"xgb/{name}", tree)
    with pytest.raises(ExporterError, match=r"has no version 3 \(versions: 1, 2\)"):
        resolve_artifact("xgb/3", tree)


def test_score_without_a_real_version_says_so(tree: Path) -> None:
    for name in ("1", "2"):
        shutil.rmtree(tree / "xgb" / name)
    with pytest.raises(ExporterError, match="holds no version directory"):
        resolve_artifact("xgb", tree)


def test_kserve_manifest_is_for_the_latest_real_version(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = kserve.manifests(tree, ["xgb"])["xgb"]
    assert manifest["metadata"]["annotations"][f"{kserve.ANNOTATION_PREFIX}/model-version"] == "2"
    from exporter.cli import main

    assert main(["kserve", "--artifacts", str(tree), "xgb", "--stdout"]) == 0
    assert "model-version: '2'" in capsys.readouterr().out


def test_kserve_refuses_unusable_metadata_by_name(tree: Path) -> None:
    (tree / "xgb" / "2" / "metadata.json").write_text("[" * 100 + "]" * 100)
    with pytest.raises(ExporterError, match="nests objects or lists more than"):
        kserve.manifests(tree, ["xgb"])


def test_bench_picks_the_latest_real_version(tree: Path) -> None:
    assert score_bench.latest_version(tree, "xgb") == tree / "xgb" / "2"
    assert bench_command.latest_version is score_bench.latest_version  # the one `bench` uses
    assert score_bench.model_columns(tree, "xgb") == rules.read_metadata(tree / "xgb" / "2")["feature_columns"]


def test_export_counts_only_real_versions(tree: Path) -> None:
    assert repository.versions(tree / "xgb") == [1, 2]
    assert repository.next_version(tree, ["xgb"]) == 3
