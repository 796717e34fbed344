"""The model notebooks: run headless through papermill and ``python -m exporter notebooks``, artifacts verified.

Every run uses small parameters (3,000 rows, few trees/epochs) and a temporary artifacts directory.
Static checks (structure, parameters, clean stored outputs) need no kernel.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from exporter.cli import main as cli_main
from exporter.models import get_spec, model_names
from exporter.runtime.handler import ModelHandler
from exporter.tools import notebooks as runner
from exporter.tools.verify import verify
from exporter.training import data as D
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

NOTEBOOKS = REPO / "notebooks"
MODELS = model_names()
#: small runs: the spec's test hyper-parameters that are notebook parameters, on 3,000 synthetic rows
SMALL = {
    name: {
        "rows": 3000,
        **{
            k: v
            for k, v in get_spec(name).test_hparams.items()
            if k in {knob for knob, _ in get_spec(name).notebook.knobs}
        },
    }
    for name in MODELS
}
CHECK = "# NBVAL_CHECK_OUTPUT"


def execute(name: str, out_dir: Path, artifacts: Path, *, cwd: Path = NOTEBOOKS, **params) -> nbformat.NotebookNode:
    """Run one notebook through papermill (as a CI job would) and return the executed notebook."""
    import papermill as pm

    out = out_dir / f"{name}-{len(list(out_dir.glob('*.ipynb')))}.ipynb"
    pm.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(out),
        parameters={"artifacts_dir": str(artifacts), **params},
        cwd=str(cwd),
        kernel_name="python3",
        progress_bar=False,
        **runner.KERNEL_OPTIONS,
    )
    return nbformat.read(out, as_version=4)


def outputs_text(nb: nbformat.NotebookNode, cell_id: str) -> str:
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    return "".join(o.get("text", "") for o in cell.outputs)


def assert_verified(path: Path) -> None:
    report = verify(path)
    assert report.ok, "\n".join(report.problems)


def heldout_like_rows(handler: ModelHandler, n: int = 64) -> np.ndarray:
    """Complete synthetic rows as FP64 features: numbers and IDs as they are, strings as their vocabulary code."""
    frame = D.synthetic_dataset(4 * n, seed=1234)[handler.feature_columns].dropna().head(n)
    columns = []
    for j, c in enumerate(handler.feature_columns):
        table = handler.features.strings[j]
        columns.append(frame[c].map(lambda v, table=table: table.get(v, -1)) if isinstance(table, dict) else frame[c])
    return np.stack([np.asarray(col, dtype=np.float64) for col in columns], axis=1)


# --------------------------------------------------------------------------- static checks (no kernel)


@pytest.fixture(scope="module", params=MODELS)
def stored(request) -> tuple[str, nbformat.NotebookNode, str]:
    path = NOTEBOOKS / f"{request.param}.ipynb"
    return request.param, nbformat.read(path, as_version=4), path.read_text(encoding="utf-8")


def test_notebook_is_valid_with_python3_kernel(stored):
    _, nb, _ = stored
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"] == {"name": "python3", "display_name": "Python 3", "language": "python"}


def test_one_parameters_cell_with_every_knob_commented_and_model_defaults(stored):
    name, nb, _ = stored
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells[0] is tagged[0], "the parameters cell must be the first code cell"
    assignments = [line for line in tagged[0].source.splitlines() if re.match(r"^\w+\s*(:[^=]+)?=", line)]
    assert len(assignments) >= 14
    uncommented = [line for line in assignments if "  # " not in line]
    assert not uncommented, f"parameters without a comment: {uncommented}"

    params = runner.notebook_parameters(NOTEBOOKS / f"{name}.ipynb")
    required = {
        "mode",
        "data_path",
        "checkpoint_path",
        "feature_meta_path",
        "feature_columns",
        "rows",
        "seed",
        "artifacts_dir",
        "model_name",
        "model_version",
        "label",
        "feature_schema",
        "atol",
        "parity_atol",
        "learning_rate",
        "extra_hparams",
    }
    required |= {"n_estimators", "max_depth"} if name == "xgb" else {"max_epochs", "batch_size"}
    assert required <= set(params), f"missing: {required - set(params)}"
    spec = get_spec(name)
    for key, default in spec.default_hparams.items():
        if key in params:
            assert ast.literal_eval(params[key]) == default, f"{key} default differs from the model's"
    assert ast.literal_eval(params["atol"]) == spec.atol
    assert ast.literal_eval(params["parity_atol"]) is None, "the deprecated alias must not override atol by default"
    assert ast.literal_eval(params["mode"]) == "train" and ast.literal_eval(params["artifacts_dir"]) is None


def test_stored_notebook_is_small_and_clean(stored):
    name, nb, text = stored
    # readable plots (100 dpi) weigh ~25 KB a panel; mmoe's two three-panel figures are the largest
    assert len(text) < 300_000, f"{name}.ipynb is {len(text)} bytes"
    for needle in ("/tmp", "/work", "/home/", "/root", "C:\\\\", "Users/"):
        assert needle not in text, f"{name}.ipynb mentions {needle!r}"
    checked = 0
    for cell in nb.cells:
        assert set(cell.metadata) <= {"tags"}, f"cell {cell.get('id')} carries metadata {dict(cell.metadata)}"
        if cell.cell_type != "code":
            continue
        if CHECK in cell.source:
            checked += 1
            assert cell.outputs and all(o.output_type == "stream" for o in cell.outputs)
        else:
            for o in cell.outputs:
                assert o.output_type == "display_data" and set(o.data) == {"image/png"}, (cell.source, o)
    assert checked >= 2


def test_stored_notebook_reads_as_one_run_all(stored):
    """A plot under a cell that shows as never run confuses a reader: every code cell carries its count, in order."""
    name, nb, _ = stored
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{name}.ipynb execution counts {counts}"


def test_cells_stay_thin_glue(stored):
    """Glue: a few imports and calls into ``exporter``, no logic (no loops, branches, definitions, comprehensions)."""
    import ast

    _, nb, _ = stored
    logic = (
        ast.For,
        ast.While,
        ast.If,
        ast.With,
        ast.Try,
        ast.FunctionDef,
        ast.ClassDef,
        ast.Lambda,
        ast.comprehension,
    )
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
            tree = ast.parse(code)
            assert len(tree.body) <= 6, f"cell grew past glue ({len(tree.body)} statements): {cell.source[:80]}"
            found = sorted({type(n).__name__ for n in ast.walk(tree) if isinstance(n, logic)})
            assert not found, f"cell holds logic ({', '.join(found)}), which belongs in exporter: {cell.source[:80]}"


def test_checked_outputs_hold_no_volatile_values(stored):
    _, nb, _ = stored
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECK in cell.source:
            text = "".join(o.get("text", "") for o in cell.outputs)
            # no paths, dates, timings or raw float differences
            assert not re.search(r"/|\d{4}-\d\d-\d\d|\d+\.\d+ ?s\b|\d\.\d{5,}", text), text


def test_notebooks_match_their_generator(stored):
    """tools/build_notebooks.py writes the notebooks; a hand edit that drifts from it is caught here."""
    name, nb, _ = stored
    spec = importlib.util.spec_from_file_location("build_notebooks", REPO / "tools" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.build(name)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in fresh.cells]


# --------------------------------------------------------------------------- headless runs


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``python -m exporter notebooks xgb two_tower`` with small overrides into a fresh artifacts dir."""
    artifacts = tmp_path_factory.mktemp("nb-cli-artifacts")
    argv = [
        "notebooks",
        "xgb",
        "two_tower",
        "--artifacts",
        str(artifacts),
        "-p",
        "rows",
        "3000",
        "-p",
        "n_estimators",
        "30",
        "-p",
        "max_epochs",
        "2",
    ]
    return artifacts, argv


