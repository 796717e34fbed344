"""The TorchServe archive (``python -m exporter archive``) driven the way TorchServe drives it, and in a real
TorchServe.

TorchServe (ts/model_loader.py) imports the archive's ``--handler`` (``torchserve_entry.py``) by module name from
the extracted archive directory; because the module has a ``handle`` function it calls ``handle(None, context)``
once at load time, then ``handle(batch, context)`` with one dict per request holding the body under ``body`` (or
``data``): bytes, or an already-decoded JSON object for ``application/json``. Per-request statuses go through
``context.set_response_status(code, phrase, idx)``. The fake context below mirrors ts/context.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest

from exporter import cli
from exporter.runtime.handler import ModelHandler
from exporter.tools.peer_servers import TorchServe, wait_until_ready
from tests.handler_fixtures import DEFAULT_COLUMNS, build_artifact, sample_rows

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the version directory, the model store holding mmoe.mar built by ``python -m exporter archive``)."""
    root = tmp_path_factory.mktemp("ts")
    vdir = build_artifact(root / "artifacts", "mmoe")
    store = root / "model_store"
    assert cli.main(["archive", "mmoe/1", "--artifacts", str(root / "artifacts"), "--export-path", str(store)]) == 0
    return vdir, store


@pytest.fixture(scope="module")
def model_dir(archived: tuple[Path, Path]) -> Path:
    """The extracted .mar, as TorchServe unpacks it for its workers."""
    _, store = archived
    extracted = store.parent / "model_dir"
    with zipfile.ZipFile(store / "mmoe.mar") as mar:
        mar.extractall(extracted)
    manifest = json.loads((extracted / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["handler"] == "torchserve_entry.py"
    assert manifest["model"]["serializedFile"] == "model.onnx"
    assert (manifest["model"]["modelName"], manifest["model"]["modelVersion"]) == ("mmoe", "1")
    assert sorted(p.name for p in extracted.iterdir()) == [
        "MAR-INF",
        "exporter",
        "metadata.json",
        "model.onnx",
        "torchserve_entry.py",
    ]
    shipped = sorted(p.relative_to(extracted).as_posix() for p in (extracted / "exporter").rglob("*.py"))
    runtime = Path(sys.modules["exporter.runtime.handler"].__file__).parent
    assert shipped == sorted(
        ["exporter/__init__.py"]
        + [f"exporter/runtime/{p.relative_to(runtime).as_posix()}" for p in runtime.rglob("*.py")]
    )
    return extracted


def fresh_handler_module(model_dir: Path) -> ModuleType:
    """Import the archive's entry point as a fresh module (TorchServe imports it once per worker)."""
    spec = importlib.util.spec_from_file_location("ts_entry_under_test", model_dir / "torchserve_entry.py")
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
    v2 = {
        "id": "7",
        "inputs": [
            {"name": "features", "shape": [1, 7], "datatype": "FP64", "data": [rows[0][c] for c in DEFAULT_COLUMNS]}
        ],
    }
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


def test_archive_runs_without_the_exporter_package(
    archived: tuple[Path, Path], model_dir: Path, tmp_path: Path
) -> None:
    """In a clean process where the exporter package is not importable, load the extracted archive the way
    ts/model_loader.py does: only the archive's own exporter/runtime may be imported."""
    script = tmp_path / "load_like_torchserve.py"
    script.write_text(
        FAKE_TS
        + textwrap.dedent(f"""
        import importlib, importlib.util, json, os, sys
        # hide the installed (editable) exporter package: its finder and path hook, and any path holding it
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
        sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "exporter"))]
        sys.path_importer_cache.clear()
        assert importlib.util.find_spec("exporter") is None, "the exporter package is still importable"
        model_dir = {str(model_dir)!r}
        sys.path.insert(0, model_dir)
        manifest = json.load(open(os.path.join(model_dir, "MAR-INF", "MANIFEST.json")))
        module = importlib.import_module(manifest["model"]["handler"][:-3])
        entry = getattr(module, "handle")
        ctx = Context("mmoe", model_dir, manifest)
        entry(None, ctx)
        ctx.request_processor = [RequestProcessor({{}}), RequestProcessor({{}})]
        body = bytearray(open(sys.argv[1], "rb").read())
        out = entry([{{"body": body}}, {{"body": b"{{}}"}}], ctx)
        loaded = {{m: getattr(sys.modules[m], "__file__", None) for m in sys.modules if m.split(".")[0] == "exporter"}}
        outside = [m for m, f in loaded.items() if not (f or "").startswith(model_dir + os.sep)]
        assert not outside, f"imported from outside the archive: {{outside}}"
        assert not [m for m in loaded if m not in ("exporter", "exporter.runtime")
                    and not m.startswith("exporter.runtime.")], sorted(loaded)
        assert "exporter.runtime.handler" in loaded
        print(json.dumps({{"answers": [o.decode() for o in out],
                          "statuses": [rp._status_code for rp in ctx.request_processor]}}))
    """)
    )
    rows = sample_rows(DEFAULT_COLUMNS, 3)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"data": rows}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(script), str(request)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["statuses"] == [200, 400]
    vdir, _ = archived
    assert json.loads(result["answers"][0]) == ModelHandler.load(vdir).predict({"data": rows})
    assert 'neither "data" nor "inputs"' in json.loads(result["answers"][1])["error"]


# ---------------------------------------------------------------------------------------------- real TorchServe
@pytest.fixture()
def torchserve(archived: tuple[Path, Path], tmp_path: Path) -> Iterator[TorchServe]:
    if shutil.which("java") is None:
        pytest.skip("java is not installed (TorchServe's frontend needs Java 11+)")
    if shutil.which("torchserve") is None:
        pytest.skip("the torchserve binary is not installed (pip install torchserve==0.12.0)")
    _, store = archived
    server = TorchServe(store, "mmoe", tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_real_torchserve_serves_the_archive(torchserve: TorchServe, archived: tuple[Path, Path]) -> None:
    """torchserve --start with the .mar: its answers are the handler's, errors keep their status."""
    vdir, _ = archived
    handler = ModelHandler.load(vdir)
    rows = sample_rows(DEFAULT_COLUMNS, 4, seed=5)
    v2 = {
        "id": "r1",
        "inputs": [
            {"name": "features", "shape": [1, 7], "datatype": "FP64", "data": [rows[0][c] for c in DEFAULT_COLUMNS]}
        ],
    }
    url = f"http://127.0.0.1:{torchserve.inference}/predictions/mmoe"
    with httpx.Client(timeout=60) as client:
        wait_until_ready(torchserve)
        for request in ({"data": rows}, v2):
            response = client.post(url, content=json.dumps(request), headers={"Content-Type": "application/json"})
            assert response.status_code == 200, (response.text, torchserve.logs())
            assert response.json() == handler.predict(request)
        bad = client.post(
            url, content=json.dumps({"data": [{"item_ctr": 0.1}]}), headers={"Content-Type": "application/json"}
        )
    assert bad.status_code == 400, bad.text
    assert 'data[0] is missing feature columns "item_cvr"' in bad.json()["error"]
