"""Where runs are tracked: the embedded SQLite store beside the artifacts tree, or a team's MLflow server.

Every export is tracked unless told not to (``--no-tracking``, ``EXPORTER_TRACKING=off``). Without a URI the
store is ``<artifacts>/../mlruns/mlflow.db`` (run artifacts in ``mlruns/artifacts/``): outside the artifacts
tree, so Triton, KServe, ``verify`` and ``serve`` never see it, and no server is needed.
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` name another store (``http://...``, ``sqlite:///...``).

MLflow is imported only here and only when a run is tracked: its import costs about a second, which
``--help``, ``serve`` and an export with ``--no-tracking`` never pay.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError

#: the store's directory beside the artifacts tree, its database file and its run-artifact directory
STORE_DIR = "mlruns"
DB_FILE = "mlflow.db"
RUN_ARTIFACTS_DIR = "artifacts"
#: the environment variable that turns tracking off (``off``, ``0``, ``false``, ``no``)
SWITCH_ENV = "EXPORTER_TRACKING"
URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
#: how long a tracking server may take to answer one request, and how often MLflow retries it: bounded, so an
#: unreachable server costs seconds, not MLflow's minutes of back-off (a value set in the environment wins)
HTTP_TIMEOUT_SECONDS = 10
HTTP_MAX_RETRIES = 1
#: the connect check before any MLflow call
CONNECT_TIMEOUT_SECONDS = 3.0


class TrackingUnavailable(ExporterError):
    """The tracking store cannot be reached or written: an export goes on with a one-line warning; ``track``,
    ``runs`` and ``tune``, which exist for the store, exit 5."""

    exit_code = 5


@dataclass(frozen=True)
class Store:
    """A tracking store: its URI, and for the embedded one the directory it lives in."""

    uri: str
    directory: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.directory is not None

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of an SQLite store."""
        return Path(self.uri[len("sqlite:///") :]) if self.uri.startswith("sqlite:///") else None

    @property
    def artifact_location(self) -> str | None:
        """Where the embedded store's new experiments keep their runs' files."""
        return (self.directory / RUN_ARTIFACTS_DIR).resolve().as_uri() if self.directory is not None else None

    def shown(self) -> str:
        """The URI with any user name and password removed: what summaries, metadata.json and the card show."""
        return redact(self.uri)


def enabled(no_tracking: bool = False) -> bool:
    """Tracking is on unless ``--no-tracking`` or ``EXPORTER_TRACKING=off`` say otherwise."""
    if no_tracking:
        return False
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def embedded_dir(artifacts: str | os.PathLike[str]) -> Path:
    """The embedded store of an artifacts tree: ``mlruns/`` in the directory that holds the tree."""
    return Path(os.path.abspath(artifacts)).parent / STORE_DIR


def resolve(artifacts: str | os.PathLike[str], uri: str | None = None) -> Store:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store beside ``artifacts``."""
    uri = uri if uri is not None else os.environ.get(URI_ENV) or None
    if uri is None:
        directory = embedded_dir(artifacts)
        return Store(f"sqlite:///{directory / DB_FILE}", directory)
    check_uri(uri)
    if uri.startswith("sqlite:///"):
        return Store(uri, Path(uri[len("sqlite:///") :]).parent)
    return Store(uri)


def check_uri(uri: str) -> None:
    """A tracking URI MLflow can use: ``http(s)://host[:port]``, ``sqlite:///path``, ``file:`` or databricks."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if not uri.strip() or scheme not in ("http", "https", "sqlite", "file", "databricks", "postgresql", "mysql", ""):
        raise ExporterError(
            f"--tracking-uri {uri!r} is not a tracking URI: expected http(s)://HOST:PORT, sqlite:///PATH or a directory"
        )


