"""``python -m exporter score-bench``: what batch scoring costs, next to raw onnxruntime, and its memory.

For deepfm at ``--small-rows`` and ``--rows`` synthetic rows and for ``two_tower_item`` at ``--items`` items,
in one run:

* ``raw``    onnxruntime ``session.run`` over the same rows already in memory as one float64 matrix, in
             8,192-row calls; the better of 1 intra-op thread and one per core (no Parquet, no checks);
* ``local``  ``python -m exporter score --engine local`` end to end: Parquet read, row checks, scoring,
             Parquet write, atomic commit; in a child process;
* ``spark``  the same with ``--engine spark --master local[N]``;

as rows/s, also net of each engine's fixed cost (the same command on a 100-row input: interpreter and
imports, model load, JVM and Spark session, job set-up), ratio to raw, the CPU seconds of the whole process
tree (user + system; on a shared machine a steadier measure than wall time) and its peak resident memory (the
JVM and Python workers included), both sampled every 0.1 s.
Then, for the item tower, the ``--index`` build (FAISS IVF) and its recall@50.

Nothing here asserts on timings: the table is the result. Data is generated in chunks into a work
directory (deleted at the end unless ``--keep-data``), so generating 10M rows needs little memory too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import ExporterError
from exporter.runtime import rules
from exporter.scoring.core import RUN_ROWS
from exporter.scoring.encode import encode_batch, plan_from_metadata
from exporter.scoring.local import default_threads

HELP = "benchmark batch scoring: local and Spark engines vs raw onnxruntime, rows/s and peak memory"
DESCRIPTION = (
    __doc__.split("\n", 2)[2]
    + """
example:
  python -m exporter export all && python -m exporter score-bench --rows 10000000 --items 1000000
"""
)

CHUNK = 500_000  # rows generated and written at a time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts",
        default="artifacts",
        help="model repository with deepfm and two_tower[_item] (default: %(default)s)",
    )
    p.add_argument("--rows", type=int, default=10_000_000, help="deepfm rows, large size (default: %(default)s)")
    p.add_argument("--small-rows", type=int, default=1_000_000, help="deepfm rows, small size (default: %(default)s)")
    p.add_argument("--items", type=int, default=1_000_000, help="two_tower_item items (default: %(default)s)")
    p.add_argument("--spark-master", default="local[2]", help="master for the spark rows (default: %(default)s)")
    p.add_argument("--no-spark", action="store_true", help="skip the Spark engine")
    p.add_argument("--workdir", default=None, help="where to write data and outputs (default: a temporary directory)")
    p.add_argument("--keep-data", action="store_true", help="keep the generated data and outputs")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


@dataclass
class Row:
    model: str
    rows: int
    engine: str
    seconds: float
    peak_mb: float = 0.0
    note: str = ""
    cpu_seconds: float = 0.0  # user + system CPU of the whole process tree (sampled every 0.1 s)
    fixed_seconds: float = 0.0  # the same command on a 100-row input: interpreter, imports, JVM, job set-up
    fixed_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_net(self) -> float:
        """Rows/s once the fixed cost (measured on a 100-row input) is taken away."""
        busy = self.seconds - self.fixed_seconds
        return self.rows / busy if busy > 0 else 0.0

    @property
    def cpu_net(self) -> float:
        return max(0.0, self.cpu_seconds - self.fixed_cpu)


# ---------------------------------------------------------------------------------------------- data
KEY = "row_id"  # a unique int64 key added to every generated file: the --keep column (and the index id)


def latest_version(artifacts: Path, model: str) -> Path:
    """The latest version directory of ``model`` (the version rule of :mod:`exporter.runtime.rules`)."""
    versions = rules.version_dirs(artifacts / model)
    if not versions:
        raise ExporterError(f"no version of {model!r} under {str(artifacts)!r}; export it first")
    return versions[-1]


def latest_metadata(artifacts: Path, model: str) -> dict[str, Any]:
    """The checked metadata.json of a model's latest version."""
    path = latest_version(artifacts, model)
    try:
        return rules.read_metadata(path)
    except rules.MetadataError as exc:
        raise ExporterError(str(exc)) from None


def model_columns(artifacts: Path, model: str) -> list[str]:
    """The feature columns of a model's latest version, as its metadata lists them."""
    return list(latest_metadata(artifacts, model)["feature_columns"])


