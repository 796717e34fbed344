"""Hyper-parameters: the rules their values must follow, checked before any training.

A model declares its defaults on its class; every default must have a rule, from the common table
:data:`RULES` or the model's own ``hparam_rules`` (a test fails for a registered model that has one
without a rule), so no setting reaches a trainer unchecked. A model's own rule may be a callable
``(value, all hparams) -> bool`` (mmoe's ``tasks``), so this module knows no model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from exporter.errors import ExporterError
from exporter.training import refit as RF

#: a rule name of :func:`check_hparam_values`, or a model's own check (it may raise a more precise error)
Rule = str | Callable[[Any, Mapping[str, Any]], bool]


class HasHparams(Protocol):
    """What the rules read of a model (:class:`exporter.models.base.Model` has it, as class variables).

    Read-only properties, so that class variables satisfy the protocol as well as instance attributes.
    """

    @property
    def name(self) -> str: ...

    @property
    def default_hparams(self) -> Mapping[str, Any]: ...

    @property
    def hparam_rules(self) -> Mapping[str, tuple[Rule, str]]: ...


def rule_for(spec: HasHparams, key: str) -> tuple[Rule, str]:
    """(rule, what is expected) of one hyper-parameter of the model ``spec``."""
    rule = spec.hparam_rules.get(key) or RULES.get(key)
    if rule is None:
        raise ExporterError(f"hyper-parameter {key} of {spec.name} has no rule: add one to its class's hparam_rules")
    return rule


#: old name -> the hyper-parameter it now sets (``epochs`` became ``max_epochs`` when early stopping came)
ALIASES: dict[str, str] = {"epochs": "max_epochs"}


def _apply_aliases(spec: HasHparams, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with old names renamed (a model that still declares the old name keeps it)."""
    out = dict(overrides)
    for old, new in ALIASES.items():
        if old in out and old not in spec.default_hparams and new in spec.default_hparams:
            if new in out:
                raise ExporterError(
                    f"hyper-parameters {old} and {new} of {spec.name} are the same setting ({old} is the old name "
                    f"of {new}): give one"
                )
            out[new] = out.pop(old)
    return out


def resolve_hparams(spec: HasHparams, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The model's defaults with ``overrides`` applied, every key known and every value checked."""
    overrides = _apply_aliases(spec, overrides)
    unknown = sorted(set(overrides) - set(spec.default_hparams))
    if unknown:
        raise ExporterError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for {spec.name}; known: {', '.join(spec.default_hparams)}"
        )
    merged = {**spec.default_hparams, **_split_column_lists(spec, overrides)}
    check_hparam_values(spec, merged)
    return merged


def _split_column_lists(spec: HasHparams, overrides: dict[str, Any]) -> dict[str, Any]:
    """A list of columns given as text, ``"user_id,age"`` (as ``--exclude-columns`` takes it), becomes a list."""
    out = dict(overrides)
    for key, value in overrides.items():
        if key in spec.default_hparams and isinstance(value, str) and rule_for(spec, key)[0] == "columns":
            out[key] = [c.strip() for c in value.split(",")]
    return out


#: the largest value of each integer hyper-parameter (and of each width of ``hidden``): beyond it a run
#: allocates more than a machine holds or trains for hours
UPPER: dict[str, int] = {
    "epochs": 1_000,
    "max_epochs": 1_000,
    "patience": 1_000,
    "early_stopping_rounds": 10_000,
    "batch_size": 1_048_576,
    "n_estimators": 10_000,
    "max_depth": 30,
    "embed_dim": 1_024,
    "field_embed_dim": 1_024,
    "n_experts": 64,
    "expert_dim": 4_096,
    "tower_dim": 4_096,
    "n_jobs": 256,
    "hidden": 4_096,
}
#: most layers in ``hidden``
MAX_LAYERS = 16


def _int_rule(key: str) -> tuple[str, str]:
    return "positive_int", f"a positive integer up to {UPPER[key]:,}"


