"""The human side of a version directory: ``README.md`` (the model card) and the v2 sample request/answer.

Everything in the card is read from ``metadata.json`` and the sample requests, so the card never says what
the artifact does not hold: what the model is, its features (the ``features`` list when metadata has one,
else ``feature_columns``), its outputs, held-out quality and parity, the training data and software that
made it, and calls to copy and paste for every way of serving it (``python -m exporter serve`` or TorchServe
in both request forms and with binary tensors, Triton, KServe).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter.contract import v2_request
from exporter.export.card_evaluation import column_warnings_section, evaluation_section
from exporter.export.kserve import service_name
from exporter.training import refit as RF

CARD_FILE = "README.md"
SAMPLE_REQUEST_V2 = "sample_request_v2.json"
SAMPLE_RESPONSE_V2 = "sample_response_v2.json"
SAMPLE_ID = "sample"


# ------------------------------------------------------------------------------------------------ v2 sample
def sample_request_v2(matrix: np.ndarray, request_id: str = SAMPLE_ID, rows: int = 3) -> dict[str, Any] | None:
    """An Open Inference Protocol request for the first ``rows`` complete (finite) rows of ``matrix``, the raw
    values the graph takes (string categories as their codes): the TorchServe sample's rows, as a tensor.

    Returns None when no row is finite (v2 JSON cannot carry NaN, and the handler refuses it).
    """
    x = np.asarray(matrix, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)][:rows] if x.ndim == 2 else x[:0]
    return v2_request(x, request_id) if len(x) else None


def write_version_files(
    version_dir: Path,
    metadata: Mapping[str, Any],
    request: Mapping[str, Any],
    response: Mapping[str, Any],
    v2_rows: np.ndarray | None,
    handler: Any,
) -> None:
    """Write ``sample_request_v2.json`` + ``sample_response_v2.json`` (``handler``'s answer) and ``README.md``.

    ``v2_rows``: the held-out rows as the graph takes them, in the version's feature column order.

    ``handler`` is the :class:`exporter.runtime.handler.ModelHandler` of the version directory being written.
    """
    version_dir = Path(version_dir)
    v2_request = sample_request_v2(v2_rows) if v2_rows is not None else None
    v2_response = None
    if v2_request is not None:
        v2_response = handler.predict(v2_request)
        _write_json(version_dir / SAMPLE_REQUEST_V2, v2_request)
        _write_json(version_dir / SAMPLE_RESPONSE_V2, v2_response)
    (version_dir / CARD_FILE).write_text(render(metadata, request, response, v2_request, v2_response), encoding="utf-8")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ helpers
def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_num(v, digits)}" for k, v in value.items()) or "—"
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _code(value: Any) -> str:
    return "`" + str(value).replace("`", "'") + "`"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if isinstance(mapping, Mapping) and mapping.get(key) is not None:
            return mapping[key]
    return None


def _shape(tensor: Mapping[str, Any]) -> str:
    return "[" + ", ".join(str(d) for d in tensor.get("shape", [])) + "]"


# ------------------------------------------------------------------------------------------------ sections
def _feature_table(metadata: Mapping[str, Any]) -> list[str]:
    features = metadata.get("features")
    columns = list(metadata.get("feature_columns") or [])
    if not (isinstance(features, list) and features and all(isinstance(f, Mapping) for f in features)):
        lines = [
            f"The `{metadata['inputs'][0]['name']}` tensor holds these columns in this order, as raw numbers "
            "(any scaling learned in training is inside the graph):",
            "",
        ]
        return lines + _table(["#", "column", "kind"], [(i, _code(c), "numeric") for i, c in enumerate(columns)])
    rows = []
    for i, f in enumerate(features):
        stats = _first(f, "stats", "statistics", "training_stats") or {}
        kind = str(f.get("kind", "numeric"))
        if kind == "categorical":
            size = _first(f, "vocab_size", "vocabulary_size", "cardinality") or _first(
                stats, "vocab_size", "vocabulary_size", "cardinality"
            )
            vocab = f.get("vocabulary") if isinstance(f.get("vocabulary"), list) else None
            buckets = _first(f, "hash_buckets") or _first(stats, "hash_buckets")
            if size is None and vocab is not None:
                size = len(vocab)
            what = (
                f"{_num(size)} values"
                if size is not None
                else ("hashed into " + _num(buckets) + " buckets" if buckets else "—")
            )
            oov = _first(f, "oov", "oov_policy") or _first(stats, "oov", "oov_policy")
            if isinstance(oov, Mapping):
                if oov.get("hash_buckets") and size is None:
                    what = f"hashed into {_num(oov['hash_buckets'])} buckets"
                what += f"; unknown -> row {oov.get('oov_row', '?')}" if "oov_row" in oov else ""
            elif oov is not None:
                what += f"; unknown: {oov}"
            top = _first(f, "top_values") or _first(stats, "top_values")
            if isinstance(top, list) and top:
                shown = [t.get("value", t) if isinstance(t, Mapping) else t for t in top[:3]]
                what += "; top " + ", ".join(_code(v) for v in shown)
        else:
            lo, hi = _first(stats, "min"), _first(stats, "max")
            mean, std = _first(stats, "mean"), _first(stats, "std")
            what = f"{_num(lo)} .. {_num(hi)}" if lo is not None and hi is not None else "—"
            if mean is not None:
                what += f" (mean {_num(mean)}" + (f", std {_num(std)})" if std is not None else ")")
        missing = _first(f, "missing_rate") or _first(stats, "missing_rate")
        if f.get("tower") and metadata.get("prediction_format") == "vector":
            kind += f" ({f['tower']} tower)"
        rows.append(
            (
                i,
                _code(f.get("name", columns[i] if i < len(columns) else "?")),
                kind,
                f.get("dtype", "—"),
                what,
                _num(f.get("fill")),
                _num(missing) if missing is not None else "—",
                "yes" if f.get("optional") else "no",
            )
        )
    lines = [
        f"The `{metadata['inputs'][0]['name']}` tensor holds these columns in this order (raw values; string "
        "categories as their vocabulary code in the v2 form):",
        "",
    ]
    return lines + _table(
        ["#", "column", "kind", "dtype", "range / vocabulary (training)", "fill", "missing", "optional"], rows
    )


def _outputs(metadata: Mapping[str, Any]) -> list[str]:
    out = metadata["outputs"][0]
    fmt = metadata.get("prediction_format")
    head = f"`{out['name']}` {out.get('datatype', 'FP64')} {_shape(out)}"
    if fmt == "scalar":
        return [
            f"{head}: one score per row (for a binary label, the predicted probability). "
            'TorchServe form answers `{"predictions": [p0, p1, ...]}`.'
        ]
    if fmt == "named_columns":
        tasks = {t.get("name"): t for t in metadata.get("tasks", []) if isinstance(t, Mapping)}
        rows = []
        for i, col in enumerate(metadata.get("output_columns", [])):
            task = tasks.get(col, {})
            rows.append((i, _code(col), task.get("label", "—"), task.get("type", task.get("kind", "—"))))
        return [
            f"{head}, one column per task. TorchServe form answers one object per row, keyed by column:",
            "",
        ] + _table(["column", "name", "label", "task"], rows)
    if fmt == "vector":
        related = ", ".join(_code(r) for r in metadata.get("related_models", [])) or "—"
        return [
            f"{head}: an embedding of {metadata.get('embed_dim', '?')} numbers per row. Score a pair by the dot "
            f"product with the embedding of the related model ({related}). TorchServe form answers the vector "
            "itself for one row, a list of vectors for several."
        ]
    return [head]


def _section(metadata: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The object under ``key``, or an empty one: a card is written for whatever the metadata holds."""
    value = metadata.get(key)
    return value if isinstance(value, Mapping) else {}


def _quality(metadata: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    quality = _section(metadata, "quality")
    if quality.get("warning"):
        lines += [f"> **Warning:** {quality['warning']}", ""]
    training = _section(metadata, "training")
    metrics = quality.get("metrics") if isinstance(quality.get("metrics"), Mapping) else training.get("metrics")
    if isinstance(metrics, Mapping) and metrics:
        rows = [(_code(k), _num(v)) for k, v in metrics.items()]
        lines += [f"Held-out metrics ({_num(training.get('heldout_rows'))} rows, never seen in training):", ""]
        lines += _table(["metric", "value"], rows)
        extra = {k: v for k, v in quality.items() if k not in ("metrics", "warning")}
        if extra:
            lines += ["", "Quality check: " + "; ".join(f"{k} {_num(v)}" for k, v in extra.items())]
    else:
        lines.append("No held-out metrics: the data this version was made from had no labels.")
    lines += evaluation_section(metadata)
    lines += column_warnings_section(metadata)
    parity = _section(metadata, "parity")
    if parity:
        lines += [
            "",
            (
                f"Parity: ONNX Runtime vs {parity.get('reference', 'the native model')} on "
                f"{_num(parity.get('rows'))} rows ({_num(parity.get('heldout_rows'))} held-out): max |diff| "
                f"{_num(parity.get('max_abs_diff'), 3)}, mean {_num(parity.get('mean_abs_diff'), 3)}, "
                f"tolerance {_num(parity.get('atol'))}{_relative(parity)}: "
                f"**{'passed' if parity.get('passed') else 'FAILED'}**."
            ),
        ]
    if _section(metadata, "producer").get("framework") == "xgboost":
        lines += ["", THREAD_NOTE]
    return lines


def _relative(parity: Mapping[str, Any]) -> str:
    """The relative term of the tolerance, when the graph has one (a torch network computing in float32)."""
    rtol = parity.get("rtol")
    return f" + {_num(rtol)} x |native|" if isinstance(rtol, (int, float)) and rtol else ""


#: the tree ensembles' answers vary with onnxruntime's thread count (contract section 4)
THREAD_NOTE = (
    "Answers depend on onnxruntime's thread count at the 1e-7 level: the tree ensemble sums its trees in "
    "float32, and a different number of intra-op threads adds them in a different order. Two servers (or one "
    "server with another `intra_op_num_threads`) agree within `parity.atol`, not bit for bit."
)


def _provenance(metadata: Mapping[str, Any]) -> list[str]:
    t = _section(metadata, "training")
    p = _section(metadata, "producer")
    rows = [
        ("mode", t.get("mode", "—")),
        ("data", t.get("data_source", t.get("source", "—"))),
        ("rows", f"{_num(t.get('rows'))} (train {_num(t.get('train_rows'))}, held-out {_num(t.get('heldout_rows'))})"),
        ("label columns", ", ".join(map(str, t.get("label_columns", []))) or "—"),
        *(
            [("positive class", f"{_code(t['positive_class'])} is 1, the other value 0")]
            if "positive_class" in t
            else []
        ),
        ("seed", _num(t.get("seed"))),
        ("hyper-parameters", _code(json.dumps(t.get("hyperparameters", {}), separators=(",", ":")))),
        ("training", RF.describe(_section(t, "early_stopping")) or "—"),
        ("final training loss", _num(t.get("final_loss"))),
        ("framework", f"{p.get('framework', '—')} {p.get('framework_version', '')}".strip()),
        ("converted with", ", ".join(f"{k} {v}" for k, v in p.items() if k not in ("framework", "framework_version"))),
        ("ONNX opset", _num(metadata.get("opset"))),
        ("model file", f"{_code(metadata.get('model_file'))}, sha256 {_code(metadata.get('sha256'))}"),
        ("created", metadata.get("created_at", "—")),
    ]
    tracking = _section(metadata, "tracking")
    if tracking.get("run_id"):
        rows.append(("tracking run", f"{_code(tracking['run_id'])} in {_code(tracking.get('tracking_uri', '—'))}"))
    return _table(["", ""], rows)


def _binary_header(n: int, k: int, input_name: str, output_name: str) -> str:
    return json.dumps(
        {
            "inputs": [
                {"name": input_name, "shape": [n, k], "datatype": "FP64", "parameters": {"binary_data_size": n * k * 8}}
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    )


def _calls(
    metadata: Mapping[str, Any],
    request: Mapping[str, Any],
    response: Mapping[str, Any],
    v2_request: Mapping[str, Any] | None,
    v2_response: Mapping[str, Any] | None,
) -> list[str]:
    name, version = metadata["name"], str(metadata["versions"][-1])
    inp, out = metadata["inputs"][0]["name"], metadata["outputs"][0]["name"]
    k = len(metadata.get("feature_columns", []))
    route = f"http://127.0.0.1:8080/predictions/{name}/{version}"
    rows = None
    if v2_request is not None:
        flat = v2_request["inputs"][0]["data"]
        rows = [flat[i : i + k] for i in range(0, len(flat), k)][:1]
    row_args = " ".join(repr(float(v)) for v in rows[0]) if rows else " ".join(["0.0"] * k)
    lines = [
        "Run these from this version directory. `python -m exporter serve --artifacts ../..` serves it on "
        "port 8080 (TorchServe serves the same handler, see the project README).",
        "",
        "### TorchServe form (JSON rows by column name)",
        "",
        "```bash",
        f"curl -s {route} -H 'Content-Type: application/json' -d @sample_request.json",
        "```",
        "",
        f"Answer (`sample_response.json`): `{json.dumps(response, separators=(',', ':'))[:300]}`",
    ]
    if v2_request is not None and v2_response is not None:
        lines += [
            "",
            "### Open Inference Protocol v2, JSON",
            "",
            "```bash",
            f"curl -s {route} -H 'Content-Type: application/json' -d @{SAMPLE_REQUEST_V2}",
            "```",
            "",
            f"Answer (`{SAMPLE_RESPONSE_V2}`): `{json.dumps(v2_response, separators=(',', ':'))[:300]}`",
        ]
    header = _binary_header(1, k, inp, out)
    lines += [
        "",
        "### v2 with binary tensors (Triton's binary tensor data extension)",
        "",
        "The JSON header is followed by the raw little-endian FP64 bytes; `Inference-Header-Content-Length` says "
        "where the header ends, in the request and in the answer.",
        "",
        "```bash",
        f"HEADER='{header}'",
        "python3 -c 'import struct,sys; v=[float(a) for a in sys.argv[2:]]; "
        'sys.stdout.buffer.write(sys.argv[1].encode()+struct.pack("<%dd" % len(v), *v))\' '
        f'"$HEADER" {row_args} > body.bin',
        f'curl -s {route} -H "Inference-Header-Content-Length: ${{#HEADER}}" '
        "-H 'Content-Type: application/octet-stream' --data-binary @body.bin -D headers.txt -o answer.bin",
        "N=$(grep -i '^inference-header-content-length' headers.txt | tr -dc 0-9)",
        'head -c "$N" answer.bin; echo; tail -c +$((N + 1)) answer.bin | od -A n -t f8',
        "```",
        "",
        "Python, with Triton's own client codec (`pip install tritonclient[http]`):",
        "",
        "```python",
        "import urllib.request",
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "",
        f"x = np.array({json.dumps(rows or [[0.0] * k])}, dtype=np.float64)",
        f'inp = httpclient.InferInput("{inp}", list(x.shape), "FP64")',
        "inp.set_data_from_numpy(x, binary_data=True)",
        f'out = httpclient.InferRequestedOutput("{out}", binary_data=True)',
        "body, header_length = httpclient.InferenceServerClient.generate_request_body([inp], outputs=[out])",
        f'request = urllib.request.Request("{route}", data=body, headers={{',
        '    "Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"})',
        "with urllib.request.urlopen(request) as answer:",
        "    result = httpclient.InferenceServerClient.parse_response_body(",
        '        answer.read(), header_length=int(answer.headers["Inference-Header-Content-Length"]))',
        f'print(result.as_numpy("{out}"))',
        "",
        "# Triton and KServe speak the v2 routes themselves:",
        'client = httpclient.InferenceServerClient("localhost:8000")',
        f'print(client.infer("{name}", [inp], outputs=[out]).as_numpy("{out}"))',
        "```",
        "",
        "### Triton",
        "",
        "The artifacts tree is a Triton model repository (`config.pbtxt` batches up to `max_batch_size` rows, "
        "with dynamic batching and a warm-up from `warmup/`).",
        "",
        "```bash",
        'docker run --rm -p 8000:8000 -v "$(cd ../.. && pwd)":/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\',
        f"    tritonserver --model-repository=/models --model-control-mode=explicit --load-model={name}",
        f"curl -s localhost:8000/v2/models/{name}/versions/{version}/infer -d @{SAMPLE_REQUEST_V2}",
        "```",
    ]
    lines += _shapes_per_server(metadata)
    lines += [
        "",
        "### KServe",
        "",
        "Copy the artifacts tree to the `storageUri` of `../kserve.yaml` (`python -m exporter kserve "
        "--storage-uri URI` rewrites it), then:",
        "",
        "```bash",
        "kubectl apply -f ../kserve.yaml",
        f"SERVICE_HOSTNAME=$(kubectl get inferenceservice {_service(name)} "
        "-o jsonpath='{.status.url}' | cut -d/ -f3)",
        f'curl -s -H "Host: $SERVICE_HOSTNAME" http://$INGRESS_HOST:$INGRESS_PORT/v2/models/{name}/infer '
        f"-d @{SAMPLE_REQUEST_V2}",
        "```",
    ]
    return lines


def _rows(shape: Any) -> str:
    """A v2 shape with ``rows`` for the batch axis: ``[-1, 1]`` -> ``[rows, 1]``."""
    dims = shape if isinstance(shape, list) else []
    return "[" + ", ".join("rows" if d == -1 else str(d) for d in dims) + "]"


def _shapes_per_server(metadata: Mapping[str, Any]) -> list[str]:
    """Which output shape each server answers: metadata.json ``outputs`` (``serve``, TorchServe, ``score``) and
    ``triton`` (Triton and KServe's Triton runtime, as their metadata endpoint reports it)."""
    ours = metadata["outputs"][0]
    view = _section(metadata, "triton")
    theirs = view.get("outputs") if isinstance(view.get("outputs"), list) else None
    if not theirs or not isinstance(theirs[0], Mapping) or theirs[0].get("shape") == ours.get("shape"):
        return []
    return [
        "",
        f"Shapes per server: `python -m exporter serve` and TorchServe answer `{ours['name']}` as "
        f"`{_rows(ours.get('shape'))}` (metadata.json `outputs`); Triton and KServe answer it as "
        f"`{_rows(theirs[0].get('shape'))}` and report that shape at `/v2/models/{metadata['name']}` "
        "(metadata.json `triton`). The numbers are the same.",
    ]


def _service(name: str) -> str:
    return service_name(name)


def render(
    metadata: Mapping[str, Any],
    request: Mapping[str, Any],
    response: Mapping[str, Any],
    v2_request: Mapping[str, Any] | None = None,
    v2_response: Mapping[str, Any] | None = None,
) -> str:
    """The model card (Markdown) of one version."""
    name, version = metadata["name"], str(metadata["versions"][-1])
    inp, out = metadata["inputs"][0], metadata["outputs"][0]
    related = metadata.get("related_models") or []
    lines = [
        f"# {name}, version {version}",
        "",
        f"{metadata.get('description', 'ONNX model')}. ONNX graph `{metadata.get('model_file', 'model.onnx')}`: "
        f"input `{inp['name']}` {inp.get('datatype', 'FP64')} {_shape(inp)}, output `{out['name']}` "
        f"{out.get('datatype', 'FP64')} {_shape(out)} (`-1`: any number of rows)."
        + (f" Related model(s): {', '.join(_code(r) for r in related)}." if related else ""),
        "",
        "## Features",
        "",
        *_feature_table(metadata),
        "",
        "## Outputs",
        "",
        *_outputs(metadata),
        "",
        "## Quality",
        "",
        *_quality(metadata),
        "",
        "## Training data and provenance",
        "",
        *_provenance(metadata),
        "",
        "## How to call it",
        "",
        *_calls(metadata, request, response, v2_request, v2_response),
        "",
        "_Generated from `metadata.json` by recsys-onnx-exporter; `python -m exporter verify` checks the sample "
        "requests against their answers._",
        "",
    ]
    return "\n".join(lines)
