"""Matplotlib figures for the model notebooks: training curve, ROC / predicted-vs-true, recall@K, parity scatter.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, any backend). They are sized to
be read at notebook width (100 dpi, at most three panels a row, 10 pt text, units on the axes) while
staying light (few points, subsampled scatters); a notebook shows one by ending a cell with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

#: label column -> how its head is called in the plots
HEAD_NAMES = {"label": "CTR (click)", "ctr": "CTR (click)", "watch_time": "watch_time", "gmv": "gmv"}
#: head or output column -> the unit its values are in (axis labels)
UNITS = {"label": "click probability", "ctr": "click probability", "watch_time": "seconds", "gmv": "currency units"}


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


def unit(name: str) -> str:
    """The unit of a head or output column (``value`` when unknown)."""
    return UNITS.get(name, "value")


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

    Step 0, when the history has it, is the loss before training: the curve starts where training started.
    """
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure(1)
    ax.set_title(title, fontsize=FONT + 1)
    if not history:
        _note(ax, "no training history\n(the model was loaded, not trained)")
        return fig
    steps = [h["step"] for h in history]
    for key, label in (("train_loss", "train"), ("validation_loss", "validation")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(
                steps,
                [np.nan if v is None else v for v in values],
                marker="o" if len(steps) <= 20 else None,
                markersize=3,
                linewidth=1.2,
                label=label,
            )
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{step} (0: before training)" if steps and steps[0] == 0 else step, fontsize=FONT)
    ax.set_ylabel("loss per row (training objective)", fontsize=FONT)
    ax.legend(fontsize=FONT - 1)
    ax.grid(alpha=0.3)
    return fig


def roc_panel(ax: Axes, y_true: np.ndarray, score: np.ndarray, name: str) -> None:
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
    ax.set_xlabel("false positive rate (share of non-clicks)", fontsize=FONT)
    ax.set_ylabel("true positive rate (share of clicks)", fontsize=FONT)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=FONT - 1, loc="lower right")
    ax.grid(alpha=0.3)


def predicted_vs_true_panel(ax: Axes, y_true: np.ndarray, y_pred: np.ndarray, name: str, units: str = "value") -> None:
    """Scatter of predictions against labels with the y = x line (a subsample when there are many rows)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    idx = _sample(len(y_true))
    ax.scatter(y_true[idx], y_pred[idx], s=4, alpha=0.35, linewidths=0)
    lo = float(min(y_true.min(), y_pred.min()))
    hi = float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=0.8)
    ax.set_title(f"{name}: predicted vs true", fontsize=FONT + 1)
    ax.set_xlabel(f"true ({units})", fontsize=FONT)
    ax.set_ylabel(f"predicted ({units})", fontsize=FONT)
    ax.grid(alpha=0.3)


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
    """One panel per head: ROC for binary heads, predicted-vs-true for regression heads; recall@K for retrieval.

    A head's kind comes from ``evaluation.details["heads"]`` (mmoe's tasks); without it, ``label`` is binary.
    """
    kinds = (evaluation.details or {}).get("heads", {})
    retrieval = (evaluation.details or {}).get("retrieval")
    heads = [h for h in evaluation.predictions if h in evaluation.labels]
    if not heads and not retrieval:
        fig, (ax,) = _figure(1)
        _note(ax, "no held-out labels:\nnothing to evaluate against")
        return fig
    fig, axes = _figure(len(heads) + (1 if retrieval else 0))
    if retrieval:
        recall_curve_panel(axes[0], retrieval["curve"], retrieval.get("catalogue_items"))
        axes = axes[1:]
    for ax, head in zip(axes, heads, strict=True):
        name = HEAD_NAMES.get(head, head)
        if kinds.get(head, "binary" if head == "label" else "regression") == "binary":
            roc_panel(ax, evaluation.labels[head], evaluation.predictions[head], name)
        else:
            predicted_vs_true_panel(ax, evaluation.labels[head], evaluation.predictions[head], name, unit(head))
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
            units = unit(column)
        elif artifact.metadata.get("prediction_format") == "vector":
            units = "embedding value"
        else:
            units = unit("label")
        ax.set_xlabel(f"native model ({units})", fontsize=FONT)
        ax.set_ylabel(f"ONNX Runtime ({units})", fontsize=FONT)
        ax.grid(alpha=0.3)
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (what a notebook stores), e.g. to check its size."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()
