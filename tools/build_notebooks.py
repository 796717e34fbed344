"""Write the four model notebooks (notebooks/*.ipynb) from one template, execute them, and keep them clean.

    python tools/build_notebooks.py            # write sources, execute, store the checked outputs and plots
    python tools/build_notebooks.py --no-run   # write sources only (no outputs)
    python tools/build_notebooks.py xgb        # only some notebooks

The notebooks are the product; this script only keeps the four consistent. After editing it, rebuild and
commit the notebooks. Execution writes artifacts into a temporary directory, never into artifacts/.
Stored outputs: the cells marked ``# NBVAL_CHECK_OUTPUT`` (compared by nbval) and the PNG plots (as 256-colour
palettes); every code
cell keeps the execution count of its one in-order run (1, 2, ...), as after *Run All*; every other output
and the per-cell execution metadata are removed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporter.models import get_spec, model_names  # noqa: E402
from exporter.models.base import NotebookInfo  # noqa: E402

CHECK = "# NBVAL_CHECK_OUTPUT"
#: what every notebook's evaluation cell shows beyond the model's own plots
EVAL_MORE = (
    " Each binary head also gets its precision-recall curve (average precision against the base rate) and, when "
    "its score is a probability, a calibration curve (observed share of 1s against the predicted probability, with "
    "the expected calibration error); then the feature importance of each head (XGBoost: gain; torch models: the "
    "drop in AUC, or the rise in RMSE, when one column is shuffled on held-out rows). Axes name the label column."
)


def notebook_info(model: str) -> NotebookInfo:
    """What a registered model's notebook says, declared on its spec."""
    info = get_spec(model).notebook
    if info is None:
        raise SystemExit(f"model {model!r} declares no notebook (ModelSpec.notebook)")
    return info


def parameters_source(model: str, cfg: NotebookInfo) -> str:
    """The ``parameters`` cell: every knob typed, with its default and a comment (``papermill --help-notebook``)."""
    spec = get_spec(model)
    hp = spec.default_hparams
    lines = [
        "# Parameters (papermill -p NAME VALUE overrides them). Relative paths are relative to the repository root.",
        "from typing import Optional, Union",
        "",
        'mode: str = "train"  # "train" a new model, or "load" an existing one (then set checkpoint_path)',
        "data_path: Optional[str] = None  # CSV or Parquet file with the feature (and label) columns; None: built-in synthetic click log",
        f"checkpoint_path: Optional[str] = None  # {cfg.checkpoint}",
        'feature_meta_path: Optional[str] = None  # optional: JSON with {"feature_columns": [...]} naming the inputs (feature_meta.json, metadata.json)',
        'feature_columns: Optional[list] = None  # model inputs in tensor order, e.g. ["item_ctr", "user_age"]; None: the default schema',
        'label: Optional[str] = None  # the binary (0/1) label column; None: the schema\'s "label" entry, else "label"',
        "feature_schema: Optional[Union[dict, str]] = None  # per-column kind (numeric/categorical), fill, optional, vocabulary policy: a dict or a JSON file (docs/features.md); None: inferred",
        'positive_class: Optional[str] = None  # the label value that means 1 when the label column holds two other values, e.g. "yes" or "cp"; None: 0/1 labels',
        'exclude_columns: Optional[list] = None  # columns to leave out of the automatically chosen features, e.g. ["session_id"] (or "a,b")',
    ]
    if cfg.towers:
        lines += [
            "user_columns: Optional[list] = None  # inputs of the user tower; None: the feature columns named user_*",
            "item_columns: Optional[list] = None  # inputs of the item tower; None: the other feature columns",
        ]
    lines += [
        "rows: int = 20000  # rows of synthetic data (ignored when data_path is set)",
        "",
        "# Training (train mode; load mode keeps the loaded model's own settings)",
    ]
    lines += [f"{name}: {type(hp[name]).__name__} = {_literal(hp[name])}  # {comment}" for name, comment in cfg.knobs]
    lines += [
        f"extra_hparams: dict = {{}}  # {cfg.extra}",
        "",
        "seed: int = 0  # seed of the synthetic data, the train/held-out split and training",
        'artifacts_dir: Optional[str] = None  # model repository root; None: $EXPORTER_ARTIFACTS_DIR if set, else "artifacts"',
        f"model_name: Optional[str] = None  # repository name to export under; None: {_names(spec.model_names)}",
        "model_version: Optional[int] = None  # version directory to write (1, 2, ...); None: the next free one",
        f"atol: float = {spec.atol!r}  # parity tolerance: max |{cfg.native} - ONNX Runtime| on held-out rows; beyond it nothing is exported",
        "parity_atol: Optional[float] = None  # deprecated old name of atol: still honoured, with a warning",
        "threads: Optional[int] = None  # training threads (torch intra-op, xgboost nthread); None: xgboost every core, "
        "torch 1 per 2,048 batch rows",
        'engine: str = "local"  # "spark": train on Spark (xgboost.spark / TorchDistributor; needs data_path and Java)',
        "spark_master: Optional[str] = None  # Spark master URL (engine spark); None: local[*]",
        "num_workers: Optional[int] = None  # Spark training workers (engine spark); None: 2",
        "tracking: bool = True  # log the export as an MLflow run and register the model (docs/tracking.md); False: no run",
        "tune_trials: int = 0  # > 0: search hyper-parameters with Optuna (as `exporter tune`), chosen on the validation rows",
        "tracking_uri: Optional[str] = None  # MLflow tracking store; None: $MLFLOW_TRACKING_URI, else mlruns/mlflow.db beside the artifacts",
    ]
    return "\n".join(lines)


