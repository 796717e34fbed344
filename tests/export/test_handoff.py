"""Handoff files: Triton configs that batch, KServe manifests, model cards and the v2 sample.

Configs are read with Triton's own ModelConfig proto, manifests with KServe's own SDK models; expectations
come from metadata.json and the ONNX graphs, never from the code that wrote the files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from exporter.export import triton
from exporter.tools.verify import parse_pbtxt, verify
from tests.conftest import run_cli
from tests.handler_fixtures import build_artifact
from tests.kserve_sdk import sdk_object, sdk_problems
from tests.triton_proto import model_config_pb2, parse_config

EXPORTED = ["xgb", "deepfm", "mmoe", "two_tower", "two_tower_item"]
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _meta(root: Path, name: str) -> dict:
    return json.loads((root / name / "1" / "metadata.json").read_text())


# ------------------------------------------------------------------------------------------------ Triton
@pytest.mark.parametrize("name", EXPORTED)
def test_config_batches_and_warms_up_as_triton_reads_it(exported_artifacts, name):
    pb = model_config_pb2()
    meta = _meta(exported_artifacts, name)
    cfg = parse_config((exported_artifacts / name / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 1024
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert 0 < cfg.dynamic_batching.max_queue_delay_microseconds <= 10_000
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 1)]
    # batch semantics against metadata's v2 shapes: Triton prepends the batch axis to dims (or to reshape)
    for declared, tensors in ((cfg.input, meta["inputs"]), (cfg.output, meta["outputs"])):
        for t, m in zip(declared, tensors, strict=True):
            graph_dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            assert [-1] + graph_dims == m["shape"], (t, m)
            assert list(t.dims) and all(d > 0 for d in t.dims)
    # warm-up: batch 1 and the largest batch, from one row of raw FP64 in <model>/warmup/
    assert sorted(w.batch_size for w in cfg.model_warmup) == [1, 1024]
    n = len(meta["feature_columns"])
    for w in cfg.model_warmup:
        ((key, spec),) = w.inputs.items()
        assert key == "features" and spec.data_type == pb.TYPE_FP64 and list(spec.dims) == [n]
        raw = (exported_artifacts / name / "warmup" / spec.input_data_file).read_bytes()
        assert len(raw) == 8 * n
    row = np.frombuffer(raw, dtype="<f8")
    # the warm-up row is the first sample row, and the graph answers it at the largest batch
    v2 = json.loads((exported_artifacts / name / "1" / "sample_request_v2.json").read_text())
    np.testing.assert_array_equal(row, v2["inputs"][0]["data"][:n])
    session = ort.InferenceSession(
        str(exported_artifacts / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    out = session.run(None, {"features": np.tile(row, (1024, 1))})[0]
    assert out.shape[0] == 1024 and np.isfinite(out).all()
    # and the project's own check agrees
    assert (
        triton.config_problems(
            parse_pbtxt((exported_artifacts / name / "config.pbtxt").read_text()), meta, exported_artifacts / name
        )
        == []
    )


def test_the_old_unbatched_form_still_parses_and_checks(tmp_path):
    vdir = build_artifact(tmp_path, "xgb")  # hand-written max_batch_size: 0 config, dims with -1
    text = (vdir.parent / "config.pbtxt").read_text()
    assert parse_config(text).max_batch_size == 0
    assert triton.config_problems(parse_pbtxt(text), json.loads((vdir / "metadata.json").read_text())) == []
    assert verify(tmp_path).ok


META = {
    "name": "m",
    "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}],
    "outputs": [{"name": "predictions", "datatype": "FP64", "shape": [-1]}],
}


def _problems(text: str, model_dir: Path | None = None) -> str:
    parse_config(text)  # every variant below is a config Triton can read: the problems are semantic
    return "\n".join(triton.config_problems(parse_pbtxt(text), META, model_dir))


def test_batch_semantics_are_checked():
    good = triton.config_pbtxt(META, max_batch_size=8, warmup=False)
    assert _problems(good) == ""
    with_batch_axis = good.replace("dims: [ 4 ]", "dims: [ -1, 4 ]")
    assert "input dims [-1, 4]" in _problems(with_batch_axis) and "leave out the batch axis" in _problems(
        with_batch_axis
    )
    no_reshape = good.replace("    reshape { shape: [ ] }\n", "")
    assert "output dims [1]" in _problems(no_reshape) and "[-1]" in _problems(no_reshape)
    unbatched = good.replace("max_batch_size: 8", "max_batch_size: 0")
    assert "dynamic_batching needs max_batch_size > 0" in _problems(unbatched)
    static_meta = {**META, "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4]}]}
    problems = triton.config_problems(parse_pbtxt(good), static_meta)
    assert any("needs a dynamic batch axis" in p for p in problems), problems


def test_warmup_files_are_checked(tmp_path):
    path = triton.write_model_config(tmp_path, META, np.array([0.5, 1.0, 2.0, 3.0]), max_batch_size=16)
    text = path.read_text()
    assert parse_config(text).model_warmup[1].batch_size == 16
    assert _problems(text, tmp_path) == ""
    np.testing.assert_array_equal(np.fromfile(tmp_path / "warmup" / "features_sample_row.bin", "<f8"), [0.5, 1, 2, 3])
    (tmp_path / "warmup" / "features_sample_row.bin").write_bytes(b"\0" * 8)
    assert "holds 8 bytes; one row of dims [4] is 32" in _problems(text, tmp_path)
    (tmp_path / "warmup" / "features_sample_row.bin").unlink()
    assert "warmup/features_sample_row.bin is missing" in _problems(text, tmp_path)
    assert "batch_size is 17; expected 1..16" in _problems(text.replace("    batch_size: 16", "    batch_size: 17"))
    assert "must be a plain file name" in _problems(text.replace('"features_sample_row.bin"', '"../x"'))
    # no finite row to warm up with: the config simply has no model_warmup
    assert not parse_config(
        triton.write_model_config(tmp_path, META, np.array([np.nan, 1, 2, 3])).read_text()
    ).model_warmup


def test_max_batch_size_option(tmp_path):
    result = run_cli(
        "export",
        "xgb",
        "--rows",
        "600",
        "--param",
        "n_estimators=5",
        "--artifacts",
        str(tmp_path),
        "--quiet",
        "--max-batch-size",
        "64",
        "--storage-uri",
        "s3://bucket/recsys/artifacts",
    )
    assert result.returncode == 0, result.stderr
    cfg = parse_config((tmp_path / "xgb" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 64 and sorted(w.batch_size for w in cfg.model_warmup) == [1, 64]
    manifest = yaml.safe_load((tmp_path / "xgb" / "kserve.yaml").read_text())
    assert manifest["spec"]["predictor"]["model"]["storageUri"] == "s3://bucket/recsys/artifacts"
    assert verify(tmp_path).ok
    for bad, says in (
        (["--max-batch-size", "0"], "max_batch_size must be an integer from 1"),
        (["--storage-uri", "bucket/x"], "is not a URI"),
        (["--storage-uri", "ftp://host/x"], "scheme 'ftp' is not one KServe fetches from"),
    ):
        result = run_cli("export", "xgb", "--rows", "600", "--artifacts", str(tmp_path / "bad"), "--quiet", *bad)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------ KServe
@pytest.mark.parametrize("name", EXPORTED)
def test_kserve_manifest_is_a_valid_inference_service(exported_artifacts, name):
    manifest = yaml.safe_load((exported_artifacts / name / "kserve.yaml").read_text())
    isvc = sdk_object(manifest)  # every key and type as KServe's SDK models define them
    assert isvc.api_version == "serving.kserve.io/v1beta1" and isvc.kind == "InferenceService"
    assert DNS_1035.fullmatch(isvc.metadata.name) and len(isvc.metadata.name) <= 63
    model = isvc.spec.predictor.model
    assert model.model_format.name == "onnx" and model.protocol_version == "v2"
    assert model.runtime == "kserve-tritonserver"
    assert model.storage_uri == "pvc://model-repository/artifacts"
    assert f"--load-model={name}" in model.args  # the Triton model name is the directory name
    assert isvc.metadata.annotations["recsys-onnx-exporter/model-version"] == "1"
    assert isvc.metadata.annotations["recsys-onnx-exporter/model-sha256"] == _meta(exported_artifacts, name)["sha256"]
    for kind in ("cpu", "memory"):
        assert _quantity(model.resources.requests[kind]) <= _quantity(model.resources.limits[kind])


def _quantity(text: str) -> float:
    """A Kubernetes quantity (cpu "500m"/"2", memory "1Gi"/"512Mi") as a number, for ordering."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text).groups()
    return float(number) * units[unit]


