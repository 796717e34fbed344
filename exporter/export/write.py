"""Writing one export into the repository: repository names, the config clash check, and the versions.

Every file of a version, and the model directory's files that go with it (``config.pbtxt``, ``kserve.yaml``,
warm-up data), is written into the staged version before the one rename that commits it
(:class:`exporter.export.repository.VersionWriter`); nothing of the model directory is touched before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from exporter import contract as C
from exporter.errors import ExporterError
from exporter.export import kserve, model_card, triton
from exporter.export import repository as repo
from exporter.export.convert import ParityResult
from exporter.export.metadata import build_metadata, sample_request
from exporter.export.params import Evaluation, Prepared
from exporter.models import ExportUnit, Trained
from exporter.runtime.handler import ModelHandler


@dataclass
class ExportedArtifact:
    model_name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    parity: ParityResult


def check_model_name(name: Any) -> str:
    """A repository name Triton and every file system accept: letters, digits, ``_ . -``; not a version number."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name) or name.isdigit():
        raise ExporterError(
            f"model name {name!r} is not usable as a repository directory: expected letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit, at most 100 characters, not only digits)"
        )
    return name


def renamed_model_names(names: Sequence[str], name: str | None) -> list[str]:
    """The repository names of ``names`` under ``--model-name``: the first is NAME, the others NAME plus their
    own suffix (``_item``); each checked as a directory name."""
    if name is None:
        return list(names)
    first = names[0]
    renamed = [name + (n[len(first) :] if n.startswith(first) else "_" + n) for n in names]
    for new in renamed:
        check_model_name(new)
    return renamed


def renamed_units(units: Sequence[ExportUnit], name: str | None) -> list[ExportUnit]:
    """Units under ``--model-name``: the first is NAME, the others NAME plus their own suffix (``_item``)."""
    if name is None:
        return list(units)
    mapping = dict(
        zip((u.model_name for u in units), renamed_model_names([u.model_name for u in units], name), strict=True)
    )
    return [
        replace(u, model_name=mapping[u.model_name], related_models=[mapping.get(r, r) for r in u.related_models])
        for u in units
    ]


def _config_tensors(text: str) -> str:
    """The tensors of a config.pbtxt as the graph sees them, e.g. ``input features TYPE_FP64 [-1, 10]; output ...``.

    Batched and unbatched configs of the same graph read the same (:func:`exporter.export.triton.model_shape`), so a
    new ``--max-batch-size`` or the move from the older unbatched form is not a clash.
    """
    cfg = triton.parse_pbtxt(text)
    max_batch = cfg.get("max_batch_size", [0])[0]
    parts = []
    for kind in ("input", "output"):
        for t in cfg.get(kind, []):
            parts.append(
                f"{kind} {t.get('name', ['?'])[0]} {t.get('data_type', ['?'])[0]} {triton.model_shape(t, max_batch)}"
            )
    return "; ".join(parts)


