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


def resolve_hparams(spec: HasHparams, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The model's defaults with ``overrides`` applied, every key known and every value checked."""
    unknown = sorted(set(overrides) - set(spec.default_hparams))
    if unknown:
        raise ExporterError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for {spec.name}; known: {', '.join(spec.default_hparams)}"
        )
    merged = {**spec.default_hparams, **overrides}
    check_hparam_values(spec, merged)
    return merged


#: hyper-parameter -> (rule, what is expected); ints and lists follow the type of the model's default
RULES: dict[str, tuple[str, str]] = {
    "epochs": ("positive_int", "a positive integer"),
    "batch_size": ("positive_int", "a positive integer"),
    "n_estimators": ("positive_int", "a positive integer"),
    "max_depth": ("positive_int", "a positive integer"),
    "learning_rate": ("learning_rate", "a number in (0, 10)"),
    "embed_dim": ("positive_int", "a positive integer"),
    "field_embed_dim": ("positive_int", "a positive integer"),
    "n_experts": ("positive_int", "a positive integer"),
    "expert_dim": ("positive_int", "a positive integer"),
    "tower_dim": ("positive_int", "a positive integer"),
    "n_jobs": ("positive_int", "a positive integer"),
    "hidden": ("widths", "a positive integer or a non-empty list of positive integers"),
    "subsample": ("fraction", "a number in (0, 1]"),
    "colsample_bytree": ("fraction", "a number in (0, 1]"),
    "min_child_weight": ("non_negative", "a non-negative number"),
    "weight_decay": ("non_negative", "a non-negative number"),
    "user_columns": ("columns", "None or a non-empty list of column names"),
    "item_columns": ("columns", "None or a non-empty list of column names"),
}


def check_hparam_values(spec: HasHparams, hparams: Mapping[str, Any]) -> None:
    """Reject architecture and booster settings that would only fail (or silently misbehave) inside training.

    ``hidden`` must have the shape of the model's default (one width for two_tower, a list for deepfm).
    """

    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

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
            ok = positive_int(value)
        elif rule == "widths":
            if isinstance(default, list):
                ok = isinstance(value, list) and bool(value) and all(positive_int(w) for w in value)
                expected = "a non-empty list of positive integers, e.g. [64, 32]"
            else:
                ok = positive_int(value)
                expected = "a positive integer"
        elif rule == "fraction":
            ok = number(value) and 0 < value <= 1
        elif rule == "learning_rate":
            ok = number(value) and 0 < value < 10
        elif rule == "non_negative":
            ok = number(value) and value >= 0
        elif rule == "columns":
            ok = value is None or (
                isinstance(value, list) and bool(value) and all(isinstance(c, str) and c.strip() for c in value)
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
