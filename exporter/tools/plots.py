"""Matplotlib figures for the model notebooks: training curve, ROC / precision-recall / calibration or
predicted-vs-true per head, feature importance, recall@K, parity scatter.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, any backend). They are sized to
be read at notebook width (100 dpi, at most three panels a row, 10 pt text, units on the axes) while
staying light (few points, subsampled scatters); a notebook shows one by ending a cell with it. Axes name the
label by its column (and the value that is 1), never by what the built-in synthetic data happens to hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from exporter.export.pipeline import Evaluation, ExportedArtifact

DPI = 100
PANEL = (3.6, 3.0)  # inches per panel: three panels a row fill a notebook's width (~1000 px)
PANELS_PER_ROW = 3
MAX_POINTS = 1000
FONT = 10

#: the step-0 loss is clipped when including it would shrink the later steps to less than 1/this of the y-axis
STEP0_SQUASH = 2.0
#: feature importances shown per head
PLOT_IMPORTANCES = 10


def _figure(panels: int) -> tuple[Figure, list[Axes]]:
    """``panels`` axes, at most :data:`PANELS_PER_ROW` a row (unused cells of the last row removed)."""
    from matplotlib.figure import Figure

    cols = min(panels, PANELS_PER_ROW)
    rows = -(-panels // cols)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), dpi=DPI, layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[panels:]:
        ax.remove()
    axes = list(grid[:panels])
    for ax in axes:
        ax.tick_params(labelsize=FONT - 1)
    return fig, axes


def label_values(column: str, positive: object = None) -> tuple[str, str]:
    """How the two classes of a binary label are written on axes: ``("clicked = 1", "clicked = 0")``, or with a
    positive class ``("outcome = cp", "outcome ≠ cp")``."""
    if positive is None:
        return f"{column} = 1", f"{column} = 0"
    return f"{column} = {positive}", f"{column} \u2260 {positive}"


def _head(evaluation: Evaluation, head: str) -> tuple[str, str, object]:
    """(title name, label column, positive class) of a head, from the run's diagnostics (else the head's name)."""
    from exporter.tools.summary import head_name

    entry = ((evaluation.diagnostics or {}).get("heads") or {}).get(head) or {}
    column = str(entry.get("column") or head)
    return head_name(head, column), column, entry.get("positive_class")


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=FONT, transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _sample(n: int, seed: int = 0, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``limit`` points, the same every run."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def best_step(history: Sequence[Mapping[str, float]]) -> int | None:
    """The step with the lowest validation loss after training started: the epoch (round) early stopping kept."""
    points = [
        (h["validation_loss"], h["step"])
        for h in history
        if h.get("step", 0) > 0
        and isinstance(h.get("validation_loss"), (int, float))
        and np.isfinite(h["validation_loss"])
    ]
    return int(min(points)[1]) if points else None


def training_curve(
    history: Sequence[Mapping[str, float]],
    *,
    step: str = "epoch",
    title: str = "training loss",
    best: int | None = None,
) -> Figure:
    """Train and validation loss per ``step`` (epoch, boosting round), a marker at the best step (``best``, else
    the lowest validation loss: the weights or trees the export keeps).

    A note instead when there is no history (load mode).

    Step 0, when the history has it, is the loss before training: the curve starts where training started. Its
    loss is usually far above the rest, so the y-axis is fitted to steps >= 1 and a step-0 point beyond it is
    drawn at the top edge with its value written beside it (the learning curve stays readable).
    """
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure(1)
    ax.set_title(title, fontsize=FONT + 1)
    if not history:
        _note(ax, "no training history\n(the model was loaded, not trained)")
        return fig
    steps = [h["step"] for h in history]
    series = []
    for key, label in (("train_loss", "train"), ("validation_loss", "validation")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ys = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            series.append(ys)
            ax.plot(steps, ys, marker="o" if len(steps) <= 20 else None, markersize=3, linewidth=1.2, label=label)
    best = best if best is not None else best_step(history)
    kept = next((h for h in history if h["step"] == best), None)
    if best is not None and kept is not None and kept.get("validation_loss") is not None:
        ax.axvline(best, color="grey", linestyle=":", linewidth=0.9)
        ax.plot(
            [best],
            [kept["validation_loss"]],
            marker="*",
            markersize=9,
            color="black",
            linestyle="none",
            label=f"best {step} {best} (kept)",
        )
    _fit_after_step0(ax, steps, series, step)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{step} (0: before training)" if steps and steps[0] == 0 else step, fontsize=FONT)
    ax.set_ylabel("loss per row (training objective)", fontsize=FONT)
    ax.legend(fontsize=FONT - 1)
    ax.grid(alpha=0.3)
    return fig


def _fit_after_step0(ax: Axes, steps: Sequence[float], series: Sequence[np.ndarray], name: str) -> None:
    """y-limits from the steps after 0; a step-0 loss above them is marked at the top edge and annotated."""
    if len(steps) < 3 or steps[0] != 0 or not series:
        return
    later = np.concatenate([ys[1:] for ys in series])
    later = later[np.isfinite(later)]
    if not later.size:
        return
    low, high = float(later.min()), float(later.max())
    start = [float(ys[0]) for ys in series if np.isfinite(ys[0])]
    if not start or max(start) - low <= STEP0_SQUASH * (high - low):
        return  # step 0 leaves the later steps most of the axis: plot everything as it is
    pad = 0.08 * (high - low) if high > low else 0.05 * max(abs(high), 1e-12)
    top = high + pad
    ax.set_ylim(low - pad, top)
    beyond = [v for v in start if v > top]
    if beyond:
        ax.plot([steps[0]], [top], marker="^", color="grey", markersize=6, clip_on=False, linestyle="none")
        ax.annotate(
            f"{name} {steps[0]}: {max(beyond):.3g} (off scale)",
            xy=(steps[0], top),
            xytext=(8, -14),
            textcoords="offset points",
            fontsize=FONT - 1,
            color="dimgrey",
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
            zorder=5,
        )


def roc_panel(ax: Axes, y_true: np.ndarray, score: np.ndarray, name: str, classes: tuple[str, str]) -> None:
    """ROC curve of one binary head, AUC in the legend (a note when the labels hold one class)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y_true = np.asarray(y_true)
    ax.set_title(f"ROC: {name}", fontsize=FONT + 1)
    if len(np.unique(y_true)) < 2:
        _note(ax, "ROC undefined:\nthe held-out labels hold one class")
        return
    fpr, tpr, _ = roc_curve(y_true, score)
    ax.plot(fpr, tpr, linewidth=1.2, label=f"AUC {roc_auc_score(y_true, score):.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    ax.set_xlabel(f"false positive rate (share of {classes[1]})", fontsize=FONT)
    ax.set_ylabel(f"true positive rate (share of {classes[0]})", fontsize=FONT)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=FONT - 1, loc="lower right")
    ax.grid(alpha=0.3)


