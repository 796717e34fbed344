"""MMoE's tasks: one head per task, each with a name (an output column), a label column and a type.

A team's tasks are click, like, finish, dwell, purchase, rating...: the ``tasks`` hyper-parameter lists them,
``[{"name": "liked", "label": "liked", "type": "binary"}, {"name": "rating", "label": "rating",
"type": "regression"}]``, and everything downstream follows from it: the output columns (task names, in this
order), the label columns the pipeline reads and checks, the loss (logistic for binary, squared error on the
standardised target for regression, weighted per task) and the held-out metrics (AUC/logloss; RMSE next to
predicting the mean). The default is the contract's three heads ctr, watch_time and gmv.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.errors import ExporterError
from exporter.models.base import BINARY, LABEL_KINDS, REGRESSION, LabelNeed
from exporter.training import metrics as M

#: contract section 1: mmoe's default heads (the synthetic click log has these labels)
DEFAULT_TASKS: list[dict[str, str]] = [
    {"name": "ctr", "label": "label", "type": BINARY},
    {"name": "watch_time", "label": "watch_time", "type": REGRESSION},
    {"name": "gmv", "label": "gmv", "type": REGRESSION},
]
#: added to the error for a missing label column of a default task: mmoe's heads are the data's to name
DEFAULT_TASKS_HINT = (
    "these are mmoe's default tasks (ctr: binary on the label column; watch_time, gmv: regression); name the "
    'tasks of this data instead, e.g. --param \'tasks=[{"name": "ctr", "label": "label", "type": "binary"}, '
    '{"name": "rating", "label": "rating", "type": "regression"}]\' (notebook: the parameter tasks = [...])'
)
_KEYS = ("name", "label", "type", "weight")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
EXAMPLE = (
    '[{"name": "liked", "label": "liked", "type": "binary"}, '
    '{"name": "rating", "label": "rating", "type": "regression"}]'
)


@dataclass(frozen=True)
class Task:
    """One head: its output column ``name``, the data's ``label`` column, ``binary`` or ``regression``, loss weight."""

    name: str
    label: str
    type: str
    weight: float = 1.0

    @property
    def binary(self) -> bool:
        return self.type == BINARY

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "type": self.type, "weight": self.weight}


def _fail(message: str) -> None:
    raise ExporterError(f"hyper-parameter tasks: {message}; expected a list like {EXAMPLE}")


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ExporterError(f"{where} must be a non-negative number, got {value!r}")
    return float(value)


#: most tasks (heads) one model trains
MAX_TASKS = 32


