"""``python -m exporter bench train``: training throughput, peak memory and quality, in memory vs streamed.

For each ``--rows`` size a synthetic click log (:func:`exporter.training.data.synthetic_dataset`, written in
chunks of :data:`CHUNK_ROWS` rows, one Parquet file each, so generating it is bounded in memory too) is written
outside the repository (``--work-dir``, else a temporary directory). Then, each in its own child process so its
peak RSS (``ru_maxrss`` from ``wait4``) is its own:

* ``python -m exporter export MODEL --data DIR --streaming off|on`` for each of ``--models`` (and, with
  ``--paths ...,spark``, ``--engine spark --spark-master URL --num-workers N``: its wall time includes the
  session's start-up, its peak RSS is the largest process of the run, driver or the JVM it started);
* the plain baselines of :mod:`exporter.tools.train_baselines`: ``xgboost.train`` on the same numeric matrix,
  and a minimal equivalent PyTorch network in a plain loop.

Reported per run: wall time, training rows/s (train rows x epochs / training phase), peak RSS, and the held-out
quality (AUC; recall@50 for two_tower). In-memory runs above ``--memory-max-rows`` are skipped (they would need
about 1.75 KB per row).

With ``--history LENGTH`` the log also holds ``recent``, each user's last LENGTH clicked items before the row
(:func:`exporter.features.build_history` by row order within each part: only earlier rows, as a log's history
column would be), and every torch model runs on each path twice on that same log and split: as above, and
``+ history`` with the column declared (``{"kind": "history", "vocab_from": "item_id"}``) beside the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError

HELP = "training benchmark: in-memory vs streamed training per model and size, beside plain XGBoost and PyTorch"
DESCRIPTION = __doc__.split("\n\n", 1)[1] if __doc__ else ""
CHUNK_ROWS = 1_000_000
MODELS = ("deepfm", "mmoe", "two_tower", "xgb")
QUALITY = {"two_tower": "recall@50", "mmoe": "ctr_auc"}
#: the history column of ``--history`` logs
HISTORY = "recent"


@dataclass
class Run:
    rows: int
    model: str
    path: str
    seconds: float
    train_rows_per_s: float | None
    peak_rss_mb: float
    quality_metric: str
    quality: float | None
    note: str = ""
    #: the exporter's own process (its highest ``peak_rss_mb`` over the phases): on Spark, the driver, where
    #: ``peak_rss_mb`` is the largest process of the run (the driver or the JVM it started)
    driver_rss_mb: float | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", default="1000000,5000000,20000000", help="comma-separated table sizes")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models (default: all four)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the torch models (default: 1)")
    p.add_argument(
        "--paths",
        default="memory,streaming",
        help="which paths to run: memory, streaming and spark (export --engine spark), comma-separated",
    )
    p.add_argument("--spark-master", default="local[2]", help="the spark path's master URL (default: local[2])")
    p.add_argument("--num-workers", type=int, default=2, help="the spark path's training workers (default: 2)")
    p.add_argument("--memory-max-rows", type=int, default=5_000_000, help="skip in-memory runs above this many rows")
    p.add_argument("--baselines", choices=("on", "off"), default="on", help="plain XGBoost and PyTorch runs")
    p.add_argument("--work-dir", type=Path, default=None, help="where the synthetic logs go (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds one run may take")
    p.add_argument("--json", type=Path, default=None, help="also write the runs to this JSON file")
    p.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="LENGTH",
        help="also train the torch models with a history column of each user's last LENGTH clicks (default: 0, none)",
    )


def write_log(directory: Path, rows: int, seed: int = 0, history: int = 0) -> Path:
    """The synthetic click log of ``rows`` rows as Parquet parts of at most :data:`CHUNK_ROWS` rows (reused when
    a complete one is there); with ``history`` its column ``recent`` (see the module's docstring)."""
    from exporter import features as F
    from exporter.training import data as D

    out = directory / (f"clicks-{rows}" + (f"-history{history}" if history else ""))
    if (out / "_SUCCESS").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    done, part = 0, 0
    while done < rows:
        n = min(CHUNK_ROWS, rows - done)
        frame = D.synthetic_dataset(n, seed * 1000 + part)
        if history:
            frame["ts"] = range(n)
            frame[HISTORY] = F.build_history(frame, "user_id", "item_id", "ts", history, positive="label")
        frame.to_parquet(out / f"part-{part:05d}.parquet", index=False, row_group_size=131_072)
        done, part = done + n, part + 1
    (out / "_SUCCESS").write_text("")
    return out


def _child(args: list[str], timeout: float) -> tuple[int, str, str, float, float]:
    """(exit code, stdout, stderr, seconds, peak RSS in MB) of one child process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, env=env, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.2)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return child.returncode, out.read(), err.read(), seconds, usage.ru_maxrss / 1024


def history_schema(length: int, model: str) -> dict[str, Any]:
    """The model's default columns of the synthetic log with the history column declared (``+ history``)."""
    from exporter.models import get_spec
    from exporter.training import inputs as I

    defaults = get_spec(model).default_features
    history = {"name": HISTORY, "kind": "history", "max_length": length, "vocab_from": "item_id"}
    return {"label": "label", "features": [*(s.to_dict() for s in I.default_specs() if s.name in defaults), history]}


def _export(
    model: str,
    data: Path,
    path: str,
    epochs: int,
    timeout: float,
    rows: int,
    spark: tuple[str, int] = ("local[2]", 2),
    schema: Path | None = None,
) -> Run:
    with tempfile.TemporaryDirectory() as artifacts:
        params = ["--param", f"epochs={epochs}"] if model != "xgb" else []
        if schema is not None:
            params += ["--schema", str(schema)]
        if path == "spark":
            engine = ["--engine", "spark", "--spark-master", spark[0], "--num-workers", str(spark[1])]
        else:
            engine = ["--streaming", "on" if path == "streaming" else "off"]
        code, out, err, seconds, rss = _child(
            ["-m", "exporter", "export", model, "--data", str(data), "--artifacts", artifacts, "--json", "--quiet",
             "--no-tracking", *engine, *params],
            timeout,
        )  # fmt: skip
    metric = QUALITY.get(model, "auc")
    name = model + (" + history" if schema is not None else "")
    if code != 0:
        return Run(rows, name, path, seconds, None, rss, metric, None, (err.strip().splitlines() or ["?"])[-1][:120])
    result = json.loads(out)["models"][0]
    reading = result.get("data_reading") or {}
    train = (reading.get("phases") or {}).get("train", {}).get("seconds")
    train_rows = (reading.get("rows") or {}).get("train")
    per_s = train_rows * (1 if model == "xgb" else epochs) / train if train and train_rows else None
    phases = [p.get("peak_rss_mb") for p in (reading.get("phases") or {}).values()]
    driver = max((float(v) for v in phases if v is not None), default=None)
    return Run(rows, name, path, seconds, per_s, rss, metric, result["metrics"].get(metric), driver_rss_mb=driver)


def _baseline(kind: str, data: Path, epochs: int, timeout: float, rows: int) -> Run:
    code, out, err, seconds, rss = _child(
        ["-m", "exporter.tools.train_baselines", kind, str(data), str(epochs)], timeout
    )
    name = f"plain {'XGBoost' if kind == 'xgb' else 'PyTorch'}"
    if code != 0:
        return Run(rows, name, "memory", seconds, None, rss, "auc", None, (err.strip().splitlines() or ["?"])[-1][:120])
    r = json.loads(out.strip().splitlines()[-1])
    per_s = r["train_rows"] * (1 if kind == "xgb" else epochs) / r["train_seconds"]
    return Run(rows, name, "memory", seconds, per_s, rss, "auc", r["auc"])


def environment() -> str:
    load = os.getloadavg()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def render(runs: list[Run]) -> str:
    lines = [
        "| rows | model | path | wall s | train rows/s | peak RSS MB | quality |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    for r in runs:
        quality = f"{r.quality_metric} {r.quality:.4f}" if r.quality is not None else f"failed: {r.note}"
        speed = f"{r.train_rows_per_s:,.0f}" if r.train_rows_per_s else "-"
        rss = f"{r.peak_rss_mb:,.0f}"
        if r.path == "spark" and r.driver_rss_mb is not None:
            rss += f" (driver {r.driver_rss_mb:,.0f})"
        lines.append(f"| {r.rows:,} | {r.model} | {r.path} | {r.seconds:,.0f} | {speed} | {rss} | {quality} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        sizes = [int(s) for s in str(args.rows).split(",") if s.strip()]
    except ValueError:
        raise ExporterError(f"--rows takes comma-separated integers, got {args.rows!r}") from None
    models = [m.strip() for m in str(args.models).split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ExporterError(f"--models: unknown {', '.join(unknown) or '(none)'}; expected some of {', '.join(MODELS)}")
    paths = [p.strip() for p in str(args.paths).split(",") if p.strip()]
    if not paths or any(p not in ("memory", "streaming", "spark") for p in paths):
        raise ExporterError(f"--paths takes memory, streaming and spark (comma-separated), got {args.paths!r}")
    if any(s < 1000 for s in sizes) or args.epochs < 1:
        raise ExporterError("--rows sizes must be at least 1000 and --epochs at least 1")
    if not 0 <= args.history <= 1000:
        raise ExporterError(f"--history takes a length from 0 (none) to 1000, got {args.history}")
    print(f"# exporter bench train: {environment()}", flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        for rows in sizes:
            print(f"writing {rows:,} rows of synthetic clicks under {work} ...", file=sys.stderr, flush=True)
            data = write_log(work, rows, history=args.history)
            for model in models:
                schema = None
                if args.history and model != "xgb":
                    schema = data / f"_history_schema_{model}.json"  # "_": not read as data
                    schema.write_text(json.dumps(history_schema(args.history, model)))
                for path in paths:
                    if path == "memory" and rows > args.memory_max_rows:
                        continue
                    spark = (args.spark_master, args.num_workers)
                    for with_schema in (None, schema) if schema is not None else (None,):
                        label = model + (" + history" if with_schema is not None else "")
                        print(f"{rows:,} rows: {label} {path} ...", file=sys.stderr, flush=True)
                        runs.append(_export(model, data, path, args.epochs, args.timeout, rows, spark, with_schema))
                        print(render(runs[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if args.baselines == "on" and rows <= args.memory_max_rows:
                for kind in ("xgb", "torch"):
                    print(f"{rows:,} rows: plain {kind} ...", file=sys.stderr, flush=True)
                    runs.append(_baseline(kind, data, args.epochs, args.timeout, rows))
    print()
    print(render(runs))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "runs": [asdict(r) for r in runs]}, indent=2))
    return 0


def summary(runs: list[dict[str, Any]]) -> str:
    """The runs of a ``--json`` file as the markdown table."""
    return render([Run(**r) for r in runs])
