"""ONNX build and the parity gate: one export unit -> a checked graph, then onnxruntime against the native model.

The graph must carry exactly the contract's tensors and pass ``onnx.checker`` (full check); parity runs the
raw rows through the graph (in-graph preprocessing included) and the prepared rows through the native model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter import contract as C
from exporter import features as F
from exporter.errors import ExporterError, ParityError
from exporter.models import ExportUnit

#: parity needs at least this many rows (held-out rows, topped up with synthetic ones)
PARITY_MIN_ROWS = 1000


@dataclass
class ParityResult:
    model_name: str
    rows: int
    heldout_rows: int
    max_abs_diff: float
    mean_abs_diff: float
    atol: float
    native: np.ndarray
    onnx: np.ndarray
    #: rows built to exercise the OOV and fill paths (unseen IDs, unknown codes, non-integers, NaN, +-inf)
    probe_rows: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.atol)

    def as_metadata(self, reference: str) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "heldout_rows": self.heldout_rows,
            "synthetic_rows": self.rows - self.heldout_rows - self.probe_rows,
            "probe_rows": self.probe_rows,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "atol": self.atol,
            "passed": self.passed,
            "reference": reference,
            "runtime": "onnxruntime CPUExecutionProvider",
        }


def _check_io(unit: ExportUnit, model: Any) -> None:
    """The graph's own tensors must be exactly the contract's: a Triton user never reads our code."""
    problems = C.graph_io_problems(model, len(unit.feature_columns), unit.output_shape)
    if problems:
        raise ExporterError(f"exported graph of {unit.model_name} breaks the tensor contract: " + "; ".join(problems))


def build_onnx(unit: ExportUnit, plan: F.FeaturePlan | None = None) -> bytes:
    """Export, put the in-graph preprocessing of ``plan`` in front, check (full_check) and serialise one unit."""
    import onnx

    from exporter.features import onnx_prep

    model = unit.build_onnx()
    if plan is not None:
        model = onnx_prep.compose(plan, model)
    _check_io(unit, model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExporterError(f"exported graph of {unit.model_name} fails onnx.checker: {exc}") from exc
    return model.SerializeToString()


def check_parity(
    unit: ExportUnit,
    model_bytes: bytes,
    x: np.ndarray,
    heldout_rows: int,
    atol: float,
    plan: F.FeaturePlan | None = None,
) -> ParityResult:
    """onnxruntime on raw rows ``x`` against the native model on the same rows prepared by the numpy twin."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run([C.OUTPUT_NAME], {C.INPUT_NAME: x})[0], dtype=np.float64)
    native = np.asarray(unit.native_predict(plan.prepare(x) if plan is not None else x), dtype=np.float64)
    if got.shape != native.shape:
        raise ParityError(f"{unit.model_name}: onnxruntime returned shape {got.shape}, the native model {native.shape}")
    diff = np.abs(got - native)
    max_diff = float(np.max(diff)) if diff.size else 0.0
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    return ParityResult(
        unit.model_name, len(x), heldout_rows, max_diff, float(np.mean(diff)) if diff.size else 0.0, atol, native, got
    )