def test_sdk_check_can_fail():
    problems = "\n".join(sdk_problems(yaml.safe_load(BAD_MANIFEST)))
    assert "V1beta1ModelSpec has no field 'storageURI'" in problems
    assert "minReplicas: expected int, got str" in problems
    assert "V1ResourceRequirements has no field 'request'" in problems


BAD_MANIFEST = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: m}
spec:
  predictor:
    minReplicas: "1"
    model:
      modelFormat: {name: onnx}
      storageURI: s3://x
      resources: {request: {cpu: "1"}}
"""


def test_kserve_command_rewrites_and_prints(exported_artifacts, tmp_path):
    tree = Path(shutil.copytree(exported_artifacts, tmp_path / "artifacts"))
    result = run_cli("kserve", "--artifacts", str(tree), "--storage-uri", "gs://models/recsys/artifacts/")
    assert result.returncode == 0, result.stderr
    for name in EXPORTED:
        manifest = yaml.safe_load((tree / name / "kserve.yaml").read_text())
        assert manifest["spec"]["predictor"]["model"]["storageUri"] == "gs://models/recsys/artifacts"
    result = run_cli("kserve", "two_tower", "two_tower_item", "--artifacts", str(tree), "--stdout")
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["two-tower", "two-tower-item"]
    assert all(sdk_problems(d) == [] for d in docs)
    result = run_cli("kserve", "nope", "--artifacts", str(tree))
    assert result.returncode == 2 and "no exported model 'nope'" in result.stderr and "two_tower_item" in result.stderr


# ------------------------------------------------------------------------------------------------ model card
@pytest.mark.parametrize("name", EXPORTED)
def test_model_card_tells_what_metadata_holds(exported_artifacts, name):
    vdir = exported_artifacts / name / "1"
    meta = _meta(exported_artifacts, name)
    card = (vdir / "README.md").read_text()
    assert card.startswith(f"# {name}, version 1\n")
    for column in meta["feature_columns"]:
        assert f"`{column}`" in card
    for metric, value in meta["training"]["metrics"].items():
        assert re.search(rf"\| `{metric}` \| {value:.4g} \|", card), metric
    assert f"{meta['parity']['max_abs_diff']:.3g}" in card and "**passed**" in card
    assert meta["sha256"] in card and meta["producer"]["framework"] in card
    # tree sums in float32: the answers of xgb depend on onnxruntime's thread count at the 1e-7 level
    assert ("thread count at the 1e-7 level" in card) == (meta["producer"]["framework"] == "xgboost")
    for col in meta.get("output_columns", []):
        assert f"`{col}`" in card
    # copy-paste calls for every serving path
    for text in (
        f"/predictions/{name}/1",
        "-d @sample_request.json",
        "-d @sample_request_v2.json",
        "Inference-Header-Content-Length",
        "generate_request_body",
        "parse_response_body",
        f"/v2/models/{name}/versions/1/infer",
        "kubectl apply -f ../kserve.yaml",
        f"/v2/models/{name}/infer",
    ):
        assert text in card, text


@pytest.mark.parametrize("name", EXPORTED)
def test_v2_sample_holds_the_torchserve_sample_rows(exported_artifacts, name):
    vdir = exported_artifacts / name / "1"
    meta = _meta(exported_artifacts, name)
    rows = json.loads((vdir / "sample_request.json").read_text())["data"]
    v2 = json.loads((vdir / "sample_request_v2.json").read_text())
    (tensor,) = v2["inputs"]
    assert tensor["name"] == "features" and tensor["datatype"] == "FP64"
    assert tensor["shape"] == [len(rows), len(meta["feature_columns"])]
    # the same rows: every numeric cell as sent in the TorchServe form (string categories travel as codes)
    for value, sent in zip(tensor["data"], (row[c] for row in rows for c in meta["feature_columns"]), strict=True):
        assert isinstance(sent, str) or value == sent
    answer = json.loads((vdir / "sample_response_v2.json").read_text())
    assert answer["id"] == v2["id"] and answer["model_name"] == name and answer["model_version"] == "1"
    # the same numbers as the TorchServe answer
    ts = json.loads((vdir / "sample_response.json").read_text())["predictions"]
    flat = [v for p in ts for v in (p.values() if isinstance(p, dict) else (p if isinstance(p, list) else [p]))]
    np.testing.assert_allclose(answer["outputs"][0]["data"], flat, atol=1e-12)


def test_card_renders_the_features_list_when_metadata_has_one():
    from exporter.export.model_card import render

    meta = {
        "name": "deepfm",
        "versions": ["3"],
        "prediction_format": "scalar",
        "description": "DeepFM",
        "feature_columns": ["item_price", "item_category"],
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 2]}],
        "outputs": [{"name": "predictions", "datatype": "FP64", "shape": [-1]}],
        "features": [
            {
                "name": "item_price",
                "kind": "numeric",
                "fill": 42.5,
                "optional": True,
                "stats": {"mean": 100.0, "std": 20.0, "min": 10.0, "max": 199.5, "missing_rate": 0.01},
            },
            {
                "name": "item_category",
                "kind": "categorical",
                "dtype": "string",
                "vocab_size": 37,
                "fill": 0,
                "oov": "row 0",
                "top_values": [{"value": "bags", "count": 9}],
            },
        ],
        "quality": {"warning": "held-out AUC 0.51: no better than chance", "metrics": {"auc": 0.51}},
        "training": {"mode": "train", "heldout_rows": 100, "metrics": {"auc": 0.51}},
    }
    card = render(meta, {"data": []}, {"predictions": []})
    assert "| 0 | `item_price` | numeric | — | 10 .. 199.5 (mean 100, std 20) | 42.5 | 0.01 | yes |" in card
    assert "| 1 | `item_category` | categorical | string | 37 values; unknown: row 0; top `bags` | 0 | — | no |" in card
    assert "> **Warning:** held-out AUC 0.51: no better than chance" in card


def test_verify_checks_the_v2_sample(exported_artifacts, tmp_path):
    tree = Path(shutil.copytree(exported_artifacts / "mmoe", tmp_path / "mmoe"))
    vdir = tree / "1"
    answer = json.loads((vdir / "sample_response_v2.json").read_text())
    answer["outputs"][0]["data"][4] += 1e-3
    (vdir / "sample_response_v2.json").write_text(json.dumps(answer))
    (problem,) = verify(vdir).problems
    assert "sample_response_v2.outputs[0].data[4]" in problem
    (vdir / "sample_response_v2.json").unlink()
    (problem,) = verify(vdir).problems
    assert "sample_response_v2.json is missing" in problem
    (vdir / "sample_request_v2.json").unlink()  # versions from before the v2 sample: nothing to compare
    assert verify(tree).ok


def test_verify_reads_batched_configs(exported_artifacts, tmp_path):
    tree = Path(shutil.copytree(exported_artifacts / "two_tower", tmp_path / "two_tower"))
    width = _meta(exported_artifacts, "two_tower")["embed_dim"]
    config = tree / "config.pbtxt"
    config.write_text(config.read_text().replace(f"dims: [ {width} ]", f"dims: [ {width + 1} ]"))
    problems = verify(tree).problems
    assert any(f"config.pbtxt: output dims [{width + 1}]" in p and f"[-1, {width}]" in p for p in problems), problems
    assert not any("warmup" in p for p in problems), problems  # warmup/ is not taken for a version


def test_kserve_command_on_a_read_only_tree_names_the_file_and_error(exported_artifacts, tmp_path, monkeypatch, capsys):
    import errno

    from exporter import cli

    tree = Path(shutil.copytree(exported_artifacts, tmp_path / "artifacts"))

    def read_only(self, *args, **kwargs):  # what a read-only file system answers (root ignores chmod)
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)  # cleaning up the temporary file fails the same way
    assert cli.main(["kserve", "xgb", "--artifacts", str(tree)]) == 2
    err = capsys.readouterr().err
    assert str(tree / "xgb" / "kserve.yaml") in err and "Read-only file system" in err, err


# ------------------------------------------------------------------------------------------------ shapes per server
@pytest.mark.parametrize("name", EXPORTED)
def test_metadata_records_what_triton_reports(exported_artifacts, name):
    meta = _meta(exported_artifacts, name)
    view = triton.triton_view((exported_artifacts / name / "config.pbtxt").read_text())
    assert meta["triton"] == view
    card = (exported_artifacts / name / "1" / "README.md").read_text()
    if meta["prediction_format"] == "scalar":  # our answer stays [rows]; Triton's is [rows, 1]
        assert meta["outputs"][0]["shape"] == [-1]
        assert meta["triton"]["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1, 1]}]
        assert "answer `predictions` as `[rows]`" in card and "answer it as `[rows, 1]`" in card
    else:
        assert meta["triton"]["outputs"][0]["shape"] == meta["outputs"][0]["shape"]
        assert "Shapes per server" not in card
    assert meta["triton"]["inputs"] == meta["inputs"]


def test_verify_fails_a_triton_view_the_config_contradicts(exported_artifacts, tmp_path):
    tree = Path(shutil.copytree(exported_artifacts / "xgb", tmp_path / "xgb"))
    assert verify(tree).ok
    meta = _meta(tmp_path, "xgb")
    meta["triton"]["outputs"][0]["shape"] = [-1]  # what the project answers, not what Triton reports
    (tree / "1" / "metadata.json").write_text(json.dumps(meta))
    (problem,) = verify(tree).problems
    assert 'xgb/1: config.pbtxt: metadata.json "triton" is' in problem and '"shape": [-1, 1]' in problem, problem
