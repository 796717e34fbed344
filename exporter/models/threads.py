"""How many threads training uses, and the OpenMP setting that lets several threads share a loaded machine.

torch's CPU build parallelises with GNU OpenMP (``torch.__config__.parallel_info()``: "ATen parallel backend:
OpenMP", its own ``libgomp``; MKL runs on the same runtime), and so does xgboost. By default a libgomp thread
that reaches the end of a parallel region spins (``GOMP_SPINCOUNT``, 300,000 iterations) before it sleeps.
On a machine whose cores other processes share, the thread it waits for is often descheduled, so the spinning
thread burns its time slice and delays that thread further: on a shared 2-core machine with a load of ~9, a
DeepFM step took 450 ms on two threads against 15 ms on one (docs/benchmark-history.md, "Training speed"). With
``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep at once, and two threads beat one again under load.

libgomp reads the variable once, when torch (or xgboost) loads it, so :func:`prefer_passive_wait` runs when
``exporter.models`` is first imported, before any model module imports a framework. A value the user set is
kept; a process that imported torch before this package keeps torch's setting (metadata records which).

How many threads a torch model trains on by default depends on its batch (:func:`torch_threads`): torch splits
each operation of a step across its threads, and the operations of these networks on a batch of a few hundred rows
take microseconds, less than handing out and joining the parts. Measured on an idle 2-core machine
(docs/benchmarks.md, "Training speed: threads"): deepfm on 300,000 rows trained 0.62x the rows/s of one thread on
two at batch 256, 0.78x at 1,024, 1.03x at 4,096; at batch 256 on 100,000 rows mmoe 0.55x, two_tower 0.69x. On a
2M-row log two threads were 5-6 % faster for deepfm, whose dense embedding tables are large, and slower for mmoe
and two_tower. Each Spark rank trains on one thread for the same reason. xgboost's histogram building splits well
and uses every core.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from exporter.errors import ExporterError

WAIT_POLICY_VAR = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"
#: most threads a run may ask for (``--threads``, xgb's ``n_jobs``)
MAX_THREADS = 256
#: rows of a batch per intra-op thread of a torch model's training (:func:`torch_threads`)
ROWS_PER_THREAD = 2_048
#: what OpenMP waits with, decided once at import (see :func:`wait_policy`)
_POLICY: str | None = None


def prefer_passive_wait() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, remembered for :func:`wait_policy`."""
    global _POLICY
    if _POLICY is not None:
        return
    frameworks_loaded = "torch" in sys.modules or "xgboost" in sys.modules
    before = os.environ.get(WAIT_POLICY_VAR)
    if before is None and not frameworks_loaded:
        os.environ[WAIT_POLICY_VAR] = PASSIVE
    if before is not None:
        _POLICY = before
    elif frameworks_loaded:
        _POLICY = "default (torch or xgboost was imported before exporter.models)"
    else:
        _POLICY = PASSIVE


def wait_policy() -> str:
    """The OpenMP wait policy training runs with (metadata ``training.openmp_wait_policy``)."""
    prefer_passive_wait()
    return str(_POLICY)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(value: object, where: str = "--threads") -> int | None:
    """``None`` (the default: :func:`torch_threads`, :func:`xgboost_threads`) or a thread count from 1 to
    :data:`MAX_THREADS`; anything else is exit 2."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise ExporterError(
            f"{where} must be a whole number of threads from 1 to {MAX_THREADS} (or unset for the default; "
            f"{available_cores()} cores here), got {value!r}"
        )
    return value


def resolve_threads(value: int | None) -> int:
    """``value``, else every core."""
    return check_threads(value) or available_cores()


def xgboost_threads(n_jobs: Any, value: int | None) -> int:
    """The threads xgboost trains on: its ``n_jobs`` hyper-parameter when set, else the run's ``--threads``, else
    every core."""
    return int(n_jobs) if n_jobs is not None else resolve_threads(value)


def torch_threads(value: int | None, batch_size: int) -> int:
    """The intra-op threads a torch model trains on: ``value``, else one per :data:`ROWS_PER_THREAD` rows of its
    batch (at least one, at most every core): below that a step's operations are too small to split."""
    return check_threads(value) or max(1, min(available_cores(), int(batch_size) // ROWS_PER_THREAD))
