"""``python -m exporter bench``'s output: the Markdown tables, the speed targets met or missed, the environment."""

from __future__ import annotations

import os
import sys

from exporter.tools.bench_results import Results

TARGETS = {
    "v2_at_1024": 1.5,
    "binary_at_1024": 1.5,
    "log_cost": 0.15,
    "torchserve_at_1024": 3.0,
    "http_rps": 3000.0,
    "http_p99_ms": 5.0,
    "workers_at_1": 1.4,
    "workers_at_1024": 1.6,
    "metrics_on_off": 0.95,
}


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100_000:
        return f"{value / 1e6:.2f}M"
    if value >= 1000:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def render(results: Results) -> str:
    """The tables as Markdown."""
    lines = [
        "| model | batch | native rows/s | ORT rows/s | ORT vs native | TorchServe body rows/s (x ORT) "
        "| v2 body rows/s (x ORT) | v2 binary rows/s (x ORT) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results.cells:
        speedup = f"{c.native_s / c.ort_s:.1f}x faster" if c.native_s is not None else "n/a"
        if c.native_s is not None and c.native_s < c.ort_s:
            speedup = f"{c.ort_s / c.native_s:.1f}x slower"
        lines.append(
            f"| {c.model} | {c.batch} | {_fmt_rate(c.rows_per_s(c.native_s))} | {_fmt_rate(c.rows_per_s(c.ort_s))} | "
            f"{speedup} | {_fmt_rate(c.rows_per_s(c.torchserve_s))} ({c.torchserve_s / c.ort_s:.2f}x) | "
            f"{_fmt_rate(c.rows_per_s(c.v2_s))} ({c.v2_s / c.ort_s:.2f}x) | "
            + (f"{_fmt_rate(c.rows_per_s(c.binary_s))} ({c.binary_s / c.ort_s:.2f}x) |" if c.binary_s else "n/a |")
        )
    if results.http:
        lines += [
            "",
            f"HTTP on loopback, batch 1 (TorchServe body), load generator: {results.http[0].generator}",
            "",
            "| model | request log | requests/s | p50 ms | p99 ms | server CPU us/request | errors | requests |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for h in results.http:
            cpu = f"{h.server_cpu_us:.1f}" if h.server_cpu_us is not None else "n/a"
            lines.append(
                f"| {h.model} | {h.logging} | {h.requests_per_s:,.0f} | {h.p50_ms:.2f} | {h.p99_ms:.2f} | "
                f"{cpu} | {h.errors} | {h.total:,} |"
            )
    lines += _scaling_table(results)
    return "\n".join(lines)


def _scaling_table(results: Results) -> list[str]:
    """The ``--http-scaling`` rows: workers and metrics side by side."""
    if not results.scaling:
        return []
    first = results.scaling[0]
    lines = [
        "",
        f"HTTP scaling: {first.model}, TorchServe body, request log off, load generator: {first.generator} "
        "(on this machine, sharing its cores with the server)",
        "",
        "| workers | metrics | batch | requests/s | rows/s | p50 ms | p99 ms | server CPU us/request | errors "
        "| requests |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h in results.scaling:
        cpu = f"{h.server_cpu_us:.1f}" if h.server_cpu_us is not None else "n/a"
        lines.append(
            f"| {h.workers} | {h.metrics} | {h.batch} | {h.requests_per_s:,.0f} "
            f"| {_fmt_rate(h.requests_per_s * h.batch)} | {h.p50_ms:.2f} | {h.p99_ms:.2f} | {cpu} | {h.errors} "
            f"| {h.total:,} |"
        )
    return lines


def scaling_targets(results: Results) -> list[str]:
    """Same-run ratios of the scaling rows: N workers against 1, metrics on against off."""
    out = []
    runs = {(h.workers, h.metrics, h.batch): h for h in results.scaling}
    many = max((h.workers for h in results.scaling), default=1)
    for batch in sorted({h.batch for h in results.scaling}):
        one, more = runs.get((1, "on", batch)), runs.get((many, "on", batch))
        if one is not None and more is not None and one.requests_per_s > 0 and many > 1:
            ratio = more.requests_per_s / one.requests_per_s
            goal = TARGETS["workers_at_1024"] if batch >= 1024 else TARGETS["workers_at_1"]
            out.append(
                f"[{'met' if ratio >= goal else 'MISSED'}] {one.model} over HTTP at batch {batch}: --workers {many} "
                f"answers {ratio:.2f}x the requests/s of --workers 1 ({more.requests_per_s:,.0f} vs "
                f"{one.requests_per_s:,.0f}; target >= {goal}x; the load generator shares the cores)"
            )
        for workers in sorted({h.workers for h in results.scaling}):
            on, off = runs.get((workers, "on", batch)), runs.get((workers, "off", batch))
            if on is not None and off is not None and off.requests_per_s > 0:
                ratio = on.requests_per_s / off.requests_per_s
                goal = TARGETS["metrics_on_off"]
                out.append(
                    f"[{'met' if ratio >= goal else 'MISSED'}] {on.model} over HTTP at batch {batch}, --workers "
                    f"{workers}: metrics on answer {ratio:.2f}x the requests/s of metrics off "
                    f"({on.requests_per_s:,.0f} vs {off.requests_per_s:,.0f}; target >= {goal})"
                )
    return out


def targets(results: Results) -> list[str]:
    """The speed targets (:data:`TARGETS`), each marked met or missed with the measured value."""
    out = []
    big = [c for c in results.cells if c.batch == 1024]
    for c in big:
        v2, ts = c.v2_s / c.ort_s, c.torchserve_s / c.ort_s
        out.append(
            f"[{'met' if v2 <= TARGETS['v2_at_1024'] else 'MISSED'}] {c.model}: v2 body at batch 1024 is "
            f"{v2:.2f}x raw ORT (target <= {TARGETS['v2_at_1024']}x)"
        )
        out.append(
            f"[{'met' if ts <= TARGETS['torchserve_at_1024'] else 'MISSED'}] {c.model}: TorchServe body at batch "
            f"1024 is {ts:.2f}x raw ORT (target <= {TARGETS['torchserve_at_1024']}x)"
        )
        if c.binary_s is not None:
            b = c.binary_s / c.ort_s
            out.append(
                f"[{'met' if b <= TARGETS['binary_at_1024'] else 'MISSED'}] {c.model}: v2 binary at batch 1024 "
                f"is {b:.2f}x raw ORT (target <= {TARGETS['binary_at_1024']}x)"
            )
    for c in (c for c in results.cells if c.batch == 1):
        if c.native_s is None:
            out.append(f"[n/a] {c.model}: native model not available ({c.native_note})")
        else:
            ok = c.ort_s < c.native_s
            out.append(
                f"[{'met' if ok else 'MISSED'}] {c.model}: at batch 1 ORT takes {c.ort_s * 1e6:.1f} us, "
                f"native {c.native_s * 1e6:.1f} us (target: ORT faster)"
            )
    by_mode = {(h.model, h.logging): h for h in results.http}
    for model in sorted({h.model for h in results.http}):
        on, off = by_mode.get((model, "on")), by_mode.get((model, "off"))
        if on is not None and off is not None and off.requests_per_s > 0:
            cost = 1 - on.requests_per_s / off.requests_per_s
            cpu = ""
            if on.server_cpu_us is not None and off.server_cpu_us is not None:
                cpu = f"; server CPU {on.server_cpu_us:.1f} vs {off.server_cpu_us:.1f} us/request"
            out.append(
                f"[{'met' if cost <= TARGETS['log_cost'] else 'MISSED'}] {model} over HTTP: per-request log "
                f"line costs {cost:.1%} of req/s ({on.requests_per_s:,.0f} on vs {off.requests_per_s:,.0f} off{cpu}; "
                f"target <= {TARGETS['log_cost']:.0%})"
            )
    for h in results.http:
        if h.model == "xgb":
            ok = h.requests_per_s >= TARGETS["http_rps"] and h.p99_ms < TARGETS["http_p99_ms"] and h.errors == 0
            out.append(
                f"[{'met' if ok else 'MISSED'}] xgb over HTTP (request log {h.logging}): "
                f"{h.requests_per_s:,.0f} req/s, p99 {h.p99_ms:.2f} ms, "
                f"{h.errors} errors (target >= 3,000 req/s, p99 < 5 ms)"
            )
    return out + scaling_targets(results)


def environment() -> str:
    """The machine and library versions the tables were measured with."""
    import numpy as np
    import onnxruntime

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    parts = [
        f"{os.cpu_count()} CPUs (load average {load})",
        f"Python {sys.version.split()[0]}",
        f"onnxruntime {onnxruntime.__version__}",
        f"numpy {np.__version__}",
        f"ORT intra-op threads {os.environ.get('EXPORTER_ORT_THREADS', '1')}",
    ]
    try:
        import torch

        parts.append(
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"
        )
    except ImportError:
        pass
    try:
        import xgboost

        parts.append(f"xgboost {xgboost.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)