def _names(names: list[str]) -> str:
    """The default repository names, as the parameters cell explains them (two_tower: both towers)."""
    if len(names) == 1:
        return f'"{names[0]}"'
    from exporter.export.write import renamed_model_names

    renamed = " and ".join(renamed_model_names(names, "NAME"))
    return " and ".join(f'"{n}"' for n in names) + f"; a NAME exports {renamed}"


def _literal(value: Any) -> str:
    """A knob's default as Python source; lists of objects (mmoe's tasks) as JSON-style text, as users write them."""
    import ast
    import json

    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        text = json.dumps(value)
        try:
            if ast.literal_eval(text) == value:  # the same value in Python (no true/false/null inside)
                return text
        except ValueError:
            pass
    return repr(value)


def hparams_source(model: str, cfg: NotebookInfo) -> str:
    """``extra_hparams, epochs=epochs, ...),`` (the body of ``hparams=nbs.knobs(``) wrapped to the notebook's line
    length after ``threads=threads, hparams=nbs.knobs(`` (the cell stays glue)."""
    import textwrap

    names = [n for n, _ in cfg.knobs] + (["user_columns", "item_columns"] if cfg.towers else [])
    body = ", ".join(["extra_hparams"] + [f"{n}={n}" for n in names])
    lead = "    threads=threads, hparams=nbs.knobs("
    return textwrap.fill(body + "),", width=118, initial_indent=lead, subsequent_indent=" " * 8)[len(lead) :]


