"""Tracking one export from the outside: the run opens once the model is evaluated (before anything is
written, so metadata.json names it) and is filled in after the commit. A store that cannot be reached is one
warning line, never a lost export: the artifact is written first and ``python -m exporter track`` logs it later.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.tracking import runs as R
from exporter.tracking import store as S

if TYPE_CHECKING:  # pragma: no cover
    from exporter.export.params import Evaluation, Prepared
    from exporter.models import Trained


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class ExportTracking:
    """The run of one export (one model; two_tower's two parts are one run with two registered models)."""

    def __init__(
        self,
        artifacts: str | Path,
        uri: str | None = None,
        *,
        enabled: bool = True,
        warn: Callable[[str], None] = _stderr,
        parent_run_id: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        kind: str = "export",
    ) -> None:
        self.artifacts = Path(artifacts)
        self.enabled = enabled
        self.store = S.resolve(artifacts, uri) if enabled else None
        self.warn = warn
        self.parent_run_id = parent_run_id
        self.experiment = experiment
        self.run_name = run_name
        self.kind = kind
        self.run: R.Run | None = None
        self.problem: str | None = None
        self.registered: list[Any] = []
        #: seconds spent opening and filling the run (what tracking adds to an export)
        self.seconds = 0.0

    def warm_up(self, prep: Prepared | None = None) -> None:
        """Import MLflow and open the store in the background (once the inputs are checked, while the model
        trains), so that opening the run later costs little."""
        if self.store is not None:
            S.warm_up(self.store)

    def start(self, prep: Prepared, trained: Trained | None = None, evaluation: Evaluation | None = None) -> None:
        """Open the run and record it in the export's parameters (so metadata.json carries it)."""
        if self.store is None or self.run is not None:
            return
        model = prep.params.model_name or prep.spec.name
        began = time.perf_counter()
        try:
            self.run = R.start(
                self.store,
                self.experiment or model,
                model,
                self.artifacts,
                run_name=self.run_name,
                parent_run_id=self.parent_run_id,
                kind=self.kind,
            )
        except S.TrackingUnavailable as exc:
            self.problem = str(exc)  # said once the artifact is written, with how to log it later
            return
        finally:
            self.seconds += time.perf_counter() - began
        prep.params.tracking = dict(self.run.record)

    def log(self, directories: Sequence[Path], extras: R.Extras | None = None) -> None:
        """Log the written versions into the open run (nothing when tracking is off or the run never opened)."""
        if self.run is None:
            if self.store is not None:
                self._warn(self.problem or "no run was opened", directories)
            return
        began = time.perf_counter()
        try:
            self.registered = R.log_versions(self.run, directories, extras)
        except S.TrackingUnavailable as exc:
            self._warn(str(exc), directories)
            R.finish(self.run, "FAILED")
            return
        finally:
            self.seconds += time.perf_counter() - began
        R.finish(self.run)

    def failed(self) -> None:
        """The export did not happen: the run (if open) is closed as FAILED (KILLED when the user stopped it)."""
        if self.run is not None:
            R.finish(self.run, R.ended_status())

    def _warn(self, problem: str, directories: Sequence[Path] | None) -> None:
        self.problem = problem
        later = (
            f"; log it later: python -m exporter track {' '.join(str(d) for d in directories)}"
            + ("" if self.store is None or self.store.embedded else f" --tracking-uri {self.store.shown()}")
            if directories
            else "; the export goes on untracked"
        )
        self.warn(f"warning: tracking: {problem}{later}")

    def summary(self) -> str | None:
        """One line for the export summary: where the run is and how to look at it."""
        if self.store is None:
            return None
        if self.run is None or self.problem is not None:
            return f"tracking: not logged ({self.problem})"
        models = ", ".join(f"{m.name} v{m.version}" for m in self.registered)
        where = self.store.shown()
        ui = f"; browse: mlflow ui --backend-store-uri {where}" if self.store.embedded else ""
        return f"tracking: run {self.run.run_id} in {where} (registered {models}; {self.seconds:.1f}s){ui}"


def track_versions(directories: Sequence[Path], uri: str | None = None) -> list[tuple[R.Run, list[Any]]]:
    """``python -m exporter track``: log written versions that were not logged at export time (the store was
    unreachable, or tracking was off). A version whose metadata names a run of this store is logged into that
    run; otherwise the versions of one export (two_tower's parts, by version and related models) share a new
    run. Raises :class:`TrackingUnavailable` when the store cannot be used."""
    from exporter.errors import ExporterError

    groups: dict[tuple[str, ...], list[tuple[Path, dict[str, Any]]]] = {}
    unique = {Path(d).resolve(): Path(d) for d in directories}  # a directory named twice is logged once
    for d in unique.values():
        if not d.is_dir():
            raise ExporterError(f"{d}: not a version directory (expected e.g. artifacts/xgb/1)")
        meta = R.read_version(d)
        run_id = (meta.get("tracking") or {}).get("run_id")
        family = sorted([str(meta["name"]), *map(str, meta.get("related_models") or [])])
        key = (f"run:{run_id}",) if run_id else (str(meta["versions"][-1]), *family)
        groups.setdefault(key, []).append((d, meta))
    done = []
    for members in groups.values():
        first_dir, meta = members[0]
        artifacts = first_dir.resolve().parent.parent
        store = S.resolve(artifacts, uri)
        run = _existing_run(store, meta, artifacts)
        if run is None:
            model = str((meta.get("related_models") or [meta["name"]])[0]) if meta.get("model_part") else meta["name"]
            _check_not_logged(store, str(model), [m for _, m in members])
            run = R.start(store, str(model), str(model), artifacts, kind="export")
        try:
            registered = R.log_versions(run, [d for d, _ in members])
        except BaseException:
            R.finish(run, R.ended_status())  # never a run left RUNNING
            raise
        R.finish(run)
        done.append((run, registered))
    return done


def _check_not_logged(store: S.Store, model: str, metas: Sequence[dict[str, Any]]) -> None:
    """A version logged before (its model bytes' sha256 tag on a run of this store) is not logged again: a registry
    would hold two model versions of one artifact."""
    from exporter.errors import ExporterError

    digests = ",".join(str(m["sha256"]) for m in metas)
    try:
        with S.bounded_http():
            c = S.client(store)
            experiment = c.get_experiment_by_name(model)
            found = (
                c.search_runs([experiment.experiment_id], f"tags.`exporter.sha256` = '{digests}'", max_results=1)
                if experiment is not None
                else []
            )
    except S.TrackingUnavailable:
        raise
    except Exception:
        return  # a store that cannot search: the run is logged
    if found:
        first = metas[0]
        raise ExporterError(
            f"{first['name']} version {first['versions'][-1]} is already logged as run {found[0].info.run_id} in "
            f"{store.shown()} (the same model bytes, sha256 {str(first['sha256'])[:12]})"
        )


def _existing_run(store: S.Store, meta: dict[str, Any], artifacts: Path) -> R.Run | None:
    """The run metadata.json names, when this store holds it and no model was logged into it yet."""
    record = meta.get("tracking") or {}
    run_id = record.get("run_id")
    if not run_id:
        return None
    try:
        with S.bounded_http():
            c = S.client(store)
            found = c.get_run(run_id)
    except S.TrackingUnavailable:
        raise
    except Exception:
        return None  # another store: a new run
    if R.TAG_VERSION in found.data.tags:
        from exporter.errors import ExporterError

        raise ExporterError(
            f"{meta['name']} version {meta['versions'][-1]} is already logged as run {run_id} in {store.shown()}"
        )
    return R.Run(store, run_id, found.info.experiment_id, dict(record))


def attach_files(version_dir: Path, files: Sequence[Path], uri: str | None = None) -> str | None:
    """Add files (the executed notebook) to the run a version's metadata.json names; a warning line when that
    fails, ``None`` when attached or when the version was not tracked."""
    meta = R.read_version(Path(version_dir))
    run_id = (meta.get("tracking") or {}).get("run_id")
    if not run_id:
        return None
    store = S.resolve(Path(version_dir).resolve().parent.parent, uri)
    try:
        with S.bounded_http():
            c = S.client(store)
            for f in files:
                c.log_artifact(
                    run_id, str(f), "version" if not meta.get("related_models") else f"version/{meta['name']}"
                )
    except Exception as exc:
        return f"warning: tracking: {Path(files[0]).name} not attached to run {run_id}: {R._one_line(exc)}"
    return None
