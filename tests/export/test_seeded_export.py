"""A seeded export is reproducible to the byte: the same command writes the same model.

``python -m exporter export MODEL --rows 2000`` (default seed, built-in synthetic data) into a fresh
artifacts directory must write a ``model.onnx`` whose sha256 equals the constant below, so a refactoring that
claims to change no behaviour (moving modules, splitting files, renaming classes) can prove it.

What is pinned, and why:

* xgb: the sha256 of ``model.onnx`` as written.
* deepfm: the sha256 of the model with every node's ``metadata_props`` removed. The export strips torch's
  per-node source locations (stack traces with absolute paths and line numbers, see
  ``tests/models/test_torch_export.py``), but each node still names the Python class path of its module
  (``exporter.models.deepfm.DeepFM``), so the raw bytes change when a network's module or class is renamed,
  while the model does not.
  Weights, graph, tensor names, opsets, producer and the model-level properties are all still covered (the
  test checks that no source path is left in the bytes it hashes).

The constants were computed on 2-core x86-64 machines with the pinned libraries of ``requirements.txt`` (torch
2.13.0, onnx 1.23.2, onnxscript 0.7.2, xgboost-cpu 3.2.0, onnxmltools 1.16.0), one per CPU vendor where they
differ: torch's float kernels round differently on an Intel Xeon and an AMD EPYC, so deepfm's trained weights,
and its graph bytes, differ between the two (xgb's do not). On each, two runs gave the same bytes, as did a run with
``OMP_NUM_THREADS=1``; the code before the package layout move gave the same xgb bytes and the same deepfm graph
(Intel), and the code before and after a day's changes to labels, tracking and serving the same deepfm graph
(AMD). Another library version or CPU family may legitimately change them; when a change of the pinned libraries or
of training is intended, take the new value from the failure message.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest

from tests.conftest import run_cli

ROWS = "2000"

#: model -> (what is hashed, CPU vendor -> sha256; "any": every vendor), see the module docstring
PINNED = {
    "xgb": ("file", {"any": "b7dc0cfcc898dac2ea4b3829c82129d248dc040a72bee49a01aa25252b51dbc5"}),
    "deepfm": (
        "graph",
        {
            "GenuineIntel": "319d4700bcd0ee6501703204144dec357b1e3adb241142c8f9a7654c9db47726",
            "AuthenticAMD": "c7133a4656f783959116df8c1c44f79fca329e9b25f7220f45c293b1d7ab34f4",
        },
    ),
}


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ... from /proc/cpuinfo (``unknown`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _strip_node_metadata(graph: onnx.GraphProto) -> None:
    """Remove ``metadata_props`` of every node, in subgraphs too (source locations, module class paths)."""
    for node in graph.node:
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_node_metadata(attr.g)
            for sub in attr.graphs:
                _strip_node_metadata(sub)


def graph_bytes(path: Path) -> bytes:
    """The model serialised without node metadata (what the ``graph`` pins hash)."""
    model = onnx.load(str(path))
    _strip_node_metadata(model.graph)
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
    return model.SerializeToString(deterministic=True)


def test_graph_bytes_drop_only_node_metadata(tmp_path: Path) -> None:
    """The canonical form ignores source locations but not a changed weight."""
    import numpy as np
    from onnx import helper, numpy_helper

    def model(weight: float, where: str) -> onnx.ModelProto:
        node = helper.make_node("Mul", ["x", "w"], ["y"], name="mul")
        prop = node.metadata_props.add()
        prop.key, prop.value = "pkg.torch.onnx.stack_trace", where
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [None, 1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, [None, 1])],
            [numpy_helper.from_array(np.array([weight]), "w")],
        )
        return helper.make_model(graph)

    def canonical(m: onnx.ModelProto, tmp: Path) -> bytes:
        onnx.save(m, str(tmp))
        return graph_bytes(tmp)

    tmp = tmp_path / "m.onnx"
    base = canonical(model(2.0, 'File "/a/exporter/models/deepfm.py", line 55'), tmp)
    assert base == canonical(model(2.0, 'File "/b/exporter/models/deepfm.py", line 60'), tmp)
    assert base != canonical(model(2.5, 'File "/a/exporter/models/deepfm.py", line 55'), tmp)
    assert b"deepfm.py" not in base


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(PINNED))
def test_seeded_export_writes_the_pinned_model(model: str, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = run_cli("export", model, "--rows", ROWS, "--artifacts", str(artifacts), "--quiet")
    assert result.returncode == 0, result.stderr
    path = artifacts / model / "1" / "model.onnx"
    kind, pins = PINNED[model]
    vendor = cpu_vendor()
    expected = pins.get("any") or pins.get(vendor)
    if expected is None:
        pytest.fail(f"no pinned {model} graph for CPU vendor {vendor!r} (pinned: {', '.join(pins)}): add one")
    if kind == "file":
        hashed = path.read_bytes()
    else:
        hashed = graph_bytes(path)
        assert b"exporter/" not in hashed and str(tmp_path).encode() not in hashed, (
            "a source or artifacts path is left in the hashed bytes"
        )
    actual = hashlib.sha256(hashed).hexdigest()
    assert actual == expected, (
        f"seeded export of {model} (--rows {ROWS}, default seed) changed: sha256 of the {kind} is {actual}, "
        f"pinned {expected} for CPU vendor {vendor}. If training or a pinned library changed on purpose, update "
        f"PINNED in {__file__}."
    )