def cells(model: str, cfg: NotebookInfo) -> list[Any]:
    spec = get_spec(model)
    names = spec.model_names
    repo_dirs = " and ".join(f"`artifacts/{n}/<version>/`" for n in names)
    note = f"\n{cfg.note}\n" if cfg.note else ""
    intro = f"""# {cfg.title}

This notebook trains (or loads) {cfg.what},
exports it to ONNX with Open Inference Protocol (KServe v2) metadata into a Triton-style model repository
({repo_dirs}), checks ONNX Runtime against {cfg.native} on held-out rows,
and smoke-tests the artifact through the same handler the server uses.
{note}
**Run it** in JupyterLab (`jupyter lab notebooks/`): edit the *parameters* cell, then *Run All*. Headless, as CI does:

```bash
papermill notebooks/{model}.ipynb {model}-report.ipynb {cfg.example}
python -m exporter notebooks {model} {cfg.example}   # also saves the executed notebook as report.ipynb beside the artifact
```"""
    setup = """# The README's set-up installs the `exporter` package (`pip install -e .` in the repository);
# if this import fails, run that in the repository with the kernel's Python.
%matplotlib inline
from exporter.export import pipeline
from exporter.tools import notebook_support as nbs, plots"""
    prepare = f"""# Checks every parameter and loads the data before any training: a mistake stops here with a clear message.
prep = nbs.prepare(
    "{model}", mode=mode, data_path=data_path, checkpoint_path=checkpoint_path, feature_meta_path=feature_meta_path,
    feature_columns=feature_columns, label=label, feature_schema=feature_schema, positive_class=positive_class,
    exclude_columns=exclude_columns, rows=rows, seed=seed, root=nbs.repo_root(), engine=engine,
    spark_master=spark_master, num_workers=num_workers,
    artifacts_dir=artifacts_dir, model_name=model_name, model_version=model_version, atol=atol, parity_atol=parity_atol,
    threads=threads, hparams=nbs.knobs({hparams_source(model, cfg)}
)
print(nbs.describe_run(prep))"""
    title = f"{model}: loss per {cfg.step}"
    out = [
        new_markdown_cell(intro, id="intro"),
        new_code_cell(parameters_source(model, cfg), id="parameters", metadata={"tags": ["parameters"]}),
        new_code_cell(setup, id="setup"),
        new_code_cell(prepare, id="prepare"),
        new_markdown_cell(
            "## Data\n\nThe first training rows, a summary of every column (role for this model, type, "
            "range and mean of a numeric column, distinct count and most frequent values of a categorical or ID "
            "column), and the feature schema training fitted: each input's kind (numeric, or categorical "
            "with an embedding row per frequent value and one out-of-vocabulary row), where the kind "
            "came from (declared, default, inferred), vocabulary size and missing rate. Missing "
            "values become the column's fill (numeric) or the out-of-vocabulary row (categorical), "
            "inside the exported graph.",
            id="data-md",
        ),
        new_code_cell(
            "display(nbs.preview(prep))\ndisplay(nbs.column_summary(prep))\ndisplay(nbs.feature_table(prep))", id="data"
        ),
        new_markdown_cell(
            "## Train (or load) and evaluate on held-out rows\n\nThe progress bar shows the "
            f"training {cfg.step}s; in load mode the model is read from `checkpoint_path` instead. With "
            "`tune_trials` > 0 the hyper-parameters are searched first (each trial scored on the validation "
            "rows) and the chosen trial's model is the one evaluated and exported.",
            id="train-md",
        ),
        new_code_cell(
            "trained = nbs.train(prep, tune_trials=tune_trials, tracking=tracking, tracking_uri=tracking_uri)\n"
            "evaluation = pipeline.evaluate(prep, trained)\n"
            "print(nbs.format_metrics(evaluation, trained.history))",
            id="train",
        ),
        new_code_cell(f'plots.training_curve(trained.history, step="{cfg.step}", title="{title}")', id="curve"),
        new_markdown_cell(cfg.eval_md + EVAL_MORE, id="eval-md"),
        new_code_cell("plots.evaluation_plots(evaluation)", id="eval-plots"),
        new_markdown_cell(
            "## Export\n\nONNX graph, `metadata.json` (a v2 model-metadata response plus feature "
            "columns, parity and training record), `config.pbtxt` for Triton, and a sample request "
            "and response. The export refuses to write anything when ONNX Runtime and the native "
            "model disagree beyond `atol`. With `tracking` on, the export is an MLflow run: parameters, "
            "held-out metrics, the training curve, these plots and the model, registered under its name.",
            id="export-md",
        ),
        new_code_cell(
            "exported = nbs.export(prep, trained, evaluation, tracking=tracking, tracking_uri=tracking_uri)\n"
            "print(nbs.describe_exports(exported))",
            id="export",
        ),
        new_markdown_cell(
            "The contract a serving team relies on (inputs, outputs, feature columns) and the parity verdict:",
            id="contract-md",
        ),
        new_code_cell(f"{CHECK}\nprint(nbs.contract_text(exported))\nprint(nbs.parity_text(exported))", id="contract"),
        new_code_cell("plots.parity_scatter(exported)", id="parity-plot"),
        new_markdown_cell(
            "## Smoke test through the serving handler\n\nEach artifact is loaded the way the "
            "server loads it (sha256 checked) and asked with a TorchServe-style request and an Open "
            "Inference Protocol (v2) request built from held-out rows; the answers must match "
            f"the native {cfg.native} model within `atol`, or this cell fails.",
            id="smoke-md",
        ),
        new_code_cell(f"{CHECK}\nprint(nbs.smoke_test(prep, trained, exported))", id="smoke"),
        new_markdown_cell(
            "## Runs\n\nThe model's recent tracked runs side by side (`python -m exporter runs "
            f"{model}` prints the same table), and the metric it is judged by across them.",
            id="runs-md",
        ),
        new_code_cell("nbs.show_runs(prep, tracking=tracking, tracking_uri=tracking_uri)", id="runs"),
        new_markdown_cell(
            "## Next\n\n"
            "- Check the artifact: `python -m exporter verify artifacts`\n"
            "- Serve it: `python -m exporter serve` (TorchServe-style routes), or point Triton at `artifacts/`.\n"
            "- Browse the runs: `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` (docs/tracking.md).\n"
            "- Run this notebook headless with `python -m exporter notebooks "
            f"{model}`, which also stores the executed notebook as `report.ipynb` in the version directory.",
            id="next",
        ),
    ]
    return out


