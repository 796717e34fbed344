"""Triton's view of an exported model: ``<artifacts>/<model>/config.pbtxt`` with batching, and its warm-up data.

metadata.json keeps the Open Inference Protocol shapes with the batch axis (``[-1, n]``, ``[-1]``). Triton's
config leaves the batch axis out when ``max_batch_size > 0``, which is what lets its dynamic batcher merge
batch-1 requests into one onnxruntime call. Two rules follow (Triton's model_config.proto):

* ``dims`` never hold the batch axis; a per-row scalar output (metadata ``[-1]``) has no non-batch axis left,
  so it is declared ``dims: [ 1 ]`` with ``reshape { shape: [ ] }`` (the graph yields ``[B]``, clients get
  ``[B, 1]`` from Triton);
* ``model_warmup`` inputs are given without the batch axis too; ``input_data_file`` names a file in the
  model directory's ``warmup/`` folder (Triton skips that folder when it lists versions) holding one row,
  row-major, little-endian FP64. Triton repeats the row ``batch_size`` times.

:func:`config_problems` checks a config (as parsed by :func:`parse_pbtxt`) against metadata
for both the batched form and the older unbatched one (``max_batch_size: 0``, dims with ``-1``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import ExporterError
from exporter.export.repository import write_bytes_atomic

CONFIG_FILE = "config.pbtxt"
WARMUP_DIR = "warmup"
#: Default largest batch Triton may form (and clients may send) per request; ``export --max-batch-size``.
DEFAULT_MAX_BATCH_SIZE = 1024
#: How long Triton's dynamic batcher holds a request to merge it with others. These models answer a batch-1
#: call in tens of microseconds on CPU, so waiting longer than about one model call only adds latency.
DEFAULT_QUEUE_DELAY_US = 100
#: The onnxruntime backend's CPU instances: one per model; raise ``count`` for more cores per model.
DEFAULT_INSTANCE_COUNT = 1
MAX_BATCH_SIZE_LIMIT = 1 << 20
#: Triton reads max_batch_size and a warm-up batch_size as 32-bit integers
INT32_MAX = (1 << 31) - 1

_TRITON_TYPES = {"FP64": ("TYPE_FP64", 8), "FP32": ("TYPE_FP32", 4), "INT64": ("TYPE_INT64", 8)}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def check_max_batch_size(value: Any) -> int:
    """``value`` as a batch limit Triton accepts (a positive integer), else an ExporterError saying so."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE_LIMIT:
        raise ExporterError(f"max_batch_size must be an integer from 1 to {MAX_BATCH_SIZE_LIMIT}, got {value!r}")
    return value


def warmup_file_name(input_name: str) -> str:
    """The warm-up file of one input (one row of raw FP64 bytes)."""
    return f"{input_name}_sample_row.bin"


def _triton_type(datatype: str) -> tuple[str, int]:
    try:
        return _TRITON_TYPES[datatype]
    except KeyError:
        raise ExporterError(
            f"datatype {datatype!r} has no Triton type here; expected one of {sorted(_TRITON_TYPES)}"
        ) from None


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]" if values else "[ ]"


