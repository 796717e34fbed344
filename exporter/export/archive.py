"""A TorchServe model archive (``.mar``) of one exported model version, built with ``torch-model-archiver``.

The archive holds the version's model file, ``metadata.json`` and ``vocab.json`` (when the model has string
categories), the :mod:`exporter.runtime` package as code (with a minimal ``exporter/__init__.py``, the way
TorchServe ships ``--extra-files`` folders and MLflow ships ``code_paths``), and
:mod:`exporter.runtime.torchserve_entry` as the ``--handler``. TorchServe puts the extracted archive on the
worker's ``sys.path``, so the handler imports ``exporter.runtime`` from the archive itself: the serving host needs
numpy, onnxruntime and orjson, never this package.

The ``.mar`` is built in a hidden staging directory beside the target and renamed into place, so a reader
never sees half an archive; an existing file is replaced only when asked (``force``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import ExporterError
from exporter.export.tree import require_tree
from exporter.runtime.columns import vocab_files
from exporter.runtime.rules import METADATA_FILE, is_version_name, version_dirs

#: the archive's handler: TorchServe imports it by this module name from the extracted archive
ENTRY_FILE = "torchserve_entry.py"
#: the package every archive ships as code
RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"
#: ``exporter/__init__.py`` inside the archive: the package marker only (the rest of exporter is not shipped)
PACKAGE_INIT = (
    '"""Only exporter.runtime ships in this TorchServe archive: the handler\'s code (python -m exporter archive)."""\n'
)
ARCHIVER_TIMEOUT = 600


@dataclass(frozen=True)
class ArchiveResult:
    """What :func:`build_archive` wrote."""

    path: Path
    model_name: str
    version: str
    #: the artifact files inside the archive (model, metadata, vocabularies)
    files: tuple[str, ...]


def resolve_version(artifacts: Path, model: str) -> Path:
    """The version directory ``MODEL[/VERSION]`` names in ``artifacts`` (no version: the highest one)."""
    name, _, version = model.strip("/").partition("/")
    model_dir = artifacts / name
    if not name or name in (".", "..") or not model_dir.is_dir():
        have = (
            sorted(p.name for p in artifacts.iterdir() if p.is_dir() and not p.name.startswith("."))
            if artifacts.is_dir()
            else []
        )
        raise ExporterError(
            f"model {name!r} not found in {str(artifacts)!r} "
            f"(models: {', '.join(have) or 'none'}); expected MODEL or MODEL/VERSION, e.g. xgb/1"
        )
    versions = [p.name for p in version_dirs(model_dir)]
    if not version:
        if not versions:
            raise ExporterError(f"model {name!r} in {str(artifacts)!r} has no version directory (1, 2, ...)")
        return model_dir / versions[-1]
    if "/" in version or not is_version_name(version):
        raise ExporterError(
            f"{version!r} is not a version directory name: versions are positive integers without "
            f"leading zeros (model {name!r} has: {', '.join(versions) or 'none'})"
        )
    if version not in versions:
        raise ExporterError(f"model {name!r} has no version {version} (versions: {', '.join(versions) or 'none'})")
    return model_dir / version


def _check_archiver() -> None:
    if importlib.util.find_spec("model_archiver") is None:
        raise ExporterError(
            "torch-model-archiver is not installed in this Python; "
            "pip install torch-model-archiver==0.12.0 (it is in requirements.txt)"
        )


def _stage_code(code: Path) -> None:
    """``code/exporter/__init__.py`` and ``code/exporter/runtime/**.py``: the folder given to ``--extra-files``."""
    package = code / "exporter"
    shutil.copytree(RUNTIME_DIR, package / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    (package / "__init__.py").write_text(PACKAGE_INIT, encoding="utf-8")


def _run_archiver(name: str, version: str, vdir: Path, model_file: str, extra: list[Path], staging: Path) -> Path:
    """torch-model-archiver in a child process whose temporary directory is private to this build."""
    tmp = staging / "tmp"
    tmp.mkdir()
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        name,
        "--version",
        version,
        "--handler",
        str(RUNTIME_DIR / ENTRY_FILE),
        "--serialized-file",
        str(vdir / model_file),
        "--extra-files",
        ",".join(str(p) for p in extra),
        "--export-path",
        str(staging),
    ]
    # the archiver copies into <tempdir>/<model name> and deletes it first: a private TMPDIR keeps two
    # builds of the same model apart
    env = {**os.environ, "TMPDIR": str(tmp)}
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=ARCHIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ExporterError(f"torch-model-archiver did not finish within {ARCHIVER_TIMEOUT} s") from None
    built = staging / f"{name}.mar"
    if proc.returncode != 0 or not built.is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ExporterError(f"torch-model-archiver failed (exit {proc.returncode}): {' | '.join(detail)}")
    return built


def _check_archive(path: Path, expected: list[str]) -> None:
    """The built archive names our handler and holds every file it needs (a guard on the archiver's layout)."""
    with zipfile.ZipFile(path) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    missing = [n for n in expected if n not in names]
    if missing or manifest.get("model", {}).get("handler") != ENTRY_FILE:
        raise ExporterError(
            f"torch-model-archiver wrote an unexpected archive (missing: {', '.join(missing) or 'none'}; "
            f"handler {manifest.get('model', {}).get('handler')!r})"
        )


def build_archive(
    model: str, export_path: Path, artifacts: Path = Path("artifacts"), *, force: bool = False
) -> ArchiveResult:
    """Write ``<export_path>/<model name>.mar`` for ``MODEL[/VERSION]`` of ``artifacts``; returns what was written.

    The version is loaded first as the handler will load it (metadata checked, sha256 verified), so a broken
    version never becomes an archive. Raises :class:`ExporterError` (exit 2) for anything the user can fix.
    """
    from exporter.runtime.handler import ArtifactError, ModelHandler

    require_tree(Path(artifacts))
    vdir = resolve_version(Path(artifacts), model)
    try:
        handler = ModelHandler.load(vdir)
    except ArtifactError as exc:
        raise ExporterError(f"cannot archive {str(vdir)!r}: {exc.message}") from None
    name, version, metadata = handler.model_name, handler.version, handler.metadata
    export_path = Path(export_path)
    if export_path.exists() and not export_path.is_dir():
        raise ExporterError(f"--export-path {str(export_path)!r} is not a directory")
    target = export_path / f"{name}.mar"
    if target.is_dir():
        raise ExporterError(f"{str(target)!r} is a directory; the archive needs that name for its file")
    if target.exists() and not force:
        raise ExporterError(f"{str(target)!r} already exists; pass --force to replace it")
    _check_archiver()
    files = [metadata["model_file"], METADATA_FILE, *vocab_files(metadata)]
    export_path.mkdir(parents=True, exist_ok=True)
    staging = export_path / f".archive-{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _stage_code(staging / "code")
        extra = [vdir / f for f in files[1:]] + [staging / "code"]
        built = _run_archiver(name, version, vdir, metadata["model_file"], extra, staging)
        runtime_files = sorted(
            f"exporter/{p.relative_to(staging / 'code' / 'exporter').as_posix()}"
            for p in (staging / "code" / "exporter").rglob("*.py")
        )
        _check_archive(built, [ENTRY_FILE, *files, *runtime_files])
        os.replace(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArchiveResult(target, name, version, tuple(files))