def pr_panel(ax: Axes, y_true: np.ndarray, score: np.ndarray, name: str, classes: tuple[str, str]) -> None:
    """Precision-recall curve of one binary head, average precision in the legend, the base rate as chance."""
    from sklearn.metrics import precision_recall_curve

    from exporter.training.diagnostics import average_precision

    y_true = np.asarray(y_true, dtype=np.float64)
    ax.set_title(f"precision-recall: {name}", fontsize=FONT + 1)
    if len(np.unique(y_true)) < 2:
        _note(ax, "precision-recall undefined:\nthe held-out labels hold one class")
        return
    precision, recall, _ = precision_recall_curve(y_true, score)
    keep = _sample(len(recall), limit=MAX_POINTS)  # a few hundred steps draw the same curve, at a fraction of the PNG
    keep = np.union1d(keep, [0, len(recall) - 1])
    ax.step(
        recall[keep], precision[keep], where="post", linewidth=1.2, label=f"AP {average_precision(y_true, score):.3f}"
    )
    base = float(np.mean(y_true))
    ax.axhline(base, linestyle="--", color="grey", linewidth=0.8, label=f"base rate {base:.3f}")
    ax.set_xlabel(f"recall (share of {classes[0]} found)", fontsize=FONT)
    ax.set_ylabel(f"precision (share that are {classes[0]})", fontsize=FONT)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=FONT - 1, loc="upper right")
    ax.grid(alpha=0.3)


