"""``python -m exporter score-bench``: the CLI of :mod:`exporter.scoring.bench` (local and Spark scoring vs raw ORT)."""

from __future__ import annotations

from exporter.scoring.bench import DESCRIPTION, HELP, add_arguments, run

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]
