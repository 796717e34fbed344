"""A torch model's ``model.onnx`` records no source location of the exporting machine.

torch's ONNX exporter writes ``pkg.torch.onnx.*`` metadata on every node (a stack trace with the absolute
paths and line numbers of our source files, the module class hierarchy, the FX node). ``export_onnx`` strips
it, so no local path is recorded (contract: no absolute local path) and the bytes do not depend on the
checkout directory or on the line a network's code sits on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import exporter
from exporter.models import get_spec, model_names
from exporter.models import torch_common as tc
from exporter.models.deepfm import DeepFM
from tests.conftest import REPO

#: the directories whose paths a stack trace of the exporter's code would hold (this checkout, and the
#: package actually imported, should a run pick up another copy)
SOURCE_ROOTS = sorted({str(REPO), str(Path(exporter.__file__).resolve().parents[1])})

#: every exported graph of a torch model (two_tower exports two)
TORCH_PARTS = sorted(
    part for name in model_names() if get_spec(name).framework == "torch" for part in get_spec(name).model_names
)


def _torch_keys(model: onnx.ModelProto) -> list[str]:
    """``pkg.torch.onnx.*`` keys of every node (subgraphs and functions included), graph and function."""
    keys: list[str] = []

    def graph(g: onnx.GraphProto) -> None:
        keys.extend(p.key for p in g.metadata_props)
        nodes(g.node)

    def nodes(ns: list[onnx.NodeProto]) -> None:
        for n in ns:
            keys.extend(p.key for p in n.metadata_props)
            for attr in n.attribute:
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(model.graph)
    for f in model.functions:
        keys.extend(p.key for p in f.metadata_props)
        nodes(list(f.node))
    return [k for k in keys if k.startswith("pkg.torch.onnx")]


#: the one torch key left, on graph inputs, outputs and value infos: the FX name of the value (``p_bias``),
#: no path or line; it is part of the pinned deepfm graph (tests/export/test_seeded_export.py)
VALUE_NAME_KEY = "pkg.torch.onnx.original_node_name"


def assert_no_source_location(model: onnx.ModelProto) -> None:
    data = model.SerializeToString()
    for root in SOURCE_ROOTS:
        assert root.encode() not in data, f"model.onnx records the local path {root}"
    assert b'.py", line ' not in data, "model.onnx records a Python stack trace"
    assert _torch_keys(model) == []
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer]
    left = {p.key for v in values for p in v.metadata_props if p.key.startswith("pkg.torch.onnx")}
    assert left <= {VALUE_NAME_KEY}, left


def test_strip_source_metadata_reaches_subgraphs_and_functions_and_keeps_other_keys() -> None:
    kept = ["namespace", "pkg.onnxscript.rewriter.rule_name"]

    def node(name: str) -> onnx.NodeProto:
        n = helper.make_node("Identity", ["x"], ["y"], name=name)
        helper.set_metadata_props(
            n,
            {
                "pkg.torch.onnx.stack_trace": 'File "/somewhere/exporter/models/deepfm.py", line 57, in forward',
                "namespace": f": exporter.models.deepfm.DeepFM/{name}",
                "pkg.torch.onnx.class_hierarchy": "['exporter.models.deepfm.DeepFM']",
                "pkg.onnxscript.rewriter.rule_name": "rule",
            },
        )
        return n

    def graph(name: str, nodes: list[onnx.NodeProto]) -> onnx.GraphProto:
        g = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [None])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, [None])],
            [numpy_helper.from_array(np.array([1.0]), "w")],
        )
        helper.set_metadata_props(g, {"pkg.torch.onnx.graph_note": "/somewhere", "pkg.torch.export.sig": "kept"})
        return g

    branch = graph("then", [node("inner")])
    cond = helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch, else_branch=graph("else", []))
    function = helper.make_function("local", "f", ["x"], ["y"], [node("in_function")], [])
    helper.set_metadata_props(function, {"pkg.torch.onnx.function_note": "/somewhere"})
    model = helper.make_model(graph("main", [node("outer"), cond]), functions=[function])
    assert _torch_keys(model)  # the hand-made model does carry source metadata

    tc.strip_source_metadata(model)

    assert _torch_keys(model) == []
    assert b"/somewhere" not in model.SerializeToString()
    assert [p.key for p in model.graph.node[0].metadata_props] == kept
    then = next(a.g for a in model.graph.node[1].attribute if a.name == "then_branch")
    assert [p.key for p in then.node[0].metadata_props] == kept
    assert [p.key for p in model.functions[0].node[0].metadata_props] == kept
    assert [(p.key, p.value) for p in model.graph.metadata_props] == [("pkg.torch.export.sig", "kept")]


def test_export_onnx_records_no_source_location() -> None:
    """A freshly exported network (a stack trace of its forward would name this checkout's files)."""
    net = tc.Float64Output(DeepFM([0, 0, 5, 3], 4, [8]))
    model = tc.export_onnx(net, 4)
    assert_no_source_location(model)
    # what is kept still names the module by its class path (not a file path)
    namespaces = [p.value for n in model.graph.node for p in n.metadata_props if p.key == "namespace"]
    assert any("exporter.models.deepfm.DeepFM" in v for v in namespaces)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCH_PARTS)
def test_exported_model_onnx_holds_no_path_of_this_checkout(exported_artifacts: Path, name: str) -> None:
    path = exported_artifacts / name / "1" / "model.onnx"
    data = path.read_bytes()
    assert str(REPO).encode() not in data
    assert b"pkg.torch.onnx.stack_trace" not in data
    assert_no_source_location(onnx.load_from_string(data))