@pytest.fixture(scope="module")
def cli_result(cli_run):
    import contextlib
    import io

    artifacts, argv = cli_run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(argv)
    return artifacts, code, out.getvalue()


def test_cli_runs_notebooks_and_stores_reports_beside_artifacts(cli_result):
    artifacts, code, stdout = cli_result
    assert code == 0, stdout
    assert re.search(r"^xgb\s+\d+\.\d$", stdout, re.M) and re.search(r"^two_tower\s+\d+\.\d$", stdout, re.M)
    assert "not a parameter here: max_epochs" in stdout  # xgb has no max_epochs: passed to two_tower only
    for model_name in ("xgb", "two_tower", "two_tower_item"):
        report = artifacts / model_name / "1" / "report.ipynb"
        assert report.is_file(), f"no report for {model_name}"
        assert not list(report.parent.glob(".*.tmp"))
    reports = {m: (artifacts / m / "1" / "report.ipynb").read_bytes() for m in ("two_tower", "two_tower_item")}
    assert reports["two_tower"] == reports["two_tower_item"]
    nb = nbformat.read(artifacts / "xgb" / "1" / "report.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    # no version pinned: the export takes the next free one when it writes, and the runner learns which
    assert "model_version = None" in injected.source and "n_estimators = 30" in injected.source
    assert "max_epochs" not in injected.source
    assert "smoke test xgb: TorchServe-style and v2 requests" in outputs_text(nb, "smoke")


def test_cli_made_artifacts_pass_verify(cli_result):
    artifacts, code, _ = cli_result
    assert code == 0
    result = run_cli("verify", str(artifacts))
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((artifacts / "two_tower_item" / "1" / "metadata.json").read_text())
    assert meta["training"]["hyperparameters"]["max_epochs"] == 2 and meta["training"]["rows"] == 3000


@pytest.mark.slow
def test_cli_exports_a_notebook_under_another_model_name(tmp_path):
    """``-p model_name NAME``: both towers under NAME and NAME_item, the reports beside them; a name whose model
    takes other inputs stops in the cell right after the imports, before training, writing nothing."""
    artifacts = tmp_path / "art"
    (artifacts / "clicks").mkdir(parents=True)
    (artifacts / "clicks" / "config.pbtxt").write_text(
        'name: "clicks"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 1024\n'
        'input [ { name: "features" data_type: TYPE_FP64 dims: [ 3 ] } ]\n'
        'output [ { name: "predictions" data_type: TYPE_FP64 dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
    )
    # cell [4]: the parameters, papermill's injected parameters, the imports, then the checks
    clash = run_cli(
        "notebooks", "xgb", "--artifacts", str(artifacts), "-p", "model_name", "clicks", "-p", "rows", "300"
    )
    assert clash.returncode == 2, clash.stdout + clash.stderr
    assert "failed in cell [4]: ParameterError: model_name 'clicks'" in clash.stderr, clash.stderr
    assert sorted(p.name for p in (artifacts / "clicks").iterdir()) == ["config.pbtxt"]

    argv = ["notebooks", "two_tower", "--artifacts", str(artifacts), "-p", "model_name", "tt"]
    result = run_cli(*argv, "-p", "rows", "3000", "-p", "max_epochs", "1", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("tt", "tt_item"):
        assert (artifacts / name / "1" / "report.ipynb").is_file(), f"no report for {name}"
    assert not (artifacts / "two_tower").exists()


@pytest.mark.slow
def test_two_runs_into_one_artifacts_directory_at_once_write_two_versions_each_with_its_report(tmp_path):
    """Two ``notebooks`` runs (a CI job and a person, say) into one tree: each export takes its own version when it
    writes, and each executed notebook lands in the version its run wrote."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    artifacts = tmp_path / "art"
    argv = [sys.executable, "-m", "exporter", *"notebooks xgb -p n_estimators 10 -p tracking false".split()]
    runs = [
        subprocess.Popen(
            [*argv, "--artifacts", str(artifacts), "-p", "rows", str(rows)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rows in (600, 700)
    ]
    outputs = [r.communicate(timeout=900)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    versions = sorted(p.name for p in (artifacts / "xgb").iterdir() if p.name.isdigit())
    assert versions == ["1", "2"]
    seen = set()
    for version in versions:
        rows = json.loads((artifacts / "xgb" / version / "metadata.json").read_text())["training"]["rows"]
        nb = nbformat.read(artifacts / "xgb" / version / "report.ipynb", as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"rows = {rows}" in injected.source, (version, rows)
        seen.add(rows)
    assert seen == {600, 700}


@pytest.mark.parametrize("name, cwd", [("deepfm", REPO), ("mmoe", NOTEBOOKS)])
def test_papermill_run_from_repo_root_or_notebooks_dir(name, cwd, tmp_path):
    """A CI job starting the kernel at the root and JupyterLab starting it in notebooks/ both work."""
    artifacts = tmp_path / "artifacts"
    nb = execute(name, tmp_path, artifacts, cwd=cwd, **SMALL[name])
    assert_verified(artifacts)
    assert json.loads((artifacts / name / "1" / "metadata.json").read_text())["training"]["data_source"] == "synthetic"
    assert (artifacts / name / "1" / "checkpoint.pt").is_file()
    assert f"parity {name}: passed" in outputs_text(nb, "contract")
    assert f"smoke test {name}:" in outputs_text(nb, "smoke")
    assert not (REPO / "notebooks" / "artifacts").exists()


def test_own_data_file_and_feature_columns(tmp_path):
    """data_path (CSV with an extra column) and feature_columns as papermill passes a string: "a,b,c"."""
    frame = D.synthetic_dataset(3000, seed=5)
    frame["session_id"] = np.arange(len(frame))
    frame.to_csv(tmp_path / "clicks.csv", index=False)
    columns = ["item_ctr", "item_cvr", "item_price", "user_age", "user_gender"]
    artifacts = tmp_path / "artifacts"
    execute(
        "deepfm",
        tmp_path,
        artifacts,
        data_path=str(tmp_path / "clicks.csv"),
        feature_columns=",".join(columns),
        max_epochs=2,
    )
    assert_verified(artifacts)
    meta = json.loads((artifacts / "deepfm" / "1" / "metadata.json").read_text())
    assert meta["feature_columns"] == columns and meta["inputs"][0]["shape"] == [-1, 5]
    assert meta["training"]["data_source"] == "clicks.csv"  # the file name, never the machine's path


def test_own_csv_with_strings_ids_empty_cells_label_and_schema(tmp_path):
    """A team's own log: an integer ID, a string category and empty cells, its own label, a schema as a dict."""
    import pandas as pd

    rng = np.random.default_rng(3)
    n = 1500
    shop_id = rng.integers(1, 60, n)
    genre = rng.choice(["rock", "jazz", "pop", "folk"], n)
    price = rng.uniform(1, 50, n)
    logit = 1.5 * (genre == "jazz") - 0.05 * price + 1.0 * (shop_id % 3 == 0)
    frame = pd.DataFrame(
        {
            "shop_id": shop_id,
            "genre": genre,
            "price": price,
            "clicked": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )
    frame.loc[::17, "price"] = np.nan
    frame.loc[::23, "genre"] = None
    frame.to_csv(tmp_path / "log.csv", index=False)
    schema = {
        "features": [
            {"name": "shop_id", "kind": "categorical"},
            {"name": "genre", "kind": "categorical", "optional": True},
            {"name": "price", "optional": True},
        ]
    }
    artifacts = tmp_path / "artifacts"
    nb = execute(
        "deepfm",
        tmp_path,
        artifacts,
        data_path=str(tmp_path / "log.csv"),
        label="clicked",
        feature_schema=schema,
        max_epochs=3,
    )
    assert_verified(artifacts)
    data_cell = next(c for c in nb.cells if c.get("id") == "data")
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in data_cell.outputs)
    assert "vocab size" in shown and "missing rate" in shown, "the data section shows the fitted schema table"
    meta = json.loads((artifacts / "deepfm" / "1" / "metadata.json").read_text())
    assert meta["feature_columns"] == ["shop_id", "genre", "price"] and meta["training"]["label_columns"] == ["clicked"]
    kinds = {f["name"]: (f["kind"], f["dtype"]) for f in meta["features"]}
    assert kinds == {
        "shop_id": ("categorical", "int64"),
        "genre": ("categorical", "string"),
        "price": ("numeric", "float64"),
    }
    handler = ModelHandler.load(artifacts / "deepfm" / "1")
    answer = handler.predict(
        {
            "data": [
                {"shop_id": 3, "genre": "jazz", "price": 10.0},
                {"shop_id": 123456, "genre": "no such genre"},  # unseen ID, unknown string, no price
                {"shop_id": 3, "genre": None, "price": None},
            ]
        }
    )
    assert len(answer["predictions"]) == 3 and all(0 < p < 1 for p in answer["predictions"])


# --------------------------------------------------------------------------- load-mode round trips


LOAD_INPUTS = {
    "xgb": ("xgb", {"checkpoint_path": "model.ubj", "feature_meta_path": "feature_meta.json"}),
    "two_tower": ("two_tower", {"checkpoint_path": "checkpoint.pt"}),
}


@pytest.mark.parametrize("name", ["xgb", "two_tower"])
def test_load_mode_round_trip_gives_the_same_predictions(name, cli_result, tmp_path):
    trained_tree, code, _ = cli_result
    assert code == 0
    model_dir, files = LOAD_INPUTS[name]
    params = {k: str(trained_tree / model_dir / "1" / v) for k, v in files.items()}
    artifacts = tmp_path / "again"
    nb = execute(name, tmp_path, artifacts, mode="load", rows=3000, **params)
    assert_verified(artifacts)
    assert f"smoke test {name}:" in outputs_text(nb, "smoke")
    for model_name in get_spec(name).model_names:
        first = ModelHandler.load(trained_tree / model_name / "1")
        again = ModelHandler.load(artifacts / model_name / "1")
        assert again.metadata["training"]["mode"] == "load"
        assert again.feature_columns == first.feature_columns
        x = heldout_like_rows(first)
        np.testing.assert_allclose(again.run(x), first.run(x), rtol=0, atol=1e-12)


def test_torch_load_mode_round_trip_mmoe(tmp_path):
    """Train mmoe, then export its checkpoint.pt again in load mode: the three heads agree."""
    first_dir, again_dir = tmp_path / "first", tmp_path / "again"
    execute("mmoe", tmp_path, first_dir, **SMALL["mmoe"])
    execute(
        "mmoe",
        tmp_path,
        again_dir,
        mode="load",
        rows=3000,
        checkpoint_path=str(first_dir / "mmoe" / "1" / "checkpoint.pt"),
    )
    first, again = ModelHandler.load(first_dir / "mmoe" / "1"), ModelHandler.load(again_dir / "mmoe" / "1")
    x = heldout_like_rows(first)
    np.testing.assert_allclose(again.run(x), first.run(x), rtol=0, atol=1e-12)
    answer = again.predict(
        {"data": [dict(zip(first.feature_columns, map(float, row), strict=True)) for row in x[:2]]}
    )  # codes
    assert list(answer["predictions"][0]) == ["ctr", "watch_time", "gmv"]


# --------------------------------------------------------------------------- bad parameters fail early


@pytest.mark.parametrize(
    "params, message",
    [
        ({"data_path": "no/such/clicks.csv"}, "data file not found"),
        ({"feature_columns": ["item_ctr", "no_such_column"]}, "no_such_column"),
        ({"checkpoint_path": "model.ubj"}, "checkpoint_path is set ('model.ubj') but mode is 'train'"),
    ],
    ids=["missing-data-file", "bad-feature-columns", "checkpoint-in-train-mode"],
)
def test_bad_parameter_stops_in_the_first_cells(params, message, tmp_path):
    from papermill.exceptions import PapermillExecutionError

    artifacts = tmp_path / "artifacts"
    with pytest.raises(PapermillExecutionError) as info:
        execute("xgb", tmp_path, artifacts, **params)
    err = info.value
    assert err.ename == "ParameterError"
    assert message in err.evalue
    assert "nbs.prepare(" in err.source, "the failure must come from the prepare cell, before any training"
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_papermill_parity_atol_still_reaches_the_export_with_a_warning(tmp_path):
    """``papermill -p parity_atol X`` (the old name of ``atol``) is honoured and warns instead of being ignored."""
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as info:
        execute("xgb", tmp_path, tmp_path / "artifacts", parity_atol=-1.0)
    assert info.value.ename == "ParameterError" and "atol must be a finite non-negative number" in info.value.evalue
    executed = nbformat.read(next(tmp_path.glob("xgb-*.ipynb")), as_version=4)
    assert "parity_atol is deprecated: use atol" in outputs_text(executed, "prepare")


def test_cli_stops_on_a_failing_notebook_with_its_error(tmp_path, capsys):
    artifacts = tmp_path / "artifacts"
    code = cli_main(
        [
            "notebooks",
            "xgb",
            "deepfm",
            "--artifacts",
            str(artifacts),
            "-p",
            "mode",
            "sideways",
            "--output-dir",
            str(tmp_path / "executed"),
        ]
    )
    err = capsys.readouterr()
    assert code == 2
    assert "notebook xgb failed in cell" in err.err and "unknown mode 'sideways'" in err.err
    assert "deepfm: running" not in err.out, "the run must stop at the first failing notebook"
    executed = nbformat.read(tmp_path / "executed" / "xgb.ipynb", as_version=4)
    assert any(o.get("ename") == "ParameterError" for c in executed.cells for o in c.get("outputs", []))
    assert not list(artifacts.glob("*/*/report.ipynb"))


def test_cli_parity_failure_exits_3_and_writes_nothing(tmp_path, capsys):
    artifacts = tmp_path / "artifacts"
    code = cli_main(
        [
            "notebooks",
            "xgb",
            "--artifacts",
            str(artifacts),
            "-p",
            "rows",
            "3000",
            "-p",
            "n_estimators",
            "30",
            "-p",
            "atol",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    assert "ParityError" in err and "parity check failed" in err
    assert not (artifacts / "xgb" / "1").exists()
