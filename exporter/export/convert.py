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
#: rows of one onnxruntime call of the parity gate (as :data:`exporter.models.torch_common.INFERENCE_ROWS`)
CHUNK_ROWS = 8192


@dataclass
class ParityResult:
    """onnxruntime against the native model: every value must satisfy ``|onnx - native| <= atol + rtol*|native|``.

    The relative term lets a network computing in float32 pass on outputs in the hundreds (mmoe's watch_time and
    gmv heads) while a probability in [0, 1] is held to about ``atol``; ``rtol = 0`` is the plain absolute check.
    Each output column is judged and recorded on its own (:meth:`columns`).
    """

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
    rtol: float = 0.0
    #: names of the output columns (mmoe's tasks); ``None``: numbered
    output_columns: list[str] | None = None

    @property
    def ratio(self) -> float:
        """The largest ``|onnx - native| / (atol + rtol*|native|)`` over all values: at most 1 passes."""
        return max((c["ratio"] for c in self.columns()), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.ratio <= 1.0)

    def columns(self) -> list[dict[str, Any]]:
        """Per output column: its name, largest |diff|, largest |native| and tolerance ratio (<= 1 passes)."""
        return tolerance_columns(self.native, self.onnx, self.atol, self.rtol, self.output_columns)

    def failure(self) -> str:
        """One line naming the worst column of a failed check."""
        worst = max(self.columns(), key=lambda c: c["ratio"])
        return (
            f"{self.model_name} column {worst['name']}: max |native - onnxruntime| = {worst['max_abs_diff']:.3g} "
            f"> atol {self.atol:g} + rtol {self.rtol:g} * |native| (ratio {worst['ratio']:.3g}) over {self.rows} rows"
        )

    def _recorded_columns(self) -> list[dict[str, Any]]:
        """Named or single columns one by one; a vector's (a tower's embedding) as one entry, its worst column."""
        columns = self.columns()
        if self.output_columns or len(columns) <= 1:
            return columns
        worst = max(columns, key=lambda c: c["ratio"])
        return [
            {
                "name": f"all {len(columns)} columns",
                "max_abs_diff": max(c["max_abs_diff"] for c in columns),
                "max_abs_native": max(c["max_abs_native"] for c in columns),
                "ratio": worst["ratio"],
            }
        ]

    def as_metadata(self, reference: str) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "heldout_rows": self.heldout_rows,
            "synthetic_rows": self.rows - self.heldout_rows - self.probe_rows,
            "probe_rows": self.probe_rows,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "atol": self.atol,
            "rtol": self.rtol,
            "criterion": "|onnxruntime - native| <= atol + rtol * |native|, every value of every column",
            "max_tolerance_ratio": self.ratio,
            "columns": self._recorded_columns(),
            "passed": self.passed,
            "reference": reference,
            "runtime": "onnxruntime CPUExecutionProvider",
        }


def tolerance_columns(
    native: np.ndarray, got: np.ndarray, atol: float, rtol: float, names: list[str] | None = None
) -> list[dict[str, Any]]:
    """Per column of ``[n]`` or ``[n, k]`` outputs: ``|got - native| <= atol + rtol * |native|`` judged on its own.

    ``ratio`` is the largest ``|got - native| / (atol + rtol * |native|)`` of the column (at most 1 passes;
    ``inf`` for a NaN or an infinity on either side, or any difference against a zero tolerance).
    """
    a = np.asarray(native, dtype=np.float64)
    b = np.asarray(got, dtype=np.float64)
    a2, b2 = (a.reshape(len(a), -1), b.reshape(len(b), -1)) if a.ndim else (a.reshape(1, 1), b.reshape(1, 1))
    out: list[dict[str, Any]] = []
    for j in range(a2.shape[1]):
        x, y = a2[:, j], b2[:, j]
        with np.errstate(invalid="ignore"):
            diff = np.abs(y - x)
            diff = np.where(np.isnan(diff), np.inf, diff)  # a NaN or an infinity never passes
            bound = atol + rtol * np.where(np.isfinite(x), np.abs(x), 0.0)
            ratio = np.where(diff == 0, 0.0, np.divide(diff, bound, out=np.full_like(diff, np.inf), where=bound > 0))
        name = names[j] if names is not None and j < len(names) else str(j)
        finite_native = np.abs(x[np.isfinite(x)])
        out.append(
            {
                "name": name,
                "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                "max_abs_native": float(finite_native.max()) if finite_native.size else 0.0,
                "ratio": float(ratio.max()) if ratio.size else 0.0,
            }
        )
    return out


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
    rtol: float = 0.0,
) -> ParityResult:
    """onnxruntime on raw rows ``x`` against the native model on the same rows prepared by the numpy twin,
    within ``atol + rtol * |native|`` per value (:class:`ParityResult`)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    starts = range(0, max(len(x), 1), CHUNK_ROWS)  # bounded activations whatever the rows (one call when empty)
    got = np.concatenate([session.run([C.OUTPUT_NAME], {C.INPUT_NAME: x[i : i + CHUNK_ROWS]})[0] for i in starts])
    got = got.astype(np.float64)
    native = np.asarray(unit.native_predict(plan.prepare(x) if plan is not None else x), dtype=np.float64)
    if got.shape != native.shape:
        raise ParityError(f"{unit.model_name}: onnxruntime returned shape {got.shape}, the native model {native.shape}")
    diff = np.abs(got - native)
    max_diff = float(np.max(diff)) if diff.size else 0.0
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    return ParityResult(
        unit.model_name,
        len(x),
        heldout_rows,
        max_diff,
        float(np.mean(diff)) if diff.size else 0.0,
        atol,
        native,
        got,
        rtol=rtol,
        output_columns=list(unit.output_columns) if unit.output_columns else None,
    )
