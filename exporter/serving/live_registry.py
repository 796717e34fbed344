"""The models ``serve`` answers with, and how they change while it runs (``--poll SECONDS``, SIGHUP).

A :class:`ModelRegistry` is one immutable view of the artifacts tree: the loaded handlers per model and
version, the versions that failed to load (and why), and the answers of ``GET /models`` precomputed.
:class:`LiveRegistry` holds the current view; :meth:`LiveRegistry.reload` scans the tree again in a worker
thread, reuses the handler of every version still there (versions are immutable: a version directory is
renamed into place whole), loads new ones, drops removed ones and swaps the view in one assignment. A request
reads the view once, so it is answered by the handler it started with even if a reload removes that version
meanwhile: nothing in flight is dropped. A new version that fails to load (bad sha256, unreadable graph,
inconsistent metadata) is logged and listed under ``failed`` in ``GET /models``; the versions already
serving stay. At startup, by contrast, any failure stops ``serve`` with every problem listed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExporterError
from exporter.runtime.rules import version_dirs

if TYPE_CHECKING:  # pragma: no cover
    from exporter.runtime.handler import ModelHandler

log = logging.getLogger("exporter.serve")

#: a version directory's identity: a re-created directory (new inode) is loaded again
DirKey = tuple[int, int]


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
            problems = [reason for reason in registry.failed.values()]
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
                {"name": name, "version": version, "error": reason}
                for (name, version), reason in sorted(self.failed.items(), key=lambda kv: (kv[0][0], int(kv[0][1])))
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


def scan(
    artifacts: Path, *, max_rows: int | None = None, threads: int | None = None, previous: ModelRegistry | None = None
) -> ModelRegistry:
    """A new view of ``artifacts``: versions of ``previous`` still on disk keep their handler, new ones load.

    A version that failed before is tried again only when its directory changed. Never raises for a broken
    version (it goes to ``failed``); raises ExporterError only when ``artifacts`` is not a directory.
    """
    from exporter.runtime.handler import DEFAULT_MAX_ROWS, HandlerError, ModelHandler

    if artifacts.exists() and not artifacts.is_dir():
        raise ExporterError(
            f"--artifacts {str(artifacts)!r} is a file, not a directory; expected the artifacts tree "
            "(<model_name>/<version>/) written by python -m exporter export"
        )
    if not artifacts.is_dir():
        raise ExporterError(
            f"artifacts directory {str(artifacts)!r} does not exist; export a model first "
            "(python -m exporter export xgb) or pass --artifacts DIR"
        )
    registry = ModelRegistry()
    for model_dir in sorted(artifacts.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        name = model_dir.name
        for vdir in version_dirs(model_dir):
            ident = (name, vdir.name)
            key = _dir_key(vdir)
            if key is None:
                continue  # removed while we looked
            registry.keys[ident] = key
            if previous is not None and previous.keys.get(ident) == key:
                if ident in previous.failed:
                    registry.failed[ident] = previous.failed[ident]
                    continue
                handler = previous.versions.get(name, {}).get(vdir.name)
                if handler is not None:
                    registry.versions.setdefault(name, {})[vdir.name] = handler
                    continue
            try:
                handler = ModelHandler.load(vdir, max_rows=max_rows or DEFAULT_MAX_ROWS, threads=threads)
            except HandlerError as exc:
                registry.failed[ident] = f"{vdir}: {exc.message}"
                continue
            except Exception as exc:  # noqa: BLE001 - a reload must never take the server down
                registry.failed[ident] = f"{vdir}: {type(exc).__name__}: {exc}"
                continue
            if handler.model_name != name:
                registry.failed[ident] = (
                    f"{vdir}: metadata.json names the model {handler.model_name!r}, but it sits in directory {name!r}"
                )
                continue
            registry.versions.setdefault(name, {})[vdir.name] = handler
    return registry.finish()


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

    def __init__(self, live: LiveRegistry, poll: float) -> None:
        self.live = live
        self.poll = poll
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
            await loop.run_in_executor(None, self.live.reload, reason)
