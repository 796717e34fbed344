"""An export killed at any point leaves the tree as before or complete (config.pbtxt, kserve.yaml and warm-up
data included), and what it leaves is cleaned up or finished by the next export (:func:`repository.recover`).

A driver process exports xgb into a tree that already holds version 1 (written with another batch size and
storage URI, so old and new model files differ) and ends itself with ``os._exit`` just before its k-th file
system write (write, mkdir, rename, replace, unlink, rmtree), for every k of a full export.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exporter.export import repository as repo
from exporter.tools.verify import verify
from tests.conftest import REPO

KILLED = 17

DRIVER = r"""
import os, pathlib, shutil, sys
from exporter.export import pipeline

artifacts, kill_at, max_batch, uri = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
params = pipeline.ExportParams(model="xgb", rows=300, seed=1, hparams={"n_estimators": 2, "max_depth": 2},
                               artifacts=artifacts, progress=False, max_batch_size=max_batch, storage_uri=uri)
prep = pipeline.prepare(params)
trained = pipeline.fit(prep)
evaluation = pipeline.evaluate(prep, trained)
count = 0

def counted(fn):
    def step(*args, **kwargs):
        global count
        count += 1
        if count == kill_at:
            os._exit(17)  # a kill: no finally, no __exit__, no cleanup
        return fn(*args, **kwargs)
    return step

for owner, name in [(pathlib.Path, "write_bytes"), (pathlib.Path, "write_text"), (pathlib.Path, "mkdir"),
                    (pathlib.Path, "unlink"), (os, "rename"), (os, "replace"), (shutil, "rmtree")]:
    setattr(owner, name, counted(getattr(owner, name)))
