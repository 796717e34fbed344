"""The torch models on Spark: data-parallel training with ``pyspark.ml.torch.distributor.TorchDistributor``.

The driver writes the prepared training rows as Parquet parts (a Spark job: nothing is collected), the initial
weights (scalers fitted on the driver's sample, so every rank starts from the same network) and the validation
sample. Each rank streams its own parts through a bounded shuffle buffer, takes the same number of steps per
epoch as every other rank (the smallest shard sets it), and averages gradients with ``all_reduce`` over gloo
(CPU). After each epoch the validation sample decides as on one machine (:class:`exporter.models.torch_common
.EarlyStopping`: patience, the plateau learning-rate schedule, the best weights restored), rank 0's decision
broadcast to all; rank 0 writes the checkpoint in the format load mode reads, with the training curve and how
it stopped; the driver then exports it.

On a real cluster ``--work-dir``'s files must be on storage every executor sees (the default temporary
directory is fine for ``local[*]`` only): see ``docs/training.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import ExporterError
from exporter.export.params import Prepared
from exporter.models import Trained

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"


def fit_torch(prep: Prepared, run: Any, train_rows: Any) -> Trained:
    """Train ``prep.spec`` on the cluster (``train_rows``: the encoded training rows, a Spark DataFrame) and load
    the rank-0 checkpoint back as a :class:`Trained`."""
    import torch
    from pyspark.ml.torch.distributor import TorchDistributor

    from exporter.models import TrainData
    from exporter.models import torch_common as tc

    spec: Any = prep.spec
    hp = prep.hparams
    data = TrainData(
        x_train=prep.x_train,
        y_train=prep.y_train,
        x_valid=run.x_valid,
        y_valid=run.y_valid,
        columns=prep.columns,
        hparams=hp,
        seed=prep.params.seed,
        features=prep.features,
    )
    tc.seed_everything(prep.params.seed)
    config = spec.make_config(data)
    from exporter.models.torch_base import DTYPE_KEY, FEATURES_KEY

    config[FEATURES_KEY] = prep.features.to_dict()
    config[DTYPE_KEY] = str(hp.get("dtype", tc.LEGACY_DTYPE))
    net = tc.set_compute_dtype(spec.build(config), tc.compute_dtype(config[DTYPE_KEY]))
    spec.fit_scalers(net, prep.x_train)
    work = run.workdir / "torch"
    shards = work / "train"
    work.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, work / "init.pt")
    np.savez(work / "valid.npz", x=run.x_valid, **{f"y_{k}": v for k, v in run.y_valid.items()})
    workers = run.options.num_workers
    _write_shards(train_rows, max(workers, 1) * 2, int(prep.params.seed), shards)
    settings = {
        "model": spec.name,
        "config": config,
        "columns": list(prep.columns),
        "hparams": {k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool, list))},
        "labels": list(run.label_cols),
        "seed": int(prep.params.seed),
        "work": str(work),
        "shards": str(shards),
    }
    if spec.log_counter(config) is not None:  # two_tower: the logQ correction needs the whole log's item counts
        _item_counts(train_rows, config, run.label_cols, work / "items.npz")
    distributor = TorchDistributor(num_processes=workers, local_mode=False, use_gpu=False)
    distributor.run(train_rank, json.dumps(settings))
    trained = spec.load(work / CHECKPOINT, list(prep.columns), hp)
    fit = json.loads((work / HISTORY).read_text(encoding="utf-8"))
    trained.history, trained.stopping = fit["history"], fit["stopping"]
    trained.hparams = dict(hp)
    return trained


def _write_shards(train_rows: Any, parts: int, seed: int, path: Path) -> None:
    """The training rows as ``parts`` Parquet files, each a uniform random mix of the whole table in a random row
    order (a seeded sort on a random key inside each part).

    A round-robin repartition alone keeps each input file's rows together and in their order inside a part, so a
    rank's shuffle buffer would see one input file (one day, one region) at a time: on a log of 2 files of
    independent rows the model learnt the last file and forgot the first (held-out AUC 0.016 below one machine's).
    """
    from pyspark.sql import functions as Fn

    key = "__exporter_shuffle"
    mixed = train_rows.repartition(parts).withColumn(key, Fn.rand(seed)).sortWithinPartitions(key).drop(key)
    mixed.write.parquet(str(path))


def _item_counts(train_rows: Any, config: Mapping[str, Any], labels: Sequence[str], path: Path) -> None:
    """Positives per item (an item is its prepared item-tower row), counted by Spark over every training row."""
    cols = [f"f{j}" for j in config["item_idx"]]
    positives = train_rows.where(train_rows["y_label"] == 1.0) if "label" in labels else train_rows
    rows = positives.groupBy(*cols).count().collect()
    items = np.array([[r[c] for c in cols] for r in rows], dtype=np.float64).reshape(len(rows), len(cols))
    counts = np.array([int(r["count"]) for r in rows], dtype=np.float64)
    np.savez(path, items=items, counts=counts)


def _labels(rb: Any, labels: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: rb.column(f"y_{n}").to_numpy(zero_copy_only=False) for n in labels}


def _gather_parts(tensors: Sequence[Any]) -> tuple[list[list[Any]], int]:
    """Every rank's part of each of ``tensors`` (one length per rank, which may differ between ranks: the lengths
    are exchanged once), differentiable: a rank's gradient reaches the rank that computed the part
    (``torch.distributed.nn.functional.all_gather``); and this rank's index."""
    import torch
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(tensors[0])], dtype=torch.int64))
    lengths = [int(n.item()) for n in sizes]
    longest = max(lengths)
    out = []
    for t in tensors:
        padded = t if len(t) == longest else torch.cat([t, t.new_zeros((longest - len(t), *t.shape[1:]))])
        out.append([p[:n] for p, n in zip(all_gather(padded), lengths, strict=True)])
    return out, dist.get_rank()


