"""The contract module owns each rule once (the runtime rules re-exported); every consumer (serve, verify,
export, the handler) gives the same answer for the same tree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exporter import contract as C
from exporter.export import repository as repo
from exporter.runtime.handler import ModelHandler
from exporter.serving.server import ModelRegistry
from exporter.tools.verify import verify
from tests.handler_fixtures import build_artifact, build_tree

VERSION_NAMES = {
    # name: is it a version?
    "1": True,
    "2": True,
    "10": True,
    "123456": True,
    str(2**63 - 1): True,
    "0": False,
    "00": False,
    "01": False,
    "-1": False,
    "+1": False,
    "1.0": False,
    " 1": False,
    "1 ": False,
    str(2**63): False,
    "١": False,
    "²": False,
    "一": False,
    "１": False,
    "": False,
    "abc": False,
    ".staging-1": False,
}


@pytest.mark.parametrize("name, expected", sorted(VERSION_NAMES.items()))
def test_version_rule_is_canonical_int64(name, expected):
    assert C.is_version_name(name) is expected


def test_version_number_bounds():
    assert C.version_problem(1) is None and C.version_problem(2**63 - 1) is None
    for bad in (0, -1, 2**63, 10**30, True, 1.0, "1", None):
        assert C.version_problem(bad), bad


@pytest.fixture()
def odd_tree(tmp_path: Path) -> Path:
    """A good tree whose xgb model directory also holds directories named like, but not, versions."""
    root = build_tree(tmp_path / "artifacts")
    for odd in ("01", "١", "²", "0", str(2**63)):
        shutil.copytree(root / "xgb" / "1", root / "xgb" / odd)
    return root


def test_serve_verify_and_export_agree_on_odd_version_names(odd_tree: Path):
    real = sorted(p.name for p in (odd_tree / "xgb").iterdir() if p.is_dir() and p.name in ("1", "2"))
    registry = ModelRegistry.from_artifacts(odd_tree)
    assert sorted(registry.versions["xgb"]) == real
    assert repo.versions(odd_tree / "xgb") == [int(v) for v in real]
    assert repo.next_version(odd_tree, ["xgb"]) == int(real[-1]) + 1
    assert [p.name for p in C.version_dirs(odd_tree / "xgb")] == real
    assert ModelHandler.load(odd_tree / "xgb").version == real[-1]
    report = verify(odd_tree)
    odd_lines = [p for p in report.problems if "not a version directory" in p]
    assert len(odd_lines) == 5, report.problems
    assert not [p for p in report.problems if "not a version directory" not in p], report.problems


def test_verify_on_a_digit_named_tree(tmp_path: Path):
    tree = build_tree(tmp_path / "exports" / "20261122")
    report = verify(tree)
    assert report.ok, report.problems
    assert len(report.passed) >= 3


def test_graph_io_rule_is_shared_by_export_and_verify(tmp_path: Path):
    from tests.handler_fixtures import tiny_model

    good = tiny_model(3, "scalar", None)
    assert C.graph_io_problems(good, 3, [-1]) == []
    assert any("axis 1 is 3; expected 4" in p for p in C.graph_io_problems(good, 4, [-1]))
    assert any("rank 1" in p for p in C.graph_io_problems(good, 3, [-1, 2]))
    good.graph.output[0].name = "out"
    assert any("named 'out'" in p for p in C.graph_io_problems(good, 3, [-1]))


def test_output_shape_per_format():
    assert C.output_shape("scalar") == [-1]
    assert C.output_shape("named_columns", ["a", "b"]) == [-1, 2]
    assert C.output_shape("vector", embed_dim=16) == [-1, 16]
    assert C.output_shape("vector") is None and C.output_shape("named_columns", []) is None
    assert C.output_shape("table") is None


def test_requests_built_from_rows():
    body = C.torchserve_request([{"a": 1, "b": "x", "c": float("nan"), "d": 9}], ["a", "b", "c"])
    assert body == {"data": [{"a": 1.0, "b": "x", "c": None}]}
    v2 = C.v2_request(np.arange(6.0).reshape(2, 3), "r1")
    assert v2["inputs"][0] == {"name": "features", "shape": [2, 3], "datatype": "FP64", "data": [0, 1, 2, 3, 4, 5]}
    assert v2["id"] == "r1" and v2["outputs"] == [{"name": "predictions"}]


def _squares_artifact(root: Path) -> Path:
    """A scalar model computing sum(x^2): finite for ordinary inputs, +inf for |x| ~ 1e200."""
    import hashlib

    from onnx import TensorProto, helper

    vdir = build_artifact(root, "xgb")
    nodes = [
        helper.make_node("Mul", ["features", "features"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["predictions"], keepdims=0),
    ]
    n = len(json.loads((vdir / "metadata.json").read_text())["feature_columns"])
    graph = helper.make_graph(
        nodes,
        "squares",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", n])],
        [helper.make_tensor_value_info("predictions", TensorProto.DOUBLE, ["batch"])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()
    (vdir / "model.onnx").write_bytes(raw)
    meta = json.loads((vdir / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(raw).hexdigest()
    (vdir / "metadata.json").write_text(json.dumps(meta))
    return vdir


def test_non_finite_model_output_is_a_400_not_a_null(tmp_path: Path):
    """Finite but extreme inputs that overflow the graph must not answer 200 with null predictions."""
    handler = ModelHandler.load(_squares_artifact(tmp_path / "art"))
    ok = {c: 1.0 for c in handler.feature_columns}
    assert handler.handle_bytes(json.dumps({"data": [ok]}))[0] == 200
    extreme = dict(ok, item_price=1e200)
    status, body = handler.handle_bytes(json.dumps({"data": [ok, extreme]}))
    assert status == 400, body
    message = json.loads(body)["error"]
    assert "no finite prediction" in message and "row 1" in message and "item_price=1e+200" in message
    status, body = handler.handle_bytes(json.dumps(C.v2_request(np.full((1, handler.n_features), 1e200))))
    assert status == 400 and b"null" not in body
