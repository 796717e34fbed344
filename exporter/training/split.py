"""Stub of the three-way split (train / validation / test) by a seeded hash of each row's content.

Replaced by the shared implementation when it lands; same signature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

TRAIN, VALIDATION, TEST = 0, 1, 2


def split_codes(
    frame: pd.DataFrame,
    *,
    seed: int,
    key_columns: Sequence[str] | None = None,
    validation: float = 0.1,
    test: float = 0.2,
) -> np.ndarray:
    """int8 per row: TRAIN, VALIDATION or TEST, from a seeded hash of the row (or of ``key_columns``)."""
    part = frame[list(key_columns)] if key_columns is not None else frame
    hashed = pd.util.hash_pandas_object(part, index=False).to_numpy(dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = hashed ^ np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        mixed = (mixed ^ (mixed >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
        mixed = (mixed ^ (mixed >> np.uint64(33))) * np.uint64(0xC4CEB9FE1A85EC53)
        mixed = mixed ^ (mixed >> np.uint64(33))
    u = (mixed >> np.uint64(11)).astype(np.float64) / float(2**53)
    codes = np.full(len(frame), TRAIN, dtype=np.int8)
    codes[u < validation + test] = TEST
    codes[u < validation] = VALIDATION
    return codes


def three_way(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row indices of ``codes``."""
    codes = np.asarray(codes)
    return tuple(np.flatnonzero(codes == c) for c in (TRAIN, VALIDATION, TEST))  # type: ignore[return-value]
