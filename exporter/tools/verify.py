"""``python -m exporter verify DIR``: the handoff check a serving team runs before accepting artifacts.

DIR may be a version directory (``artifacts/xgb/1``), a model directory (``artifacts/xgb``) or a whole artifacts
tree. For every version it checks the Triton layout, the sha256 of the model file, metadata.json against the
Open Inference Protocol ``metadata_model_response`` schema and contract section 3, the ONNX graph (onnx.checker,
input/output names, element types and shapes) against metadata.json and config.pbtxt, and that the handler's
answer to ``sample_request.json`` equals ``sample_response.json`` within the parity tolerance.

Every problem is printed on its own line; the exit code is 0 only when there is none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from exporter import contract as C
from exporter.errors import ExporterError
from exporter.export import repository as repo
from exporter.export import triton
from exporter.export.repository import sha256_file
from exporter.export.triton import MAX_PBTXT_DEPTH, parse_pbtxt  # noqa: F401  (re-exported: verify's parser)
from exporter.export.triton import config_problems as triton_config_problems
from exporter.tools.verify_sample import DEFAULT_SAMPLE_TIMEOUT, SampleRunner, atol_of, read_json

REQUIRED_FILES = C.REQUIRED_VERSION_FILES
SPEC_FILE = Path(__file__).resolve().parent.parent / "specs_data" / "open_inference_rest.yaml"


@dataclass
class Report:
    """Outcome of a verification: problems (one line each) and what passed."""

    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    #: facts that are not problems (an export in progress)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------------------------- walking
def _is_version_name(name: str) -> bool:
    return C.is_version_name(name)


def _looks_like_version(path: Path) -> bool:
    """A version directory holds metadata.json, or is named like a version inside a model directory."""
    if (path / C.METADATA_FILE).is_file():
        return True
    return C.is_version_name(path.name) and (path.parent / C.CONFIG_FILE).is_file()


def _looks_like_model(path: Path) -> bool:
    return (path / C.CONFIG_FILE).is_file() or bool(C.version_dirs(path))


def verify(path: Path, sample_timeout: float = DEFAULT_SAMPLE_TIMEOUT) -> Report:
    """Verify a version directory, a model directory or an artifacts tree (told apart by content, not name).

    Each version's sample requests run in a child process for at most ``sample_timeout`` seconds.
    """
    path = Path(path)
    if not path.is_dir():
        raise ExporterError(f"{str(path)!r} is not a directory; expected a version, model or artifacts directory")
    if not (isinstance(sample_timeout, (int, float)) and sample_timeout > 0 and math.isfinite(sample_timeout)):
        raise ExporterError(f"the sample timeout must be a positive number of seconds, got {sample_timeout!r}")
    with SampleRunner(sample_timeout) as runner:
        report = _verify_tree(path, runner)
    for lines in (report.problems, report.passed, report.notes):
        lines[:] = [printable(line) for line in lines]
    return report


def printable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode escaped: a file name's undecodable byte as ``\\xff``, a lone
    surrogate from a JSON ``"\\ud800"`` escape as ``\\ud800`` (a report line prints on any UTF-8 output)."""
    if not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return text
    return "".join(
        f"\\x{ord(ch) - 0xDC00:02x}"
        if 0xDC80 <= ord(ch) <= 0xDCFF
        else f"\\u{ord(ch):04x}"
        if 0xD800 <= ord(ch) <= 0xDFFF
        else ch
        for ch in text
    )


def _verify_tree(path: Path, runner: SampleRunner) -> Report:
    report = Report()
    if _looks_like_version(path):
        _verify_model(path.parent, report, runner, only=path)
    elif _looks_like_model(path):
        _verify_model(path, report, runner)
    else:
        models = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        if not models:
            report.problems.append(
                f"{path}: no model directory found (expected <model_name>/config.pbtxt and <model_name>/<version>/)"
            )
        for model_dir in models:
            _verify_model(model_dir, report, runner)
    return report


