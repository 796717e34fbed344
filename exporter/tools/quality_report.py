"""The quality benchmark's output: one :class:`Row` per model and metric judged against its target, the Markdown
table, the targets summary and where the table was measured."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import numpy as np

#: (row model, metric) -> (comparison, threshold); "baseline" compares with the row's baseline value,
#: "baseline-0.03" with that value less 0.03
TARGETS: dict[tuple[str, str], tuple[str, float | str]] = {
    ("xgb baseline", "AUC"): (">=", 0.77),
    ("xgb", "AUC"): (">=", 0.775),
    ("deepfm", "AUC"): (">=", 0.795),
    ("mmoe", "AUC (liked head)"): (">=", 0.80),
    ("mmoe", "RMSE (rating head)"): ("<", "baseline"),
    ("deepfm (336 rows)", "AUC"): (">=", "baseline-0.03"),
    ("two_tower", "recall@10"): (">=", 0.17),
    ("two_tower", "recall@50"): (">=", 0.60),
    ("two_tower", "ndcg@10"): (">", "baseline"),
    ("two_tower", "ndcg@50"): (">", "baseline"),
    ("deepfm + history", "AUC"): (">=", 0.81),
    ("deepfm tuned", "AUC"): (">", "baseline"),
    ("two_tower + history", "recall@50"): (">=", 0.65),
    ("two_tower + history", "ndcg@10"): (">", "baseline"),
    ("two_tower + history", "ndcg@50"): (">", "baseline"),
}


@dataclass
class Row:
    """One line of the table: a model's metric, the same-run baseline beside it, and the target."""

    model: str
    metric: str
    value: float
    baseline_name: str = ""
    baseline: float | None = None
    seconds: float | None = None
    note: str = ""
    target: str = field(init=False, default="")
    #: the number the target compares with (a fixed threshold or the baseline's value)
    target_value: float | None = field(init=False, default=None)
    met: bool | None = field(init=False, default=None)
    #: False on the --quick synthetic table: the targets are about MovieLens
    judge: InitVar[bool] = True

    def __post_init__(self, judge: bool) -> None:
        rule = TARGETS.get((self.model, self.metric))
        if rule is None or not judge:
            return
        op, threshold = rule
        if isinstance(threshold, str) and threshold.startswith("baseline"):
            offset = float(threshold[len("baseline") :] or 0.0)
            self.target = f"{op} {self.baseline_name or 'baseline'}" + (f" - {-offset:g}" if offset else "")
            self.target_value = None if self.baseline is None else self.baseline + offset
        else:
            self.target, self.target_value = f"{op} {threshold:g}", float(threshold)
        ref = self.target_value
        if ref is None or not np.isfinite(self.value):
            return
        self.met = bool(self.value >= ref if op == ">=" else self.value > ref if op == ">" else self.value < ref)


def _fmt(value: float | None) -> str:
    return "" if value is None else ("n/a" if not np.isfinite(value) else f"{value:.4f}")


def render(rows: Sequence[Row]) -> str:
    """A Markdown table (pasteable into the README): value, same-run baseline, target, status, seconds."""
    header = ["model", "metric", "value", "baseline (same run)", "target", "status", "seconds", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        base = f"{r.baseline_name} {_fmt(r.baseline)}" if r.baseline_name else ""
        status = "" if r.met is None else ("met" if r.met else "MISSED")
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        cells = [r.model, r.metric, _fmt(r.value), base, r.target, status, seconds, r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(source: str = "") -> list[str]:
    """Where and when the table was measured: machine, date, versions, data."""
    import numpy
    import onnxruntime
    import torch
    import xgboost

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    lines = [
        f"date: {_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()}"
        + (f", exporter commit {commit}" if commit else ""),
        f"machine: {_cpu_model()}, {os.cpu_count()} cores ({usable} usable), load average {load}",
        f"software: Python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), xgboost {xgboost.__version__}, onnxruntime {onnxruntime.__version__}",
    ]
    if source:
        lines.append(f"data: {source}")
    return lines


def targets_summary(rows: Sequence[Row]) -> list[str]:
    """One line per row with a target: met or MISSED, and by how much."""
    out = []
    for r in rows:
        if not r.target:
            continue
        status = "n/a" if r.met is None else "met" if r.met else "MISSED"
        gap = ""
        if r.met is False and r.target_value is not None:
            gap = f" (off by {abs(r.target_value - r.value):.4f}: {_fmt(r.target_value)})"
        out.append(f"[{status}] {r.model} {r.metric} = {_fmt(r.value)}, target {r.target}{gap}")
    return out
