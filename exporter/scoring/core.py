"""One input batch -> (scored rows, refused rows): the step both engines repeat, batch after batch.

The local engine calls :func:`score_batch` from its worker threads; Spark calls it inside ``mapInArrow`` on
the executors. Keeping it in one function is what makes the two engines give the same rows, the same
predictions and the same reject reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from exporter.scoring.encode import EncodingPlan, encode_batch
from exporter.scoring.outputs import prediction_arrays

__all__ = ["score_batch", "RUN_ROWS"]

#: Rows per ``session.run`` call: small enough to stay in cache (measured faster than 64k-row calls),
#: large enough that per-call overhead does not matter.
RUN_ROWS = 8192


def run_in_chunks(run: Callable[[np.ndarray], np.ndarray], matrix: np.ndarray, rows: int = RUN_ROWS) -> np.ndarray:
    """``run`` over ``matrix`` in chunks of ``rows`` rows, outputs concatenated (one call when small)."""
    n = matrix.shape[0]
    if n <= rows:
        return run(matrix)
    parts = [run(matrix[i : i + rows]) for i in range(0, n, rows)]
    return np.concatenate(parts, axis=0)


def score_batch(
    batch: pa.RecordBatch,
    plan: EncodingPlan,
    metadata: Mapping[str, Any],
    run: Callable[[np.ndarray], np.ndarray] | None,
    keep: Sequence[str],
    output_schema: pa.Schema | None,
    rejects_schema: pa.Schema,
    source_file: str | pa.Array,
    source_row: np.ndarray,
) -> tuple[pa.RecordBatch | None, pa.RecordBatch | None]:
    """Encode ``batch``, run the model on the accepted rows, and build the output and rejects batches.

    ``run`` ``None`` validates only (Spark's rejects pass). ``source_file`` is one path for the whole batch
    or one per row; ``source_row`` the row number within its file of every row. Either result is ``None``
    when it has no rows.
    """
    encoded = encode_batch(batch, plan)
    rejects = None
    if encoded.rejects:
        index = np.fromiter((r for r, _ in encoded.rejects), np.int64, len(encoded.rejects))
        if isinstance(source_file, str):
            files = pa.array([source_file] * len(index), pa.string())
        else:
            files = source_file.take(pa.array(index))
        arrays = [
            files,
            pa.array(source_row[index], pa.int64()),
            pa.array([r for _, r in encoded.rejects], pa.string()),
        ]
        arrays += [_column(batch, name, rejects_schema.field(name).type).take(pa.array(index)) for name in keep]
        rejects = pa.RecordBatch.from_arrays(arrays, schema=rejects_schema)
    if run is None or encoded.matrix.shape[0] == 0:
        return None, rejects
    assert output_schema is not None
    mask = None if encoded.accepted is None else pa.array(encoded.accepted)
    kept = []
    for name in keep:
        column = _column(batch, name, output_schema.field(name).type)
        kept.append(column if mask is None else column.filter(mask))
    out = run_in_chunks(run, encoded.matrix)
    scored = pa.RecordBatch.from_arrays(kept + prediction_arrays(out, metadata), schema=output_schema)
    return scored, rejects


def _column(batch: pa.RecordBatch, name: str, type_: pa.DataType) -> pa.Array:
    column = batch.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column if column.type == type_ else column.cast(type_)