def write_rows(path: Path, columns: list[str], rows: int, seed: int) -> None:
    """``rows`` rows of ``columns`` from the built-in synthetic log plus a unique :data:`KEY`, chunk by chunk.

    Cells the synthetic log leaves empty are filled with the column's first value, so every row is
    scoreable and the benchmark measures scoring, not rejects.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from exporter.training.data import synthetic_dataset

    writer = None
    try:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            table = pa.Table.from_pandas(synthetic_dataset(n, seed + start)[columns], preserve_index=False)
            for i, name in enumerate(table.column_names):
                column = table.column(i)
                if column.null_count:
                    table = table.set_column(i, name, pc.fill_null(column, pc.drop_null(column)[0]))
            if KEY not in columns:
                table = table.add_column(0, KEY, pa.array(np.arange(start, start + n, dtype=np.int64)))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema), row_group_size=256 * 1024)
    finally:
        if writer is not None:
            writer.close()


# ---------------------------------------------------------------------------------------------- measuring
def _tree(root: int) -> tuple[int, dict[int, float]]:
    """Resident memory (KiB) of ``root`` and all its descendants, and each one's CPU seconds so far (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = pages * page_kb
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    total, seen, stack = 0, {}, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        seen[pid] = cpu.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total, seen


def run_score(args: list[str], rows: int, model: str, engine: str, note: str = "") -> Row:
    """One ``python -m exporter score`` child process: wall time, start-up time, peak tree RSS."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "score", *args, "--json", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    peak = 0
    cpu: dict[int, float] = {}  # last CPU seconds seen per process of the tree
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.1):
            rss, seen = _tree(proc.pid)
            peak = max(peak, rss)
            for pid, value in seen.items():
                cpu[pid] = max(cpu.get(pid, 0.0), value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise ExporterError(f"score {model} --engine {engine} failed (exit {proc.returncode}): {err.strip()[-500:]}")
    json.loads(out)  # the command's JSON summary: it ran to the end
    return Row(model, rows, engine, seconds, peak / 1024, note, cpu_seconds=sum(cpu.values()))


def raw_ort(artifacts: Path, model: str, data: Path, rows: int) -> Row:
    """Raw onnxruntime over the rows in memory: the better of 1 and all intra-op threads."""
    import onnxruntime as ort
    import pyarrow.parquet as pq

    version_dir = latest_version(artifacts, model)
    meta = latest_metadata(artifacts, model)
    # the FP64 matrix the graph takes, built outside the timing by the scoring encoder (vocabularies included)
    matrix = encode_batch(
        pq.read_table(data, columns=meta["feature_columns"]), plan_from_metadata(meta, version_dir)
    ).matrix
    if matrix.shape[0] != rows:
        raise ExporterError(
            f"{data}: {rows - matrix.shape[0]} generated rows are not scoreable; the benchmark needs clean rows"
        )
    best, best_threads, best_cpu = float("inf"), 1, 0.0
    for threads in sorted({1, default_threads()}):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(version_dir / meta["model_file"]), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        session.run(None, {name: matrix[:RUN_ROWS]})
        t, c = time.perf_counter(), time.process_time()
        for i in range(0, rows, RUN_ROWS):
            session.run(None, {name: matrix[i : i + RUN_ROWS]})
        elapsed, used = time.perf_counter() - t, time.process_time() - c
        if elapsed < best:
            best, best_threads, best_cpu = elapsed, threads, used
    del matrix
    return Row(
        model,
        rows,
        "raw",
        best,
        0.0,
        f"session.run, {best_threads} intra-op thread(s), data in memory",
        cpu_seconds=best_cpu,
    )


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu or platform.processor()}), {mem:.0f} GiB RAM, Python {platform.python_version()}"
    )


def format_table(rows: list[Row], raw: dict[tuple[str, int], Row]) -> str:
    head = (
        "| model | rows | engine | seconds | rows/s | fixed s | rows/s net | x raw (net) | CPU s | CPU s net | "
        "x raw CPU (net) | peak RSS MiB | note |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        base = raw.get((r.model, r.rows)) if r.engine != "raw" else None
        ratio = f"{base.rate / r.rate_net:.2f}" if base is not None and r.rate_net else ""
        cpu_ratio = f"{r.cpu_net / base.cpu_seconds:.2f}" if base is not None and base.cpu_seconds else ""
        lines.append(
            f"| {r.model} | {r.rows:,} | {r.engine} | {r.seconds:.1f} | {r.rate:,.0f} | {r.fixed_seconds:.1f} | "
            # a run shorter than the fixed cost measured at another moment (a shared machine): no net figure
            f"{f'{r.rate_net:,.0f}' if r.rate_net else 'n/a'} | {ratio} | {r.cpu_seconds:.1f} | {r.cpu_net:.1f} | "
            f"{cpu_ratio} | {r.peak_mb:,.0f} | "
            f"{r.note} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    artifacts = Path(args.artifacts)
    for model in ("deepfm", "two_tower_item", "two_tower"):
        if not (artifacts / model).is_dir():
            raise ExporterError(f"no {model} in {str(artifacts)!r}; run `python -m exporter export all` first")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="exporter-score-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    load_before = os.getloadavg()
    started = datetime.now(UTC)
    rows_out: list[Row] = []
    raw: dict[tuple[str, int], Row] = {}
    index_info: dict[str, Any] | None = None
    try:
        sizes = sorted({args.small_rows, args.rows})
        deepfm_columns = model_columns(artifacts, "deepfm")
        plan: list[tuple[str, int, Path]] = []
        for n in sizes:
            path = work / f"deepfm-{n}.parquet"
            print(f"generating {n:,} deepfm rows -> {path}", file=sys.stderr, flush=True)
            write_rows(path, deepfm_columns, n, 1)
            plan.append(("deepfm", n, path))
        items = work / f"items-{args.items}.parquet"
        print(f"generating {args.items:,} items -> {items}", file=sys.stderr, flush=True)
        write_rows(items, model_columns(artifacts, "two_tower_item"), args.items, 2)
        users = work / "users.parquet"
        write_rows(users, model_columns(artifacts, "two_tower"), 20_000, 3)
        plan.append(("two_tower_item", args.items, items))
        tiny = work / "deepfm-100.parquet"
        write_rows(tiny, deepfm_columns, 100, 4)

        # fixed cost of each engine: the same command on 100 rows (interpreter, imports, model load, JVM, job set-up)
        fixed: dict[str, Row] = {}
        engines = ["local"] + ([] if args.no_spark else [f"spark {args.spark_master}"])
        for engine in engines:
            print(f"fixed cost of --engine {engine}: 100 rows", file=sys.stderr, flush=True)
            out = work / f"out-fixed-{engine.split()[0]}"
            extra = ["--engine", "spark", "--master", args.spark_master] if engine != "local" else []
            fixed[engine] = run_score(
                [
                    "deepfm",
                    "--artifacts",
                    str(artifacts),
                    "--input",
                    str(tiny),
                    "--keep",
                    KEY,
                    "--output",
                    str(out),
                    *extra,
                ],
                100,
                "deepfm",
                engine,
            )
            shutil.rmtree(out, ignore_errors=True)

        def with_fixed(row: Row, engine: str) -> Row:
            row.fixed_seconds, row.fixed_cpu = fixed[engine].seconds, fixed[engine].cpu_seconds
            return row

        for model, n, path in plan:
            print(f"{model} {n:,} rows: raw onnxruntime", file=sys.stderr, flush=True)
            r = raw_ort(artifacts, model, path, n)
            raw[(model, n)] = r
            rows_out.append(r)
            common = [model, "--artifacts", str(artifacts), "--input", str(path), "--keep", KEY]
            print(f"{model} {n:,} rows: --engine local", file=sys.stderr, flush=True)
            out = work / f"out-{model}-{n}-local"
            rows_out.append(with_fixed(run_score([*common, "--output", str(out)], n, model, "local"), "local"))
            shutil.rmtree(out, ignore_errors=True)
            if not args.no_spark:
                print(f"{model} {n:,} rows: --engine spark --master {args.spark_master}", file=sys.stderr, flush=True)
                out = work / f"out-{model}-{n}-spark"
                engine = f"spark {args.spark_master}"
                rows_out.append(
                    with_fixed(
                        run_score(
                            [*common, "--output", str(out), "--engine", "spark", "--master", args.spark_master],
                            n,
                            model,
                            engine,
                        ),
                        engine,
                    )
                )
                shutil.rmtree(out, ignore_errors=True)
        print(f"two_tower_item {args.items:,} items: --engine local --index", file=sys.stderr, flush=True)
        out = work / "out-index"
        r = run_score(
            [
                "two_tower_item",
                "--artifacts",
                str(artifacts),
                "--input",
                str(items),
                "--keep",
                KEY,
                "--output",
                str(out),
                "--index",
                "--index-users",
                str(users),
            ],
            args.items,
            "two_tower_item",
            "local + --index",
        )
        with_fixed(r, "local")
        index_info = json.loads((out / "_index" / "index.json").read_text())
        r.note = (
            f"{index_info['type']}, nprobe {index_info['search_value']}, recall@50 {index_info['recall']:.4f} "
            f"on {index_info['queries']} users; index built in {index_info['build_seconds']:.1f}s"
        )
        rows_out.append(r)
    finally:
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"\nscore-bench {started.isoformat(timespec='seconds')} on {machine()}")
    print(
        f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}\n"
    )
    print(format_table(rows_out, raw))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started.isoformat(timespec="seconds"),
                    "machine": machine(),
                    "load_before": load_before,
                    "load_after": load_after,
                    "rows": [
                        {**r.__dict__, "rows_per_s": r.rate, "rows_per_s_net": r.rate_net, "cpu_net": r.cpu_net}
                        for r in rows_out
                    ],
                    "index": index_info,
                },
                indent=2,
            )
            + "\n"
        )
    return 0
