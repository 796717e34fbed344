"""The models ``serve`` answers with, and how they change while it runs (``--poll SECONDS``, SIGHUP).

A :class:`ModelRegistry` is one immutable view of the artifacts tree: the loaded handlers per model and
version, the versions that failed to load (and why), and the answers of ``GET /models`` precomputed.
:class:`LiveRegistry` holds the current view; :meth:`LiveRegistry.reload` scans the tree again in a worker
thread, reuses the handler of every version still there (versions are immutable: a version directory is
renamed into place whole; one whose files were overwritten in place is loaded again, and when it no longer loads
it is no longer served and is listed as failed, so every worker serves what the tree holds), loads new ones,
drops removed ones and swaps the view in one assignment. A request
reads the view once, so it is answered by the handler it started with even if a reload removes that version
meanwhile: nothing in flight is dropped. A new version that fails to load (bad sha256, unreadable graph,
inconsistent metadata, text in ``metadata.json`` that is not valid Unicode) and a model directory whose name is
not UTF-8 are logged and listed under ``failed`` in ``GET /models`` (names and messages with lone surrogates
written as escapes, so the JSON always encodes); the versions already serving stay, and a failed version is
tried again when any of its files changes. At startup, by contrast, any failure stops ``serve`` with every
problem listed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExporterError
from exporter.export.tree import require_tree
from exporter.runtime.rules import version_dirs

if TYPE_CHECKING:  # pragma: no cover
    from exporter.runtime.handler import ModelHandler

log = logging.getLogger("exporter.serve")

#: a version directory's identity: a re-created directory (new inode) is loaded again
DirKey = tuple[int, int]
#: (path, size, mtime) of every file of a version directory: a failed version is tried again when it changes
FilesKey = tuple[tuple[str, int, int], ...]


def _dir_key(path: Path) -> DirKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@dataclass
class ModelRegistry:
    """One view of the served models: ``versions[name][version] -> handler``, the latest per name, failures."""

    versions: dict[str, dict[str, ModelHandler]] = field(default_factory=dict)
    latest: dict[str, ModelHandler] = field(default_factory=dict)
    #: (model, version) -> why it is not served
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (model, version) -> directory identity when it was loaded or failed
    keys: dict[tuple[str, str], DirKey] = field(default_factory=dict)
    #: (model, version) -> its files when it was loaded or failed
    file_keys: dict[tuple[str, str], FilesKey] = field(default_factory=dict)
    # precomputed answers (set by finish())
    models_body: bytes = b""
    metadata_bodies: dict[str, bytes] = field(default_factory=dict)
    loaded_names: str = ""

    @classmethod
    def from_artifacts(
        cls, artifacts: Path, *, max_rows: int | None = None, threads: int | None = None
    ) -> ModelRegistry:
        """Load every version of every model under ``artifacts``; raises ExporterError listing every failure."""
        registry = scan(Path(artifacts), max_rows=max_rows, threads=threads)
        if registry.failed:
            problems = [shown(reason) for reason in registry.failed.values()]
            raise ExporterError("cannot serve; some artifacts failed to load:\n  " + "\n  ".join(problems))
        if not registry.latest:
            raise ExporterError(
                f"no model found under {str(artifacts)!r}; expected <model_name>/<version>/metadata.json "
                "(a Triton-style model repository written by python -m exporter export)"
            )
        return registry

    def describe(self) -> dict[str, Any]:
        """Answer of ``GET /models``: what is served, and what failed to load (``failed``)."""
        return {
            "models": [
                {
                    "name": name,
                    "versions": sorted(versions, key=int),
                    "latest_version": self.latest[name].version,
                    "prediction_format": self.latest[name].prediction_format,
                    "feature_columns": self.latest[name].feature_columns,
                }
                for name, versions in sorted(self.versions.items())
            ],
            "failed": [
                {"name": shown(name), "version": version or None, "error": shown(reason)}
                for (name, version), reason in sorted(self.failed.items(), key=_failure_order)
            ],
        }

    def finish(self) -> ModelRegistry:
        """Compute the latest version per model and the precomputed answers; returns self."""
        import orjson

        self.latest = {name: by_version[max(by_version, key=int)] for name, by_version in self.versions.items()}
        self.models_body = orjson.dumps(self.describe())
        self.metadata_bodies = {name: orjson.dumps(h.metadata) for name, h in self.latest.items()}
        self.loaded_names = ", ".join(sorted(self.latest)) or "none"
        return self

    def summary(self) -> str:
        """``xgb 1,2; two_tower 1`` for log lines."""
        return "; ".join(f"{n} {','.join(sorted(v, key=int))}" for n, v in sorted(self.versions.items())) or "nothing"


def _failure_order(item: tuple[tuple[str, str], str]) -> tuple[str, int]:
    (name, version), _reason = item
    return shown(name), int(version) if version else 0


def scan(
    artifacts: Path, *, max_rows: int | None = None, threads: int | None = None, previous: ModelRegistry | None = None
) -> ModelRegistry:
    """A new view of ``artifacts``: versions of ``previous`` still on disk keep their handler, new ones load.

    A version that failed before is tried again when its directory or any file in it changed (size or
    modification time), so a version first seen half-written loads once it is complete. Never raises for a
    broken entry (it goes to ``failed``: a model directory whose name is not UTF-8, a version that does not
    load); raises ExporterError only when ``artifacts`` is not a directory.
    """
    _check_tree(artifacts)
    registry = ModelRegistry()
    for model_dir in sorted(artifacts.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        name = model_dir.name
        vdirs = version_dirs(model_dir)
        if vdirs and not _is_unicode(name):
            registry.failed[(name, "")] = (
                f"{model_dir}: the model directory's name is not valid UTF-8; model names are UTF-8 text "
                "(rename the directory)"
            )
            continue
        for vdir in vdirs:
            _scan_version(registry, previous, name, vdir, max_rows, threads)
    return registry.finish()


def _check_tree(artifacts: Path) -> None:
    """Raise ExporterError when ``artifacts`` is not a directory."""
    require_tree(artifacts)


def _scan_version(
    registry: ModelRegistry,
    previous: ModelRegistry | None,
    name: str,
    vdir: Path,
    max_rows: int | None,
    threads: int | None,
) -> None:
    """Put one version directory into ``registry``: its handler (reused or loaded) or why it failed."""
    ident = (name, vdir.name)
    key = _dir_key(vdir)
    if key is None:
        return  # removed while we looked
    registry.keys[ident] = key
    files = _files_key(vdir)
    changed = False
    if previous is not None and previous.keys.get(ident) == key:
        handler = previous.versions.get(name, {}).get(vdir.name)
        if handler is not None:
            # a version is renamed into place whole and never changes; one whose files were overwritten in place
            # is loaded again, so that every worker (a restarted one too) serves what the tree holds
            if previous.file_keys.get(ident) == files:
                registry.versions.setdefault(name, {})[vdir.name] = handler
                registry.file_keys[ident] = files
                return
            changed = True
        elif ident in previous.failed and previous.file_keys.get(ident) == files:
            registry.failed[ident] = previous.failed[ident]
            registry.file_keys[ident] = files
            return
    problem, handler = _load(name, vdir, max_rows, threads)
    registry.file_keys[ident] = files  # as before the attempt: a change meanwhile is tried again
    if handler is None:
        if changed:
            problem += " (its files changed on disk after it was loaded: the copy loaded before is no longer served)"
        registry.failed[ident] = problem
        return
    if changed:
        log.warning("reload: %s/%s: its files changed on disk after it was loaded; loaded again", *ident)
    registry.versions.setdefault(name, {})[vdir.name] = handler


def _load(name: str, vdir: Path, max_rows: int | None, threads: int | None) -> tuple[str, ModelHandler | None]:
    """The version's handler, or why it cannot be served."""
    import orjson

    from exporter.runtime.handler import DEFAULT_MAX_ROWS, HandlerError, ModelHandler

    try:
        handler = ModelHandler.load(vdir, max_rows=max_rows or DEFAULT_MAX_ROWS, threads=threads)
    except HandlerError as exc:
        return f"{vdir}: {exc.message}", None
    except Exception as exc:  # noqa: BLE001 - a reload must never take the server down
        return f"{vdir}: {type(exc).__name__}: {exc}", None
    if handler.model_name != name:
        return f"{vdir}: metadata.json names the model {handler.model_name!r}, but it sits in directory {name!r}", None
    try:
        orjson.dumps(handler.metadata)
    except TypeError as exc:
        return (
            f"{vdir}: metadata.json holds text that is not valid Unicode ({exc}; e.g. a lone surrogate such as "
            "\\ud800 written as a JSON escape), so it cannot be served as JSON",
            None,
        )
    return "", handler