def _tensor_block(tensor: Mapping[str, Any], batched: bool) -> str:
    """One ``input``/``output`` entry; with batching the batch axis is left out (and a scalar reshaped)."""
    shape = [int(d) for d in tensor["shape"]]
    lines = [f'    name: "{tensor["name"]}"', f"    data_type: {_triton_type(tensor['datatype'])[0]}"]
    if not batched:
        lines.append(f"    dims: {_dims(shape)}")
    elif len(shape) == 1:
        lines += ["    dims: [ 1 ]", "    reshape { shape: [ ] }"]
    else:
        lines.append(f"    dims: {_dims(shape[1:])}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(
    metadata: Mapping[str, Any],
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance_count: int = DEFAULT_INSTANCE_COUNT,
    warmup: bool = True,
) -> str:
    """Triton ModelConfig text for one exported model, batching up to ``max_batch_size`` rows.

    ``metadata`` is the version's metadata.json (name, inputs, outputs with v2 shapes). With ``warmup`` the
    config asks Triton to run the sample row once at batch 1 and once at ``max_batch_size`` before it
    reports the model ready, from ``warmup/<input>_sample_row.bin`` (see :func:`write_warmup`).
    """
    check_max_batch_size(max_batch_size)
    inputs, outputs = list(metadata["inputs"]), list(metadata["outputs"])
    for tensor in inputs + outputs:
        shape = tensor.get("shape")
        if not (isinstance(shape, list) and shape and shape[0] == -1):
            raise ExporterError(
                f"tensor {tensor.get('name')!r} of {metadata.get('name')!r} has shape {shape!r}; batching needs a "
                "dynamic batch axis first (-1)"
            )
    parts = [
        f'name: "{metadata["name"]}"',
        'platform: "onnxruntime_onnx"',
        "# dims leave out the batch axis: Triton adds it, up to max_batch_size rows per call.",
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor_block(t, True) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t, True) for t in outputs) + "\n]",
        "# merge concurrent requests into one onnxruntime call, waiting at most this long for company",
        f"dynamic_batching {{ max_queue_delay_microseconds: {int(queue_delay_us)} }}",
        f"instance_group [ {{ kind: KIND_CPU, count: {int(instance_count)} }} ]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    if warmup:
        samples = []
        for batch in sorted({1, max_batch_size}):
            entries = []
            for t in inputs:
                entries.append(
                    f'    inputs {{ key: "{t["name"]}" value {{ data_type: {_triton_type(t["datatype"])[0]} '
                    f'dims: {_dims(t["shape"][1:] or [1])} input_data_file: "{warmup_file_name(t["name"])}" }} }}'
                )
            samples.append(
                f'  {{\n    name: "sample_row_batch_{batch}"\n    batch_size: {batch}\n' + "\n".join(entries) + "\n  }"
            )
        parts.append("# run the export's sample row before reporting ready (files in warmup/)")
        parts.append("model_warmup [\n" + ",\n".join(samples) + "\n]")
    return "\n".join(parts) + "\n"


def warmup_bytes(row: np.ndarray, n_features: int) -> bytes:
    """One feature row as Triton reads ``input_data_file``: raw little-endian FP64, row-major."""
    values = np.asarray(row, dtype=np.float64).reshape(-1)
    if values.size != n_features:
        raise ExporterError(f"warm-up row has {values.size} values; the model takes {n_features} features")
    if not np.isfinite(values).all():
        raise ExporterError("warm-up row holds a non-finite value; pick a row without NaN/Infinity")
    return values.astype("<f8").tobytes()


