"""The Optuna study a search runs in: its name, what its trials measured, and a sampler that never repeats a point.

A study is continued by name (``--study``); its trials' values compare only when they trained the same model on the
same data, so the study records both and a continuation that differs is refused. The
sampler is seeded by the run's seed and the trials the study already holds: a fresh study is reproducible, a
continued one does not draw its first points again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from exporter.errors import ExporterError

#: the study's user attributes that say what its trials measured
IDENTITY_KEYS = ("model", "data")
#: seconds between a running trial's heartbeats; a trial silent for twice as long belongs to a process that died
#: (killed, out of memory) and is marked failed when a search of its study next starts a trial
HEARTBEAT_SECONDS = 60


def identity(model: str, data: str) -> dict[str, str]:
    """What a study's trials measured: the model (repository name) and the data."""
    return {"model": model, "data": data}


def open_study(
    name: str | None, model: str, storage: Any, seed: int, ident: Mapping[str, str], pruner: Any
) -> tuple[Any, str]:
    """The study (created, or continued when ``name`` is given) and its name.

    Without a name, a new study ``MODEL-YYYYmmdd-HHMMSS`` is created (``-2``, ``-3``, ... when a search started in
    the same second holds that name: two searches never share a study by accident)."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed)
    storage = _with_heartbeats(storage)
    if name is None:
        base = f"{model}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        for n in range(1, 1000):
            candidate = base if n == 1 else f"{base}-{n}"
            try:
                study = optuna.create_study(
                    study_name=candidate, storage=storage, direction="maximize", sampler=sampler, pruner=pruner
                )
            except optuna.exceptions.DuplicatedStudyError:
                continue
            _record(study, ident)
            return study, candidate
        raise ExporterError(f"no free study name beside {base}: name one with --study")
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
    )
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise ExporterError(f"study {name!r} minimises its objective; a search here maximises: choose another --study")
    if study.trials:
        check_identity(study, name, ident)
        # continued: the seed moves on with the trials held (and with this process when another one is running
        # trials of it now), so its sampler draws new points
        running = any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials) + (os.getpid() if running else 0))
    else:
        _record(study, ident)
    return study, name


def _with_heartbeats(storage: Any) -> Any:
    """A database URL as Optuna's storage with heartbeats: without them a trial whose process was killed stays
    RUNNING in the study for ever (Ctrl-C and SIGTERM fail it themselves)."""
    if not isinstance(storage, str):
        return storage
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 and stable since 2.9
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RDBStorage(storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=2 * HEARTBEAT_SECONDS)


def check_identity(study: Any, name: str, ident: Mapping[str, str]) -> None:
    """Refuse to continue a study whose trials measured another model or other data."""
    held = study.user_attrs
    for key in IDENTITY_KEYS:
        if key in held and held[key] != ident[key]:
            raise ExporterError(
                f"study {name!r} holds trials of {key} {held[key]}, this search is of {key} {ident[key]}: its "
                "trials' values do not compare with these; choose another --study (or leave it out for a new one)"
            )


def best_trial(study: Any) -> Any | None:
    """The study's best complete trial (of any session), or None."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _record(study: Any, ident: Mapping[str, str]) -> None:
    for key in IDENTITY_KEYS:
        study.set_user_attr(key, ident[key])
