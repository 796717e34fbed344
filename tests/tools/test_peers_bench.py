"""``python -m exporter bench peers``: option errors, the table and target lines from made-up numbers, and short
real runs of every server (ours, KServe, the Starlette floor; TorchServe on its own)."""

from __future__ import annotations

import http.client
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import cli
from exporter.tools.bench_results import HttpResult
from exporter.tools.peer_servers import Sample, start_kserve, start_torchserve
from exporter.tools.peers_bench import check_answer, close, expected_answers
from exporter.tools.peers_report import PeerRow, ratio, render, targets
from exporter.tools.serve_load import load_once
from tests.handler_fixtures import REPO, build_tree


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree of tiny hand-built models (xgb, mmoe, two_tower): no training, each with its sample request."""
    return build_tree(tmp_path_factory.mktemp("peers") / "artifacts")


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "lightgbm"], "no exported model lightgbm under"),
        (["--peers", "ours,triton"], "--peers: unknown triton; expected some of ours, torchserve, kserve, starlette"),
        (["--peers", ","], "--peers: unknown (none)"),
        (["--seconds", "0"], "--seconds must be a positive number, got 0"),
        (["--seconds", "nan"], "--seconds must be a positive number, got nan"),
        (["--clients", "0"], "--clients and --rounds must be at least 1"),
        (["--rounds", "-1"], "--clients and --rounds must be at least 1"),
    ],
)
def test_option_mistakes_are_one_line_and_exit_2(
    artifacts: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["bench", "peers", "--artifacts", str(artifacts), *args])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.startswith("error: ") and message in captured.err, captured.err
    assert "# exporter bench peers" not in captured.out  # nothing started before the options were checked


def test_a_missing_artifacts_tree_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "peers", "--artifacts", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


# ---------------------------------------------------------------------------------------------- the report
def runs(*rates: float, p99: float = 1.0, errors: int = 0) -> list[HttpResult]:
    return [HttpResult("m", r, p99 / 2, p99, errors, "wrk", int(r), server_cpu_us=100.0) for r in rates]


def test_ratios_are_medians_of_same_round_ratios() -> None:
    ours = PeerRow("ours", "serve --workers 1", runs(1000, 3000, 2400))
    peer = PeerRow("torchserve", "TorchServe", runs(500, 1000, 1200))
    assert ratio(ours, peer) == pytest.approx(2.0)  # rounds: 2x, 3x, 2x (the medians' ratio would say 2.4x)
    assert ratio(ours, PeerRow("kserve", "KServe", note="not run")) is None
    assert ratio(None, peer) is None


def test_targets_say_met_and_missed_from_the_numbers() -> None:
    rows = [
        PeerRow("ours", "serve --workers 1", runs(10_000, 10_000, 10_000, p99=2.0)),
        PeerRow("ours auto", "serve --workers auto (2)", runs(16_000, 16_000, 16_000)),
        PeerRow("torchserve", "TorchServe", runs(2000, 2500, 2000)),  # 5x, 4x, 5x: met
        PeerRow("kserve", "KServe", runs(3000, 3000, 3000)),  # 3.33x: missed
        PeerRow("starlette", "floor", runs(20_000, 20_000, 20_000)),
    ]
    lines = targets(rows)
    assert lines == [
        "[met] ours (serve --workers 1) answers 5.00x the requests/s of TorchServe at batch 1 "
        "(target >= 4x; --workers auto: 8.00x)",
        "[MISSED] ours (serve --workers 1) answers 3.33x the requests/s of KServe's Python server at batch 1 "
        "(target >= 4x; --workers auto: 5.33x)",
        "[met] ours (serve --workers 1) p99 2.00 ms with 0 errors at batch 1 (target p99 <= 5 ms, no errors)",
    ]
    table = render(rows, "wrk", 8, 10, 3)
    assert "median of 3 rounds, load generator: wrk" in table
    assert "| torchserve | TorchServe | 2,000 | 0.50 | 1.00 | 0 | 100.0 | 5.00x | 8.00x |" in table
    assert "| starlette | floor | 20,000 |" in table and "| 0.50x | 0.80x |" in table


def test_a_slow_p99_errors_or_a_peer_not_run_are_not_met() -> None:
    slow = [PeerRow("ours", "serve --workers 1", runs(10_000, p99=5.01)), PeerRow("kserve", "KServe", runs(1000))]
    assert targets(slow)[-1].startswith("[MISSED] ours (serve --workers 1) p99 5.01 ms with 0 errors")
    failing = [PeerRow("ours", "serve --workers 1", runs(10_000, p99=1.0, errors=3))]
    assert targets(failing) == [
        "[MISSED] ours (serve --workers 1) p99 1.00 ms with 3 errors at batch 1 (target p99 <= 5 ms, no errors)"
    ]
    missing = [
        PeerRow("ours", "serve --workers 1", runs(10_000)),
        PeerRow("torchserve", "TorchServe", note="java is not installed (Java 11+ for its frontend)"),
    ]
    lines = targets(missing)
    assert lines[0] == "[n/a] ours vs TorchServe: TorchServe not run: java is not installed (Java 11+ for its frontend)"
    assert "| torchserve | TorchServe | not run: java is not installed" in render(missing, "wrk", 8, 10, 1)
    assert not any("KServe" in line for line in lines)  # not asked for: no line


def test_answers_compare_within_the_tolerance() -> None:
    want = {"predictions": [{"ctr": 0.25, "gmv": 1234.5}], "model_name": "m"}
    assert close({"predictions": [{"ctr": 0.25 + 1e-12, "gmv": 1234.5 + 1e-7}], "model_name": "m"}, want)
    assert not close({"predictions": [{"ctr": 0.25 + 1e-8, "gmv": 1234.5}], "model_name": "m"}, want)
    assert not close({"predictions": [{"ctr": 0.25}], "model_name": "m"}, want)
    assert not close({"predictions": [], "model_name": "m"}, want)
    assert not close({"predictions": [{"ctr": True, "gmv": 1234.5}], "model_name": "m"}, want)
    assert not close({"predictions": [{"ctr": math.nan, "gmv": 1234.5}], "model_name": "m"}, want)


# ---------------------------------------------------------------------------------------------- real runs
@pytest.mark.slow
def test_a_short_real_run_prints_a_row_per_server(artifacts: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "peers.json"
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "bench", "peers", "--artifacts", str(artifacts), "--model", "xgb",
         "--seconds", "1", "--rounds", "1", "--clients", "2", "--peers", "ours,starlette,kserve",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    first = out.splitlines()[0]
    assert first.startswith("# exporter bench peers: ") and "(load average " in first, first
    assert "| server | runs as | requests/s | p50 ms | p99 ms | errors | server CPU us/request |" in out
    for name in ("ours", "ours auto", "kserve", "starlette"):
        assert f"\n| {name} | " in out, out
    assert "torchserve" not in out.lower().split("| server |", 1)[1]  # not asked for
    assert "the requests/s of KServe's Python server at batch 1 (target >= 4x" in out
    assert "ours (serve --workers 1) p99 " in out and "load average at the end: " in out
    report = json.loads(out_json.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["ours", "ours auto", "starlette", "kserve"]  # in the order of --peers
    for name, row in rows.items():
        assert row["note"] == "", (name, row["note"])  # every server started and answered the sample right
        assert len(row["runs"]) == 1 and row["requests_per_s"] > 0 and row["errors"] == 0, (name, row)
        assert row["server_cpu_us"] > 0, (name, row)
    assert rows["ours"]["ours_ratio"] == pytest.approx(1.0)
    assert rows["kserve"]["label"].startswith("KServe 0.21.0 ModelServer, 1 worker")


@pytest.mark.slow
def test_kserve_peer_answers_like_the_handler_and_refuses_bad_rows_with_400(artifacts: Path) -> None:
    vdir = artifacts / "mmoe" / "1"
    sample = Sample.load("mmoe", vdir)
    server = start_kserve(sample)
    try:
        assert check_answer(server, expected_answers(sample)["kserve"]) is None
        wrong = {"predictions": [{"ctr": 0.0, "watch_time": 0.0, "gmv": 0.0}]}
        assert "where the handler gives" in (check_answer(server, wrong) or "")
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        bad = b'{"instances": [{"item_ctr": 0.1}]}'
        connection.request("POST", server.path, bad, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 400 and b"missing feature columns" in response.read()
        connection.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_torchserve_peer_serves_the_archive_under_load(artifacts: Path, tmp_path: Path) -> None:
    """The bench's TorchServe: the .mar of `archive`, default workers, quiet logs; right answer, then load."""
    sample = Sample.load("xgb", artifacts / "xgb" / "2")
    server = start_torchserve(artifacts, sample, tmp_path)
    try:
        assert server.label.startswith("TorchServe 0.12.0, ") and server.label.endswith(" workers")
        assert check_answer(server, expected_answers(sample)["torchserve"]) is None
        result = load_once(server.host, server.port, server.path, server.body, 1.0, 2, False, server.pid)
        assert result.requests_per_s > 0 and result.errors == 0 and result.server_cpu_us and result.server_cpu_us > 0
        assert not (tmp_path / "torchserve" / "logs" / "access_log.log").exists()  # quiet: no per-request lines
    finally:
        server.stop()
