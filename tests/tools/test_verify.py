"""``python -m exporter verify``: good artifacts pass; every kind of broken handoff is reported, all at once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.tools.verify import SPEC_FILE, parse_pbtxt, verify
from tests.handler_fixtures import REPO, SPEC_PATHS, build_artifact, build_tree, tiny_model


@pytest.fixture(scope="module")
def good_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("good"))


@pytest.fixture()
def tree(good_tree: Path, tmp_path: Path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(good_tree, tmp_path / "artifacts"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "verify", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def edit_metadata(vdir: Path, **changes: object) -> None:
    meta = json.loads((vdir / "metadata.json").read_text())
    meta.update(changes)
    (vdir / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_good_tree_passes_from_the_command_line(good_tree: Path) -> None:
    proc = cli(str(good_tree))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok    ") == 4  # mmoe/1, two_tower/1, xgb/1, xgb/2 (.staging-123 ignored)
    assert "all checks passed" in proc.stdout


@pytest.mark.parametrize("sub", ["xgb", "xgb/2", "mmoe/1"])
def test_model_and_version_directories_pass(good_tree: Path, sub: str) -> None:
    report = verify(good_tree / sub)
    assert report.ok, report.problems
    assert len(report.passed) == (2 if sub == "xgb" else 1)


def test_every_problem_is_listed_one_per_line(tree: Path) -> None:
    model = tree / "xgb" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # sha256 mismatch (and a trailing byte onnx may reject)
    (tree / "xgb" / "2" / "sample_response.json").unlink()
    config = tree / "mmoe" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ -1, 3 ]", "dims: [ -1, 4 ]"))
    proc = cli(str(tree))
    assert proc.returncode == 1
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert any("xgb/1: sha256 of model.onnx is" in line and "metadata.json records" in line for line in fails), fails
    assert any("xgb/2: sample_response.json is missing" in line for line in fails), fails
    assert any("mmoe/1: config.pbtxt: output dims [-1, 4]" in line and "[-1, 3]" in line for line in fails), fails
    assert "ok    two_tower/1" in proc.stdout
    assert "not ready for handoff" in proc.stdout


def test_sample_response_mismatch(tree: Path) -> None:
    vdir = tree / "mmoe" / "1"
    response = json.loads((vdir / "sample_response.json").read_text())
    response["predictions"][1]["gmv"] += 1e-3
    (vdir / "sample_response.json").write_text(json.dumps(response))
    (problem,) = verify(vdir).problems
    assert "sample_response.predictions[1].gmv" in problem and "atol 1e-05" in problem
    response["predictions"][1]["gmv"] -= 1e-3 - 1e-7  # within atol: fine
    (vdir / "sample_response.json").write_text(json.dumps(response))
    assert verify(vdir).ok
    response["predictions"] = response["predictions"][:2]
    (vdir / "sample_response.json").write_text(json.dumps(response))
    assert "expected 2 items, got 3" in verify(vdir).problems[0]


def test_metadata_against_the_spec_and_the_contract(tree: Path) -> None:
    vdir = tree / "xgb" / "1"
    edit_metadata(
        vdir,
        versions="1",
        inputs=[{"name": "features", "datatype": "FP64", "shape": ["-1", 7]}],
        parity={"rows": 10, "max_abs_diff": 0.1, "atol": 1e-5, "passed": False},
        created_at="yesterday",
    )
    # keep sha256 right so that only metadata problems show
    problems = "\n".join(verify(vdir).problems)
    assert "not a valid metadata_model_response at versions" in problems
    assert "not a valid metadata_model_response at inputs/0/shape/0" in problems
    assert "parity.passed is not true" in problems
    assert "max_abs_diff 0.1 exceeds parity.atol" in problems
    assert "created_at 'yesterday'" in problems


def test_onnx_io_must_match_metadata_and_config(tree: Path) -> None:
    vdir = tree / "xgb" / "1"
    model = tiny_model(7, "scalar", None)
    model.graph.input[0].name = "x"
    model.graph.node[0].input[0] = "x"
    raw = model.SerializeToString()
    (vdir / "model.onnx").write_bytes(raw)
    edit_metadata(vdir, sha256=hashlib.sha256(raw).hexdigest())
    problems = verify(vdir).problems
    assert any("ONNX input is named 'x'" in p for p in problems), problems


def test_layout_problems(tree: Path) -> None:
    (tree / "xgb" / "latest").mkdir()
    (tree / "two_tower" / "config.pbtxt").unlink()
    (tree / "mmoe" / "1" / "metadata.json").write_text("{truncated")
    problems = "\n".join(verify(tree).problems)
    assert "xgb/latest: not a version directory" in problems
    assert "two_tower: config.pbtxt is missing" in problems
    assert "mmoe/1: metadata.json is not valid JSON" in problems


def test_wrong_model_name_in_config_and_metadata(tmp_path: Path) -> None:
    vdir = build_artifact(tmp_path, "deepfm")
    edit_metadata(vdir, name="xgb")
    config = tmp_path / "deepfm" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "deepfm"', 'name: "xgb"'))
    problems = "\n".join(verify(tmp_path).problems)
    assert "name is 'xgb', but the model directory is 'deepfm'" in problems
    assert "Triton requires the model directory name 'deepfm'" in problems


@pytest.mark.slow
def test_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli(str(tmp_path / "nope"))
    assert proc.returncode == 2 and "error:" in proc.stderr and "not a directory" in proc.stderr


def test_pbtxt_parser_is_tolerant() -> None:
    text = """
    # comment
    name: "m"  platform: 'onnxruntime_onnx'
    max_batch_size: 8
    input [ { name: "features", data_type: TYPE_FP64, dims: [ 7 ] } ]
    output { name: "predictions" data_type: TYPE_FP64 dims: [ -1, 3 ] }
    instance_group [ { kind: KIND_CPU, count: 1 } ]
    version_policy: { latest: { num_versions: 1 } }
    parameters < key: "x" value: { string_value: "a\\"b" } >
    """
    config = parse_pbtxt(text)
    assert config["name"] == ["m"] and config["platform"] == ["onnxruntime_onnx"]
    assert config["input"][0]["dims"] == [7] and config["input"][0]["data_type"] == ["TYPE_FP64"]
    assert config["output"][0]["dims"] == [-1, 3]
    assert config["version_policy"][0]["latest"][0]["num_versions"] == [1]
    assert config["parameters"][0]["value"][0]["string_value"] == ['a"b']
    with pytest.raises(ValueError):
        parse_pbtxt("input [ { name: ")


def test_embedded_spec_is_the_shared_one() -> None:
    shared = SPEC_PATHS[0]
    if not shared.is_file():
        pytest.skip("shared/specs not present beside the repository")
    assert SPEC_FILE.read_bytes() == shared.read_bytes()


def test_real_exported_artifacts_verify(exported_artifacts: Path) -> None:
    report = verify(exported_artifacts)
    assert report.ok, report.problems
    assert {line.split("/")[0] for line in report.passed} == {"xgb", "deepfm", "mmoe", "two_tower", "two_tower_item"}


@pytest.fixture()
def xgb_copy(exported_artifacts: Path, tmp_path: Path) -> Path:
    """A private copy of the exported xgb model (a real ``features`` list) to break."""
    return Path(shutil.copytree(exported_artifacts / "xgb", tmp_path / "artifacts" / "xgb"))


def _edit_feature(vdir: Path, kind: str, key: str, value: object) -> None:
    meta = json.loads((vdir / "metadata.json").read_text())
    next(f for f in meta["features"] if f["kind"] == kind)[key] = value
    (vdir / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("kind", "key", "value", "message"),
    [
        ("categorical", "oov", ["x"], "oov is ['x']; expected an object"),
        ("categorical", "oov", "zero", "oov is 'zero'; expected an object"),
        ("numeric", "optional", "no", "optional is 'no'; expected true or false"),
    ],
)
def test_feature_entries_of_the_wrong_type_fail(xgb_copy: Path, kind: str, key: str, value: object, message: str):
    _edit_feature(xgb_copy / "1", kind, key, value)
    report = verify(xgb_copy / "1")
    assert any("xgb/1: metadata.json: features[" in p and message in p for p in report.problems), report.problems


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_literals_in_metadata_fail(xgb_copy: Path, literal: str) -> None:
    path = xgb_copy / "1" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["features"][0]["fill"] = "@@"
    path.write_text(json.dumps(meta).replace('"@@"', literal))
    report = verify(xgb_copy / "1")
    assert any(f"metadata.json holds the literal {literal}" in p for p in report.problems), report.problems


def test_a_batch_size_triton_cannot_hold_fails(xgb_copy: Path) -> None:
    config = xgb_copy / "config.pbtxt"
    config.write_text(config.read_text().replace("batch_size: 1024", "batch_size: 100000000000000000000"))
    report = verify(xgb_copy)
    assert any("config.pbtxt: max_batch_size is 100000000000000000000" in p for p in report.problems), report


def _replace_graph(vdir: Path, model: onnx.ModelProto) -> None:
    raw = model.SerializeToString()
    (vdir / "model.onnx").write_bytes(raw)
    edit_metadata(vdir, sha256=hashlib.sha256(raw).hexdigest())


def _endless_graph() -> onnx.ModelProto:
    """features [N, 7] -> predictions [N], through a Loop of 2^62 iterations that passes the features on."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["carried_in"], ["carried_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_in", TensorProto.DOUBLE, ["batch", 7]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_out", TensorProto.DOUBLE, ["batch", 7]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["trips", "keep_going", "features"], ["looped"], body=body),
            helper.make_node("ReduceSum", ["looped", "axis"], ["predictions"], keepdims=0),
        ],
        "endless",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", 7])],
        [helper.make_tensor_value_info("predictions", TensorProto.DOUBLE, ["batch"])],
        initializer=[
            numpy_helper.from_array(np.array(2**62, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_a_graph_that_runs_forever_is_stopped_and_the_other_versions_reported(tree: Path) -> None:
    _replace_graph(tree / "xgb" / "1", _endless_graph())
    proc = cli(str(tree), "--sample-timeout", "10")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "xgb/1: the sample run did not finish within 10 s" in fails[0], proc.stdout
    for version in ("xgb/2", "mmoe/1", "two_tower/1"):
        assert f"ok    {version}:" in proc.stdout, proc.stdout


def test_a_graph_that_raises_while_it_runs_costs_only_its_version(tree: Path) -> None:
    model = tiny_model(7, "scalar", None)  # Reshape of [3, 7] to [-1, 5] fails inside onnxruntime.run
    shape = numpy_helper.from_array(np.array([-1, 5], dtype=np.int64), "odd_shape")
    model.graph.initializer.append(shape)
    model.graph.node.insert(0, helper.make_node("Reshape", ["features", "odd_shape"], ["odd"]))
    model.graph.node.insert(1, helper.make_node("ReduceSum", ["odd"], ["odd_sum"], keepdims=0))
    model.graph.node.insert(3, helper.make_node("Add", ["z", "odd_sum"], ["z2"]))  # after the MatMul
    model.graph.node[-1].input[0] = "z2"
    _replace_graph(tree / "xgb" / "1", model)
    report = verify(tree)
    assert len(report.problems) == 1 and "xgb/1: running the sample request raised" in report.problems[0], report
    assert sorted(line.split(":")[0] for line in report.passed) == ["mmoe/1", "two_tower/1", "xgb/2"]


def test_names_and_strings_that_are_not_utf8_are_fail_lines_escaped(tree: Path) -> None:
    """A model directory named with bytes that are not UTF-8, a version directory likewise, and lone surrogates
    in metadata.json strings: each a FAIL line naming the entry with the bad characters escaped; the other
    versions still pass, and the command prints every line whatever the output encoding."""
    os.mkdir(os.fsencode(tree) + b"/bad\xff")
    os.mkdir(os.fsencode(tree / "xgb") + b"/1\xfe")
    metadata = tree / "xgb" / "2" / "metadata.json"
    metadata.write_text(metadata.read_text().replace('"model.onnx"', '"model\\ud800.onnx"'))
    report = verify(tree)
    lines = report.problems + report.passed + report.notes
    for line in lines:
        line.encode("utf-8")  # printable on any UTF-8 output: no surrogate left in
    assert any(line.startswith("bad\\xff: ") for line in report.problems), report.problems
    assert any(line.startswith("xgb/1\\xfe: not a version directory") for line in report.problems), report.problems
    assert any(line.startswith("xgb/2: ") and "model\\ud800.onnx" in line for line in report.problems), lines
    assert sorted(line.split(":")[0] for line in report.passed) == ["mmoe/1", "two_tower/1", "xgb/1"]
    for encoding in ("utf-8:strict", "utf-8:surrogateescape"):
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "verify", str(tree)],
            cwd=REPO,
            capture_output=True,
            timeout=120,
            env={**os.environ, "PYTHONIOENCODING": encoding},
        )
        out = proc.stdout.decode("utf-8")  # valid UTF-8: the escapes, not the raw bytes
        assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode("utf-8", "replace"), proc.stderr
        assert "FAIL  bad\\xff: " in out and "FAIL  xgb/1\\xfe: " in out and "model\\ud800.onnx" in out, out
        assert "ok    xgb/1: " in out and "ok    mmoe/1: " in out, out
