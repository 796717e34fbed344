"""What the README and docs show users importing keeps working over the packages' new homes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd

from tests.handler_fixtures import DEFAULT_COLUMNS, REPO, build_artifact, sample_rows


def test_exporter_handler_is_the_runtime_handler() -> None:
    import exporter.handler as public
    from exporter.runtime import errors, handler, torchserve_entry

    assert public.ModelHandler is handler.ModelHandler
    assert public.HandlerError is errors.HandlerError and public.ArtifactError is errors.ArtifactError
    assert public.DEFAULT_MAX_ROWS == handler.DEFAULT_MAX_ROWS
    assert public.initialize is torchserve_entry.initialize and public.handle is torchserve_entry.handle


def test_the_readme_handler_call_answers(tmp_path: Path) -> None:
    """``from exporter.handler import ModelHandler``; ``ModelHandler.load(dir).predict({"data": [...]})``."""
    from exporter.handler import ModelHandler

    vdir = build_artifact(tmp_path, "xgb")
    answer = ModelHandler.load(vdir).predict({"data": sample_rows(DEFAULT_COLUMNS, 2)})
    assert len(answer["predictions"]) == 2 and all(isinstance(p, float) for p in answer["predictions"])


def test_torchserve_entry_points_through_the_public_module(tmp_path: Path) -> None:
    """A fresh process: TorchServe's ``handle(None, ctx)`` then a batch, via ``exporter.handler``."""
    vdir = build_artifact(tmp_path, "xgb")
    body = json.dumps({"data": sample_rows(DEFAULT_COLUMNS, 1)})
    code = (
        "import sys, json\n"
        "from types import SimpleNamespace\n"
        "from exporter.handler import handle\n"
        f"ctx = SimpleNamespace(system_properties={{'model_dir': {str(vdir)!r}}}, manifest={{}},\n"
        "                      request_processor=None)\n"
        "assert handle(None, ctx) is None\n"
        f"print(handle([{{'body': {body!r}.encode()}}], ctx)[0].decode())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(orjson.loads(result.stdout)["predictions"]) == 1


def test_exporter_features_feature_plan() -> None:
    """``from exporter.features import FeaturePlan`` and the schema helpers the docs name."""
    from exporter.features import FeaturePlan, FeatureSpec, fit, load_schema

    frame = pd.DataFrame({"item_id": [1, 2, 2, 3, 3, 3], "price": [1.0, 2.0, None, 4.0, 5.0, 6.0]})
    schema = load_schema({"features": [{"name": "item_id", "kind": "categorical", "min_count": 1}]})
    assert schema is not None
    plan = fit(frame, [FeatureSpec("item_id", "categorical", min_count=1), FeatureSpec("price")])
    assert isinstance(plan, FeaturePlan) and len(plan) == 2