def _is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode (a name read from a non-UTF-8 file name holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` with every lone surrogate written as its escape (``\\udcff``), so that JSON and logs can carry it."""
    return text if _is_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _files_key(vdir: Path) -> FilesKey:
    """Name, size and modification time of every file under a version directory (what a retry looks at)."""
    found = []
    for root, _dirs, files in os.walk(vdir):
        for file_name in files:
            path = os.path.join(root, file_name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            found.append((path, st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


class LiveRegistry:
    """The current :class:`ModelRegistry` of a running server, replaced whole by :meth:`reload`."""

    def __init__(
        self, registry: ModelRegistry, artifacts: Path, *, max_rows: int | None = None, threads: int | None = None
    ) -> None:
        self.current = registry
        self.artifacts = Path(artifacts)
        self.max_rows = max_rows
        self.threads = threads
        self.reloads = 0

    def reload(self, reason: str = "poll") -> ModelRegistry:
        """Scan the tree again and swap the view in (blocking: call it from a worker thread)."""
        before = self.current
        try:
            after = scan(self.artifacts, max_rows=self.max_rows, threads=self.threads, previous=before)
        except ExporterError as exc:
            log.error("reload (%s) skipped, still serving %s: %s", reason, before.summary(), exc)
            return before
        except Exception:  # noqa: BLE001 - keep serving whatever happens
            log.exception("reload (%s) failed, still serving %s", reason, before.summary())
            return before
        self.current = after
        self.reloads += 1
        old = {(n, v) for n, by in before.versions.items() for v in by}
        new = {(n, v) for n, by in after.versions.items() for v in by}
        added, removed = sorted(new - old), sorted(old - new)
        fresh_failures = {k: r for k, r in after.failed.items() if before.failed.get(k) != r}
        for ident, why in sorted(fresh_failures.items()):
            log.warning("reload (%s): %s/%s failed to load and is not served: %s", reason, *ident, why)
        if added or removed or fresh_failures or reason != "poll":
            log.warning(
                "reload (%s): %s%s%snow serving %s",
                reason,
                f"loaded {', '.join('/'.join(i) for i in added)}; " if added else "",
                f"removed {', '.join('/'.join(i) for i in removed)}; " if removed else "",
                f"{len(after.failed)} failed; " if after.failed else "",
                after.summary(),
            )
        return after


class Reloader:
    """Runs :meth:`LiveRegistry.reload` every ``poll`` seconds (0: never) and whenever :meth:`request` is called
    (SIGHUP), one reload at a time, in a worker thread so the event loop keeps answering."""

    def __init__(
        self,
        live: LiveRegistry,
        poll: float,
        on_reload: Callable[[str, ModelRegistry, ModelRegistry], None] | None = None,
    ) -> None:
        self.live = live
        self.poll = poll
        #: told ``(trigger, view before, view after)`` after each reload (the same view when it was skipped)
        self.on_reload = on_reload
        self._wanted = asyncio.Event()
        self._reason = "poll"

    def request(self, reason: str = "SIGHUP") -> None:
        """Ask for a reload soon (call on the event loop thread, e.g. via ``loop.call_soon_threadsafe``)."""
        self._reason = reason
        self._wanted.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._wanted.wait(), timeout=self.poll if self.poll > 0 else None)
            except TimeoutError:
                pass
            reason, self._reason = self._reason, "poll"
            if self._wanted.is_set():
                self._wanted.clear()
            else:
                reason = "poll"
            before = self.live.current
            after = await loop.run_in_executor(None, self.live.reload, reason)
            if self.on_reload is not None:
                self.on_reload(reason, before, after)