def check_config_compatible(artifacts: Path, model_name: str, new_text: str) -> None:
    """Refuse to export into a model whose config.pbtxt describes other tensors (it would break its versions),
    or that a live export is writing with other tensors (the later commit's config would break the other).

    Called before training and again by :class:`exporter.export.repository.VersionWriter` under the repository
    lock that claims the version, where the claims of other exports are final."""
    path = artifacts / model_name / repo.CONFIG_FILE
    new = _config_tensors(new_text)
    if path.is_file():
        try:
            old = _config_tensors(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ExporterError(
                f"cannot read the existing {path} ({exc}); fix or remove it, or export with --model-name"
            ) from exc
        if old != new:
            raise ExporterError(
                f"model '{model_name}' in {artifacts} has tensors [{old}] but this export has [{new}]: a new version "
                "would break the existing ones; export under another name (--model-name) or into another --artifacts"
            )
    for staging, text in repo.live_staged_configs(artifacts / model_name):
        try:
            other = _config_tensors(text)
        except ValueError:
            continue
        if other != new:
            raise ExporterError(
                f"model '{model_name}' in {artifacts} is being written by another export (pid {staging.pid}, "
                f"version {staging.version}) with tensors [{other}] but this export has [{new}]: one config.pbtxt "
                "cannot describe both; wait for it and export under another name (--model-name) or into another "
                "--artifacts"
            )


def unit_config(unit: ExportUnit, max_batch_size: int) -> str:
    """The config.pbtxt of a unit's tensors (no warm-up): what the clash checks compare."""
    inputs, outputs = C.tensor_specs(len(unit.feature_columns), unit.output_shape)
    return triton.config_pbtxt(
        {"name": unit.model_name, "inputs": inputs, "outputs": outputs}, max_batch_size=max_batch_size, warmup=False
    )


def check_configs(artifacts: Path, units: Sequence[ExportUnit], max_batch_size: int) -> None:
    """Before the slow work: a clash with an existing model's tensors is known from the shapes alone."""
    for unit in units:
        check_config_compatible(artifacts, unit.model_name, unit_config(unit, max_batch_size))


def write_versions(
    prep: Prepared,
    trained: Trained,
    evaluation: Evaluation,
    built: Sequence[tuple[ExportUnit, bytes, ParityResult]],
    parts: dict[str, str],
    raw_held: np.ndarray,
) -> list[ExportedArtifact]:
    """Stage one version per unit (model directory files included) and commit them together.

    ``parts`` maps each repository name to the spec's own part name; ``raw_held`` is the held-out data as the
    graph takes it (the model card's examples and the warm-up row come from it).
    """
    artifacts = Path(prep.params.artifacts)
    # the writer claims the version (the next free one unless given), so concurrent exports never collide; the
    # tensors are checked against the model's config and other live claims under the same lock
    configs = {u.model_name: unit_config(u, prep.params.max_batch_size) for u, _, _ in built}

    def check(name: str) -> None:
        check_config_compatible(artifacts, name, configs[name])

    names = [u.model_name for u, _, _ in built]
    with repo.VersionWriter(artifacts, prep.params.version, names, configs, check) as writer:
        metas = {}
        for unit, model_bytes, parity in built:
            idx = [prep.columns.index(c) for c in unit.feature_columns]
            metas[unit.model_name] = _stage_version(
                writer, prep, trained, evaluation, unit, model_bytes, parity, parts[unit.model_name], raw_held[:, idx]
            )
        committed = writer.commit()
    return [
        ExportedArtifact(unit.model_name, writer.version, committed[unit.model_name], metas[unit.model_name], parity)
        for unit, _, parity in built
    ]


def _stage_version(
    writer: repo.VersionWriter,
    prep: Prepared,
    trained: Trained,
    evaluation: Evaluation,
    unit: ExportUnit,
    model_bytes: bytes,
    parity: ParityResult,
    part: str,
    raw_held: np.ndarray,
) -> dict[str, Any]:
    """Every file of one unit's version, and its model directory files, into the staging directory; its metadata."""
    d = writer.path(unit.model_name)
    plan = prep.features
    (d / repo.MODEL_FILE).write_bytes(model_bytes)
    sha = repo.sha256_file(d / repo.MODEL_FILE)
    extra: dict[str, str] = {}
    vocab = plan.subset(unit.feature_columns).vocab_json()
    if vocab:
        repo.write_json(d / repo.VOCAB_FILE, vocab)
        extra[repo.VOCAB_FILE] = repo.sha256_file(d / repo.VOCAB_FILE)
    written = []
    for side in evaluation.files.get(part, []):
        if not C.is_plain_file_name(side.name):
            raise ExporterError(f"{unit.model_name}: side file name {side.name!r} is not a plain file name")
        (d / side.name).write_bytes(side.data)
        written.append((side, repo.sha256_file(d / side.name)))
    meta = build_metadata(
        prep, trained, evaluation, unit, writer.version, model_bytes, sha, parity, extra, part, written
    )
    repo.write_json(d / repo.METADATA_FILE, meta)
    request = sample_request(prep, unit)
    repo.write_json(d / repo.SAMPLE_REQUEST, request)
    handler = ModelHandler.load(d)
    response = handler.predict(request)
    repo.write_json(d / repo.SAMPLE_RESPONSE, response)
    model_card.write_version_files(d, meta, request, response, raw_held, handler)
    if unit.write_native_files is not None:
        unit.write_native_files(d)
    finite = raw_held[np.isfinite(raw_held).all(axis=1)][:1]  # what the graph takes
    config_files = triton.model_config_files(
        meta, finite[0] if len(finite) else None, max_batch_size=prep.params.max_batch_size
    )
    for relative, data in config_files.items():
        writer.stage_model_file(unit.model_name, relative, data)
    manifest = kserve.manifest_text(meta, storage_uri=prep.params.storage_uri or kserve.DEFAULT_STORAGE_URI)
    writer.stage_model_file(unit.model_name, kserve.MANIFEST_FILE, manifest.encode("utf-8"))
    return meta
