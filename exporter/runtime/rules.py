"""The rules every exported artifact keeps, owned here once: tensor and file names, the version rule, and how
``metadata.json`` is read and checked.

This module is part of :mod:`exporter.runtime` (standard library, numpy, orjson and onnxruntime only), so the
TorchServe archive, the server, ``verify``, ``score`` and ``export`` all import the same rules;
:mod:`exporter.contract` adds what only export-time checks need.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------- tensors
INPUT_NAME = "features"
OUTPUT_NAME = "predictions"
DATATYPE = "FP64"
ONNX_TYPE = "tensor(double)"
PLATFORM = "onnxruntime_onnx"
#: the TorchServe-style request and answer keys (contract section 4)
REQUEST_ROWS_KEY = "data"
ANSWER_KEY = "predictions"

#: prediction format -> what a TorchServe-style answer holds per row (contract section 1)
PREDICTION_FORMATS: dict[str, str] = {
    "scalar": "one probability per row",
    "named_columns": "one object per row with the output columns",
    "vector": "one vector per row (a single row: the vector itself)",
}

# ---------------------------------------------------------------------------------------------- files
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.pbtxt"
SAMPLE_REQUEST = "sample_request.json"
SAMPLE_RESPONSE = "sample_response.json"
#: the string vocabularies of a version's categorical columns (named by ``features[].vocab``)
VOCAB_FILE = "vocab.json"
REPORT_FILE = "report.ipynb"
STAGING_PREFIX = ".staging-"
#: files every version directory must hold besides the model file
REQUIRED_VERSION_FILES = (METADATA_FILE, SAMPLE_REQUEST, SAMPLE_RESPONSE)

# ---------------------------------------------------------------------------------------------- values
#: largest integer up to which every FP64 value is exact: categorical IDs beyond it cannot travel in the tensor
MAX_EXACT_INT = 2**53
#: the code of a string that is not in its column's vocabulary (the graph sends it to the OOV row)
UNKNOWN_CODE = -1


def hash_code(text: str) -> int:
    """The code of a string in a ``hash_buckets`` column (docs/features.md): sha256 of its UTF-8 bytes, first
    6 bytes big-endian (48 bits, so every code is an exact FP64 integer)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:6], "big")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- versions
#: Triton model versions are int64: the largest version a repository may hold.
MAX_VERSION = 2**63 - 1
_VERSION_NAME = re.compile(r"[1-9][0-9]*")


def is_version_name(name: str) -> bool:
    """A canonical positive integer in ASCII digits within int64 ("1", "2", ...; not "01", "١", "²", "0")."""
    return bool(_VERSION_NAME.fullmatch(name)) and name.isascii() and int(name) <= MAX_VERSION


def version_dirs(model_dir: Path) -> list[Path]:
    """The version directories of a model directory, lowest first; every other entry is ignored."""
    if not model_dir.is_dir():
        return []
    found = [p for p in model_dir.iterdir() if is_version_name(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name))


def version_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a version number (``None`` when it can)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        return f"version must be a positive integer up to {MAX_VERSION} (Triton's int64), got {value!r}"
    return None


# ---------------------------------------------------------------------------------------------- metadata
#: deepest nesting of objects and lists metadata.json may have (ours has 4; orjson writes at most 254)
MAX_METADATA_DEPTH = 64


def nesting_depth(value: Any, limit: int = MAX_METADATA_DEPTH) -> int:
    """How deeply objects and lists nest in decoded JSON (a scalar: 0), counted without recursion and
    stopping once past ``limit``, so a hostile file cannot exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in item)
    return deepest


def usability_problems(metadata: Any) -> list[str]:
    """Problems that make ``metadata.json`` unusable for serving (what the handler itself refuses)."""
    if not isinstance(metadata, dict):
        return ["top level must be an object"]
    problems: list[str] = []
    for key in ("name", "model_file", "sha256", "prediction_format"):
        if not isinstance(metadata.get(key), str):
            problems.append(f'"{key}" must be a string')
    cols = metadata.get("feature_columns")
    if not (isinstance(cols, list) and cols and all(isinstance(c, str) and c for c in cols)):
        problems.append('"feature_columns" must be a non-empty list of column names')
    elif len(set(cols)) != len(cols):
        problems.append('"feature_columns" holds duplicate names')
    for key in ("inputs", "outputs"):
        tensors = metadata.get(key)
        if not (isinstance(tensors, list) and len(tensors) == 1 and isinstance(tensors[0], dict)):
            problems.append(f'"{key}" must describe exactly one tensor')
        elif not isinstance(tensors[0].get("name"), str):
            problems.append(f'"{key}[0].name" must be a string')
    fmt = metadata.get("prediction_format")
    if isinstance(fmt, str) and fmt not in PREDICTION_FORMATS:
        problems.append(f'"prediction_format" is {fmt!r}; expected one of {", ".join(PREDICTION_FORMATS)}')
    if fmt == "named_columns":
        oc = metadata.get("output_columns")
        if not (isinstance(oc, list) and oc and all(isinstance(c, str) for c in oc)):
            problems.append(
                '"output_columns" must be a non-empty list of strings when prediction_format is named_columns'
            )
    if fmt == "vector":
        ed = metadata.get("embed_dim")
        if not (isinstance(ed, int) and not isinstance(ed, bool) and ed > 0):
            problems.append('"embed_dim" must be a positive integer when prediction_format is vector')
    feats = metadata.get("features")
    if feats is not None and isinstance(cols, list):
        names = [f.get("name") if isinstance(f, dict) else None for f in feats] if isinstance(feats, list) else None
        if names != cols:
            problems.append('"features" must describe the feature_columns, one object each, in their order')
        elif any(f.get("kind") not in ("numeric", "categorical", "history") for f in feats):
            problems.append('"features[].kind" must be "numeric", "categorical" or "history"')
    model_file = metadata.get("model_file")
    if isinstance(model_file, str) and not is_plain_file_name(model_file):
        problems.append(f'"model_file" must be a plain file name in the version directory, got {model_file!r}')
    return problems


def is_plain_file_name(name: str) -> bool:
    """A file name inside the version directory: no separators, no parent or current directory."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and "\x00" not in name


# ---------------------------------------------------------------------------------------------- reading
class MetadataError(ValueError):
    """A ``metadata.json`` that cannot be read or used; the message names the file and what is wrong."""


def read_metadata(path: Path) -> dict[str, Any]:
    """Read and check a ``metadata.json`` (or the one in a version directory): the one way every command reads it.

    Refuses, with :class:`MetadataError` naming the file, what is not readable UTF-8 JSON, nests deeper than
    :data:`MAX_METADATA_DEPTH`, or fails :func:`usability_problems`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MetadataError(f"{str(path)!r} is missing; every version directory needs a {METADATA_FILE}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{str(path)!r} is not readable: {exc}") from exc
    try:
        metadata = json.loads(text)
    except RecursionError:
        metadata = None
        too_deep = True
    except ValueError as exc:
        raise MetadataError(f"{str(path)!r} is not readable JSON: {exc}") from exc
    else:
        too_deep = nesting_depth(metadata) > MAX_METADATA_DEPTH
    if too_deep:
        raise MetadataError(
            f"{str(path)!r} nests objects or lists more than {MAX_METADATA_DEPTH} levels deep; an exported "
            "metadata.json has a handful: the file is corrupt or not ours"
        )
    problems = usability_problems(metadata)
    if problems or not isinstance(metadata, dict):  # a non-object top level is one of the problems
        raise MetadataError(f"{str(path)!r} is not usable: " + "; ".join(problems))
    return metadata
