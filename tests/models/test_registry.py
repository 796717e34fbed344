"""The registry is the one list of models: everything else derives from it, and a new model is one class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from exporter.errors import ExporterError
from exporter.export import pipeline
from exporter.models import get_spec, model_names, registered, repository_names
from exporter.models import torch_common as tc
from exporter.models.base import NotebookInfo
from exporter.models.torch_base import TorchModel
from exporter.tools import notebooks as runner
from exporter.training import hparams as H
from exporter.training.data import DEFAULT_FEATURES, LABEL
from exporter.training.metrics import ctr_metrics
from tests.conftest import REPO, SMALL_HPARAMS, run_cli


class _LogReg(nn.Module):
    """Standardised prepared columns (categorical ones as their embedding row numbers) into one linear layer."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scaler = tc.Standardize(n)
        self.linear = nn.Linear(n, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.scaler(x)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


class LogReg(TorchModel):
    """A throw-away sixth model: logistic regression, declared in one class like the real ones."""

    name = "logreg"
    description = "logistic regression (throw-away test model)"
    label_columns = (LABEL,)
    default_features = tuple(DEFAULT_FEATURES)
    default_hparams = {"epochs": 2, "batch_size": 256, "learning_rate": 0.05, "weight_decay": 0.0}
    model_names = ("logreg",)
    notebook = NotebookInfo(
        title="Logistic regression",
        what="a logistic regression",
        native="PyTorch",
        checkpoint="checkpoint.pt",
        knobs=(("epochs", "passes"),),
        extra="other",
        step="epoch",
        eval_md="ROC curve.",
        example="-p epochs 2",
    )
    test_hparams = {"epochs": 1}

    def metrics(self, predictions, labels):
        return ctr_metrics(predictions, labels)

    def make_config(self, data):
        return {"n": len(data.columns)}

    def build(self, config):
        return _LogReg(int(config["n"]))

    def fit_scalers(self, net, x):
        net.scaler.fit(x)

    def loss(self, net, batch):
        return nn.functional.binary_cross_entropy_with_logits(net.logits(batch[0]), batch[1])


def logreg_spec(**overrides) -> LogReg:
    """The sixth model, with some class attributes overridden (a subclass, as a variant of a model would be)."""
    return type("LogRegVariant", (LogReg,), overrides)() if overrides else LogReg()


def test_a_sixth_model_is_one_class_and_exports_verifies_and_serves(tmp_path: Path):
    from starlette.testclient import TestClient

    from exporter.serving.server import ModelRegistry, create_app
    from exporter.tools.verify import verify

    with registered(logreg_spec()) as spec:
        assert "logreg" in model_names() and "logreg" in repository_names()
        assert get_spec("logreg") is spec
        assert "logreg" in runner.notebook_names()
        result = pipeline.run(
            pipeline.ExportParams(
                model="logreg", rows=2000, seed=3, artifacts=tmp_path, hparams={"epochs": 1}, progress=False
            )
        )
        assert result.evaluation.metrics["auc"] > 0.6
        report = verify(tmp_path)
        assert report.ok, report.problems
        assert [line.split(":")[0] for line in report.passed] == ["logreg/1"]
        client = TestClient(create_app(ModelRegistry.from_artifacts(tmp_path)))
        body = json.loads((tmp_path / "logreg" / "1" / "sample_request.json").read_text())
        answer = client.post("/predictions/logreg", json=body)
        assert answer.status_code == 200
        expected = json.loads((tmp_path / "logreg" / "1" / "sample_response.json").read_text())
        np.testing.assert_allclose(answer.json()["predictions"], expected["predictions"], atol=1e-12)
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["logreg"]
    assert "logreg" not in model_names()
    with pytest.raises(ExporterError, match="unknown model 'logreg'"):
        get_spec("logreg")


def test_an_incomplete_model_class_cannot_be_instantiated():
    """A forgotten fact or method fails when the model is first looked up, naming what is missing."""
    facts = {
        k: getattr(LogReg, k)
        for k in ("description", "label_columns", "default_features", "default_hparams", "model_names")
    }
    methods = {k: getattr(LogReg, k) for k in ("metrics", "make_config", "build")}
    with pytest.raises(TypeError, match="Nameless declares no name"):
        type("Nameless", (TorchModel,), {**facts, **methods, "loss": LogReg.loss})()
    with pytest.raises(TypeError, match="abstract method.*loss"):
        type("NoLoss", (TorchModel,), {**facts, **methods, "name": "noloss"})()
    assert type("Complete", (TorchModel,), {**facts, **methods, "name": "x", "loss": LogReg.loss})().name == "x"


def test_a_hyper_parameter_without_a_rule_is_refused(tmp_path: Path):
    spec = logreg_spec(default_hparams={"epochs": 1, "batch_size": 256, "learning_rate": 0.05, "dropout": 0.1})
    with registered(spec), pytest.raises(ExporterError, match="dropout of logreg has no rule"):
        H.resolve_hparams(spec, {})
    ruled = logreg_spec(
        default_hparams={"epochs": 1, "batch_size": 256, "learning_rate": 0.05, "dropout": 0.1},
        hparam_rules={"dropout": ("fraction", "a number in (0, 1]")},
    )
    assert H.resolve_hparams(ruled, {})["dropout"] == 0.1
    with pytest.raises(ExporterError, match="dropout of logreg must be a number in"):
        H.resolve_hparams(ruled, {"dropout": 2})
    own = logreg_spec(
        default_hparams={"epochs": 1, "batch_size": 256, "learning_rate": 0.05, "dropout": 0.1},
        hparam_rules={"dropout": (lambda v, hp: v < hp["learning_rate"], "below the learning rate")},
    )
    assert H.resolve_hparams(own, {"dropout": 0.01})["dropout"] == 0.01
    with pytest.raises(ExporterError, match="dropout of logreg must be below the learning rate, got 0.1"):
        H.resolve_hparams(own, {})


def _imports(package_dirs: list[Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``package_dirs`` it imports (anywhere in it, function bodies included)."""
    import ast

    modules = {}
    for d in package_dirs:
        for f in d.rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            edges[m] |= {n for n in names if n in modules and n != m}
    return edges


def test_training_imports_no_model_and_models_and_training_have_no_import_cycle():
    edges = _imports([REPO / "exporter" / "models", REPO / "exporter" / "training"])
    assert "exporter.training.hparams" in edges and "exporter.models.mmoe.tasks" in edges
    upward = sorted(
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if a.startswith("exporter.training") and b.startswith("exporter.models")
    )
    assert not upward, upward

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(edges[path[-1]]):
            if nxt == start:
                return path + [start]
            if nxt not in path:
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None

    for module in edges:
        assert cycle_from(module, [module]) is None, " -> ".join(cycle_from(module, [module]))


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_has_rules_a_notebook_and_test_settings(name):
    spec = get_spec(name)
    for key in spec.default_hparams:
        H.rule_for(spec, key)  # raises for a hyper-parameter without a rule
    H.resolve_hparams(spec, {})
    assert spec.notebook is not None, f"{name} declares no notebook"
    assert spec.test_hparams and set(spec.test_hparams) <= set(spec.default_hparams)
    assert name in SMALL_HPARAMS
    notebook = REPO / "notebooks" / f"{name}.ipynb"
    assert notebook.is_file(), f"run: python tools/build_notebooks.py {name}"
    params = runner.notebook_parameters(notebook)
    assert {knob for knob, _ in spec.notebook.knobs} <= set(params)


def test_stored_notebooks_are_what_the_generator_writes():
    """A spec change without `python tools/build_notebooks.py` fails here."""
    import importlib.util

    import nbformat

    loader = importlib.util.spec_from_file_location("build_notebooks", REPO / "tools" / "build_notebooks.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    for name in model_names():
        stored = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        generated = module.build(name)
        assert [c.source for c in stored.cells] == [c.source for c in generated.cells], name


@pytest.mark.slow
def test_help_texts_list_the_registered_models():
    result = run_cli("export", "--help")
    assert result.returncode == 0
    for name in model_names():
        assert name in result.stdout
    for name in repository_names():
        assert name in result.stdout
