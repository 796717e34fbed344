"""Torch networks compute in float32 (or float64 on request) behind the contract's FP64 tensors; training threads.

The parity gate's tolerance (``atol + rtol * |native|`` per output column) is unit-tested here too, with a column
in the hundreds beside one in [0, 1].
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from exporter.errors import ExporterError
from exporter.export import pipeline
from exporter.export.convert import ParityResult, tolerance_columns
from exporter.models import threads
from exporter.models import torch_common as tc
from tests.conftest import REPO, SMALL_ROWS, export_small, run_cli

TORCH_PARTS = ["deepfm", "mmoe", "two_tower", "two_tower_item"]


def _graph(version_dir) -> onnx.ModelProto:
    return onnx.load(str(version_dir / "model.onnx"))


def _io_types(model: onnx.ModelProto) -> tuple[list[int], list[int]]:
    return (
        [i.type.tensor_type.elem_type for i in model.graph.input],
        [o.type.tensor_type.elem_type for o in model.graph.output],
    )


def _float_initializers(model: onnx.ModelProto) -> int:
    return sum(1 for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)


def _casts_to(model: onnx.ModelProto, to: int) -> int:
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return sum(1 for n in nodes if n.op_type == "Cast" and any(a.name == "to" and a.i == to for a in n.attribute))


# ----------------------------------------------------------------------------- the parity comparison


def _parity(native: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> ParityResult:
    diff = np.abs(got - native)
    return ParityResult(
        "mmoe", len(native), len(native), float(diff.max()), float(diff.mean()), atol, native, got,
        rtol=rtol, output_columns=["ctr", "watch_time"],
    )  # fmt: skip


def test_relative_tolerance_per_column_lets_hundreds_pass_and_holds_probabilities_to_atol():
    native = np.array([[0.5, 300.0], [0.2, 150.0], [0.9, 0.0]])
    close = native + np.array([[1e-6, 0.02], [-2e-6, 0.01], [0.0, 0.0]])
    assert _parity(native, close, 1e-5, 1e-4).passed  # 0.02 <= 1e-5 + 1e-4 * 300
    assert not _parity(native, close, 1e-5, 0.0).passed  # the absolute check alone forced FP64 before
    # the same relative tolerance does not excuse a probability that moved by 1e-3
    off = close.copy()
    off[1, 0] += 1e-3
    result = _parity(native, off, 1e-5, 1e-4)
    assert not result.passed
    assert "column ctr" in result.failure() and "rtol 0.0001" in result.failure()
    cols = {c["name"]: c for c in result.as_metadata("torch")["columns"]}
    assert cols["ctr"]["ratio"] > 1 >= cols["watch_time"]["ratio"]
    assert cols["watch_time"]["max_abs_native"] == 300.0
    # a value near zero in the column in the hundreds is held to atol, not to the column's scale
    near_zero = close.copy()
    near_zero[2, 1] = 1e-3
    assert not _parity(native, near_zero, 1e-5, 1e-4).passed


def test_nan_or_one_sided_infinity_never_passes():
    native = np.array([0.5, 0.25])
    assert tolerance_columns(native, np.array([0.5, np.nan]), 1.0, 1.0)[0]["ratio"] == np.inf
    assert tolerance_columns(native, np.array([np.inf, 0.25]), 1.0, 1.0)[0]["ratio"] == np.inf
    assert tolerance_columns(native, native.copy(), 0.0, 0.0)[0]["ratio"] == 0.0


# ----------------------------------------------------------------------------- exported graphs


@pytest.mark.parametrize("name", TORCH_PARTS)
def test_float32_graph_keeps_fp64_tensors(name, exported_artifacts):
    version = exported_artifacts / name / "1"
    model = _graph(version)
    assert _io_types(model) == ([TensorProto.DOUBLE], [TensorProto.DOUBLE])
    assert _float_initializers(model) > 0 and _casts_to(model, TensorProto.FLOAT) >= 1
    assert _casts_to(model, TensorProto.DOUBLE) >= 1  # the answer cast back to FP64
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["training"]["hyperparameters"]["dtype"] == "float32"
    parity = meta["parity"]
    assert parity["passed"] and parity["rtol"] == 1e-4 and parity["atol"] == 1e-5
    assert 0 <= parity["max_tolerance_ratio"] <= 1 and parity["columns"]
    if name == "mmoe":
        assert [c["name"] for c in parity["columns"]] == meta["output_columns"]
    assert meta["training"]["threads"] == 1  # the default batch (256) is too small to split across threads
    assert meta["training"]["openmp_wait_policy"] in (threads.PASSIVE, "default", threads.wait_policy())


def test_xgb_keeps_the_absolute_check_and_records_its_threads(exported_artifacts):
    meta = json.loads((exported_artifacts / "xgb" / "1" / "metadata.json").read_text())
    assert meta["parity"]["rtol"] == 0.0 and meta["parity"]["max_abs_diff"] <= meta["parity"]["atol"]
    assert meta["training"]["threads"] == threads.available_cores()
    assert meta["training"]["hyperparameters"]["n_jobs"] is None


def test_float64_option_gives_an_fp64_graph_and_a_checkpoint_that_says_so(tmp_path):
    result = export_small("deepfm", tmp_path, hparams={"epochs": 1, "dtype": "float64"}, threads=1)
    version = result.artifacts[0].path
    model = _graph(version)
    assert _io_types(model) == ([TensorProto.DOUBLE], [TensorProto.DOUBLE])
    assert _float_initializers(model) == 0 and _casts_to(model, TensorProto.FLOAT) == 0
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["training"]["hyperparameters"]["dtype"] == "float64" and meta["training"]["threads"] == 1
    assert meta["parity"]["rtol"] == 0.0 and meta["parity"]["max_abs_diff"] <= 1e-12
    ckpt = torch.load(version / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["dtype"] == "float64"
    assert all(v.dtype == torch.float64 for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_old_fp64_checkpoint_without_dtype_loads_as_float64(tmp_path):
    """A checkpoint written before float32 training (no ``dtype`` anywhere) computes in float64 when loaded."""
    trained = export_small("mmoe", tmp_path / "a", hparams={"epochs": 1, "dtype": "float64"}, threads=1)
    ckpt_path = trained.artifacts[0].path / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["config"]["dtype"]
    del ckpt["hparams"]["dtype"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    params = pipeline.ExportParams(
        model="mmoe", mode="load", checkpoint=old, rows=SMALL_ROWS, seed=7, artifacts=tmp_path / "b", progress=False
    )
    loaded = pipeline.run(params)
    version = loaded.artifacts[0].path
    assert _float_initializers(_graph(version)) == 0
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["training"]["hyperparameters"]["dtype"] == "float64" and meta["parity"]["rtol"] == 0.0
    assert "threads" not in meta["training"]  # nothing was trained
    x = np.random.default_rng(0).uniform(0, 50, (32, len(meta["feature_columns"])))
    import onnxruntime as ort

    def run(v):
        return ort.InferenceSession(str(v / "model.onnx")).run(None, {"features": x})[0]

    np.testing.assert_array_equal(run(version), run(trained.artifacts[0].path))


def test_float32_network_standardises_in_float64_and_answers_fp64():
    from exporter.models.deepfm import DeepFM

    net = tc.set_compute_dtype(DeepFM([0, 0, 5, 3], 4, [8]), torch.float32)
    assert net.fields.scaler.mean.dtype == torch.float64 and net.deep[0].weight.dtype == torch.float32
    x = torch.tensor([[1.0, 2.0, 4.0, 2.0], [3.0, 1e7, 0.0, 1.0]], dtype=torch.float64)
    assert net(x).dtype == torch.float32 and tc.Float64Output(net)(x).dtype == torch.float64


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize("value", [0, -1, 257, True, 1.5, "2"])
def test_bad_threads_are_refused_before_training(value, tmp_path):
    with pytest.raises(ExporterError, match="threads must be a whole number of threads from 1 to 256"):
        pipeline.prepare(pipeline.ExportParams(model="deepfm", rows=200, artifacts=tmp_path, threads=value))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_threads_option_exits_2(value, tmp_path):
    result = run_cli("export", "deepfm", "--rows", "200", "--artifacts", str(tmp_path), "--threads", value, cwd=REPO)
    assert result.returncode == 2 and "--threads" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "deepfm").exists()


def test_bad_dtype_is_refused():
    from exporter.models import get_spec
    from exporter.training.hparams import resolve_hparams

    with pytest.raises(ExporterError, match="dtype of deepfm must be float32 or float64"):
        resolve_hparams(get_spec("deepfm"), {"dtype": "float16"})


@pytest.mark.parametrize(
    "given, batch, cores, expected",
    [
        (None, 256, 8, 1),
        (None, 2047, 8, 1),
        (None, 4096, 8, 2),
        (None, 65536, 8, 8),
        (None, 4096, 1, 1),
        (3, 256, 8, 3),
    ],
)
def test_torch_trains_on_one_thread_per_2048_batch_rows_unless_told(monkeypatch, given, batch, cores, expected):
    """Small batches train on one thread (their operations are too small to split); ``--threads`` always wins."""
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    assert threads.torch_threads(given, batch) == expected


@pytest.mark.parametrize("min_steps, expected", [(1, 2), (tc.MIN_STEPS_PER_EPOCH, 1)])
def test_the_batch_trained_on_decides_the_threads_and_metadata_records_them(tmp_path, monkeypatch, min_steps, expected):
    """A batch of 4,096 rows trains on two threads; on a table too small for it, the batch shrinks (an epoch keeps
    its minimum steps) and so do the threads."""
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(tc, "MIN_STEPS_PER_EPOCH", min_steps)
    result = export_small("deepfm", tmp_path, rows=12_000, hparams={"epochs": 1, "batch_size": 4096})
    meta = json.loads((result.artifacts[0].path / "metadata.json").read_text())
    assert meta["training"]["threads"] == expected


def test_training_threads_are_set_for_the_fit_and_restored():
    before = torch.get_num_threads()
    seen = []
    with tc.intra_op_threads(1):
        seen.append(torch.get_num_threads())
    with tc.intra_op_threads(None):
        seen.append(torch.get_num_threads())
    assert seen == [1, threads.available_cores()] and torch.get_num_threads() == before


@pytest.mark.parametrize(
    "preset, code, expected",
    [
        (None, "import exporter.models", "PASSIVE PASSIVE"),
        ("ACTIVE", "import exporter.models", "ACTIVE ACTIVE"),
        (None, "import torch, exporter.models", "None default (torch or xgboost was imported before exporter.models)"),
    ],
)
def test_openmp_waits_passively_unless_the_user_or_an_earlier_torch_chose(preset, code, expected):
    """OMP_WAIT_POLICY is set before torch loads OpenMP (it reads it once); a user's value or torch loaded first win."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    script = f"{code}; import os; from exporter.models import threads; "
    script += "print(os.environ.get('OMP_WAIT_POLICY'), threads.wait_policy())"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