def model_config_files(
    metadata: Mapping[str, Any],
    sample_row: np.ndarray | None,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> dict[str, bytes]:
    """The model directory's Triton files for ``metadata``: ``config.pbtxt`` and, when a finite sample row is
    given, ``warmup/<input>_sample_row.bin`` (paths relative to the model directory -> contents)."""
    inputs = list(metadata["inputs"])
    warm_row = (
        sample_row
        if sample_row is not None
        and len(inputs) == 1
        and bool(np.isfinite(np.asarray(sample_row, dtype=np.float64)).all())
        else None
    )
    files: dict[str, bytes] = {}
    if warm_row is not None:
        n = int(np.prod(inputs[0]["shape"][1:]))
        files[f"{WARMUP_DIR}/{warmup_file_name(inputs[0]['name'])}"] = warmup_bytes(warm_row, n)
    warm = warm_row is not None
    files[CONFIG_FILE] = config_pbtxt(metadata, max_batch_size=max_batch_size, warmup=warm).encode("utf-8")
    return files


def write_model_config(
    model_dir: Path,
    metadata: Mapping[str, Any],
    sample_row: np.ndarray | None,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> Path:
    """Write ``warmup/<input>_sample_row.bin`` (when a finite sample row is given) and then ``config.pbtxt``.

    Each file is replaced in one step; the config only mentions warm-up data that is already in place.
    Returns the config path. (``export`` stages the same files inside the version instead: see
    :mod:`exporter.export.repository`.)
    """
    model_dir = Path(model_dir)
    for relative, data in model_config_files(metadata, sample_row, max_batch_size=max_batch_size).items():
        (model_dir / relative).parent.mkdir(exist_ok=True)
        write_bytes_atomic(model_dir / relative, data)
    return model_dir / CONFIG_FILE


# ------------------------------------------------------------------------------------------------ parsing
_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}\[\]:,;<>]|[^\s{}\[\]:,;<>"\'#]+')


#: deepest nesting of messages and lists parse_pbtxt accepts (Triton configs nest about 4 levels)
MAX_PBTXT_DEPTH = 32


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """A small, tolerant protobuf text-format parser: ``{field: [values...]}``, messages as nested dicts.

    Enough for Triton's config.pbtxt (scalars, strings, enums, nested messages, ``[a, b]`` lists). Nesting
    deeper than :data:`MAX_PBTXT_DEPTH` is a ValueError, never a RecursionError.
    """
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"unexpected character {text[pos]!r} at offset {pos}")
        tok = m.group(0)
        pos = m.end()
        if not tok.strip() or tok.startswith("#"):
            continue
        tokens.append(tok)
    index = 0

    def scalar(tok: str) -> Any:
        if tok[0] in "\"'":
            body = tok[1:-1]
            try:  # protobuf text escapes are mostly JSON's; anything else is kept as written
                return json.loads('"' + body.replace("\\'", "'").replace('"', '\\"').replace('\\\\"', '\\"') + '"')
            except ValueError:
                return body
        if re.fullmatch(r"[-+]?\d+", tok):
            return int(tok)
        try:
            return float(tok)
        except ValueError:
            return tok  # enum identifier or true/false

    depth = 0

    def deeper() -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_PBTXT_DEPTH:
            raise ValueError(
                f"messages and lists nest more than {MAX_PBTXT_DEPTH} levels deep "
                f"(a Triton config needs a handful); near token {index} of {len(tokens)}"
            )

    def message(closing: str | None) -> dict[str, list[Any]]:
        nonlocal index
        fields: dict[str, list[Any]] = {}
        while index < len(tokens):
            tok = tokens[index]
            if closing is not None and tok == closing:
                index += 1
                return fields
            if tok in "{}[]:,;<>":
                raise ValueError(f"unexpected {tok!r} where a field name was expected")
            name = tok
            index += 1
            if index < len(tokens) and tokens[index] == ":":
                index += 1
            if index >= len(tokens):
                raise ValueError(f"field {name!r} has no value")
            fields.setdefault(name, []).extend(value())
            if index < len(tokens) and tokens[index] in (",", ";"):
                index += 1
        if closing is not None:
            raise ValueError(f"missing {closing!r}")
        return fields

    def value() -> list[Any]:
        nonlocal index, depth
        tok = tokens[index]
        if tok in ("{", "<"):
            index += 1
            deeper()
            found = message("}" if tok == "{" else ">")
            depth -= 1
            return [found]
        if tok == "[":
            index += 1
            deeper()
            items: list[Any] = []
            while index < len(tokens) and tokens[index] != "]":
                items.extend(value())
                if index < len(tokens) and tokens[index] == ",":
                    index += 1
            if index >= len(tokens):
                raise ValueError("missing ']'")
            index += 1
            depth -= 1
            return items
        index += 1
        return [scalar(tok)]

    return message(None)


# ------------------------------------------------------------------------------------------------ checks
def _one(fields: Mapping[str, list[Any]], key: str, default: Any = None) -> Any:
    values = fields.get(key) or [default]
    return values[0]