def _verify_model(model_dir: Path, report: Report, runner: SampleRunner, only: Path | None = None) -> None:
    _report_leftovers(model_dir, report)
    config, config_problems = None, []
    config_path = model_dir / "config.pbtxt"
    label = model_dir.name
    if not config_path.is_file():
        config_problems.append(f"{label}: config.pbtxt is missing (Triton needs <model>/config.pbtxt)")
    else:
        try:
            config = parse_pbtxt(config_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            config_problems.append(f"{label}: config.pbtxt does not parse: {exc}")
    report.problems.extend(config_problems)

    if only is not None:
        versions = [only]
    else:
        versions = []
        for child in sorted(model_dir.iterdir()):
            if not child.is_dir() or child.name.startswith(".") or child.name == "warmup":
                continue  # files beside config.pbtxt, in-progress exports (.staging-*), Triton's warmup/ data
            if _is_version_name(child.name):
                versions.append(child)
            else:
                report.problems.append(
                    f"{label}/{child.name}: not a version directory (Triton expects positive integers: 1, 2, ...)"
                )
        versions.sort(key=lambda p: int(p.name))
        if not versions:
            report.problems.append(f"{label}: no version directory (expected {label}/1/)")
    for vdir in versions:
        before = len(report.problems)
        try:
            summary = _verify_version(model_dir, vdir, config, report, runner)
        except RecursionError:  # last line of defence: one version's hostile file never loses the others
            report.problems.append(f"{label}/{vdir.name}: a file nests too deeply to be checked")
            continue
        if len(report.problems) == before:
            report.passed.append(f"{label}/{vdir.name}: {summary}")


def _report_leftovers(model_dir: Path, report: Report) -> None:
    """Staging directories of killed exports and kept files of failed ones are problems; live exports notes."""
    for staging in repo.stagings(model_dir):
        (report.problems if staging.stale else report.notes).append(f"{model_dir.name}/{staging.describe()}")
    for version in repo.pending_publishes(model_dir):
        report.problems.append(
            f"{model_dir.name}/{version.name}: its config.pbtxt, kserve.yaml and warm-up data were committed but not "
            f"copied into {model_dir.name}/ (its export was killed); the next export of this model copies them"
        )
    for kept in repo.kept_dirs(model_dir):
        report.problems.append(
            f"{model_dir.name}/{kept.name}: files of an export that could not commit its version, kept for its "
            "user; export them in load mode or delete the directory"
        )


# ---------------------------------------------------------------------------------------------- one version
def _verify_version(
    model_dir: Path, vdir: Path, config: dict[str, Any] | None, report: Report, runner: SampleRunner
) -> str:
    label = f"{model_dir.name}/{vdir.name}"
    problems = report.problems

    def fail(message: str) -> None:
        problems.append(f"{label}: {message}")

    if not _is_version_name(vdir.name):
        fail("version directory name must be a positive integer (1, 2, ...)")
    for name in REQUIRED_FILES:
        if not (vdir / name).is_file():
            fail(f"{name} is missing")
    metadata = read_json(vdir / "metadata.json", fail)
    if not isinstance(metadata, dict):
        if metadata is not None:
            fail("metadata.json must hold a JSON object")
        return ""
    for problem in metadata_problems(metadata, model_dir.name, vdir.name):
        fail(f"metadata.json: {problem}")

    declared = metadata.get("model_file")
    model_file = declared if isinstance(declared, str) else "model.onnx"
    model_path = vdir / model_file
    sha_ok = False
    if not C.is_plain_file_name(model_file):
        fail(f"metadata.json model_file {model_file!r} must be a file name inside the version directory")
    elif not model_path.is_file():
        fail(f"{model_file} (metadata.json model_file) is missing")
    else:
        actual = sha256_file(model_path)
        if actual != metadata.get("sha256"):
            fail(f"sha256 of {model_file} is {actual}, metadata.json records {metadata.get('sha256')}")
        else:
            sha_ok = True

    graph_ok = False
    if C.is_plain_file_name(model_file) and model_path.is_file():
        graph_ok = _check_onnx(model_path, metadata, fail)
    if config is not None:
        for problem in config_problems(config, metadata, model_dir.name, model_dir):
            fail(f"config.pbtxt: {problem}")

    detail = "layout, sha256, metadata schema, ONNX I/O vs metadata and config.pbtxt, onnx.checker"
    side = _check_side_files(vdir, metadata, fail)
    if side:
        detail += f", {' and '.join(side)} sha256"
    if sha_ok and graph_ok:
        samples = runner.run(vdir, metadata)
        for message in samples["fails"]:
            fail(message)
        max_diff, v2_diff = samples["diff"], samples["v2_diff"]
        if max_diff is not None:
            atol = atol_of(metadata)
            detail += f", sample response (max |diff| {max_diff:.3g} <= atol {atol:g})"
        if v2_diff is not None:
            detail += f", v2 sample response (max |diff| {v2_diff:.3g})"
    return detail


def _check_side_files(vdir: Path, metadata: dict[str, Any], fail: Any) -> list[str]:
    """Files metadata.json lists beside the model as ``{"file", "sha256", ...}`` (the towers' ``catalogue``):
    present, inside the version directory, and unchanged. Returns the names checked."""
    checked = []
    for key, entry in metadata.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and "sha256" in entry):
            continue
        name = entry["file"]
        if not C.is_plain_file_name(name):
            fail(f"metadata.json {key}.file {name!r} must be a file name inside the version directory")
        elif not (vdir / name).is_file():
            fail(f"{name} (metadata.json {key}) is missing")
        elif sha256_file(vdir / name) != entry["sha256"]:
            fail(f"sha256 of {name} is {sha256_file(vdir / name)}, metadata.json {key} records {entry['sha256']}")
        else:
            checked.append(name)
    return checked


# ---------------------------------------------------------------------------------------------- metadata
_SCHEMA_VALIDATOR: Any = None


