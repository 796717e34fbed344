"""XGBoost on a streamed table: a ``QuantileDMatrix`` built from XGBoost's own data iterator.

``xgboost.DataIter`` hands XGBoost the train rows batch by batch (it reads them twice: once to sketch each
feature's quantiles, once to fill the quantised matrix); XGBoost keeps only the quantised matrix (one bin index
per cell, about 1 byte per cell for 256 bins) and the gradients, never the float64 table. The validation sample
is quantised with the same cuts (``ref``). Boosting itself is :meth:`XGBoostModel.boost`, as in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from exporter.models.base import Trained
from exporter.models.streamed import Chunk, StreamTrainData
from exporter.models.xgb import XGBoostModel, xgboost_names
from exporter.training.data import LABEL


def train_stream(model: XGBoostModel, stream: StreamTrainData, on_pass: Callable[[], None] | None = None) -> Trained:
    """Boost on every streamed train row; ``on_pass`` is told each time XGBoost starts reading them again."""
    import xgboost as xgb

    data = stream.data
    names = xgboost_names(list(data.columns))

    class _Batches(xgb.DataIter):
        def __init__(self) -> None:
            self._it: Iterator[Chunk] | None = None
            self.passes = 0
            super().__init__(release_data=True)

        def reset(self) -> None:
            self._it = None

        def next(self, input_data: Callable[..., Any]) -> bool:
            if self._it is None:
                self.passes += 1
                if on_pass is not None:
                    on_pass()
                self._it = stream.chunks(0)  # every pass in the same order: XGBoost expects the same batches
            try:
                x, y = next(self._it)
            except StopIteration:
                return False
            input_data(data=x, label=np.asarray(y[LABEL], dtype=np.float32), feature_names=names)
            return True

    params = model.params(data)
    batches = _Batches()
    dtrain = xgb.QuantileDMatrix(batches, max_bin=256, nthread=int(params["nthread"]))
    dheld = xgb.QuantileDMatrix(data.x_valid, label=data.y_valid[LABEL], feature_names=names, ref=dtrain, max_bin=256)
    return model.boost(data, params, dtrain, dheld)
