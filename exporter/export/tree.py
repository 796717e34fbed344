"""The artifacts root a command is pointed at (``--artifacts``): one check, one message, for every command."""

from __future__ import annotations

import os
from pathlib import Path

from exporter.errors import ExporterError
from exporter.runtime.rules import version_dirs


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


def exported_models(artifacts: Path, wanted: list[str] | None = None) -> list[str]:
    """The models of the tree that have a version (after :func:`require_tree`), or ``wanted`` once each is found
    there; naming one that is not is an error listing what is."""
    require_tree(artifacts)
    found = sorted(p.name for p in artifacts.iterdir() if p.is_dir() and not p.name.startswith(".") and version_dirs(p))
    unknown = [m for m in wanted or [] if m not in found]
    if unknown:
        raise ExporterError(
            f"no exported model {', '.join(unknown)} under {str(artifacts)!r}; found: {', '.join(found) or 'none'}"
        )
    return list(wanted) if wanted else found