def metadata_validator() -> Any:
    """jsonschema validator for ``metadata_model_response`` of the embedded Open Inference REST spec."""
    global _SCHEMA_VALIDATOR
    if _SCHEMA_VALIDATOR is None:
        import jsonschema
        import yaml

        spec = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
        schema = {"$ref": "#/components/schemas/metadata_model_response", "components": spec["components"]}
        _SCHEMA_VALIDATOR = jsonschema.Draft7Validator(schema)
    return _SCHEMA_VALIDATOR


def metadata_problems(metadata: dict[str, Any], model_name: str, version: str) -> list[str]:
    """Problems of metadata.json against the spec schema and contract section 3."""
    problems = []
    for error in sorted(metadata_validator().iter_errors(metadata), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        problems.append(f"not a valid metadata_model_response at {where}: {error.message}")
    problems.extend(C.contract_problems(metadata, model_name, version))
    problems.extend(feature_entry_problems(metadata.get("features")))
    created = metadata.get("created_at")
    try:
        stamp = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        offset = stamp.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            problems.append(f"created_at {created!r} must be UTC (e.g. 2026-11-21T23:59:00Z)")
    except ValueError:
        problems.append(f"created_at {created!r} is not an ISO 8601 UTC timestamp")
    return problems


def feature_entry_problems(features: Any) -> list[str]:
    """Types of the ``features[]`` fields serving reads (docs/features.md): ``optional`` a boolean, ``oov`` an
    object whose ``policy`` is ``vocabulary`` or ``hash`` (``hash`` with a positive ``hash_buckets``)."""
    if not isinstance(features, list):
        return []
    problems = []
    for i, entry in enumerate(features):
        if not isinstance(entry, dict):
            continue  # the contract check reports entries that are not objects
        where = f"features[{i}] ({entry.get('name')!s})"
        if "optional" in entry and not isinstance(entry["optional"], bool):
            problems.append(f"{where} optional is {entry['optional']!r}; expected true or false")
        if "oov" not in entry:
            continue
        oov = entry["oov"]
        if not isinstance(oov, dict):
            problems.append(f'{where} oov is {oov!r}; expected an object such as {{"policy": "vocabulary", ...}}')
        elif oov.get("policy") not in ("vocabulary", "hash"):
            problems.append(f"{where} oov.policy is {oov.get('policy')!r}; expected 'vocabulary' or 'hash'")
        elif oov["policy"] == "hash":
            buckets = oov.get("hash_buckets")
            if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
                problems.append(f"{where} oov.hash_buckets is {buckets!r}; expected a positive integer")
    return problems


# ---------------------------------------------------------------------------------------------- ONNX
def _check_onnx(model_path: Path, metadata: dict[str, Any], fail: Any) -> bool:
    """onnx.checker plus graph I/O against metadata; returns whether the graph is usable."""
    import onnx

    try:
        model = onnx.load(str(model_path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises several exception types for corrupt files
        fail(f"onnx.checker rejects {model_path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return False
    cols = metadata.get("feature_columns") if isinstance(metadata.get("feature_columns"), list) else None
    problems = C.graph_io_problems(model, len(cols) if cols else None, C.metadata_output_shape(metadata))
    for problem in problems:
        fail(f"ONNX {problem}")
    ok = not problems
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if isinstance(metadata.get("opset"), int) and opset is not None and opset != metadata["opset"]:
        fail(f"ONNX default-domain opset is {opset}; metadata.json says {metadata['opset']}")
    return ok


# ---------------------------------------------------------------------------------------------- config.pbtxt
def config_problems(
    config: dict[str, list[Any]], metadata: dict[str, Any], model_name: str, model_dir: Path | None = None
) -> list[str]:
    """config.pbtxt against the model directory and metadata.json (``model_dir``: also its warm-up files)."""
    problems = []

    def one(fields: dict[str, list[Any]], key: str) -> Any:
        values = fields.get(key) or [None]
        return values[0]

    if one(config, "name") != model_name:
        problems.append(f"name is {one(config, 'name')!r}; Triton requires the model directory name {model_name!r}")
    if one(config, "platform") != "onnxruntime_onnx" and one(config, "backend") != "onnxruntime":
        problems.append(f"platform is {one(config, 'platform')!r}; expected 'onnxruntime_onnx'")
    # tensors, batching and warm-up (batched and unbatched forms) are checked by exporter.export.triton
    problems += triton_config_problems(config, metadata, model_dir)
    recorded = metadata.get("triton")
    if recorded is not None:  # versions exported before metadata.json recorded Triton's view have none
        try:
            view: Any = triton.triton_view_of(config)
        except (KeyError, IndexError, TypeError, ValueError):
            view = None  # a tensor Triton would refuse: reported above
        if view is not None and recorded != view:
            problems.append(
                f'metadata.json "triton" is {json.dumps(recorded)}, but Triton reports {json.dumps(view)} for this '
                "config (Triton's inputs and outputs: names, datatypes, shapes with -1 for the batch axis)"
            )
    return problems
