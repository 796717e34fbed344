"""Held-out metrics over every test row of a Spark run, computed on the cluster.

The driver holds a bounded sample of the test rows (plots, calibration, importance and the parity gate use it);
the headline metrics are computed here over all of them instead: the trained model's native files (the same
``checkpoint.pt`` / ``model.ubj`` the artifact ships, loaded with ``weights_only`` / as UBJ, never pickled) go to
the executors, which score the encoded test rows (``mapInArrow``); then per head

* binary: ``auc`` (``BinaryClassificationEvaluator`` with ``numBins=0``: the exact ROC curve, not a binned one),
  ``logloss`` (probabilities clipped to [1e-7, 1 - 1e-7] as :func:`exporter.training.metrics.logloss` does) and
  ``base_rate``;
* regression: ``rmse`` and ``rmse_baseline`` (predicting the test rows' mean).

Only the metric names the model reports from its sample (``auc`` or ``<head>_auc``, ...) are replaced, so every
other figure keeps its meaning; two_tower's recall@K comes from its own whole-table inputs
(:mod:`exporter.models.two_tower.spark_eval`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from exporter.models import Trained
from exporter.models.base import BINARY

#: the native files a model is loaded from, in the order they are looked for
NATIVE_FILES = ("checkpoint.pt", "model.ubj")
LOG_EPS = 1e-7


def native_files(trained: Trained) -> tuple[str, dict[str, bytes]]:
    """(the file :meth:`~exporter.models.base.ModelSpec.load` reads, every native file by name) of ``trained``."""
    writers = [u.write_native_files for u in trained.units() if u.write_native_files is not None]
    if not writers:
        raise ValueError(f"{trained.spec_name} writes no native files to score with")
    with tempfile.TemporaryDirectory(prefix="exporter-native-") as tmp:
        writers[0](Path(tmp))
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    main = next((n for n in NATIVE_FILES if n in files), None)
    if main is None:
        raise ValueError(f"{trained.spec_name} wrote {sorted(files)}, none of {NATIVE_FILES}")
    return main, files


def _scorer(
    spec_name: str,
    main: str,
    files: Mapping[str, bytes],
    columns: Sequence[str],
    hparams: Mapping[str, Any],
    heads: Sequence[tuple[str, str, str]],
) -> Any:
    """The ``mapInArrow`` function: encoded rows (``f0..fn``, ``y_<label>``) in, per head ``i`` its prediction
    ``p<i>`` and label ``y<i>`` out."""
    files, columns, hparams, heads = dict(files), list(columns), dict(hparams), list(heads)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from exporter.models import get_spec

        with tempfile.TemporaryDirectory(prefix="exporter-score-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            trained = get_spec(spec_name).load(Path(tmp) / main, columns, hparams)
            for batch in batches:
                x = np.column_stack(
                    [batch.column(f"f{j}").to_numpy(zero_copy_only=False) for j in range(len(columns))]
                ).astype(np.float64)
                predicted = trained.predict(x) if len(x) else {h: np.zeros(0) for h, _, _ in heads}
                arrays = [pa.array(np.asarray(predicted[h], dtype=np.float64).reshape(-1)) for h, _, _ in heads]
                arrays += [batch.column(f"y_{label}") for _, label, _ in heads]
                names = [f"p{i}" for i in range(len(heads))] + [f"y{i}" for i in range(len(heads))]
                yield pa.RecordBatch.from_arrays(arrays, names=names)

    return score


def heldout_metrics(test_rows: Any, trained: Trained, spec: Any, labels: Sequence[str]) -> tuple[dict[str, float], int]:
    """(metrics, rows scored): per head of ``trained`` (:meth:`~exporter.models.base.ModelSpec.metric_heads`)
    whose label is among ``labels``, its metrics over every row of ``test_rows`` (the encoded test rows, a Spark
    DataFrame), named ``<metric>`` for the click head ``label`` and ``<head>_<metric>`` otherwise (see the module
    docstring)."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.sql import functions as SF

    heads = [h for h in spec.metric_heads(trained) if h[1] in labels]
    if not heads:
        return {}, 0
    main, files = native_files(trained)
    schema = ", ".join([f"p{i} double" for i in range(len(heads))] + [f"y{i} double" for i in range(len(heads))])
    columns = list(trained.feature_columns)
    scored = test_rows.mapInArrow(_scorer(spec.name, main, files, columns, trained.hparams, heads), schema)
    scored = scored.persist()
    try:
        out: dict[str, float] = {}
        for i, (head, _, kind) in enumerate(heads):
            prefix = "" if head == "label" else f"{head}_"
            y, p = SF.col(f"y{i}"), SF.col(f"p{i}")
            if kind == BINARY:
                clipped = SF.least(SF.greatest(p, SF.lit(LOG_EPS)), SF.lit(1 - LOG_EPS))
                loss = -(y * SF.log(clipped) + (1 - y) * SF.log(1 - clipped))
                r = scored.agg(
                    SF.avg(loss).alias("logloss"), SF.avg(y).alias("base_rate"), SF.countDistinct(y).alias("k")
                ).first()
                auc = math.nan
                if int(r["k"]) >= 2:
                    evaluator = BinaryClassificationEvaluator(
                        rawPredictionCol=f"p{i}", labelCol=f"y{i}", metricName="areaUnderROC", numBins=0
                    )
                    auc = float(evaluator.evaluate(scored))
                out[f"{prefix}auc"] = auc
                out[f"{prefix}logloss"] = float(r["logloss"])
                out[f"{prefix}base_rate"] = float(r["base_rate"])
            else:
                r = scored.agg(SF.avg((y - p) * (y - p)).alias("mse"), SF.var_pop(y).alias("var")).first()
                out[f"{prefix}rmse"] = float(math.sqrt(r["mse"]))
                out[f"{prefix}rmse_baseline"] = float(math.sqrt(r["var"]))
        return out, int(scored.count())
    finally:
        scored.unpersist()