pipeline.export(prep, trained, evaluation)
print(count)
"""


def _drive(artifacts: Path, kill_at: int, max_batch: int, uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(artifacts), str(kill_at), str(max_batch), uri],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, staging directories of exports left out."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(repo.STAGING_PREFIX) for part in p.relative_to(root).parts)
    }


def _recover(artifacts: Path) -> None:
    """What the next export does first, under the lock."""
    with repo.repository_lock(artifacts):
        repo.recover(artifacts / "xgb")


@pytest.mark.slow
def test_a_kill_between_any_two_writes_leaves_the_tree_as_before_or_complete(tmp_path: Path) -> None:
    base = tmp_path / "base"
    first = _drive(base, 0, 8, "s3://before/artifacts")
    assert first.returncode == 0, first.stderr
    before = _snapshot(base)
    assert verify(base).ok

    complete_tree = tmp_path / "complete"
    shutil.copytree(base, complete_tree)
    full = _drive(complete_tree, 0, 16, "s3://after/artifacts")
    assert full.returncode == 0, full.stderr
    steps = int(full.stdout.strip().splitlines()[-1])
    complete = _snapshot(complete_tree)
    assert repo.versions(complete_tree / "xgb") == [1, 2] and verify(complete_tree).ok
    assert set(complete) - set(before) >= {"xgb/2/model.onnx", "xgb/2/metadata.json"}
    assert not any("/.publish/" in name or name.endswith(".tmp") for name in complete)
    assert before["xgb/config.pbtxt"] != complete["xgb/config.pbtxt"]
    assert before["xgb/kserve.yaml"] != complete["xgb/kserve.yaml"]

    def killed_at(k: int) -> tuple[int, Path, subprocess.CompletedProcess]:
        tree = tmp_path / f"killed{k}"
        shutil.copytree(base, tree)
        return k, tree, _drive(tree, k, 16, "s3://after/artifacts")

    outcomes = {"before": 0, "complete": 0}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for k, tree, proc in pool.map(killed_at, range(1, steps + 1)):
            assert proc.returncode == KILLED, f"step {k}: {proc.stderr[-2000:]}"
            versions = repo.versions(tree / "xgb")
            assert versions in ([1], [1, 2]), f"step {k}: {versions}"
            if versions == [1]:  # the version was not committed: nothing outside the staging directory changed
                assert _snapshot(tree) == before, f"step {k}"
            else:  # committed: the version is whole; its model files are published now or by the next export
                version_files = {n for n in _snapshot(tree) if n.startswith("xgb/2/") and "/.publish/" not in n}
                assert version_files == {n for n in complete if n.startswith("xgb/2/")}, f"step {k}"
            _recover(tree)
            after = _snapshot(tree)
            report = verify(tree)
            assert report.ok, f"step {k}: {report.problems}"
            if versions == [1]:
                assert after == before, f"step {k}"
                assert not any(p.name.startswith(repo.STAGING_PREFIX) for p in (tree / "xgb").iterdir())
                outcomes["before"] += 1
            else:
                assert set(after) == set(complete), f"step {k}: {set(after) ^ set(complete)}"
                assert after["xgb/config.pbtxt"] == complete["xgb/config.pbtxt"], f"step {k}"
                kserve_yaml = after["xgb/kserve.yaml"].decode()
                assert "s3://after/artifacts" in kserve_yaml and "model-version: '2'" in kserve_yaml, f"step {k}"
                warmup = [n for n in complete if n.startswith("xgb/warmup/")]
                assert warmup and all(after[n] == complete[n] for n in warmup), f"step {k}"
                outcomes["complete"] += 1
    assert outcomes["before"] and outcomes["complete"], outcomes  # both sides of the commit were exercised


# ---------------------------------------------------------------------------------------------- in process
def _stage(writer: repo.VersionWriter, name: str, text: str) -> None:
    (writer.path(name) / "model.onnx").write_text(text)
    writer.stage_model_file(name, "config.pbtxt", f"config {text}".encode())
    writer.stage_model_file(name, "warmup/features_sample_row.bin", text.encode())


def test_model_files_are_published_with_the_commit_and_the_staged_copies_removed(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    with repo.VersionWriter(art, None, ["xgb"]) as w:
        _stage(w, "xgb", "one")
        assert not (art / "xgb" / "config.pbtxt").exists()  # nothing beside the versions before the commit
        w.commit()
    assert (art / "xgb" / "config.pbtxt").read_text() == "config one"
    assert (art / "xgb" / "warmup" / "features_sample_row.bin").read_text() == "one"
    assert not (art / "xgb" / "1" / repo.PUBLISH_DIR).exists() and not repo.pending_publishes(art / "xgb")


def test_an_older_version_committed_last_does_not_overwrite_the_newer_ones_files(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    with repo.VersionWriter(art, None, ["xgb"]) as a:
        with repo.VersionWriter(art, None, ["xgb"]) as b:
            assert (a.version, b.version) == (1, 2)
            _stage(b, "xgb", "two")
            b.commit()
        _stage(a, "xgb", "one")
        a.commit()
    assert repo.versions(art / "xgb") == [1, 2]
    assert (art / "xgb" / "config.pbtxt").read_text() == "config two"
    assert not repo.pending_publishes(art / "xgb")


def test_a_staged_model_file_stays_inside_the_model_directory(tmp_path: Path) -> None:
    with repo.VersionWriter(tmp_path / "artifacts", None, ["xgb"]) as w:
        for bad in ("../config.pbtxt", "/etc/passwd", "", "warmup/../../x"):
            with pytest.raises(Exception, match="not a path inside the model directory"):
                w.stage_model_file("xgb", bad, b"x")


def test_verify_reports_an_unpublished_version_until_the_next_export_publishes_it(tmp_path: Path) -> None:
    from tests.handler_fixtures import build_tree

    tree = build_tree(tmp_path / "artifacts")
    shutil.rmtree(tree / "xgb" / ".staging-123")
    config = (tree / "xgb" / "config.pbtxt").read_text()
    pending = tree / "xgb" / "2" / repo.PUBLISH_DIR
    pending.mkdir()
    (pending / "config.pbtxt").write_text(config + "# published\n")
    (pending / "kserve.yaml").write_text("kind: InferenceService\n")
    report = verify(tree)
    assert any(
        p.startswith("xgb/2: its config.pbtxt, kserve.yaml and warm-up data were committed but not copied")
        for p in report.problems
    ), report.problems
    dead = tree / "xgb" / f".kserve.yaml.{_dead_pid()}-0123abcd.tmp"
    dead.write_text("half")
    _recover(tree)
    assert (tree / "xgb" / "config.pbtxt").read_text().endswith("# published\n")
    assert (tree / "xgb" / "kserve.yaml").read_text() == "kind: InferenceService\n"
    assert not pending.exists() and not dead.exists()
    assert verify(tree).ok, verify(tree).problems


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)
