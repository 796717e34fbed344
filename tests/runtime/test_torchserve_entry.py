"""exporter/handler.py as a TorchServe custom handler, driven the way TorchServe drives it.

TorchServe (ts/model_loader.py) imports the ``--handler`` file by module name from the extracted archive
directory; because the module has a ``handle`` function it calls ``handle(None, context)`` once at load time, then
``handle(batch, context)`` with one dict per request holding the body under ``body`` (or ``data``): bytes, or an
already-decoded JSON object for ``application/json``. Per-request statuses go through
``context.set_response_status(code, phrase, idx)``. The fake context below mirrors ts/context.py.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from tests.handler_fixtures import DEFAULT_COLUMNS, REPO, build_artifact, sample_rows

pytestmark = pytest.mark.slow

HANDLER_FILE = REPO / "exporter" / "handler.py"
ALLOWED_IMPORTS = {
    "__future__", "hashlib", "json", "math", "os", "threading", "itertools", "operator", "pathlib", "typing",
    "numpy", "orjson", "onnxruntime",
}

FAKE_TS = '''
class RequestProcessor:
    """Mirror of ts.context.RequestProcessor."""

    def __init__(self, request_header):
        self._status_code = 200
        self._reason_phrase = None
        self._response_header = {}
        self._request_header = request_header

    def report_status(self, code, reason_phrase=None):
        self._status_code = code
        self._reason_phrase = reason_phrase

    def add_response_property(self, key, value):
        self._response_header[key] = value


class Context:
    """Mirror of ts.context.Context (the parts a handler uses)."""

    def __init__(self, model_name, model_dir, manifest, batch_size=1, gpu=None):
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {"model_dir": model_dir, "gpu_id": gpu, "batch_size": batch_size,
                                   "server_name": "MMS", "server_version": "0.12.0"}
        self.request_processor = None

    @property
    def system_properties(self):
        return self._system_properties

    def set_response_content_type(self, idx, value):
        self.request_processor[idx].add_response_property("content-type", value)

    def set_response_status(self, code=200, phrase="", idx=0):
        if self.request_processor is not None and self.request_processor[idx] is not None:
            self.request_processor[idx].report_status(code, reason_phrase=phrase)
'''

fake_ts = ModuleType("fake_ts")
exec(FAKE_TS, fake_ts.__dict__)


def test_handler_file_imports_nothing_from_the_exporter_package() -> None:
    tree = ast.parse(HANDLER_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in handler.py"
            imported.add((node.module or "").split(".")[0])
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extracted .mar: torch-model-archiver's output when installed, else the same flat layout by hand."""
    root = tmp_path_factory.mktemp("ts")
    vdir = build_artifact(root / "artifacts", "mmoe")
    extracted = root / "model_dir"
    archiver = shutil.which("torch-model-archiver")
    if archiver:
        subprocess.run(
            [archiver, "--model-name", "mmoe", "--version", "1", "--handler", str(HANDLER_FILE),
             "--serialized-file", str(vdir / "model.onnx"), "--extra-files", str(vdir / "metadata.json"),
             "--export-path", str(root)],
            check=True, capture_output=True, timeout=60,
        )
        with zipfile.ZipFile(root / "mmoe.mar") as mar:
            mar.extractall(extracted)
        manifest = json.loads((extracted / "MAR-INF" / "MANIFEST.json").read_text())
        assert manifest["model"]["handler"] == "handler.py"
        assert manifest["model"]["serializedFile"] == "model.onnx"
    else:
        (extracted / "MAR-INF").mkdir(parents=True)
        for f in (HANDLER_FILE, vdir / "model.onnx", vdir / "metadata.json"):
            shutil.copy(f, extracted / f.name)
        manifest = {"model": {"modelName": "mmoe", "serializedFile": "model.onnx", "handler": "handler.py",
                              "modelVersion": "1"}, "runtime": "python"}
        (extracted / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    assert sorted(p.name for p in extracted.iterdir()) == ["MAR-INF", "handler.py", "metadata.json", "model.onnx"]
    return extracted


def fresh_handler_module(model_dir: Path) -> ModuleType:
    """Import the archived handler.py as a fresh module (TorchServe imports it once per worker)."""
    spec = importlib.util.spec_from_file_location("ts_handler_under_test", model_dir / "handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_context(model_dir: Path, n_requests: int) -> Any:
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    ctx = fake_ts.Context("mmoe", str(model_dir), manifest, batch_size=n_requests)
    ctx.request_processor = [fake_ts.RequestProcessor({}) for _ in range(n_requests)]
    return ctx


def test_torchserve_batch_with_every_body_kind(model_dir: Path) -> None:
    module = fresh_handler_module(model_dir)
    rows = sample_rows(DEFAULT_COLUMNS, 2)
    body = json.dumps({"data": rows})
    v2 = {"id": "7", "inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP64",
                                 "data": [rows[0][c] for c in DEFAULT_COLUMNS]}]}
    batch = [
        {"body": bytearray(body.encode())},  # TorchServe hands raw bodies over as bytearray
        {"data": body.encode()},
        {"body": json.loads(body)},  # application/json: already decoded by TorchServe
        {"body": body},
        {"body": json.dumps(v2).encode()},
        {"body": b"\x00not json"},
        {"body": {"data": [{"item_ctr": 0.1}]}},
        {"headers": {}},
    ]
    ctx = make_context(model_dir, len(batch))
    assert module.handle(None, ctx) is None  # TorchServe's load-time call of a module-level entry point
    answers = module.handle(batch, ctx)
    assert isinstance(answers, list) and len(answers) == len(batch)
    assert all(isinstance(a, bytes) for a in answers)
    decoded = [orjson.loads(a) for a in answers]
    statuses = [rp._status_code for rp in ctx.request_processor]
    assert statuses == [200, 200, 200, 200, 200, 400, 400, 400]
    assert all(rp._response_header.get("content-type") == "application/json" for rp in ctx.request_processor)
    assert decoded[0] == decoded[1] == decoded[2] == decoded[3]
    assert [list(p) for p in decoded[0]["predictions"]] == [["ctr", "watch_time", "gmv"]] * 2
    assert decoded[4]["id"] == "7" and decoded[4]["model_name"] == "mmoe"
    assert decoded[4]["outputs"][0]["data"] == [decoded[0]["predictions"][0][c] for c in ("ctr", "watch_time", "gmv")]
    assert "not valid JSON" in decoded[5]["error"]
    assert 'data[0] is missing feature columns "item_cvr"' in decoded[6]["error"]
    assert 'neither "body" nor "data"' in decoded[7]["error"]


