"""What a model trains on when the table is streamed: a bounded sample in memory and a re-readable stream of
the train rows, shuffled through a bounded buffer.

The model-side half of streamed training (the reading side is :mod:`exporter.training.stream_scan`):
:class:`StreamTrainData` carries a :class:`~exporter.models.base.TrainData` whose matrices are *bounded samples*
(``x_train``: a uniform sample of the train rows, for the networks' standardisation and target statistics;
``x_heldout``: the validation sample, for the loss curve and early stopping) and ``chunks``, which reads every
train row once per call; :func:`shuffled_blocks` turns those chunks into seeded, shuffled blocks of at most
:data:`SHUFFLE_BUFFER_ROWS` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from exporter.models.base import TrainData

#: rows held in the shuffle buffer (about 100 bytes each for the default 10 columns and 3 labels: ~26 MB)
SHUFFLE_BUFFER_ROWS = 262_144

Chunk = tuple[np.ndarray, dict[str, np.ndarray]]


@dataclass(frozen=True)
class StreamTrainData:
    """A streamed run: ``data`` holds the bounded samples, ``chunks(epoch)`` re-reads the train rows."""

    data: TrainData
    chunks: Callable[[int], Iterator[Chunk]]
    #: train rows of the whole table (what one epoch reads)
    train_rows: int
    buffer_rows: int = SHUFFLE_BUFFER_ROWS


def shuffled_blocks(chunks: Iterable[Chunk], buffer_rows: int, rng: np.random.Generator) -> Iterator[Chunk]:
    """Chunks gathered into blocks of at least ``buffer_rows`` rows (the last one smaller), each permuted.

    Seeded: the same chunks in the same order with the same generator give the same blocks."""
    xs: list[np.ndarray] = []
    ys: list[dict[str, np.ndarray]] = []
    held = 0
    for x, y in chunks:
        xs.append(x)
        ys.append(y)
        held += len(x)
        if held >= buffer_rows:
            yield _permuted(xs, ys, rng)
            xs, ys, held = [], [], 0
    if held:
        yield _permuted(xs, ys, rng)


def _permuted(xs: list[np.ndarray], ys: list[dict[str, np.ndarray]], rng: np.random.Generator) -> Chunk:
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    order = rng.permutation(len(x))
    y = {k: (np.concatenate([part[k] for part in ys]) if len(ys) > 1 else ys[0][k])[order] for k in ys[0]}
    return np.ascontiguousarray(x[order]), y
