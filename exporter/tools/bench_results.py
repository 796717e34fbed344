"""What ``python -m exporter bench`` measures, as data: one model x batch size in process, one HTTP load run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Cell:
    """One model x batch size."""

    model: str
    batch: int
    native_s: float | None
    ort_s: float
    torchserve_s: float
    v2_s: float
    native_note: str = ""
    binary_s: float | None = None

    def rows_per_s(self, seconds: float | None) -> float | None:
        return None if seconds is None else self.batch / seconds


@dataclass
class HttpResult:
    model: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator: str
    total: int = 0
    logging: str = "on"
    #: the server's CPU time (user + system, all threads, every process of it) per request answered
    server_cpu_us: float | None = None
    #: ``serve --workers``, metrics on/off and rows per request of the run (the scaling rows vary them)
    workers: int = 1
    metrics: str = "on"
    batch: int = 1


@dataclass
class Results:
    cells: list[Cell] = field(default_factory=list)
    http: list[HttpResult] = field(default_factory=list)
    #: one model over HTTP with --workers 1 and N, metrics on and off, at batch 1 and 1024 (``--http-scaling``)
    scaling: list[HttpResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