def redact(uri: str) -> str:
    """``uri`` without credentials in its network location (``https://user:token@host`` -> ``https://host``)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return uri


def portable_uri(store: Store, artifacts: str | os.PathLike[str]) -> str:
    """How metadata.json names the store: a server's URI (no credentials), or the embedded store relative to
    the directory holding the artifacts tree (``sqlite:///mlruns/mlflow.db``): no machine's absolute paths."""
    if store.directory is not None and store.directory == embedded_dir(artifacts):
        return f"sqlite:///{STORE_DIR}/{DB_FILE}"
    return store.shown()


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow's HTTP timeout and retries bounded for this process (unless the environment sets them): set once
    and kept, since a warm-up thread and the main thread may both be calling MLflow."""
    for key, value in (
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_SECONDS),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_MAX_RETRIES),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1),
    ):
        os.environ.setdefault(key, str(value))
    yield


def check_reachable(store: Store) -> None:
    """A server that does not accept connections fails here within :data:`CONNECT_TIMEOUT_SECONDS`."""
    parts = urllib.parse.urlsplit(store.uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except OSError as exc:
        raise TrackingUnavailable(f"tracking server {store.shown()} is unreachable ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _init_lock(directory: Path) -> Iterator[None]:
    """One process at a time creates the embedded database's tables (two first exports would race)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".init.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def pointed_at(store: Store) -> Iterator[Any]:
    """MLflow's module-level API (``mlflow.onnx.log_model``, artifact downloads) aimed at ``store`` for the calls
    inside, and back afterwards. ``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI`` (and the registry's
    variable) for the whole process: left set, the next export of the same process (a notebook's kernel) would log
    into this store instead of the one beside its own artifacts."""
    mlflow = mlflow_module()
    saved = {name: os.environ.get(name) for name in (URI_ENV, REGISTRY_ENV)}
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def mlflow_module() -> Any:
    """``mlflow``, imported on first use (about a second), its chatty loggers quietened and its usage
    telemetry off (an export makes no network calls but to the tracking server it was given)."""
    import logging

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is in requirements.txt
        raise TrackingUnavailable(f"MLflow is not installed ({exc}): pip install -r requirements.txt") from None
    for name in ("mlflow", "alembic"):  # after the import, which sets mlflow's own level
        logging.getLogger(name).setLevel(logging.ERROR)
    return mlflow


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def client(store: Store) -> Any:
    """An ``MlflowClient`` of ``store`` (tracking and registry), the embedded database created if new; one per
    store and process (opening the SQLite store checks its schema, which takes a while)."""
    with _clients_lock:  # a warm-up thread may be opening it: wait for that one
        if store.uri not in _clients:
            _clients[store.uri] = _open_client(store)
        return _clients[store.uri]


def warm_up(store: Store) -> threading.Thread:
    """Import MLflow and open (or create) the store in a background thread while the export trains: the
    seconds of both overlap training instead of adding to it. A failure here is silent: opening the run
    tries again and reports it."""

    def work() -> None:
        try:
            with bounded_http():
                client(store)
                import mlflow.onnx  # noqa: F401 - the flavor the run logs the model with
        except Exception:
            pass

    thread = threading.Thread(target=work, name="tracking-warm-up", daemon=True)
    thread.start()
    return thread


def _open_client(store: Store) -> Any:
    check_reachable(store)
    mlflow = mlflow_module()
    if store.directory is not None:
        with _init_lock(store.directory):
            path = store.sqlite_path
            if path is not None and not path.exists():
                _create_sqlite(mlflow, path)
            try:
                c = mlflow.MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
                c.search_experiments(max_results=1)  # creates the tables under the lock (a store named elsewhere)
            except Exception as exc:
                if path is not None and "already exists" in str(exc):
                    raise TrackingUnavailable(
                        f"tracking store {store.shown()} was left half-created (a process stopped while creating its "
                        f"tables: {str(exc).splitlines()[0][:120]}); if it holds no runs you need, delete {path} and "
                        "the next run creates it again"
                    ) from None
                raise
    else:
        c = mlflow.MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    return c


def _create_sqlite(mlflow: Any, path: Path) -> None:
    """Create an SQLite store whole or not at all: its tables are made in a file beside it, which is then linked
    to its name (a process stopped half-way through MLflow's migrations left a store no later run could open);
    called under :func:`_init_lock`, so any such file left over is a stopped process's."""
    for stale in path.parent.glob(f".{path.name}.new-*"):
        stale.unlink(missing_ok=True)
    fresh = path.with_name(f".{path.name}.new-{os.getpid()}")
    uri = f"sqlite:///{fresh}"
    try:
        mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
        try:
            os.link(fresh, path)  # never replaces a store another process made meanwhile
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a rename, under the lock every exporter takes
            if not path.exists():
                os.rename(fresh, path)
    finally:
        fresh.unlink(missing_ok=True)


def experiment_id(c: Any, store: Store, name: str) -> str:
    """The id of experiment ``name``, created (for the embedded store with its artifacts beside the database)."""
    found = c.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(c.create_experiment(name, artifact_location=store.artifact_location))
    except Exception:  # another process created it meanwhile
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)
