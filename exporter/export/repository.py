"""The artifact tree is a Triton model repository: ``<artifacts>/<model>/config.pbtxt`` + ``<version>/``.

Version directories are staged under a hidden name and renamed into place, so a reader (Triton, our
server, ``verify``) sees a version whole or not at all, and a failed export never touches a good one.

The files of the model directory that belong to a version (``config.pbtxt``, ``kserve.yaml``, the warm-up
data under ``warmup/``) are staged inside the version too, under :data:`PUBLISH_DIR`, so they are part of
its one atomic rename. Right after it they are copied beside the versions, each file replaced in one step
(warm-up data before the config that names it), and the staged copies removed. A process killed between
the rename and the end of that copy leaves a committed version that still holds its :data:`PUBLISH_DIR`:
the next export of the model finishes the copy first (:func:`recover`), and ``verify`` reports it until
then. A kill at any other point leaves the tree as it was (plus a stale staging directory the next export
removes) or complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.contract import (  # noqa: F401  (re-exported: the artifact file names)
    CONFIG_FILE,
    METADATA_FILE,
    MODEL_FILE,
    REPORT_FILE,
    SAMPLE_REQUEST,
    SAMPLE_RESPONSE,
    STAGING_PREFIX,
    version_dirs,
)
from exporter.errors import ExporterError

# the vocabulary file name and the file digest are the runtime rules' (the handler checks the same sha256)
from exporter.runtime.rules import VOCAB_FILE, sha256_file  # noqa: F401


def versions(model_dir: Path) -> list[int]:
    """The committed versions of one model, ascending (staging and other entries are ignored)."""
    return [int(p.name) for p in version_dirs(model_dir)]


def next_version(artifacts: Path, model_names: Iterable[str]) -> int:
    """One past the highest version of any of ``model_names`` (committed, or being written by a live export):
    towers of one model share a version."""
    return 1 + max(
        (max(versions(artifacts / n) + claimed_versions(artifacts / n), default=0) for n in model_names), default=0
    )


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


#: ``.<name>.<pid>-<token>.tmp``: a temporary sibling of a file being replaced, and the process writing it
_TEMPORARY_NAME = re.compile(r"\..+\.(\d+)-[0-9a-f]{8}\.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` in one step (write a temporary sibling, then rename over)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step (write a temporary sibling, then rename over)."""
    write_bytes_atomic(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------- model files
#: inside a staged version: the model directory's files this version publishes (config.pbtxt, kserve.yaml,
#: warmup/...), committed with the version and copied beside it by :func:`publish_pending`
PUBLISH_DIR = ".publish"


def _publish_rank(relative: Path) -> tuple[int, str]:
    """Warm-up data first (the config names it), then config.pbtxt (what Triton reads), then the rest."""
    first = relative.parts[0]
    return (0 if first == "warmup" else 1 if first == CONFIG_FILE else 2), relative.as_posix()


def pending_publishes(model_dir: Path) -> list[Path]:
    """Committed versions whose model files were not copied into the model directory yet (a killed export)."""
    return [v for v in version_dirs(model_dir) if (v / PUBLISH_DIR).is_dir()]


def stale_temporaries(directory: Path) -> list[Path]:
    """Temporary siblings left by a process killed while it replaced a file (see :func:`write_bytes_atomic`)."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        m = _TEMPORARY_NAME.fullmatch(entry.name)
        try:
            if m and entry.is_file() and not owner_alive(int(m.group(1)), entry.stat().st_mtime):
                found.append(entry)
        except OSError:
            continue  # renamed into place or removed meanwhile
    return sorted(found)


def publish_pending(model_dir: Path) -> list[Path]:
    """Copy the staged model files of the latest version into ``model_dir`` (each replaced in one step), then
    drop every version's staged copies; returns the files written. Idempotent, so a killed run is finished by
    calling it again; call it under :func:`repository_lock` so concurrent exports publish in turn."""
    pending = pending_publishes(model_dir)
    if not pending:
        return []
    written: list[Path] = []
    latest = version_dirs(model_dir)[-1]
    source = latest / PUBLISH_DIR
    if source.is_dir():  # an older version's files are stale once a newer one is committed
        files = sorted((p.relative_to(source) for p in source.rglob("*") if p.is_file()), key=_publish_rank)
        for relative in files:
            target = model_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, (source / relative).read_bytes())
            written.append(target)
    for version in pending:
        shutil.rmtree(version / PUBLISH_DIR, ignore_errors=True)
    return written


# ---------------------------------------------------------------------------------------------- staging
#: ``.staging-<version>-pid<pid>-<token>``: the version it claims and the process writing it
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-pid(\d+)-([0-9a-f]+)")
#: prefix of a failed export's files kept for the user (the version appeared meanwhile, see VersionWriter.commit)
KEPT_PREFIX = ".kept-"
#: a staging directory whose owner cannot be told (older name formats) counts as stale after this many seconds
UNOWNED_STALE_SECONDS = 3600.0
#: how long an export waits for another one that is claiming a version (it holds the lock for milliseconds)
LOCK_TIMEOUT_SECONDS = 60.0

log = logging.getLogger("exporter.export.repository")


@dataclass(frozen=True)
class Staging:
    """One ``.staging-*`` directory of a model directory: who writes it and whether that process is gone."""

    path: Path
    version: int | None
    pid: int | None
    stale: bool

    def describe(self) -> str:
        """Why it is there, for ``verify`` and error messages."""
        if self.pid is None:
            return f"{self.path.name}: an export's staging directory of unknown owner" + (
                " (older than an hour: left by a killed export)" if self.stale else ""
            )
        if self.stale:
            return (
                f"{self.path.name}: left behind by an export that was killed (pid {self.pid} is no longer "
                "running); the next export of this model removes it"
            )
        return f"{self.path.name}: an export in progress (pid {self.pid}) is writing version {self.version}"


def _process_start(pid: int) -> float | None:
    """Start time of a process (seconds since the epoch) from /proc, or ``None`` where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, counted after "pid (comm)"
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_alive(pid: int, written_at: float) -> bool:
    """Whether process ``pid`` still runs *and* is the one that wrote a staging directory last modified at
    ``written_at`` (a process that started after that is a later process that reused the pid)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return False
    started = _process_start(pid)
    return started is None or started <= written_at + 1.0


def stagings(model_dir: Path) -> list[Staging]:
    """The ``.staging-*`` directories of a model directory, each with its owner and whether it is stale."""
    if not model_dir.is_dir():
        return []
    found = []
    for entry in sorted(model_dir.iterdir()):
        if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir():
            continue
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue  # renamed into place or removed meanwhile
        m = _STAGING_NAME.fullmatch(entry.name)
        if m is None:
            stale = time.time() - mtime > UNOWNED_STALE_SECONDS
            found.append(Staging(entry, None, None, stale))
            continue
        pid = int(m.group(2))
        found.append(Staging(entry, int(m.group(1)), pid, not owner_alive(pid, mtime)))
    return found


def kept_dirs(model_dir: Path) -> list[Path]:
    """Files of failed exports kept for their user (see :meth:`VersionWriter.commit`)."""
    if not model_dir.is_dir():
        return []
    return sorted(p for p in model_dir.iterdir() if p.name.startswith(KEPT_PREFIX) and p.is_dir())


def live_staged_configs(model_dir: Path) -> list[tuple[Staging, str]]:
    """The ``config.pbtxt`` each live export of ``model_dir`` staged when it claimed its version (read under
    :func:`repository_lock`: every write of it replaces the file in one step, so it is read whole)."""
    found = []
    for s in stagings(model_dir):
        if s.stale or s.pid is None:
            continue
        try:
            found.append((s, (s.path / PUBLISH_DIR / CONFIG_FILE).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue  # committed or removed meanwhile, or claimed without a config
    return found


def claimed_versions(model_dir: Path) -> list[int]:
    """Versions being written right now by live exports (their staging directories)."""
    return [s.version for s in stagings(model_dir) if not s.stale and s.version is not None]


@contextlib.contextmanager
def repository_lock(artifacts: Path) -> Iterator[None]:
    """Hold an exclusive lock on the artifacts directory while versions are claimed or model directories
    removed, so that concurrent exports pick distinct versions. The lock is ``flock`` on the directory itself
    (no lock file to leave behind; the kernel drops it when the process dies), held for milliseconds; a
    waiter gives up with an ExporterError after :data:`LOCK_TIMEOUT_SECONDS`. Where ``flock`` is not
    available the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    fd = os.open(artifacts, os.O_RDONLY)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ExporterError(
                        f"another export has held the lock on {artifacts} for {LOCK_TIMEOUT_SECONDS:.0f}s while "
                        "claiming a version (is it stopped?); try again when it has finished"
                    ) from None
                time.sleep(0.02)
            except OSError:  # a file system without flock: claims still work, races are just likelier
                break
        yield
    finally:
        os.close(fd)


def recover(model_dir: Path) -> list[Path]:
    """What a killed export left in ``model_dir``, cleaned up (call it under :func:`repository_lock`): stale
    staging directories and temporary files are removed and a committed version's unpublished model files
    published. Returns the staging directories removed."""
    removed = []
    for s in stagings(model_dir):
        if s.stale:
            shutil.rmtree(s.path, ignore_errors=True)
            removed.append(s.path)
            log.info("removed %s", s.describe())
    for path in stale_temporaries(model_dir) + stale_temporaries(model_dir / "warmup"):
        path.unlink(missing_ok=True)
    for path in publish_pending(model_dir):
        log.info("published %s (its export was killed after committing the version)", path)
    return removed


def check_target(
    artifacts: Path, model_names: Sequence[str], version: int | None = None, option: str = "--artifacts"
) -> None:
    """Fail before any training when the export could not be written: ``artifacts`` (or a parent of it)
    is a file, a model directory is a file, the place is not writable, or an explicit version exists."""
    artifacts = Path(artifacts)
    if artifacts.exists() and not artifacts.is_dir():
        raise ExporterError(f"{option} {artifacts} is a file; expected a directory (the model repository)")
    existing = artifacts
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ExporterError(f"{option} {artifacts} cannot be created: {existing} is a file, not a directory")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ExporterError(f"{option} {artifacts}: no permission to write in {existing}")
    for name in model_names:
        model_dir = artifacts / name
        if model_dir.exists() and not model_dir.is_dir():
            raise ExporterError(
                f"{model_dir} is a file; the model directory of {name} must be a directory: move the file away"
            )
        if version is not None and (model_dir / str(version)).exists():
            raise ExporterError(
                f"version {version} of '{name}' already exists at {model_dir / str(version)}; "
                "choose another --version or omit it to use the next free one"
            )


class VersionWriter:
    """Stages several version directories (one per model name) and commits them together.

    The version (``None``: the next free one) is claimed under :func:`repository_lock` by creating the
    staging directories ``<model>/.staging-<version>-pid<pid>-<token>``: a concurrent export sees the claim
    and takes the next version, so two exports never race for one rename. Stale staging directories (their
    process is gone: a killed export) are removed at the same time.

    ``configs`` (model name -> ``config.pbtxt`` text) is staged with the claim, under the same lock, after
    ``check_config(model_name)`` passed (called under the lock, after stale claims are removed and killed
    runs' model files published): an export whose tensors clash with the model's config or with another live
    export's claim is refused before it writes anything, so concurrent exports cannot leave a config.pbtxt
    that describes the other's version.

    Use as a context manager. Leaving the block with an exception removes only what this writer made: its
    staging directories, the versions it committed, and model directories it created if they are empty
    again; never a directory another run wrote into.
    """

    def __init__(
        self,
        artifacts: Path,
        version: int | None,
        model_names: Sequence[str],
        configs: Mapping[str, str] | None = None,
        check_config: Callable[[str], None] | None = None,
    ) -> None:
        self.artifacts = Path(artifacts)
        self.configs = dict(configs or {})
        self.check_config = check_config
        self.requested = version
        self.version = version or 0
        self.model_names = list(model_names)
        self.staged: dict[str, Path] = {}
        self.committed: list[Path] = []
        self.created_model_dirs: list[Path] = []
        self.removed_leftovers: list[Path] = []

    def __enter__(self) -> VersionWriter:
        check_target(self.artifacts, self.model_names, self.requested)
        try:
            self.artifacts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExporterError(
                f"cannot create the artifacts directory {self.artifacts}: {exc.strerror or exc}"
            ) from exc
        with repository_lock(self.artifacts):
            self._claim()
        return self

    def _claim(self) -> None:
        """Pick the version and create the staging directories (under the repository lock)."""
        for name in self.model_names:
            self.removed_leftovers += recover(self.artifacts / name)
        if self.check_config is not None:
            for name in self.model_names:
                self.check_config(name)
        taken = {
            v for n in self.model_names for v in versions(self.artifacts / n) + claimed_versions(self.artifacts / n)
        }
        if self.requested is not None:
            busy = [n for n in self.model_names if self.requested in claimed_versions(self.artifacts / n)]
            if busy:
                raise ExporterError(
                    f"version {self.requested} of '{busy[0]}' is being written by another export right now; "
                    "choose another --version or omit it to use the next free one"
                )
            check_target(self.artifacts, self.model_names, self.requested)
            self.version = self.requested
        else:
            self.version = 1 + max(taken, default=0)
        token = uuid.uuid4().hex[:8]
        for name in self.model_names:
            model_dir = self.artifacts / name
            if not model_dir.exists():
                model_dir.mkdir()
                self.created_model_dirs.append(model_dir)
            staging = model_dir / f"{STAGING_PREFIX}{self.version}-pid{os.getpid()}-{token}"
            staging.mkdir()
            self.staged[name] = staging
            if name in self.configs:
                self.stage_model_file(name, CONFIG_FILE, self.configs[name].encode("utf-8"))

    def path(self, name: str) -> Path:
        return self.staged[name]

    def stage_model_file(self, name: str, relative: str, data: bytes) -> None:
        """Stage a file of the model directory (``config.pbtxt``, ``kserve.yaml``, ``warmup/...``) that this
        version publishes: it is written inside the staged version, so it is committed with it."""
        parts = Path(relative).parts
        if not parts or any(p in ("", ".", "..") for p in parts) or Path(relative).is_absolute():
            raise ExporterError(f"{relative!r} is not a path inside the model directory")
        path = self.staged[name] / PUBLISH_DIR / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)  # other exports read the staged config.pbtxt while claiming

    def commit(self) -> dict[str, Path]:
        """Rename every staged directory into place; returns model name -> version directory.

        The version was claimed, so another exporter never takes it. Should the target appear anyway
        (written by something else), nothing of this run stays committed and its files are kept under
        ``<model>/.kept-*`` with a message saying where and how to retry.
        """
        out: dict[str, Path] = {}
        for name, staging in list(self.staged.items()):
            target = self.artifacts / name / str(self.version)
            try:
                os.rename(staging, target)
            except OSError as exc:
                if target.exists():
                    raise self._keep(name, target) from exc
                raise ExporterError(f"cannot move the new version into place at {target}: {exc}") from exc
            del self.staged[name]
            self.committed.append(target)
            out[name] = target
        self._publish(out)
        return out

    def _publish(self, committed: dict[str, Path]) -> None:
        """Copy the committed versions' model files beside them (under the lock: concurrent exports in turn).

        The versions are final from here: a failure leaves their staged files for the next export to publish.
        """
        self.committed = []
        try:
            with repository_lock(self.artifacts):
                for target in committed.values():
                    publish_pending(target.parent)
        except OSError as exc:
            raise ExporterError(
                f"version {self.version} is committed but its config.pbtxt/kserve.yaml could not be written ({exc}); "
                "the next export of the model writes them"
            ) from exc

    def _keep(self, name: str, target: Path) -> ExporterError:
        """Move this run's files (staged and committed) to ``.kept-*`` names; the error to raise."""
        kept: list[Path] = []
        moves = [(p, p.parent) for p in self.committed] + [(p, p.parent) for p in self.staged.values()]
        for path, model_dir in moves:
            dest = model_dir / f"{KEPT_PREFIX}{self.version}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, dest)
                kept.append(dest)
            except OSError:
                pass
        self.committed, self.staged = [], {}
        return ExporterError(
            f"version {self.version} of '{name}' appeared at {target} while this export was writing it "
            "(written by a tool that does not claim versions); nothing of this run was committed. Its files "
            f"(model and native checkpoint) are kept in {', '.join(str(p) for p in kept)}: run the export "
            "again to write the next free version, or export those files in load mode (--mode load --checkpoint)"
        )

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        for staging in self.staged.values():
            shutil.rmtree(staging, ignore_errors=True)
        self.staged = {}
        if exc_type is not None:
            for path in self.committed:
                shutil.rmtree(path, ignore_errors=True)
            if self.created_model_dirs and self.artifacts.is_dir():
                with repository_lock(self.artifacts):
                    for model_dir in self.created_model_dirs:
                        try:
                            model_dir.rmdir()  # only when empty: never what another run wrote into it
                        except OSError:
                            pass
