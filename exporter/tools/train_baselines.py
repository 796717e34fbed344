"""The plain baselines of ``bench train``, each run in its own child process (its peak RSS is its own):

* ``xgb``: ``xgboost.train`` on the numeric matrix of the same Parquet files (the default columns, the string
  category as its pandas codes), an 80/20 seeded row split, the exporter's default xgb parameters;
* ``torch``: a minimal equivalent network in a plain PyTorch loop: the standardised numeric columns and one
  embedding per ID column (one row per distinct value, as a vocabulary) into an MLP, Adam, one thread, float32.

``python -m exporter.tools.train_baselines MODEL DIR EPOCHS`` prints one JSON line: rows, AUC, seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exporter.training import data as D


def _table(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(numeric matrix, ID matrix, labels) of every Parquet file of ``directory``."""
    import pyarrow.dataset as ds

    table = ds.dataset(directory, format="parquet").to_table(columns=[*D.DEFAULT_FEATURES, D.LABEL])
    frame = table.to_pandas()
    frame["item_category"] = frame["item_category"].astype("category").cat.codes.astype(np.float64)
    numeric = [c for c in D.DEFAULT_FEATURES if c not in D.CATEGORICAL_FEATURES]
    x = frame[numeric].to_numpy(dtype=np.float64)
    ids = frame[list(D.CATEGORICAL_FEATURES)].to_numpy(dtype=np.float64)
    return x, ids, frame[D.LABEL].to_numpy(dtype=np.float64)


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    return D.split_indices(n, seed=0)


def run_xgb(directory: str) -> dict[str, Any]:
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    x, ids, y = _table(directory)
    matrix = np.concatenate([x, ids], axis=1)
    del x, ids
    train, held = _split(len(y))
    dtrain = xgb.DMatrix(matrix[train], label=y[train])
    dheld = xgb.DMatrix(matrix[held], label=y[held])
    fit_start = time.perf_counter()
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": 3,
        "eta": 0.1,
        "subsample": 0.9,
        "seed": 0,
        "nthread": 2,
    }
    booster = xgb.train(
        params, dtrain, num_boost_round=150, evals=[(dtrain, "train"), (dheld, "heldout")], verbose_eval=False
    )
    fit_seconds = time.perf_counter() - fit_start
    auc = float(roc_auc_score(y[held], booster.predict(dheld)))
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

    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
    x, ids, y = _table(directory)
    median = np.nanmedian(x, axis=0)
    x = np.where(np.isnan(x), median, x)
    x = ((x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)).astype(np.float32)
    rows = np.stack([pd.factorize(ids[:, k], use_na_sentinel=True)[0] + 1 for k in range(ids.shape[1])], axis=1)
    sizes = [int(rows[:, k].max()) + 1 for k in range(rows.shape[1])]
    train, held = _split(len(y))
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
