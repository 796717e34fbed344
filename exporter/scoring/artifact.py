"""The artifact a scoring job reads: ``MODEL[/VERSION]`` -> a version directory, its checked metadata, its handler.

Both the job (:mod:`exporter.scoring.job`) and the item index (:mod:`exporter.scoring.index`, which loads the
related user tower) resolve artifacts here, with the version rule and the metadata reader of
:mod:`exporter.runtime.rules`, so a directory such as ``01`` or ``²`` beside the versions is ignored the same
way the server and ``verify`` ignore it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.export.tree import require_tree
from exporter.runtime import rules
from exporter.runtime.handler import ArtifactError, ModelHandler
from exporter.scoring.encode import EncodingPlan, plan_from_metadata

__all__ = ["Artifact", "resolve_artifact", "resolve_version", "load_handler", "encoding_plan"]


@dataclass(frozen=True)
class Artifact:
    """One version directory and its ``metadata.json``, read and checked by :func:`rules.read_metadata`."""

    path: Path
    metadata: dict[str, Any]


def _models_in(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / rules.CONFIG_FILE).exists())


def resolve_artifact(model: str, artifacts: str | os.PathLike[str]) -> Path:
    """``MODEL`` (latest version) or ``MODEL/VERSION`` under the artifacts root -> its version directory."""
    root = Path(artifacts)
    require_tree(root)
    name, _, version = model.partition("/")
    if not name or (version and not rules.is_version_name(version)):
        raise ExporterError(f"model {model!r}: expected MODEL or MODEL/VERSION with a positive integer version")
    model_dir = root / name
    if not model_dir.is_dir():
        available = _models_in(root)
        raise ExporterError(
            f"no model {name!r} in {str(root)!r}"
            + (f"; models there: {', '.join(available)}" if available else " (no models there; pass --artifacts DIR)")
        )
    have = rules.version_dirs(model_dir)
    if version:
        path = model_dir / version
        if not path.is_dir():
            names = ", ".join(p.name for p in have)
            raise ExporterError(f"model {name!r} has no version {version} (versions: {names or 'none'})")
        return path
    if not have:
        raise ExporterError(
            f"cannot score with {str(model_dir)!r}: it holds no version directory (1, 2, ...); export the model first"
        )
    return have[-1]


def resolve_version(model: str, artifacts: str | os.PathLike[str]) -> Artifact:
    """:func:`resolve_artifact` plus the version's checked metadata (a bad file fails before any work)."""
    path = resolve_artifact(model, artifacts)
    try:
        return Artifact(path, rules.read_metadata(path))
    except rules.MetadataError as exc:
        raise ExporterError(f"cannot score with {str(path)!r}: {exc}") from None


def load_handler(path: Path, threads: int = 1) -> ModelHandler:
    """The artifact as the handler loads it: metadata checked, sha256 verified before the session exists."""
    try:
        return ModelHandler.load(path, threads=threads)
    except ArtifactError as exc:
        raise ExporterError(f"cannot score with {str(path)!r}: {exc.message}") from None


def encoding_plan(handler: Any) -> EncodingPlan:
    """The scoring encoder of a loaded artifact (its ``features`` and vocabulary)."""
    try:
        return plan_from_metadata(handler.metadata, handler.directory)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExporterError(f"{str(handler.directory)!r}: feature metadata is unusable for scoring ({exc})") from None
