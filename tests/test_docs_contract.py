"""The reference pages against the code: docs/contract.md (every fact it states that the code owns), and the
command and parameter lists of docs/cli.md and docs/notebooks.md against the parsers and the notebooks."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from exporter import contract as C
from exporter.runtime.handler import DEFAULT_MAX_ROWS
from exporter.serving import http_limits, workers
from exporter.serving.server import DEFAULT_MAX_BODY_BYTES, ModelRegistry, create_app
from exporter.training.data import DEFAULT_FEATURES
from tests.conftest import REPO
from tests.handler_fixtures import build_tree

DOC = (REPO / "docs" / "contract.md").read_text(encoding="utf-8")


def section(number: int) -> str:
    """The text of ``## <number>. ...`` up to the next ``## `` heading."""
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", DOC, re.S | re.M)
    assert match, f"docs/contract.md has no section {number}"
    return match.group(0)


def table(text: str, first_header: str) -> list[list[str]]:
    """Rows (cells stripped) of the markdown table whose first header cell is ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{re.escape(first_header)}\s*\|", line))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def ticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def test_tensor_names_types_and_platform() -> None:
    models = section(1)
    for fact in (C.INPUT_NAME, C.OUTPUT_NAME, C.DATATYPE, C.ONNX_TYPE):
        assert fact in models, fact
    assert f'"{C.PLATFORM}"' in DOC
    assert f'{{"{C.REQUEST_ROWS_KEY}": [' in section(4) and f'{{"{C.ANSWER_KEY}": [...]}}' in section(4)


def test_prediction_formats_are_the_codes() -> None:
    rows = table(section(1), "model_name")
    documented = {row[4].strip("`") for row in rows}
    assert documented == set(C.PREDICTION_FORMATS)
    assert all(f"`{fmt}`" in section(3) for fmt in C.PREDICTION_FORMATS)


def test_models_table_matches_exported_metadata(exported_runs) -> None:
    """Each exported model's output rank and prediction format are the ones its row states."""
    root, _ = exported_runs
    rows = {row[0].strip("`"): row for row in table(section(1), "model_name")}
    exported = sorted(p.parent.parent.name for p in root.glob(f"*/1/{C.METADATA_FILE}"))
    assert sorted(rows) == exported
    for name in exported:
        meta = json.loads((root / name / "1" / C.METADATA_FILE).read_text())
        row = rows[name]
        assert f"`{C.INPUT_NAME}` {C.DATATYPE}" in row[2]
        shape = re.search(r"`(\[-1(?:, \w+)?\])`", row[3]).group(1)
        assert shape.count(",") + 1 == len(meta["outputs"][0]["shape"]), (name, shape, meta["outputs"])
        assert row[4].strip("`") == meta["prediction_format"]
        if meta.get("output_columns"):
            assert all(f"`{c}`" in row[3] for c in meta["output_columns"])


def test_default_schema_lists_the_codes_columns() -> None:
    schema = section(1)
    for column in DEFAULT_FEATURES:
        assert f"`{column}`" in schema or f"{column}," in schema, column


def test_artifact_file_names_and_version_rule() -> None:
    layout = section(2)
    for name in (C.CONFIG_FILE, C.MODEL_FILE, C.METADATA_FILE, C.SAMPLE_REQUEST, C.SAMPLE_RESPONSE, C.REPORT_FILE):
        assert re.search(rf"^\s+{re.escape(name)}\s", layout, re.M), name
    assert f"`{C.STAGING_PREFIX}" in layout
    assert str(C.MAX_VERSION) in layout


def test_metadata_keys_of_real_exports_are_documented(exported_runs) -> None:
    """Every key an export writes (top level and training) is explained in section 3."""
    root, _ = exported_runs
    documented = {key for cell in ticked(section(3)) for key in re.split(r"[,\s]+", cell) if key}
    for path in root.glob(f"*/1/{C.METADATA_FILE}"):
        meta = json.loads(path.read_text())
        missing = [k for k in list(meta) + list(meta["training"]) if k not in documented]
        assert not missing, f"{path.parent.parent.name}: {missing} not in docs/contract.md section 3"
    assert str(C.MAX_METADATA_DEPTH) in section(3)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    from exporter.serving.metrics import Metrics

    return create_app(ModelRegistry.from_artifacts(build_tree(tmp_path_factory.mktemp("tree"))), metrics=Metrics())


def test_routes_are_the_servers(app) -> None:
    documented = set()
    for row in table(section(5), "route"):
        method, path = row[0].strip("`").split(" ", 1)
        documented.add((method, path))
    served = {(m, r.path) for r in app.routes for m in r.methods if m != "HEAD"}
    assert documented == served


def test_error_statuses_are_the_ones_the_code_answers() -> None:
    documented = {int(row[0]) for row in table(section(4), "status")}
    files = [
        *sorted((REPO / "exporter" / "runtime").rglob("*.py")),
        *sorted((REPO / "exporter" / "serving").rglob("*.py")),
    ]
    code = "".join(f.read_text() for f in files)
    answered = {int(s) for s in re.findall(r"\b(?:4\d\d|50[34])\b", code)}  # 503/504: a busy or slow model
    assert documented == answered


