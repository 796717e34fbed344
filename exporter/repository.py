"""The artifact tree is a Triton model repository: ``<artifacts>/<model>/config.pbtxt`` + ``<version>/``.

Version directories are staged under a hidden name and renamed into place, so a reader (Triton, our
server, ``verify``) sees a version whole or not at all, and a failed export never touches a good one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

from exporter.contract import (  # noqa: F401  (re-exported: the artifact file names)
    CONFIG_FILE, METADATA_FILE, MODEL_FILE, REPORT_FILE, SAMPLE_REQUEST, SAMPLE_RESPONSE, STAGING_PREFIX, version_dirs,
)
from exporter.errors import ExporterError

#: string-category vocabularies beside the model (docs/features.md); metadata records its sha256
VOCAB_FILE = "vocab.json"


def versions(model_dir: Path) -> list[int]:
    """The committed versions of one model, ascending (staging and other entries are ignored)."""
    return [int(p.name) for p in version_dirs(model_dir)]


def next_version(artifacts: Path, model_names: Iterable[str]) -> int:
    """One past the highest version of any of ``model_names``: towers of one model share a version."""
    return 1 + max((max(versions(artifacts / n), default=0) for n in model_names), default=0)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step (write a temporary sibling, then rename over)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# config.pbtxt is written by exporter.triton (batching, warm-up); kserve.yaml by exporter.kserve.


class VersionWriter:
    """Stages several version directories (one per model name) and commits them together.

    Use as a context manager: leaving the block with an exception removes everything staged or
    committed by this writer, and model directories it created, so no half-written version survives.
    """

    def __init__(self, artifacts: Path, version: int, model_names: Sequence[str]) -> None:
        self.artifacts = artifacts
        self.version = version
        self.model_names = list(model_names)
        self.staged: dict[str, Path] = {}
        self.committed: list[Path] = []
        self.created_model_dirs: list[Path] = []

    def __enter__(self) -> "VersionWriter":
        for name in self.model_names:
            target = self.artifacts / name / str(self.version)
            if target.exists():
                raise ExporterError(
                    f"version {self.version} of '{name}' already exists at {target}; "
                    "choose another --version or omit it to use the next free one"
                )
        for name in self.model_names:
            model_dir = self.artifacts / name
            if not model_dir.exists():
                model_dir.mkdir(parents=True)
                self.created_model_dirs.append(model_dir)
            staging = model_dir / f"{STAGING_PREFIX}{self.version}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            self.staged[name] = staging
        return self

    def path(self, name: str) -> Path:
        return self.staged[name]

    def commit(self) -> dict[str, Path]:
        """Rename every staged directory into place; returns model name -> version directory."""
        out: dict[str, Path] = {}
        for name, staging in self.staged.items():
            target = self.artifacts / name / str(self.version)
            try:
                os.rename(staging, target)
            except OSError as exc:
                raise ExporterError(f"cannot move the new version into place at {target}: {exc}") from exc
            self.committed.append(target)
            out[name] = target
        self.staged = {}
        return out

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        for staging in self.staged.values():
            shutil.rmtree(staging, ignore_errors=True)
        if exc_type is not None:
            for path in self.committed:
                shutil.rmtree(path, ignore_errors=True)
            for model_dir in self.created_model_dirs:
                shutil.rmtree(model_dir, ignore_errors=True)
