"""``python -m exporter bench peers``: our ``serve`` beside TorchServe, KServe and a bare endpoint, same model.

Every server runs in its own process on a free loopback port, serving the same exported model version, and gets
the same load from the same generator: batch 1 (the sample request's first row), ``--clients`` keep-alive
connections, ``--seconds`` per run. Servers (:mod:`exporter.tools.peer_servers`):

  ours        python -m exporter serve --workers 1 --log-level warning, TorchServe body {"data": [row]}
  ours auto   the same with --workers at its default (one per usable core)
  torchserve  TorchServe 0.12 serving the .mar of `python -m exporter archive` (our handler inside TorchServe),
              its default workers per model (one per core), log4j at warnings only (no access or metric lines)
  kserve      KServe's Python ModelServer with a kserve.Model calling our handler (exporter.tools.peer_kserve),
              v1 protocol {"instances": [row]}, its defaults (1 worker) but on 127.0.0.1, gRPC off, logs
              at warnings only
  starlette   the floor: Starlette + uvicorn + onnxruntime on the already prepared float64 row
              {"inputs": [[...]]}, no conversion and no validation (exporter.tools.peer_starlette)

Each server must first answer the sample request with HTTP 200 and, except the floor, with the handler's own
prediction (within 1e-9; the floor: onnxruntime's output); a server that cannot start or answers otherwise gets
a row saying why it did not run. All servers are started first and stay up; after a one-second warm-up run each
(not counted), each round loads every server once, in an order rotated round by round, so a change of machine
load hits all alike. Reported: medians over ``--rounds`` of requests/s, p50, p99 and the server's CPU time per
request (its whole process tree), errors summed, and ours' requests/s over each server's, the median of the
same-round ratios. The targets at the end are the product claim: serve --workers 1 answers >= 4x the requests/s
of TorchServe and of KServe's Python server at batch 1, with p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.export.tree import exported_models
from exporter.runtime.rules import version_dirs
from exporter.tools.bench_report import environment
from exporter.tools.peer_servers import (
    PeerUnavailable,
    Running,
    Sample,
    start_kserve,
    start_ours,
    start_starlette,
    start_torchserve,
)
from exporter.tools.peers_report import PeerRow, ratio, render, targets
from exporter.tools.serve_load import load_once, wants_wrk

HELP = "ours vs TorchServe, KServe's Python server and a bare Starlette endpoint over HTTP at batch 1, same model"
DESCRIPTION = __doc__.split("\n\n", 1)[1] if __doc__ else ""
PEERS = ("ours", "torchserve", "kserve", "starlette")
#: what a server that did not start would have run as
LABELS = {
    "ours": "serve --workers 1",
    "ours auto": "serve --workers auto",
    "torchserve": "TorchServe",
    "kserve": "KServe ModelServer",
    "starlette": "Starlette + uvicorn + onnxruntime",
}
#: seconds of the uncounted first load of each server (JIT, caches, connection set-up)
WARM_UP_SECONDS = 1.0
#: how far a peer's prediction may be from the handler's
TOLERANCE = 1e-9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifacts tree (default: artifacts)")
    p.add_argument("--model", default="xgb", help="the exported model every server serves (default: xgb)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of each load run (default: 10)")
    p.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections (default: 8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of one load run per server (default: 3)")
    p.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated servers to run (default: {','.join(PEERS)})"
    )
    p.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="auto: wrk when installed, else the built-in asyncio client",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows and every run to this JSON file")


def check_options(args: argparse.Namespace) -> tuple[Path, list[str], bool]:
    """The model's version directory, the peers asked for and whether wrk is the generator; an
    :class:`ExporterError` for any mistake, before anything starts."""
    peers = [p.strip() for p in str(args.peers).split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        raise ExporterError(f"--peers: unknown {', '.join(unknown) or '(none)'}; expected some of {', '.join(PEERS)}")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise ExporterError(f"--seconds must be a positive number, got {args.seconds:g}")
    if args.clients < 1 or args.rounds < 1:
        raise ExporterError("--clients and --rounds must be at least 1")
    artifacts = Path(args.artifacts)
    exported_models(artifacts, [args.model])
    return version_dirs(artifacts / args.model)[-1], list(dict.fromkeys(peers)), wants_wrk(args.load_generator)


def close(got: Any, want: Any, tolerance: float = TOLERANCE) -> bool:
    """Whether two decoded JSON answers are the same, numbers within ``tolerance`` (relative above 1)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(close, got, want))
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        ok = isinstance(got, (int, float)) and not isinstance(got, bool)
        return ok and abs(got - want) <= tolerance * max(1.0, abs(want))
    return bool(got == want)


