"""pytest set-up for the whole checkout, kept here so that ``notebooks/`` holds only the notebooks.

nbval runs of the notebooks (``python -m pytest`` or ``python -m pytest --nbval-lax notebooks/``) export into a
temporary directory: the notebooks' default ``artifacts_dir`` honours ``EXPORTER_ARTIFACTS_DIR``, nbval starts
each kernel with this process's environment, so setting it here, before any kernel starts, keeps test runs out
of the repository's ``artifacts/``. A value set by the caller (e.g. CI) is respected. The shared fixtures of
the unit tests live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_ENV = "EXPORTER_ARTIFACTS_DIR"
_created: list[str] = []


def pytest_configure(config) -> None:  # noqa: ANN001 - pytest hook
    # exports in tests are not tracked (each would open an MLflow store beside its temporary tree and pay for
    # it); tests/tracking turns tracking on for the exports it checks
    os.environ.setdefault("EXPORTER_TRACKING", "off")
    if not os.environ.get(_ENV):
        path = tempfile.mkdtemp(prefix="nbval-artifacts-")
        _created.append(path)
        os.environ[_ENV] = path


def pytest_unconfigure(config) -> None:  # noqa: ANN001 - pytest hook
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(_ENV) == path:
            del os.environ[_ENV]
    _created.clear()


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 - pytest hook
    """nbval items run whole notebooks in kernels: they belong to the slow set."""
    import pytest

    for item in items:
        if str(getattr(item, "path", "")).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
