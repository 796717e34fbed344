"""Training speed of the torch models: rows/s by compute dtype and threads, idle and beside a competing CPU load.

    python benchmarks/train_speed.py                                   # the docs/benchmarks.md matrix (minutes)
    python benchmarks/train_speed.py --models deepfm --rows 1000000 --epochs 1 --configs float64:1 float32:2
    python benchmarks/train_speed.py --load                            # the same beside one busy-looping process
    python benchmarks/train_speed.py --models deepfm --rows 300000 --configs float32:1 float32:2 float32:auto \
        --batch-sizes 256 1024 4096 --repeat 2                         # threads against the batch size

Each configuration runs in its own process, because OpenMP reads its wait policy once, when torch loads it.
A configuration is ``DTYPE:THREADS`` or ``DTYPE:THREADS:spin``; THREADS ``auto`` is the exporter's default
(:func:`exporter.models.threads.torch_threads`: one thread per 2,048 rows of a batch). ``spin`` imports torch
before the exporter, so OpenMP keeps its default spin-waiting (what every run had before
``OMP_WAIT_POLICY=PASSIVE``). ``base`` runs the code of another checkout (``--base-tree DIR``, e.g. ``git archive
COMMIT | tar -x -C DIR``) with its own defaults: the figure to compare with. Only the fit is timed
(``exporter.export.pipeline.fit``, the same loop ``export`` runs): rows/s = training rows x epochs / fit seconds.
The held-out metric of the same run is printed beside it (AUC; two_tower recall@10).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ("float64:1", "float64:2", "float32:1", "float32:2", "float32:2:spin")
METRIC = {"deepfm": "auc", "mmoe": "ctr_auc", "two_tower": "recall@10"}


def worker(
    model: str, rows: int, epochs: int, dtype: str, threads: int | None, mode: str, batch_size: int | None
) -> dict[str, object]:
    """One training run in this process; the result as a JSON-able dict."""
    if mode == "spin":
        import torch  # noqa: F401  (loaded before exporter.models: OpenMP keeps its default wait policy)
    from exporter.export import pipeline

    options: dict[str, object] = {} if mode == "base" else {"threads": threads}
    params = pipeline.ExportParams(
        model=model,
        rows=rows,
        progress=False,
        hparams={
            "epochs": epochs,
            # the training loop is timed: no second fit on the validation rows (a base tree may predate refit)
            **({} if mode == "base" else {"dtype": dtype, "refit": False}),
            **({} if batch_size is None else {"batch_size": batch_size}),
        },
        artifacts=str(Path(os.environ.get("TMPDIR", "/tmp")) / "train-speed-artifacts"),
        **options,  # type: ignore[arg-type]
    )
    prep = pipeline.prepare(params)
    start = time.perf_counter()
    trained = pipeline.fit(prep)
    seconds = time.perf_counter() - start
    batch = (getattr(trained, "stopping", None) or {}).get("batch_size", batch_size)  # a base tree may lack it
    used = getattr(trained, "threads", None)
    metrics = pipeline.evaluate(prep, trained).metrics
    return {
        "model": model,
        "rows": rows,
        "train_rows": len(prep.x_train),
        "epochs": epochs,
        "dtype": dtype,
        "threads": used if used is not None else threads,
        "batch_size": batch,
        "wait_policy": _wait_policy(mode),
        "fit_seconds": round(seconds, 2),
        "rows_per_s": round(len(prep.x_train) * epochs / seconds),
        "metric": METRIC[model],
        "value": round(float(metrics[METRIC[model]]), 4),
    }


def _wait_policy(mode: str) -> str:
    if mode == "base":
        return os.environ.get("OMP_WAIT_POLICY") or "default"
    from exporter.models import threads as T

    return T.wait_policy()


def run_config(
    model: str, rows: int, epochs: int, config: str, base_tree: str | None, batch_size: int | None = None
) -> dict[str, object]:
    dtype, threads, *rest = config.split(":")
    mode = rest[0] if rest else "-"
    if mode == "base" and not base_tree:
        raise SystemExit(f"{config}: pass --base-tree DIR with the checkout to compare with")
    cmd = [sys.executable, __file__, "--worker", model, str(rows), str(epochs), dtype, threads, mode, str(batch_size)]
    env = {**os.environ, "PYTHONPATH": str(base_tree if mode == "base" else ROOT)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{config} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        model, rows, epochs, dtype, threads, mode, batch = sys.argv[2:9]
        n_threads = None if threads == "auto" else int(threads)
        batch_size = None if batch == "None" else int(batch)
        print(json.dumps(worker(model, int(rows), int(epochs), dtype, n_threads, mode, batch_size)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deepfm", "mmoe", "two_tower"])
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic rows (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default: %(default)s)")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="DTYPE:THREADS[:spin] ...")
    parser.add_argument("--load", action="store_true", help="run beside one busy-looping Python process")
    parser.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    parser.add_argument("--base-tree", default=None, help="checkout whose code the 'base' configurations run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the configurations (interleaved)")
    parser.add_argument(
        "--batch-sizes", nargs="+", type=int, default=[None], help="batch sizes to run each configuration at"
    )
    args = parser.parse_args(argv)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    try:
        rounds = [
            (m, b, c) for m in args.models for b in args.batch_sizes for _ in range(args.repeat) for c in args.configs
        ]
        for model, batch_size, config in rounds:
            load = os.getloadavg()[0]
            result = run_config(model, args.rows, args.epochs, config, args.base_tree, batch_size)
            result.update({"competing_load": bool(busy), "loadavg_1min": round(load, 2), "config": config})
            print(
                f"{model:9} {config:15} batch {result.get('batch_size')!s:>5} threads {result['threads']!s:>2} "
                f"load {load:5.2f} busy={bool(busy)!s:5} {result['rows_per_s']:>9,} rows/s "
                f"({result['fit_seconds']} s) {result['metric']} {result['value']}",
                flush=True,
            )
            if args.json:
                with open(args.json, "a", encoding="utf-8") as f:
                    f.write(json.dumps(result) + "\n")
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