#: hyper-parameter -> (rule, what is expected); ints and lists follow the type of the model's default
RULES: dict[str, tuple[str, str]] = {
    **{key: _int_rule(key) for key in UPPER if key != "hidden"},
    "patience": (
        "patience",
        "0 (no early stopping: every epoch runs and the last is kept) or a positive integer up to "
        f"{UPPER['patience']:,}",
    ),
    "learning_rate": ("learning_rate", "a number in (0, 10)"),
    "hidden": (
        "widths",
        f"a positive integer up to {UPPER['hidden']:,}, or a non-empty list of at most {MAX_LAYERS} of them",
    ),
    "subsample": ("fraction", "a number in (0, 1]"),
    "colsample_bytree": ("fraction", "a number in (0, 1]"),
    "min_child_weight": ("non_negative", "a non-negative number"),
    "reg_lambda": ("non_negative", "a non-negative number (L2 penalty on leaf weights)"),
    "weight_decay": (
        "decay",
        "a non-negative number, or auto (the model's scale divided by the training rows, at most 1e-3)",
    ),
    "ema_decay": (
        "ema_decay",
        "0 (no averaging: the weights of the kept epoch as they were trained) or a number in (0, 1), the weight of "
        "the old average per optimiser step (0.999: about the last 1,000 steps)",
    ),
    "lr_schedule": (
        "one_of:plateau|none",
        "plateau (halve the learning rate after an epoch without a better validation loss) or none",
    ),
    "embedding_gradients": (
        "one_of:auto|sparse|dense",
        "auto (sparse for large embedding tables, dense for small ones), sparse (row-wise Adam: only the rows a "
        "batch looks up move) or dense (every row, every step)",
    ),
    "dtype": (
        "one_of:float32|float64",
        "float32 or float64: what the network trains and computes in (the graph's tensors stay FP64)",
    ),
    "refit": ("refit", RF.EXPECTED),
    "user_columns": ("columns", "None or a non-empty list of column names (or their names joined by commas)"),
    "item_columns": ("columns", "None or a non-empty list of column names (or their names joined by commas)"),
}


def check_hparam_values(spec: HasHparams, hparams: Mapping[str, Any]) -> None:
    """Reject architecture and booster settings that would only fail (or silently misbehave) inside training.

    ``hidden`` must have the shape of the model's default (one width for two_tower, a list for deepfm).
    """

    def positive_int(v: Any, upper: int | None = None) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= (upper or v)

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))

    for key, value in hparams.items():
        if key not in spec.default_hparams:
            continue  # unknown names are resolve_hparams' to report
        rule, expected = rule_for(spec, key)
        default = spec.default_hparams.get(key)
        if callable(rule):
            ok = bool(rule(value, hparams))
        elif rule == "positive_int":
            ok = positive_int(value, UPPER.get(key))
        elif rule == "patience":
            ok = (
                value == 0 and isinstance(value, int) and not isinstance(value, bool) or positive_int(value, UPPER[key])
            )
        elif rule == "widths":
            widest = UPPER["hidden"]
            if isinstance(default, list):
                ok = (
                    isinstance(value, list)
                    and 1 <= len(value) <= MAX_LAYERS
                    and all(positive_int(w, widest) for w in value)
                )
                expected = (
                    f"a non-empty list of positive integers up to {widest:,} (at most {MAX_LAYERS} layers), "
                    "e.g. [64, 32]"
                )
            else:
                ok = positive_int(value, widest)
                expected = f"a positive integer up to {widest:,}"
        elif rule == "fraction":
            ok = number(value) and 0 < value <= 1
        elif rule == "learning_rate":
            ok = number(value) and 0 < value < 10
        elif rule == "non_negative":
            ok = number(value) and value >= 0
        elif rule == "ema_decay":
            ok = number(value) and 0 <= value < 1
        elif rule == "refit":
            ok = RF.valid_value(value)
        elif rule == "decay":
            ok = value == "auto" or (number(value) and value >= 0)
        elif rule == "columns":
            names = value.split(",") if isinstance(value, str) else value
            ok = value is None or (
                isinstance(names, list) and bool(names) and all(isinstance(c, str) and c.strip() for c in names)
            )
        elif rule == "positive_number":
            ok = number(value) and value > 0
        elif rule == "bool":
            ok = isinstance(value, bool)
        elif rule.startswith("one_of:"):
            ok = isinstance(value, str) and value in rule[len("one_of:") :].split("|")
        else:
            raise ExporterError(f"hyper-parameter {key} of {spec.name} has an unknown rule {rule!r}")
        if not ok:
            raise ExporterError(f"hyper-parameter {key} of {spec.name} must be {expected}, got {value!r}")


# ---------------------------------------------------------------------------------------------- memory
#: bytes per FP64 parameter while training: the value, its gradient, Adam's two moments and the weight average
TRAINING_BYTES_PER_PARAMETER = 8 * 5
#: bytes of one value of each compute dtype (hyper-parameter ``dtype``; xgb has none: 8)
DTYPE_BYTES = {"float32": 4, "float64": 8}
#: bytes per tree node of a boosted ensemble while it is built (split, value, statistics)
BYTES_PER_TREE_NODE = 64