def build(model: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells(model, notebook_info(model)))
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def compact_png(encoded: str) -> str:
    """A stored plot as a 256-colour palette PNG (base64), when that is smaller: a plot has few colours, and the
    palette form weighs about a third of matplotlib's RGBA, which keeps the notebooks small in the repository."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(encoded)
    image = Image.open(io.BytesIO(raw))
    if image.mode == "P":  # already compact (a notebook cleaned before)
        return encoded
    out = io.BytesIO()
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    smaller = out.getvalue()
    return base64.b64encode(smaller).decode("ascii") if len(smaller) < len(raw) else encoded


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Keep outputs of checked cells and PNG plots only, counts 1..n of the in-order run, no execution metadata."""
    for cell in nb.cells:
        keep_tags = cell.metadata.get("tags")
        cell.metadata = {"tags": keep_tags} if keep_tags else {}
        if cell.cell_type != "code":
            continue
        if CHECK in cell.source:
            kept = [o for o in cell.outputs if o.output_type == "stream"]
        else:
            kept = [
                nbformat.v4.new_output("display_data", data={"image/png": compact_png(o.data["image/png"])})
                for o in cell.outputs
                if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})
            ]
        cell.outputs = kept
    # every code cell keeps the count of its one in-order run (nbval compares only cells that have one), so the
    # stored notebook reads as one Run All: no plot under a cell that looks never run
    code = [c for c in nb.cells if c.cell_type == "code"]
    for count, cell in enumerate(code, start=1):
        cell.execution_count = count
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    return nb


def execute(nb: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="build-notebooks-") as tmp:
        os.environ["EXPORTER_ARTIFACTS_DIR"] = str(Path(tmp) / "artifacts")  # its tracking store: tmp/mlruns
        NotebookClient(
            nb,
            kernel_name="python3",
            timeout=600,
            resources={"metadata": {"path": str(workdir)}},
            shutdown_kernel="immediate",
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        ).execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=model_names(), help="notebooks to build (default: all)")
    parser.add_argument("--no-run", action="store_true", help="write sources only, without executing")
    args = parser.parse_args(argv)
    out_dir = ROOT / "notebooks"
    for model in args.models:
        nb = build(model)
        if not args.no_run:
            nb = clean(execute(nb, out_dir))
        path = out_dir / f"{model}.ipynb"
        nbformat.write(nb, str(path))
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