def check_answer(running: Running, want: Any) -> str | None:
    """None when the server answers its sample body with 200 and ``want``; else what it did instead."""
    connection = http.client.HTTPConnection(running.host, running.port, timeout=60)
    try:
        connection.request("POST", running.path, running.body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        return f"the sample request failed: {exc}"
    finally:
        connection.close()
    if response.status != 200:
        return f"answered the sample request with HTTP {response.status}: {body[:200].decode(errors='replace')}"
    try:
        got = json.loads(body)
    except ValueError:
        return f"answered the sample request with no JSON: {body[:200]!r}"
    if not close(got, want):
        return f"answered {json.dumps(got)[:200]} where the handler gives {json.dumps(want)[:200]}"
    return None


def expected_answers(sample: Sample) -> dict[str, Any]:
    """What each server must answer to its sample body: the handler's prediction; the floor, onnxruntime's."""
    import numpy as np

    from exporter.runtime.handler import ModelHandler

    handler = ModelHandler.load(sample.version_dir)
    prediction = handler.predict({"data": [sample.row]})
    floor = {"outputs": [handler.run(np.asarray([sample.features], dtype=np.float64)).tolist()]}
    return {"ours": prediction, "ours auto": prediction, "torchserve": prediction, "kserve": prediction,
            "starlette": floor}  # fmt: skip


def start_peers(args: argparse.Namespace, sample: Sample, peers: list[str], tmp: Path) -> list[Running | PeerRow]:
    """Start every peer asked for (ours twice: one worker, default workers), each checked against its answer; a
    :class:`PeerRow` with the reason for one that did not start or answered wrongly."""
    want = expected_answers(sample)
    starts = {
        "ours": lambda: start_ours(args.artifacts, sample, 1),
        "ours auto": lambda: start_ours(args.artifacts, sample, None),
        "torchserve": lambda: start_torchserve(args.artifacts, sample, tmp),
        "kserve": lambda: start_kserve(sample),
        "starlette": lambda: start_starlette(sample),
    }
    names = [n for p in peers for n in (("ours", "ours auto") if p == "ours" else (p,))]
    out: list[Running | PeerRow] = []
    for name in names:
        print(f"starting {name} ...", file=sys.stderr, flush=True)
        try:
            running = starts[name]()
        except PeerUnavailable as exc:
            out.append(PeerRow(name, LABELS[name], note=str(exc)))
            continue
        problem = check_answer(running, want[name])
        if problem is None:
            out.append(running)
        else:
            running.stop()
            out.append(PeerRow(name, running.label, note=problem))
    return out


def load_rounds(servers: list[Running], rows: dict[str, PeerRow], args: argparse.Namespace, use_wrk: bool) -> None:
    """A warm-up run per server, then ``--rounds`` rounds of one run each, the order rotated by round."""

    def load(server: Running, seconds: float) -> Any:
        return load_once(server.host, server.port, server.path, server.body, seconds, args.clients, use_wrk, server.pid)

    failed: set[str] = set()
    for server in servers:
        try:
            load(server, WARM_UP_SECONDS)
        except (ExporterError, OSError) as exc:
            rows[server.name].note, rows[server.name].runs = f"load failed: {exc}"[:300], []
            failed.add(server.name)
    for n in range(args.rounds):
        live = [s for s in servers if s.name not in failed]
        shift = n % len(live) if live else 0
        for server in live[shift:] + live[:shift]:
            print(f"round {n + 1}/{args.rounds}: {server.name} ...", file=sys.stderr, flush=True)
            try:
                result = load(server, args.seconds)
            except (ExporterError, OSError) as exc:
                rows[server.name].note, rows[server.name].runs = f"load failed: {exc}"[:300], []
                failed.add(server.name)
                continue
            result.model = server.name
            rows[server.name].runs.append(result)


def run(args: argparse.Namespace) -> int:
    vdir, peers, use_wrk = check_options(args)
    # as `bench` does: OpenMP threads of a peer's torch/xgboost wait passively instead of spinning
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(f"# exporter bench peers: {environment()}", flush=True)
    sample = Sample.load(args.model, vdir)
    with tempfile.TemporaryDirectory(prefix="exporter-bench-peers-") as tmp:
        started = start_peers(args, sample, peers, Path(tmp))
        servers = [s for s in started if isinstance(s, Running)]
        rows = [PeerRow(s.name, s.label) if isinstance(s, Running) else s for s in started]
        try:
            load_rounds(servers, {r.name: r for r in rows}, args, use_wrk)
        finally:
            for server in servers:
                server.stop()
    generator = "wrk" if use_wrk else "python asyncio"
    print()
    print(f"{args.model} ({vdir})")
    print(render(rows, generator, args.clients, args.seconds, args.rounds))
    print()
    lines = targets(rows)
    for line in lines:
        print(line)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average at the end: {load}")
    if args.json:
        args.json.write_text(json.dumps(report(rows, args, vdir, generator, lines), indent=2))
    return 0


def report(rows: list[PeerRow], args: argparse.Namespace, vdir: Path, generator: str, lines: list[str]) -> Any:
    """The ``--json`` document: options, every run of every row, the medians and ratios, the target lines."""
    by_name = {r.name: r for r in rows}
    return {
        "environment": environment(),
        "model": args.model,
        "version_dir": str(vdir),
        "options": {"seconds": args.seconds, "clients": args.clients, "rounds": args.rounds, "generator": generator},
        "rows": [
            {
                "name": r.name,
                "label": r.label,
                "note": r.note,
                "runs": [asdict(h) for h in r.runs],
                "requests_per_s": r.median("requests_per_s"),
                "p50_ms": r.median("p50_ms"),
                "p99_ms": r.median("p99_ms"),
                "server_cpu_us": r.median("server_cpu_us"),
                "errors": r.errors,
                "ours_ratio": ratio(by_name.get("ours"), r),
                "ours_auto_ratio": ratio(by_name.get("ours auto"), r),
            }
            for r in rows
        ],
        "targets": lines,
    }