def calibration_panel(ax: Axes, y_true: np.ndarray, p: np.ndarray, name: str, classes: tuple[str, str]) -> None:
    """Reliability curve: observed share of 1s against the mean prediction per bin; ECE in the legend."""
    from exporter.training.diagnostics import CALIBRATION_BINS, expected_calibration_error, reliability

    ax.set_title(f"calibration: {name}", fontsize=FONT + 1)
    if not len(y_true):
        _note(ax, "calibration undefined:\nno held-out rows")
        return
    curve = reliability(y_true, p)
    ece = expected_calibration_error(y_true, p)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfectly calibrated")
    ax.plot(
        curve["predicted"],
        curve["observed"],
        marker="o",
        markersize=3,
        linewidth=1.2,
        label=f"ECE {ece:.3f} ({CALIBRATION_BINS} bins)",
    )
    ax.set_xlabel(f"predicted P({classes[0]})", fontsize=FONT)
    ax.set_ylabel(f"observed rate (share of {classes[0]})", fontsize=FONT)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=FONT - 1, loc="upper left")
    ax.grid(alpha=0.3)


def predicted_vs_true_panel(ax: Axes, y_true: np.ndarray, y_pred: np.ndarray, name: str, column: str) -> None:
    """Scatter of predictions against labels with the y = x line (a subsample when there are many rows)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    idx = _sample(len(y_true))
    ax.scatter(y_true[idx], y_pred[idx], s=4, alpha=0.35, linewidths=0)
    lo = float(min(y_true.min(), y_pred.min()))
    hi = float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=0.8)
    ax.set_title(f"{name}: predicted vs true", fontsize=FONT + 1)
    ax.set_xlabel(f"true {column} (its own units)", fontsize=FONT)
    ax.set_ylabel(f"predicted {column} (its own units)", fontsize=FONT)
    ax.grid(alpha=0.3)


_IMPORTANCE_AXES = {
    "gain": "gain (average loss reduction of its splits)",
    "auc_drop": "AUC drop (when the column is shuffled)",
    "rmse_increase": "RMSE increase (when the column is shuffled)",
}


def importance_panel(ax: Axes, values: Mapping[str, float], metric: str, name: str, note: str = "") -> None:
    """Horizontal bars: the :data:`PLOT_IMPORTANCES` most important columns, the largest on top."""
    from exporter.training.diagnostics import ranked

    top = ranked(values, PLOT_IMPORTANCES)
    ax.set_title(f"feature importance: {name}", fontsize=FONT + 1)
    if not top:
        _note(ax, "no feature importance")
        return
    labels = [c for c, _ in top][::-1]
    ax.barh(range(len(top)), [v for _, v in top][::-1], height=0.6)
    ax.set_yticks(range(len(top)))
    ax.set_yticklabels(labels, fontsize=FONT - 1)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_ylabel(f"column (top {len(top)})", fontsize=FONT)
    ax.set_xlabel(_IMPORTANCE_AXES.get(metric, metric) + (f"\n({note})" if note else ""), fontsize=FONT)
    ax.grid(alpha=0.3, axis="x")


def recall_curve_panel(ax: Axes, curve: Mapping[str, Sequence[float]], items: int | None = None) -> None:
    """recall@K against K for the model and the popularity baseline (log-scaled K)."""
    ks = list(curve["k"])
    ax.set_title("retrieval: recall@K" + (f" over {items} items" if items else ""), fontsize=FONT + 1)
    if not ks:
        _note(ax, "no held-out positives:\nrecall@K undefined")
        return
    ax.plot(ks, curve["model"], marker="o", markersize=3, linewidth=1.2, label="two-tower model")
    ax.plot(ks, curve["popularity"], marker="s", markersize=3, linewidth=1.0, linestyle="--", label="popularity")
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("K (items recommended)", fontsize=FONT)
    ax.set_ylabel("recall@K (held-out positives found)", fontsize=FONT)
    ax.legend(fontsize=FONT - 1, loc="lower right")
    ax.grid(alpha=0.3)


def evaluation_plots(evaluation: Evaluation) -> Figure:
    """Per head: ROC, precision-recall and calibration for a binary head (no calibration for a retrieval score,
    which is no probability), predicted-vs-true for a regression head; recall@K for retrieval; then the feature
    importance of each head the run measured it for (``evaluation.diagnostics``).

    A head's kind comes from ``evaluation.details["heads"]`` (mmoe's tasks); without it, ``label`` is binary.
    """
    details = evaluation.details or {}
    kinds = details.get("heads", {})
    retrieval = details.get("retrieval")
    heads = [h for h in evaluation.predictions if h in evaluation.labels]
    importance = (evaluation.diagnostics or {}).get("importance") or {}
    ranked_heads = [h for h in (importance.get("heads") or {}) if h in heads]
    if not heads and not retrieval:
        fig, (ax,) = _figure(1)
        _note(ax, "no held-out labels:\nnothing to evaluate against")
        return fig
    panels: list[Callable[[Axes], None]] = []
    if retrieval:
        panels.append(lambda ax: recall_curve_panel(ax, retrieval["curve"], retrieval.get("catalogue_items")))
    for head in heads:
        name, column, positive = _head(evaluation, head)
        y, pred = evaluation.labels[head], evaluation.predictions[head]
        if kinds.get(head, "binary" if head == "label" else "regression") == "binary":
            classes = label_values(column, positive)
            panels.append(partial(roc_panel, y_true=y, score=pred, name=name, classes=classes))
            panels.append(partial(pr_panel, y_true=y, score=pred, name=name, classes=classes))
            if not retrieval:
                panels.append(partial(calibration_panel, y_true=y, p=pred, name=name, classes=classes))
        else:
            panels.append(partial(predicted_vs_true_panel, y_true=y, y_pred=pred, name=name, column=column))
    for head in ranked_heads:
        entry = importance["heads"][head]
        note = f"{importance.get('rows')} held-out rows" if importance.get("method") == "permutation" else ""
        panels.append(
            partial(
                importance_panel,
                values=entry["values"],
                metric=entry["metric"],
                name=_head(evaluation, head)[0],
                note=note,
            )
        )
    fig, axes = _figure(len(panels))
    for ax, draw in zip(axes, panels, strict=True):
        draw(ax)
    return fig


def parity_scatter(exported: Sequence[ExportedArtifact]) -> Figure:
    """Native model vs ONNX Runtime on the parity rows: one panel per artifact, and per output column where
    the output has named columns (MMoE: ctr, watch_time and gmv each on their own scale)."""
    panels: list[tuple[ExportedArtifact, str | None, np.ndarray, np.ndarray]] = []
    for artifact in exported:
        p = artifact.parity
        native = np.asarray(p.native, dtype=np.float64)
        onnx = np.asarray(p.onnx, dtype=np.float64)
        columns = artifact.metadata.get("output_columns") or []
        if native.ndim == 2 and len(columns) == native.shape[1]:
            panels += [(artifact, col, native[:, j], onnx[:, j]) for j, col in enumerate(columns)]
        else:  # one output, or an embedding: all values pooled
            panels.append((artifact, None, native.ravel(), onnx.ravel()))
    fig, axes = _figure(len(panels))
    for ax, (artifact, column, native, onnx) in zip(axes, panels, strict=True):
        idx = _sample(len(native))
        ax.scatter(native[idx], onnx[idx], s=6, alpha=0.4, linewidths=0)
        if native.size:
            lo, hi = float(native.min()), float(native.max())
            ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=0.8)
        diff = float(np.max(np.abs(native - onnx))) if native.size else 0.0
        name = artifact.model_name if column is None else f"{artifact.model_name} {column}"
        ax.set_title(f"{name}: max |diff| {diff:.1e}", fontsize=FONT + 1)
        if column is not None:
            units = _column_units(artifact.metadata, column)
        elif artifact.metadata.get("prediction_format") == "vector":
            units = "embedding value"
        else:
            units = _scalar_units(artifact.metadata)
        ax.set_xlabel(f"native model ({units})", fontsize=FONT)
        ax.set_ylabel(f"ONNX Runtime ({units})", fontsize=FONT)
        ax.grid(alpha=0.3)
    return fig


def _column_units(metadata: Mapping[str, object], column: str) -> str:
    """A named output column (mmoe's task): ``P(label = 1)`` of a binary task, else the task's label column."""
    tasks = metadata.get("tasks")
    task = (
        next((t for t in tasks if isinstance(t, Mapping) and t.get("name") == column), None)
        if isinstance(tasks, list)
        else None
    )
    if task is None:
        return column
    if task.get("type") == "binary":
        training = metadata.get("training")
        positive = training.get("positive_class") if isinstance(training, Mapping) else None
        return f"P({label_values(str(task.get('label')), positive)[0]})"
    return f"{task.get('label')}, its own units"


def _scalar_units(metadata: Mapping[str, object]) -> str:
    """A scalar model's answer: the probability of its label's positive value (``P(clicked = 1)``)."""
    training = metadata.get("training")
    training = training if isinstance(training, Mapping) else {}
    columns = training.get("label_columns") or []
    if not columns:
        return "prediction"
    return f"P({label_values(str(columns[0]), training.get('positive_class'))[0]})"


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (what a notebook stores), e.g. to check its size."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()