def parse_tasks(value: Any, task_weights: Any = None) -> list[Task]:
    """The tasks of ``value`` (a list of objects, or its JSON text) with ``task_weights`` applied.

    ``task_weights`` is ``None``, ``{task name: weight}`` or a list of weights in task order; a task may
    carry its own ``weight`` instead (not both). Every mistake is one line naming the task and the key.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            _fail(f"{value[:40]!r} is not JSON")
    if not isinstance(value, (list, tuple)) or not value:
        _fail(f"got {value!r}")
    if len(value) > MAX_TASKS:
        _fail(f"got {len(value)} tasks; at most {MAX_TASKS}")
    tasks: list[Task] = []
    for i, raw in enumerate(value, start=1):
        where = f"task {i}"
        if not isinstance(raw, Mapping):
            _fail(f"{where} must be an object with name, label and type, got {raw!r}")
        unknown = sorted(set(map(str, raw)) - set(_KEYS))
        if unknown:
            _fail(f"{where} has unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            _fail(f"{where} needs a name of letters, digits, '_', '.' or '-' (starting with a letter), got {name!r}")
        where = f"task {i} ({name!r})"
        label = raw.get("label", name)
        if not isinstance(label, str) or not label.strip():
            _fail(f"{where}: label must be a column name, got {label!r}")
        kind = raw.get("type")
        if kind not in LABEL_KINDS:
            _fail(f"{where}: type must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
        weight = _weight(raw["weight"], f"hyper-parameter tasks: {where}: weight") if "weight" in raw else None
        tasks.append(Task(name, label, kind, 1.0 if weight is None else weight))
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(f"task names must be distinct (they are the output columns), {', '.join(dupes)} repeats")
    tasks = _apply_weights(tasks, value, task_weights)
    if not any(t.weight > 0 for t in tasks):
        raise ExporterError("task weights are all zero: at least one task must have a positive weight")
    return tasks


def _apply_weights(tasks: list[Task], raw_tasks: Sequence[Any], task_weights: Any) -> list[Task]:
    if task_weights is None:
        return tasks
    names = [t.name for t in tasks]
    if isinstance(task_weights, Mapping):
        unknown = [k for k in task_weights if k not in names]
        if unknown:
            raise ExporterError(
                f"hyper-parameter task_weights names unknown task(s) {', '.join(map(str, unknown))}; "
                f"the tasks are {', '.join(names)}"
            )
        given = {str(k): v for k, v in task_weights.items()}
    elif isinstance(task_weights, (list, tuple)):
        if len(task_weights) != len(tasks):
            raise ExporterError(
                f"hyper-parameter task_weights lists {len(task_weights)} weight(s) for "
                f"{len(tasks)} tasks ({', '.join(names)})"
            )
        given = dict(zip(names, task_weights, strict=True))
    else:
        raise ExporterError(
            f"hyper-parameter task_weights must be None, {{task name: weight}} or a list of weights "
            f"in task order, got {task_weights!r}"
        )
    out = []
    for task, raw in zip(tasks, raw_tasks, strict=True):
        if task.name in given:
            if "weight" in raw:
                raise ExporterError(f"task {task.name!r} has a weight in tasks and in task_weights: give it once")
            task = Task(
                task.name,
                task.label,
                task.type,
                _weight(given[task.name], f"hyper-parameter task_weights[{task.name!r}]"),
            )
        out.append(task)
    return out


def from_hparams(hparams: Mapping[str, Any]) -> list[Task]:
    """The tasks of a run (the default heads when the hyper-parameters name none)."""
    return parse_tasks(hparams.get("tasks") or DEFAULT_TASKS, hparams.get("task_weights"))


def label_needs(tasks: Sequence[Task]) -> list[LabelNeed]:
    """One need per distinct label column, in task order (two tasks may read one column if their types agree)."""
    needs: dict[str, LabelNeed] = {}
    for t in tasks:
        seen = needs.get(t.label)
        if seen is not None and seen.kind != t.type:
            raise ExporterError(
                f"label column {t.label!r} is used as {seen.kind} ({seen.role}) and as {t.type} "
                f"(task {t.name!r}): one column cannot be both"
            )
        if seen is None:
            needs[t.label] = LabelNeed(t.label, t.type, f"label of task {t.name!r} ({t.type})")
    return list(needs.values())


def task_metrics(
    tasks: Sequence[Task], pred: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Per task: binary ``<name>_auc``, ``<name>_logloss``, ``<name>_base_rate``; regression ``<name>_rmse`` and
    ``<name>_rmse_baseline`` (predicting the held-out mean). ``pred`` and ``labels`` are keyed by task name."""
    out: dict[str, float] = {}
    for t in tasks:
        y, p = np.asarray(labels[t.name], dtype=np.float64), np.asarray(pred[t.name], dtype=np.float64)
        if t.binary:
            out[f"{t.name}_auc"] = M.auc(y, p)
            out[f"{t.name}_logloss"] = M.logloss(y, p)
            out[f"{t.name}_base_rate"] = float(np.mean(y)) if len(y) else float("nan")
        else:
            out[f"{t.name}_rmse"] = M.rmse(y, p)
            out[f"{t.name}_rmse_baseline"] = M.rmse(y, np.full(len(y), np.mean(y))) if len(y) else float("nan")
    return out


def check(value: Any, task_weights: Any = None) -> None:
    """The hyper-parameter rule of ``tasks`` (and ``task_weights``): raises on any mistake."""
    tasks = parse_tasks(value, task_weights)
    label_needs(tasks)
