"""Shared fixtures: a real artifacts tree with every model exported at small sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.models import get_spec, model_names

REPO = Path(__file__).resolve().parents[1]

#: Small but real: enough rows for held-out metrics, few epochs/trees so the suite stays fast.
SMALL_ROWS = 3000
#: every registered model with its spec's small test hyper-parameters
SMALL_HPARAMS = {name: dict(get_spec(name).test_hparams) for name in model_names()}


def export_small(model: str, artifacts: Path, **overrides):
    from exporter.export import pipeline

    params = pipeline.ExportParams(
        model=model,
        rows=SMALL_ROWS,
        seed=7,
        hparams=SMALL_HPARAMS[model],
        artifacts=artifacts,
        progress=False,
    )
    for key, value in overrides.items():
        setattr(params, key, value)
    return pipeline.run(params)


@pytest.fixture(scope="session")
def exported_runs(tmp_path_factory):
    """model -> RunResult, all exported into one artifacts tree (xgb, deepfm, mmoe, two_tower[_item])."""
    root = tmp_path_factory.mktemp("artifacts")
    return root, {m: export_small(m, root) for m in SMALL_HPARAMS}


@pytest.fixture(scope="session")
def exported_artifacts(exported_runs) -> Path:
    """Path of an artifacts tree holding all five exported models at small sizes (do not modify it)."""
    return exported_runs[0]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m exporter ARGS`` in a child process, as a user or CI job runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