def model_shape(tensor: Mapping[str, list[Any]], max_batch_size: int) -> list[Any]:
    """The shape the graph sees for a config tensor, batch axis included (``-1``) when batching."""
    reshape = _one(tensor, "reshape")
    shape = list(reshape.get("shape", [])) if isinstance(reshape, dict) else list(tensor.get("dims", []))
    return [-1] + shape if max_batch_size > 0 else shape


def config_problems(
    config: Mapping[str, list[Any]], metadata: Mapping[str, Any], model_dir: Path | None = None
) -> list[str]:
    """Tensor shapes, batching and warm-up of a parsed config.pbtxt against metadata.json (v2 shapes).

    Accepts the unbatched form (``max_batch_size: 0``, dims with the batch axis) and the batched one (dims
    without it, a ``[-1]`` tensor as dims ``[1]`` + ``reshape { shape: [] }``). With ``model_dir`` the
    warm-up files are checked too (present under ``warmup/``, the size of one row).
    """
    problems: list[str] = []
    max_batch = _one(config, "max_batch_size", 0)
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 0 <= max_batch <= INT32_MAX:
        return [f"max_batch_size is {max_batch!r}; expected an integer from 0 to {INT32_MAX} (Triton's int32)"]
    if max_batch == 0 and config.get("dynamic_batching"):
        problems.append("dynamic_batching needs max_batch_size > 0 (it is 0)")
    declared: dict[str, Mapping[str, list[Any]]] = {}
    for key, kind in (("input", "inputs"), ("output", "outputs")):
        tensors = [t for t in config.get(key, []) if isinstance(t, dict)]
        described = metadata.get(kind)
        meta_tensors = described if isinstance(described, list) else []
        if len(tensors) != len(meta_tensors) or not tensors:
            problems.append(f"declares {len(tensors)} {key}(s); metadata.json describes {len(meta_tensors)}")
            continue
        for t, meta in zip(tensors, meta_tensors, strict=True):
            meta = meta if isinstance(meta, dict) else {}
            name = _one(t, "name")
            if key == "input":
                declared[str(name)] = t
            if name != meta.get("name"):
                problems.append(f"{key} name is {name!r}; metadata.json says {meta.get('name')!r}")
            want_type = _TRITON_TYPES.get(str(meta.get("datatype")), (None,))[0]
            if _one(t, "data_type") != want_type:
                problems.append(
                    f"{key} {name!r} data_type is {_one(t, 'data_type')!r}; metadata.json implies {want_type}"
                )
            shape = meta.get("shape")
            dims = list(t.get("dims", []))
            if max_batch > 0 and isinstance(shape, list) and (not shape or shape[0] != -1):
                problems.append(
                    f"{key} {name!r}: max_batch_size {max_batch} needs a dynamic batch axis, but "
                    f"metadata.json shape is {shape}"
                )
            elif model_shape(t, max_batch) != shape:
                how = "reshape" if _one(t, "reshape") is not None else "dims"
                problems.append(
                    f"{key} dims {dims} ({how}, max_batch_size {max_batch}) do not match metadata.json shape "
                    f"{shape}" + ("; with batching, dims leave out the batch axis" if max_batch > 0 else "")
                )
            elif max_batch > 0 and not dims:
                problems.append(f"{key} {name!r} has empty dims; Triton needs dims [ 1 ] with reshape {{ shape: [ ] }}")
    for i, sample in enumerate(config.get("model_warmup", [])):
        problems += _warmup_problems(i, sample, declared, max_batch, model_dir)
    return problems


