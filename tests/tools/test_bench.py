"""``python -m exporter bench`` runs end to end and prints its tables (no timing is asserted: tables are the result)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.errors import ExporterError
from exporter.tools.serve_bench import parse_wrk
from tests.handler_fixtures import REPO, build_tree

pytestmark = pytest.mark.slow

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080/predictions/xgb
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   573.59us  258.88us   5.34ms   91.77%
    Req/Sec     7.19k   308.76     8.20k    71.00%
  Latency Distribution
     50%  559.00us
     75%  583.00us
     90%  617.00us
     99%    1.37ms
  71566 requests in 10.00s, 7.30MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   7156.60
Transfer/sec:      1.46MB
"""


def test_wrk_report_is_parsed() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests_per_s == pytest.approx(7156.6)
    assert result.p50_ms == pytest.approx(0.559) and result.p99_ms == pytest.approx(1.37)
    assert result.errors == 3 and result.total == 71566


def test_a_wrk_report_without_its_numbers_is_an_error_naming_what_is_missing() -> None:
    cut = WRK_OUTPUT.replace("     99%    1.37ms\n", "")
    with pytest.raises(ExporterError, match=r"nothing matches .*99%"):
        parse_wrk(cut)


@pytest.mark.parametrize("generator", ["python", "wrk"])
def test_bench_prints_tables_and_targets(tmp_path: Path, generator: str) -> None:
    if generator == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    artifacts = build_tree(tmp_path / "artifacts")
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "bench",
            "--artifacts",
            str(artifacts),
            "--models",
            "xgb",
            "two_tower",
            "--batch-sizes",
            "1",
            "4",
            "--http-seconds",
            "1",
            "--clients",
            "2",
            "--http-models",
            "xgb",
            "--load-generator",
            generator,
            "--min-time",
            "0.01",
            "--json",
            str(out_json),
            "--http-log",
            "both",
            *(["--http-scaling"] if generator == "python" else []),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| model | batch | native rows/s | ORT rows/s |" in out
    for model, batch in (("xgb", 1), ("xgb", 4), ("two_tower", 1), ("two_tower", 4)):
        assert f"| {model} | {batch} | n/a |" in out  # hand-built artifacts have no native model files
    assert "| model | request log | requests/s | p50 ms | p99 ms | server CPU us/request | errors | requests |" in out
    assert "xgb over HTTP (request log on):" in out and "xgb over HTTP (request log off):" in out
    assert "xgb over HTTP: per-request log line costs" in out
    assert "[n/a] xgb: native model not available" in out
    report = json.loads(out_json.read_text())
    assert len(report["cells"]) == 4 and all(c["binary_s"] > 0 for c in report["cells"])
    assert [(h["model"], h["logging"]) for h in report["http"]] == [("xgb", "on"), ("xgb", "off")]
    assert all(h["errors"] == 0 and h["total"] > 0 and h["server_cpu_us"] > 0 for h in report["http"])
    if generator == "python":  # the scaling rows: --workers 1 and 2, metrics on and off, batch 1 and 1024
        runs = [(h["workers"], h["metrics"], h["batch"]) for h in report["scaling"]]
        assert sorted(runs) == sorted((w, m, b) for w in (1, 2) for m in ("on", "off") for b in (1, 1024))
        assert all(h["errors"] == 0 and h["total"] > 0 and h["server_cpu_us"] > 0 for h in report["scaling"])
        assert "| workers | metrics | batch | requests/s | rows/s |" in out
        assert "xgb over HTTP at batch 1024: --workers 2 answers" in out
        assert "xgb over HTTP at batch 1, --workers 2: metrics on answer" in out


def test_bench_rejects_unknown_models(tmp_path: Path) -> None:
    artifacts = build_tree(tmp_path / "artifacts")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "bench", "--artifacts", str(artifacts), "--models", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no exported model nope" in proc.stderr