def _kept_rows(files: Sequence[str], labels: Sequence[str], keep: Callable[[dict[str, np.ndarray]], Any]) -> int:
    """Rows of ``files`` the model trains on (``keep``: the model's mask of a block, None for every row)."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for rb in pf.iter_batches(batch_size=65_536, columns=[f"y_{n}" for n in labels]):
            mask = keep(_labels(rb, labels))
            total += rb.num_rows if mask is None else int(np.count_nonzero(mask))
    return total


def _stream(
    files: Sequence[str],
    batch: int,
    seed: int,
    epoch: int,
    labels: Sequence[str],
    keep: Callable[[dict[str, np.ndarray]], Any] = lambda y: None,
) -> Iterator[Any]:
    """Batches of (x, {label: y}) of the rows ``keep`` keeps, from ``files`` through a seeded shuffle buffer of as
    many rows as the streamed path's (:data:`exporter.models.streamed.SHUFFLE_BUFFER_ROWS`)."""
    import pyarrow.parquet as pq

    from exporter.models.streamed import SHUFFLE_BUFFER_ROWS

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(files))
    buf_x: list[np.ndarray] = []
    buf_y: dict[str, list[np.ndarray]] = {n: [] for n in labels}
    held = 0

    def drain(final: bool) -> Iterator[Any]:
        nonlocal held
        x = np.concatenate(buf_x)
        ys = {n: np.concatenate(v) for n, v in buf_y.items()}
        perm = rng.permutation(len(x))
        x, ys = x[perm], {n: v[perm] for n, v in ys.items()}
        cut = len(x) if final else (len(x) // batch) * batch
        for start in range(0, cut, batch):
            yield x[start : start + batch], {n: v[start : start + batch] for n, v in ys.items()}
        buf_x.clear()
        for v in buf_y.values():
            v.clear()
        if cut < len(x):
            buf_x.append(x[cut:])
            for n in labels:
                buf_y[n].append(ys[n][cut:])
        held = len(x) - cut

    for i in order:
        for rb in pq.ParquetFile(files[i]).iter_batches(batch_size=8192):
            cols = [c for c in rb.schema.names if c.startswith("f")]
            x = np.stack([rb.column(c).to_numpy(zero_copy_only=False) for c in cols], axis=1)
            ys = _labels(rb, labels)
            mask = keep(ys)
            if mask is not None:
                x, ys = x[mask], {n: v[mask] for n, v in ys.items()}
            buf_x.append(x)
            for n in labels:
                buf_y[n].append(ys[n])
            held += len(x)
            if held >= SHUFFLE_BUFFER_ROWS:
                yield from drain(False)
    if held:
        yield from drain(True)


def train_rank(settings_json: str) -> None:
    """One rank of the data-parallel fit (runs under torchrun on an executor)."""
    import torch
    import torch.distributed as dist

    from exporter.models import get_spec
    from exporter.models import torch_common as tc
    from exporter.models.torch_base import DTYPE_KEY, targets_as

    s = json.loads(settings_json)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        torch.set_num_threads(1)
        spec: Any = get_spec(s["model"])
        hp: Mapping[str, Any] = s["hparams"]
        work = Path(s["work"])
        dtype = tc.compute_dtype(s["config"].get(DTYPE_KEY, tc.LEGACY_DTYPE))
        net = tc.set_compute_dtype(spec.build(s["config"]), dtype)
        net.load_state_dict(torch.load(work / "init.pt", weights_only=True))
        files = sorted(str(p) for p in Path(s["shards"]).glob("*.parquet"))
        mine = files[rank::world]

        def keep(y: dict[str, np.ndarray]) -> Any:
            return spec.kept_rows(s["config"], y)

        rows = torch.tensor([_kept_rows(mine, s["labels"], keep)], dtype=torch.int64)
        dist.all_reduce(rows, op=dist.ReduceOp.MIN)
        # every rank trains on about as many rows as the fewest: the whole fit on rows x world
        settings = tc.LoopSettings.of(hp, rows=int(rows.item()) * world, decay_scale=spec.weight_decay_scale)
        batch = max(1, -(-settings.batch_size // world))
        steps = max(1, int(rows.item()) // batch) if rows.item() > 0 else 0
        if steps == 0:
            raise ExporterError("a training worker got no rows: use fewer --num-workers or more data")
        valid = np.load(work / "valid.npz", allow_pickle=False)
        valid_tensors = targets_as(
            spec.training_tensors(
                s["config"], valid["x"], {n: valid[f"y_{n}"] for n in s["labels"] if f"y_{n}" in valid}
            ),
            dtype,
        )
        # dense embedding gradients: the ranks average them with all_reduce
        optimizer = settings.optimizer(net, sparse_allowed=False)
        counter = spec.log_counter(s["config"])
        if counter is not None:  # two_tower's logQ: the positives per item of the whole log, counted by Spark
            table = np.load(work / "items.npz", allow_pickle=False)
            counter = type(counter).from_arrays(counter.item_idx, counter.label, table["items"], table["counts"])
        torch.manual_seed(int(s["seed"]) + rank)
        epochs = settings.max_epochs
        # every rank holds the same weights (averaged gradients) and the same validation sample, so each reaches
        # the same decisions; rank 0's stop is broadcast all the same, so no rank waits on another's all_reduce
        stopping = settings.stopping(net, optimizer, has_validation=len(valid["x"]) > 0)

        if hasattr(net, "batch_gather"):  # two_tower: each user's softmax spans every rank's items
            net.batch_gather = _gather_parts

        def average_gradients() -> None:
            for p in net.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world

        for epoch in range(1, epochs + 1):
            net.train()
            total, seen = 0.0, 0
            stream = _stream(mine, batch, int(s["seed"]) + 7919 * rank, epoch, s["labels"], keep)
            for _ in range(steps):
                x, y = next(stream)
                tensors = targets_as(spec.block_tensors(s["config"], x, y, counter), dtype)
                total += tc.train_step(net, spec.loss, optimizer, tensors, epoch, average_gradients) * len(x)
                stopping.after_step()
                seen += len(x)
            stats = torch.tensor([total, float(seen)], dtype=torch.float64)
            dist.all_reduce(stats)
            with stopping.judged():  # the same average on every rank, as their weights are the same
                v = tc.validation_loss(net, spec.loss, valid_tensors)
                stop = torch.tensor([float(stopping.end_epoch(epoch, float(stats[0] / stats[1]), v))])
            dist.broadcast(stop, 0)
            if stop.item():
                break
        fit = stopping.finish(batch_size=batch * world, optimiser_steps=steps * int(stopping.history[-1]["step"]))
        if rank == 0:
            tc.save_checkpoint(
                work / CHECKPOINT,
                model_type=spec.name,
                config=s["config"],
                feature_columns=s["columns"],
                hparams=dict(hp),
                module=net,
            )
            record = {"history": fit.history, "stopping": fit.stopping}
            (work / HISTORY).write_text(json.dumps(record), encoding="utf-8")
    finally:
        dist.destroy_process_group()