def _warmup_problems(
    i: int, sample: Any, declared: Mapping[str, Mapping[str, list[Any]]], max_batch: int, model_dir: Path | None
) -> list[str]:
    if not isinstance(sample, dict):
        return [f"model_warmup[{i}] is not a message"]
    where = f"model_warmup[{i}] ({_one(sample, 'name', '')!s})"
    problems = []
    batch = _one(sample, "batch_size", 0)
    limit = max(max_batch, 1)
    if not isinstance(batch, int) or not 1 <= batch <= limit:
        problems.append(f"{where}: batch_size is {batch!r}; expected 1..{limit}")
    entries = {str(_one(e, "key")): _one(e, "value") for e in sample.get("inputs", []) if isinstance(e, dict)}
    if set(entries) != set(declared):
        problems.append(f"{where}: inputs {sorted(entries)}; the config declares {sorted(declared)}")
    for name, value in entries.items():
        if name not in declared or not isinstance(value, dict):
            continue
        tensor = declared[name]
        if _one(value, "data_type") != _one(tensor, "data_type"):
            problems.append(
                f"{where}: input {name!r} data_type {_one(value, 'data_type')!r} differs from the "
                f"config's {_one(tensor, 'data_type')!r}"
            )
        dims = list(value.get("dims", []))
        if dims != list(tensor.get("dims", [])) or any(not isinstance(d, int) or d < 1 for d in dims):
            problems.append(
                f"{where}: input {name!r} dims {dims}; expected the config's dims "
                f"{list(tensor.get('dims', []))} without the batch axis"
            )
            continue
        file_name = _one(value, "input_data_file")
        if file_name is None:
            if _one(value, "zero_data") is None and _one(value, "random_data") is None:
                problems.append(f"{where}: input {name!r} sets none of input_data_file, zero_data, random_data")
            continue
        if not isinstance(file_name, str) or not _SAFE_NAME.fullmatch(file_name) or file_name in (".", ".."):
            problems.append(f"{where}: input_data_file {file_name!r} must be a plain file name in warmup/")
            continue
        if model_dir is not None:
            path = Path(model_dir) / WARMUP_DIR / file_name
            size = _TRITON_TYPES.get(str(_one(value, "data_type", "")).replace("TYPE_", ""), (None, 0))[1]
            want = math.prod(dims) * size
            if not path.is_file():
                problems.append(f"{where}: warm-up file {WARMUP_DIR}/{file_name} is missing")
            elif want and path.stat().st_size != want:
                problems.append(
                    f"{where}: warm-up file {WARMUP_DIR}/{file_name} holds {path.stat().st_size} bytes; "
                    f"one row of dims {dims} is {want}"
                )
    return problems


# ------------------------------------------------------------------------------------------------ Triton's view
_DATATYPES = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}


def _entries(parsed: Mapping[str, list[Any]], field: str) -> list[dict[str, list[Any]]]:
    out: list[dict[str, list[Any]]] = []
    for value in parsed.get(field, []):
        out.extend(value if isinstance(value, list) else [value])
    return out


def triton_view(config_text: str) -> dict[str, list[dict[str, Any]]]:
    """``inputs``/``outputs`` as Triton's model metadata endpoint reports them for this config.

    Triton reports a tensor's configured ``dims`` (not its ``reshape``), in ``v2`` datatype names, with ``-1``
    in front for the batch axis when ``max_batch_size > 0``: a per-row scalar declared ``dims: [ 1 ]`` with
    ``reshape { shape: [ ] }`` is reported ``[-1, 1]``. metadata.json records it as ``"triton"``.
    """
    return triton_view_of(parse_pbtxt(config_text))


def triton_view_of(parsed: Mapping[str, list[Any]]) -> dict[str, list[dict[str, Any]]]:
    """:func:`triton_view` of a parsed config (raises ValueError/KeyError/TypeError for one Triton would refuse)."""
    batched = int((parsed.get("max_batch_size") or [0])[0]) > 0

    def tensor(entry: Mapping[str, list[Any]]) -> dict[str, Any]:
        dims: list[int] = []
        for value in entry.get("dims", []):
            dims.extend(int(v) for v in (value if isinstance(value, list) else [value]))
        return {
            "name": entry["name"][0],
            "datatype": _DATATYPES[entry["data_type"][0]],
            "shape": ([-1] if batched else []) + dims,
        }

    return {
        "inputs": [tensor(e) for e in _entries(parsed, "input")],
        "outputs": [tensor(e) for e in _entries(parsed, "output")],
    }
