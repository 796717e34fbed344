"""The plain baselines of ``bench train``, each run in its own child process (its peak RSS is its own):

* ``xgb``: ``xgboost.train`` on the numeric matrix of the same Parquet files (the default columns, the string
  category as its pandas codes), the exporter's default xgb parameters (:class:`exporter.models.xgb
  .XGBoostModel`: tree budget, early stopping on the validation rows, depth, learning rate, sampling);
* ``torch``: a minimal equivalent network in a plain PyTorch loop: the standardised numeric columns and one
  embedding per ID column (one row per distinct value, as a vocabulary) into an MLP, Adam, float32.

Both use the exporter's own split of the same files (:mod:`exporter.training.split`, seed 0: the same
training, validation and test rows as the exported runs) and every core, as the exporter does by default.

``python -m exporter.tools.train_baselines MODEL DIR EPOCHS`` prints one JSON line: rows, AUC, seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.training import data as D
from exporter.training import split as S


def _table(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(numeric matrix, ID matrix, labels, split codes) of every Parquet file of ``directory``."""
    import pyarrow.dataset as ds

    table = ds.dataset(directory, format="parquet").to_table()
    codes = S.split_codes_arrow(table, seed=0)  # the exporter's rule: a hash of every column of the row
    frame = table.select([*D.DEFAULT_FEATURES, D.LABEL]).to_pandas()
    del table
    frame["item_category"] = frame["item_category"].astype("category").cat.codes.astype(np.float64)
    numeric = [c for c in D.DEFAULT_FEATURES if c not in D.CATEGORICAL_FEATURES]
    x = frame[numeric].to_numpy(dtype=np.float64)
    ids = frame[list(D.CATEGORICAL_FEATURES)].to_numpy(dtype=np.float64)
    return x, ids, frame[D.LABEL].to_numpy(dtype=np.float64), codes


def _threads() -> int:
    return os.cpu_count() or 1


def run_xgb(directory: str) -> dict[str, Any]:
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    from exporter.models.xgb import XGBoostModel, native_params

    start = time.perf_counter()
    x, ids, y, codes = _table(directory)
    matrix = np.concatenate([x, ids], axis=1)
    del x, ids
    train, valid, held = S.three_way(codes)
    dtrain = xgb.DMatrix(matrix[train], label=y[train])
    dvalid = xgb.DMatrix(matrix[valid], label=y[valid])
    dheld = xgb.DMatrix(matrix[held], label=y[held])
    fit_start = time.perf_counter()
    hp = XGBoostModel.default_hparams
    params = native_params(hp, seed=0, nthread=_threads())
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=hp["n_estimators"],
        evals=[(dvalid, "validation")],
        early_stopping_rounds=hp["early_stopping_rounds"],
        verbose_eval=False,
    )
    fit_seconds = time.perf_counter() - fit_start
    best = booster.best_iteration + 1
    auc = float(roc_auc_score(y[held], booster.predict(dheld, iteration_range=(0, best))))
    return {
        "rows": len(y),
        "train_rows": len(train),
        "auc": auc,
        "seconds": time.perf_counter() - start,
        "train_seconds": fit_seconds,
    }


def run_torch(directory: str, epochs: int) -> dict[str, Any]:
    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn

    torch.set_num_threads(_threads())
    torch.manual_seed(0)
    start = time.perf_counter()
    x, ids, y, codes = _table(directory)
    median = np.nanmedian(x, axis=0)
    x = np.where(np.isnan(x), median, x)
    x = ((x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)).astype(np.float32)
    rows = np.stack([pd.factorize(ids[:, k], use_na_sentinel=True)[0] + 1 for k in range(ids.shape[1])], axis=1)
    sizes = [int(rows[:, k].max()) + 1 for k in range(rows.shape[1])]
    train, _, held = S.three_way(codes)
    xt, it, yt = torch.from_numpy(x), torch.from_numpy(rows), torch.from_numpy(y.astype(np.float32))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.ModuleList(nn.Embedding(n, 8) for n in sizes)
            self.mlp = nn.Sequential(
                nn.Linear(x.shape[1] + 8 * rows.shape[1], 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
            )

        def forward(self, xb: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
            parts = [xb, *(e(ib[:, k]) for k, e in enumerate(self.emb))]
            return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    fit_start = time.perf_counter()
    order = torch.from_numpy(train)
    for _ in range(epochs):
        perm = order[torch.randperm(len(order))]
        for s in range(0, len(perm), 256):
            b = perm[s : s + 256]
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(net(xt[b], it[b]), yt[b])
            loss.backward()
            opt.step()
    fit_seconds = time.perf_counter() - fit_start
    with torch.inference_mode():
        h = torch.from_numpy(held)
        pred = torch.sigmoid(net(xt[h], it[h])).numpy()
    auc = float(roc_auc_score(y[held], pred))
    return {
        "rows": len(y),
        "train_rows": len(train),
        "auc": auc,
        "seconds": time.perf_counter() - start,
        "train_seconds": fit_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    model, directory = args[0], args[1]
    epochs = int(args[2]) if len(args) > 2 else 1
    if not Path(directory).is_dir():
        print(json.dumps({"error": f"no directory {directory}"}))
        return 2
    out = run_xgb(directory) if model == "xgb" else run_torch(directory, epochs)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
