"""Experiment tracking: every export is an MLflow run (an embedded SQLite store beside the artifacts tree by
default, or a team's server), its model registered; ``runs`` compares them and ``tune`` searches
hyper-parameters with Optuna, each trial a nested run.

Above :mod:`exporter.export` in the layers: the export pipeline never needs MLflow to write an artifact. MLflow
and Optuna are imported lazily, inside the functions that use them (see docs/tracking.md).
"""
