"""The artifacts root a command is pointed at (``--artifacts``): one check, one message, for every command."""

from __future__ import annotations

import os
from pathlib import Path

from exporter.errors import ExporterError


def require_tree(artifacts: Path, option: str = "--artifacts") -> None:
    """Refuse (exit 2) an artifacts root that is missing or not a directory, saying which and what is expected."""
    if artifacts.is_dir():
        return
    if not os.path.lexists(artifacts):
        what = "does not exist"
    elif artifacts.is_symlink() and not artifacts.exists():
        what = "is a broken symbolic link"
    elif artifacts.is_file():
        what = "is a file, not a directory"
    else:
        what = "is not a directory"
    raise ExporterError(
        f"{option} {str(artifacts)!r} {what}; expected the artifacts tree (<model_name>/<version>/) written by "
        "python -m exporter export (export a model first, or pass the tree's directory)"
    )