def _int(hparams: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = hparams.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def parameter_estimate(hparams: Mapping[str, Any], cardinalities: list[int], train_rows: int) -> int:
    """Bytes the model's parameters take while training: the embedding tables (one row per category of every
    categorical column) and the dense layers, :data:`TRAINING_BYTES_PER_PARAMETER` each; for a boosted
    ensemble its trees' nodes (at most ``2^(max_depth+1)`` per tree, and no more than twice the rows).

    An estimate from the hyper-parameters the models share (``embed_dim``, ``field_embed_dim``, ``hidden``,
    ``n_experts``, ``expert_dim``, ``tower_dim``, ``tasks``, ``n_estimators``, ``max_depth``): what decides
    whether a run fits in memory, not an exact count.
    """
    if "n_estimators" in hparams:
        nodes = min(2 ** (_int(hparams, "max_depth", 6) + 1), 2 * max(train_rows, 1))
        return _int(hparams, "n_estimators") * nodes * BYTES_PER_TREE_NODE
    field = _int(hparams, "field_embed_dim") or _int(hparams, "embed_dim", 1)
    n_num = sum(1 for c in cardinalities if c == 0)
    width = n_num + (len(cardinalities) - n_num) * field  # the fields' flattened output
    params = sum(cardinalities) * field + 2 * n_num
    hidden = hparams.get("hidden")
    widths = [w for w in (hidden if isinstance(hidden, list) else [hidden]) if isinstance(w, int)]
    out = _int(hparams, "embed_dim", 1)
    if isinstance(hidden, int):  # two towers: fields -> hidden -> embedding, a table each
        params = 2 * (params + width * hidden + hidden * out)
    else:
        previous = width
        for w in widths:
            params += previous * w + w
            previous = w
        params += previous
    experts = _int(hparams, "n_experts")
    if experts:
        tasks = hparams.get("tasks")
        n_tasks = len(tasks) if isinstance(tasks, list) and tasks else 3
        expert, tower = _int(hparams, "expert_dim", 1), _int(hparams, "tower_dim", 1)
        params += experts * (width * expert + expert) + n_tasks * (width * experts + expert * tower + tower + 1)
    return params * TRAINING_BYTES_PER_PARAMETER * DTYPE_BYTES.get(str(hparams.get("dtype")), 8) // 8


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: ``MemAvailable`` of /proc/meminfo, else the free physical
    pages (``os.sysconf``); ``None`` where neither can be read."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(name: str, hparams: Mapping[str, Any], cardinalities: list[int], train_rows: int) -> None:
    """Refuse, before training, hyper-parameters whose parameters alone would not fit in the available memory."""
    need = parameter_estimate(hparams, cardinalities, train_rows)
    have = available_memory()
    if have is not None and need > have:
        raise ExporterError(
            f"hyper-parameters of {name} need about {need / 2**30:,.1f} GiB for the model's parameters while "
            f"training, but {have / 2**30:,.1f} GiB of memory are available: choose smaller "
            "embed_dim/hidden/n_experts/expert_dim/tower_dim (or n_estimators/max_depth)"
        )


# ---------------------------------------------------------------------------------------------- search space
#: kinds of a searched range: integers, numbers, numbers sampled on a log scale
SEARCH_KINDS = ("int", "float", "log")


def check_search_space(spec: HasHparams, space: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    """A search space ``{key: (kind, low, high)}`` every trial of which passes the parameters' rules: known
    keys of the model, not also fixed with ``--param``, ``low < high``, a log range above 0, and both bounds
    valid values of the parameter (so no trial can ask for what training would refuse)."""
    if not space:
        raise ExporterError(f"{spec.name} declares nothing to tune: give ranges with --search KEY=LOW:HIGH")
    for key, entry in space.items():
        if key not in spec.default_hparams:
            raise ExporterError(
                f"cannot tune '{key}': not a hyper-parameter of {spec.name}; known: {', '.join(spec.default_hparams)}"
            )
        if key in fixed:
            raise ExporterError(f"'{key}' is both fixed (--param) and searched (--search): choose one")
        if not (isinstance(entry, (tuple, list)) and len(entry) == 3 and entry[0] in SEARCH_KINDS):
            raise ExporterError(f"search range of '{key}' must be (kind, low, high) with kind in {SEARCH_KINDS}")
        kind, low, high = entry
        default = spec.default_hparams[key]
        takes_numbers = rule_for(spec, key)[0] == "decay"  # "auto" by default, a number when searched
        if (isinstance(default, bool) or not isinstance(default, (int, float))) and not takes_numbers:
            raise ExporterError(f"cannot tune '{key}' of {spec.name}: its value {default!r} is not a number")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (low, high))
        if not numbers or not low < high:
            raise ExporterError(f"search range of '{key}' must be two numbers LOW < HIGH, got {low!r}:{high!r}")
        integer = kind == "int" or (isinstance(default, int) and not isinstance(default, bool))
        if integer and not (float(low).is_integer() and float(high).is_integer()):
            raise ExporterError(f"search range of '{key}' (an integer) must have integer bounds, got {low!r}:{high!r}")
        if kind == "log" and low <= 0:
            raise ExporterError(f"log-scale search range of '{key}' must be above 0, got {low!r}:{high!r}")
        for bound in (low, high):
            value = int(bound) if isinstance(default, int) else float(bound)
            check_hparam_values(spec, {key: value})
