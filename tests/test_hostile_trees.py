"""Artifact trees built to crash the reader give FAIL lines or exit 2, never a RecursionError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter import cli
from exporter import contract as C
from exporter.errors import ExporterError
from exporter.runtime import torchserve_entry as TS
from exporter.runtime.handler import ArtifactError, ModelHandler
from exporter.serving.server import ModelRegistry
from exporter.tools.verify import MAX_PBTXT_DEPTH, parse_pbtxt, verify
from tests.handler_fixtures import build_tree

DEEP = 10**5


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "artifacts")


def _nest_metadata(vdir: Path, depth: int) -> None:
    """Keep the metadata usable but hang a ``depth``-deep list under an extra key (as text: no recursion here)."""
    text = (vdir / "metadata.json").read_text()
    deep = "[" * depth + "]" * depth
    (vdir / "metadata.json").write_text(text.rstrip()[:-1] + f', "notes": {deep}}}')


def _deep_metadata(vdir: Path) -> None:
    (vdir / "metadata.json").write_text("[" * DEEP + "]" * DEEP)


def test_handler_refuses_metadata_nested_1e5_deep(tree: Path) -> None:
    _deep_metadata(tree / "xgb" / "1")
    with pytest.raises(ArtifactError, match="more than 64 levels deep"):
        ModelHandler.load(tree / "xgb" / "1")


@pytest.mark.parametrize("depth", [C.MAX_METADATA_DEPTH + 1, 300, DEEP])
def test_handler_refuses_deep_metadata_even_when_json_parses_it(tree: Path, depth: int) -> None:
    """300 deep parses with json but orjson (serving GET /models/{name}) refuses past 254."""
    _nest_metadata(tree / "xgb" / "1", depth)
    with pytest.raises(ArtifactError, match="levels deep"):
        ModelHandler.load(tree / "xgb" / "1")


def test_metadata_at_the_depth_limit_still_loads(tree: Path) -> None:
    _nest_metadata(tree / "xgb" / "1", C.MAX_METADATA_DEPTH - 1)  # plus the top-level object
    assert ModelHandler.load(tree / "xgb" / "1").model_name == "xgb"


def _lists(depth: int) -> list:
    nested: list = []  # depth 1
    for _ in range(depth - 1):
        nested = [nested]
    return nested


def test_metadata_depth_limit() -> None:
    limit = C.MAX_METADATA_DEPTH
    assert C.nesting_depth(_lists(limit)) == limit
    assert C.nesting_depth(_lists(limit + 1)) == limit + 1
    assert C.nesting_depth({"a": {"b": [1, {"c": 2}]}}) == 4 and C.nesting_depth(3) == 0
    assert C.nesting_depth(_lists(10**5)) == limit + 1  # stops early


def test_serve_lists_the_deep_metadata_instead_of_dying(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _deep_metadata(tree / "xgb" / "1")
    with pytest.raises(ExporterError, match=r"xgb/1.*levels deep"):
        ModelRegistry.from_artifacts(tree)
    assert cli.main(["serve", "--artifacts", str(tree), "--port", "0"]) == 2
    assert "levels deep" in capsys.readouterr().err


def test_verify_reports_deep_metadata_and_keeps_the_other_results(tree: Path) -> None:
    _deep_metadata(tree / "xgb" / "1")
    report = verify(tree)
    assert [p for p in report.problems if p.startswith("xgb/1: metadata.json nests")], report.problems
    assert not [p for p in report.problems if not p.startswith("xgb/1")], report.problems
    assert sorted(line.split(":")[0] for line in report.passed) == ["mmoe/1", "two_tower/1", "xgb/2"]


def test_verify_reports_a_pbtxt_of_1e5_open_lists(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "mmoe" / "config.pbtxt").write_text("input [" * DEEP)
    report = verify(tree)
    assert [p for p in report.problems if p.startswith("mmoe: config.pbtxt does not parse") and "levels deep" in p]
    # the config problem is the model's; every version is still checked and reported
    assert sorted(line.split(":")[0] for line in report.passed) == ["mmoe/1", "two_tower/1", "xgb/1", "xgb/2"]
    assert cli.main(["verify", str(tree), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  mmoe: config.pbtxt does not parse" in out and "Traceback" not in out


@pytest.mark.parametrize("text", ["input [" * DEEP, "a {" * DEEP, "a <" * DEEP, "a: " + "[" * DEEP])
def test_parse_pbtxt_has_a_depth_limit(text: str) -> None:
    with pytest.raises(ValueError, match=f"more than {MAX_PBTXT_DEPTH} levels deep"):
        parse_pbtxt(text)


def test_parse_pbtxt_still_reads_nesting_within_the_limit() -> None:
    text = "a " + "{ a " * (MAX_PBTXT_DEPTH - 1) + "{ b: 1 }" + " }" * (MAX_PBTXT_DEPTH - 1)
    parsed = parse_pbtxt(text)
    for _ in range(MAX_PBTXT_DEPTH - 1):
        parsed = parsed["a"][0]
    assert parsed == {"a": [{"b": [1]}]}


def test_torchserve_initialize_survives_a_deep_metadata(tree: Path) -> None:
    _deep_metadata(tree / "xgb" / "1")

    class Context:
        system_properties = {"model_dir": str(tree / "xgb" / "1")}
        manifest = {"model": {"serializedFile": "model.onnx"}}

    TS._service = None
    try:
        with pytest.raises(ArtifactError, match="levels deep"):
            TS.initialize(Context())
    finally:
        TS._service = None


def test_deep_json_is_not_accepted_as_metadata_by_json_module_anyway() -> None:
    """Guard on the premise: the standard json module raises RecursionError on 10^5 levels."""
    with pytest.raises(RecursionError):
        json.loads("[" * DEEP + "]" * DEEP)
