"""``bench peers``' output: one row per server (medians over the rounds), the same-run ratios, the targets.

A ratio is ours' requests/s over a peer's, taken round by round (both loaded in the same round, minutes apart at
most) and then the median of those: a change of machine load between rounds moves both sides of each ratio.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from exporter.tools.bench_results import HttpResult

#: the product claim: ``serve`` (--workers 1) answers at least this many times the requests/s of each peer named
#: in :data:`CLAIM_PEERS`, at batch 1, with a p99 latency of at most ``p99_ms``
TARGETS = {"ratio": 4.0, "p99_ms": 5.0}
#: the peers the claim is made against (the floor is a reference, not a competitor)
CLAIM_PEERS = {"torchserve": "TorchServe", "kserve": "KServe's Python server"}
#: the rows ratios are taken from: ours with one worker (the claim), and with its default worker count
OURS, OURS_AUTO = "ours", "ours auto"


@dataclass
class PeerRow:
    """One server: its label, its load runs (one per round), or why it did not run."""

    name: str
    label: str
    runs: list[HttpResult] = field(default_factory=list)
    note: str = ""

    def median(self, attr: str) -> float | None:
        """The median over rounds of one measured value (None when no round measured it)."""
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def requests(self) -> int:
        return sum(r.total for r in self.runs)


def ratio(ours: PeerRow | None, other: PeerRow | None) -> float | None:
    """Median over rounds of ours' requests/s divided by ``other``'s in the same round."""
    if ours is None or other is None:
        return None
    pairs = [(a.requests_per_s, b.requests_per_s) for a, b in zip(ours.runs, other.runs, strict=False)]
    ratios = [a / b for a, b in pairs if b > 0]
    return statistics.median(ratios) if ratios else None


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render(rows: list[PeerRow], generator: str, clients: int, seconds: float, rounds: int) -> str:
    """The table as Markdown: one row per server, medians over ``rounds``, and ours' same-run ratios."""
    by_name = {r.name: r for r in rows}
    ours, auto = by_name.get(OURS), by_name.get(OURS_AUTO)
    lines = [
        f"HTTP on loopback, batch 1, {clients} connections, {seconds:g} s per run, median of {rounds} round"
        f"{'s' if rounds != 1 else ''}, load generator: {generator} (on this machine, sharing its cores)",
        "",
        "| server | runs as | requests/s | p50 ms | p99 ms | errors | server CPU us/request "
        "| ours --workers 1 vs this | ours --workers auto vs this |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not r.runs:
            lines.append(f"| {r.name} | {r.label} | not run: {r.note} | | | | | | |")
            continue
        lines.append(
            f"| {r.name} | {r.label} | {_num(r.median('requests_per_s'), 0)} | {_num(r.median('p50_ms'), 2)} "
            f"| {_num(r.median('p99_ms'), 2)} | {r.errors} | {_num(r.median('server_cpu_us'), 1)} "
            f"| {_ratio(ratio(ours, r))} | {_ratio(ratio(auto, r))} |"
        )
    return "\n".join(lines)


def targets(rows: list[PeerRow]) -> list[str]:
    """The claim's lines, each ``[met]``, ``[MISSED]`` or ``[n/a]`` (a side that did not run)."""
    by_name = {r.name: r for r in rows if r.runs}
    notes = {r.name: r.note for r in rows if not r.runs}
    ours, auto = by_name.get(OURS), by_name.get(OURS_AUTO)
    goal = TARGETS["ratio"]
    out = []
    for name, title in CLAIM_PEERS.items():
        if name not in by_name and name not in notes:
            continue  # not asked for
        value = ratio(ours, by_name.get(name))
        if value is None:
            why = f"{title} not run: {notes[name]}" if name in notes else "ours (--workers 1) not run"
            out.append(f"[n/a] ours vs {title}: {why}")
            continue
        extra = f"; --workers auto: {ratio(auto, by_name[name]):.2f}x" if ratio(auto, by_name[name]) else ""
        out.append(
            f"[{'met' if value >= goal else 'MISSED'}] ours (serve --workers 1) answers {value:.2f}x the requests/s "
            f"of {title} at batch 1 (target >= {goal:g}x{extra})"
        )
    if ours is not None:
        p99 = ours.median("p99_ms")
        ok = p99 is not None and p99 <= TARGETS["p99_ms"] and ours.errors == 0
        out.append(
            f"[{'met' if ok else 'MISSED'}] ours (serve --workers 1) p99 {_num(p99, 2)} ms with {ours.errors} errors "
            f"at batch 1 (target p99 <= {TARGETS['p99_ms']:g} ms, no errors)"
        )
    elif OURS in notes:
        out.append(f"[n/a] ours (serve --workers 1) p99: not run: {notes[OURS]}")
    return out