def test_limits_are_the_defaults() -> None:
    limits = {row[0]: row[1] for row in table(section(4), "limit")}

    def value(option: str) -> str:
        return next(v for k, v in limits.items() if f"(`{option}`)" in k).split()[0]

    assert value("--max-body-bytes") == str(DEFAULT_MAX_BODY_BYTES)
    assert value("--max-rows") == str(DEFAULT_MAX_ROWS)
    assert value("--max-header-bytes") == str(http_limits.DEFAULT_MAX_HEADER_BYTES)
    assert float(value("--header-timeout")) == http_limits.DEFAULT_HEADER_TIMEOUT
    assert float(value("--body-timeout")) == http_limits.DEFAULT_BODY_TIMEOUT
    assert float(value("--keep-alive-timeout")) == http_limits.DEFAULT_KEEP_ALIVE_TIMEOUT
    assert float(value("--request-timeout")) == workers.DEFAULT_REQUEST_TIMEOUT
    assert value("--worker-threads") == str(workers.DEFAULT_WORKER_THREADS)
    assert value("--model-concurrency") == str(workers.DEFAULT_MODEL_CONCURRENCY)


def test_quoted_client_text_length_is_the_handlers() -> None:
    from exporter.runtime import messages
    from exporter.serving import server

    assert f"up to {messages.QUOTE_CHARS} characters" in section(4)
    assert f"first {messages.QUOTE_CHARS} characters followed by its length" in section(4)
    assert messages.QUOTE_CHARS == server._QUOTE_CHARS


def test_exit_codes_are_the_errors() -> None:
    from exporter.errors import ExporterError, ParityError

    codes = {int(row[0]) for row in table(section(6), "code")}
    assert {0, 1, ExporterError.exit_code, ParityError.exit_code} == codes


def test_the_page_stands_on_its_own_in_a_clone() -> None:
    """A clone has no ../shared: the page cites only what the repository holds."""
    assert "../shared" not in DOC and "shared/contract.md" not in DOC
    for path in re.findall(r"`((?:exporter|tests)/[\w/.]+\.py)`", DOC):
        assert (REPO / path).is_file(), path


# ---------------------------------------------------------------------------------------------- docs/cli.md
CLI_DOC = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command the parser knows, nested suites included (``bench quality``), by its typed name."""
    from exporter import cli

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix}{name}".strip()] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(cli.build_parser(), "")
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings if o not in ("-h", "--help")}


def _command_section(name: str) -> str:
    match = re.search(rf"^### `{re.escape(name)}`\n(.*?)(?=^##|\Z)", CLI_DOC, re.S | re.M)
    assert match, f"docs/cli.md has no section ### `{name}`"
    return match.group(1)


def test_cli_doc_lists_every_command() -> None:
    block = re.search(r"^## Commands\n\n```\n(.*?)```", CLI_DOC, re.S | re.M)
    assert block, "docs/cli.md has no ## Commands block"
    listed = {
        m.group(1).strip() for m in re.finditer(r"^python -m exporter ((?:[a-z][\w-]* ?)+)", block.group(1), re.M)
    }
    listed = {" ".join(w for w in name.split() if not w.isupper()) for name in listed}
    commands = set(_commands())
    assert commands <= listed, f"docs/cli.md does not list {sorted(commands - listed)}"
    assert listed <= commands, f"docs/cli.md lists commands the parser lacks: {sorted(listed - commands)}"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_cli_doc_lists_every_option_of_each_command(name: str) -> None:
    rows = table(_command_section(name), "option")
    documented = {o for row in rows for o in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", row[0])}
    options = _options(_commands()[name])
    assert options <= documented, f"docs/cli.md ### `{name}` misses {sorted(options - documented)}"
    assert documented <= options, f"docs/cli.md ### `{name}` documents unknown {sorted(documented - options)}"


def test_top_level_help_names_every_command_and_suite() -> None:
    from exporter import cli

    text = " ".join(cli.build_parser().format_help().split())
    missing = [name for name in _commands() if name not in text]
    assert not missing, f"python -m exporter --help never mentions {missing}"


# ---------------------------------------------------------------------------------------------- docs/notebooks.md
def test_notebooks_doc_lists_every_parameter() -> None:
    """The parameter table names each parameter of the notebooks' parameters cells, and nothing else."""
    from exporter.models import get_spec, model_names
    from exporter.tools import notebooks as runner

    doc = (REPO / "docs" / "notebooks.md").read_text(encoding="utf-8")
    rows = table(doc, "parameter")
    names = {n for row in rows for n in re.findall(r"`(\w+)`", row[0])}
    knobs_row = next(row for row in rows if row[0] == "training knobs")
    knobs = set(re.findall(r"`(\w+)`", knobs_row[2]))
    declared: set[str] = set()
    hparams: set[str] = set()
    for model in model_names():
        declared |= set(runner.notebook_parameters(REPO / "notebooks" / f"{model}.ipynb"))
        hparams |= set(get_spec(model).default_hparams)
    own = {p for p in declared if p not in hparams and p != "extra_hparams"}
    assert own <= names, f"docs/notebooks.md's parameter table misses {sorted(own - names)}"
    assert names <= own, f"docs/notebooks.md documents unknown parameters {sorted(names - own)}"
    knob_params = declared - own
    assert knob_params <= knobs, f"docs/notebooks.md's training knobs miss {sorted(knob_params - knobs)}"
    assert knobs <= knob_params, f"docs/notebooks.md names unknown knobs {sorted(knobs - knob_params)}"