def test_initialize_entry_point_and_missing_model_dir(model_dir: Path) -> None:
    module = fresh_handler_module(model_dir)
    ctx = make_context(model_dir, 1)
    service = module.initialize(ctx)
    assert service is module.initialize(ctx)  # loads once per worker
    assert (service.model_name, service.version) == ("mmoe", "1")
    bare = fresh_handler_module(model_dir)
    with pytest.raises(bare.ArtifactError, match="model_dir"):
        bare.initialize(fake_ts.Context("mmoe", "", {}))


def test_archive_runs_without_the_exporter_package(model_dir: Path, tmp_path: Path) -> None:
    """In a clean process whose only code is the extracted archive, load it the way ts/model_loader.py does."""
    script = tmp_path / "load_like_torchserve.py"
    script.write_text(FAKE_TS + textwrap.dedent(f'''
        import importlib, json, os, sys
        model_dir = {str(model_dir)!r}
        sys.path.insert(0, model_dir)
        manifest = json.load(open(os.path.join(model_dir, "MAR-INF", "MANIFEST.json")))
        module = importlib.import_module(manifest["model"]["handler"][:-3])
        entry = getattr(module, "handle")
        ctx = Context("mmoe", model_dir, manifest)
        entry(None, ctx)
        ctx.request_processor = [RequestProcessor({{}})]
        out = entry([{{"body": bytearray(open(sys.argv[1], "rb").read())}}], ctx)
        assert not [m for m in sys.modules if m == "exporter" or m.startswith("exporter.")], "imported exporter"
        print(out[0].decode())
    '''))
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"data": sample_rows(DEFAULT_COLUMNS, 1)}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(script), str(request)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert list(answer["predictions"][0]) == ["ctr", "watch_time", "gmv"]
