"""The notebooks' tracking cells: the export as an MLflow run (its plots attached), and the runs side by side.

A notebook's export is one call (:func:`export`): the run opens just before the artifact is written (so
metadata.json names it), the version is written, then the run gets the parameters, metrics, training curve,
the notebook's plots and the model. The last cell (:func:`show_runs`) shows the model's recent runs as a table
and the judged metric across them. ``python -m exporter notebooks`` attaches the executed notebook afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.export.repository import write_text_atomic
from exporter.tools.notebook_params import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from exporter.export.pipeline import Evaluation, ExportedArtifact, Prepared
    from exporter.models import Trained

#: runs shown by :func:`show_runs`
RUNS_SHOWN = 10
#: environment variable naming the file where a notebook's export records ``{model name: version}`` for the
#: notebooks runner (it exports to the next free version when it writes, and the runner stores the report there)
VERSIONS_ENV = "EXPORTER_NOTEBOOK_VERSIONS"


def _check(tracking: Any, tracking_uri: Any) -> None:
    from exporter.errors import ExporterError
    from exporter.tracking.store import check_uri

    if not isinstance(tracking, bool):
        raise ParameterError(f"tracking must be True or False, got {tracking!r}")
    if tracking_uri is not None and (not isinstance(tracking_uri, str) or not tracking_uri.strip()):
        raise ParameterError(f"tracking_uri must be a tracking URI (string) or None, got {tracking_uri!r}")
    if tracking_uri is not None:
        try:
            check_uri(tracking_uri)
        except ExporterError as exc:
            raise ParameterError(f"tracking_uri: {exc}") from None


def train(prep: Prepared, *, tune_trials: int = 0, tracking: bool = True, tracking_uri: str | None = None) -> Trained:
    """``pipeline.fit`` (load mode: the loaded model), or with ``tune_trials`` > 0 the hyper-parameter search of
    ``python -m exporter tune``: that many trials, chosen on the validation rows, each a nested MLflow run under
    a tuning run when tracking is on. ``prep`` then takes the chosen trial's hyper-parameters and its
    ``tuning`` record (metadata.json), so the notebook's own cells evaluate and export the chosen model."""
    from exporter.errors import ExporterError
    from exporter.export import pipeline
    from exporter.tracking.store import enabled
    from exporter.tracking.tune import SearchOptions, run_search

    if isinstance(tune_trials, bool) or not isinstance(tune_trials, int) or tune_trials < 0:
        raise ParameterError(f"tune_trials must be 0 (no search) or a positive integer, got {tune_trials!r}")
    _check(tracking, tracking_uri)  # before training: the export cell uses them after it
    if not tune_trials:
        return pipeline.fit(prep)
    if prep.fit_elsewhere is not None:
        raise ParameterError('tune_trials searches on this machine: set engine = "local", or tune_trials = 0')
    try:
        options = SearchOptions(tracking_uri=tracking_uri, tracking_enabled=tracking and enabled())
        found = run_search(prep, trials=tune_trials, options=options)
    except ExporterError as exc:
        from exporter.tools.notebook_params import notebook_terms

        raise ParameterError(notebook_terms(str(exc)).replace("--trials", "tune_trials")) from exc
    found.close()
    prep.hparams, prep.params = found.prep.hparams, found.prep.params
    return found.trained


def export(
    prep: Prepared,
    trained: Trained,
    evaluation: Evaluation,
    *,
    tracking: bool = True,
    tracking_uri: str | None = None,
) -> list[ExportedArtifact]:
    """``pipeline.export`` as an MLflow run (unless ``tracking`` is False or ``EXPORTER_TRACKING=off``); a store
    that cannot be reached is a warning, never a lost export."""
    from exporter.export import pipeline
    from exporter.tracking.runs import Extras
    from exporter.tracking.session import ExportTracking
    from exporter.tracking.store import enabled

    _check(tracking, tracking_uri)
    try:
        tracker = ExportTracking(prep.params.artifacts, tracking_uri, enabled=tracking and enabled())
    except Exception as exc:  # a malformed URI: named as the notebook's parameter
        raise ParameterError(f"tracking_uri: {exc}") from exc
    tracker.start(prep)
    try:
        exported = pipeline.export(prep, trained, evaluation)
    except BaseException:
        tracker.failed()
        raise
    record_versions(exported)  # for the notebooks runner, which stores this notebook beside them
    figures = _figures(trained, evaluation, exported) if tracker.run is not None else {}
    tracker.log([a.path for a in exported], Extras(history=trained.history, figures=figures))
    line = tracker.summary()
    if line:
        print(line)
    return exported


def record_versions(exported: Sequence[ExportedArtifact]) -> None:
    """In a kernel the notebooks runner started: write ``{model name: version}`` of what the export wrote to the
    file :data:`VERSIONS_ENV` names."""
    target = os.environ.get(VERSIONS_ENV)
    if target:
        write_text_atomic(Path(target), json.dumps({a.model_name: a.version for a in exported}))


def _figures(trained: Trained, evaluation: Evaluation, exported: Sequence[ExportedArtifact]) -> dict[str, Any]:
    """The notebook's plots, drawn again for the run (plain Figures: not shown in the notebook again)."""
    from exporter.tools import plots

    return {
        "training_curve.png": plots.training_curve(trained.history),
        "evaluation.png": plots.evaluation_plots(evaluation),
        "parity.png": plots.parity_scatter(exported),
    }


def show_runs(
    prep: Prepared, *, tracking: bool = True, tracking_uri: str | None = None, limit: int = RUNS_SHOWN
) -> Any:
    """The model's recent runs (``python -m exporter runs``'s table) and its judged metric across them."""
    from exporter.errors import ExporterError
    from exporter.tracking import compare
    from exporter.tracking.store import enabled, resolve

    _check(tracking, tracking_uri)
    if not (tracking and enabled()):
        print("tracking is off (tracking = False or EXPORTER_TRACKING=off): no runs to compare")
        return None
    store = resolve(prep.params.artifacts, tracking_uri)
    model = prep.params.model_name or prep.spec.name
    try:
        frame = compare.runs_frame(store, model, limit)
    except ExporterError as exc:  # the store unreachable, or none yet (the export could not log)
        print(f"runs not shown: {exc}")
        return None
    print(compare.format_table(frame, model, store))
    return compare.metric_plot(frame)


def attach_report(version_dir: Path, report: Path, tracking_uri: str | None = None) -> str | None:
    """Attach the executed notebook to the run its version's metadata.json names (``notebooks`` command);
    returns a warning line when it could not be attached, else ``None``."""
    from exporter.tracking.session import attach_files
    from exporter.tracking.store import enabled

    if not enabled():
        return None
    return attach_files(version_dir, [report], tracking_uri)
