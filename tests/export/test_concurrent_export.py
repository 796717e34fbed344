"""Concurrent and killed exports (a failed run must not delete another's version; leftover staging directories).

A failed or slower export must never remove what another export committed; the loser of a race for a
version takes the next free one; a killed export's ``.staging-*`` is reported by ``verify`` and removed
by the next export of that model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.errors import ExporterError
from exporter.export import repository as repo
from exporter.tools.verify import verify
from tests.conftest import REPO


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fill(directory: Path, text: str = "x") -> None:
    (directory / "model.onnx").write_text(text)


# ---------------------------------------------------------------------------------------------- in process
def test_a_failing_writer_never_removes_a_version_another_writer_committed(tmp_path: Path) -> None:
    """Writer A creates xgb/ and stages; B commits meanwhile; A fails: B's version and the directory stay."""
    art = tmp_path / "artifacts"
    with pytest.raises(RuntimeError):
        with repo.VersionWriter(art, None, ["xgb"]) as a:
            assert (art / "xgb") in a.created_model_dirs
            with repo.VersionWriter(art, None, ["xgb"]) as b:
                _fill(b.path("xgb"), "b")
                committed_b = b.commit()["xgb"]
            (art / "xgb" / "config.pbtxt").write_text("written by b")
            raise RuntimeError("A fails after B committed")
    assert committed_b.is_dir() and (committed_b / "model.onnx").read_text() == "b"
    assert (art / "xgb" / "config.pbtxt").read_text() == "written by b"
    assert not repo.stagings(art / "xgb")


def test_concurrent_writers_take_distinct_versions(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    with repo.VersionWriter(art, None, ["two_tower", "two_tower_item"]) as a:
        with repo.VersionWriter(art, None, ["two_tower_item"]) as b:
            assert (a.version, b.version) == (1, 2)
            assert repo.next_version(art, ["two_tower_item"]) == 3  # claimed versions count as taken
            _fill(b.path("two_tower_item"))
            b.commit()
        for name in ("two_tower", "two_tower_item"):
            _fill(a.path(name))
        a.commit()
    assert repo.versions(art / "two_tower") == [1] and repo.versions(art / "two_tower_item") == [1, 2]


def test_an_explicit_version_another_export_is_writing_is_refused(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    with repo.VersionWriter(art, 3, ["xgb"]):
        with pytest.raises(ExporterError, match="version 3 of 'xgb' is being written by another export"):
            with repo.VersionWriter(art, 3, ["xgb"]):
                pass


def _config(n_features: int) -> str:
    from exporter import contract as C
    from exporter.export import triton

    inputs, outputs = C.tensor_specs(n_features, [-1, 1])
    return triton.config_pbtxt({"name": "xgb", "inputs": inputs, "outputs": outputs}, max_batch_size=8, warmup=False)


def test_a_claim_whose_tensors_clash_with_a_live_claim_is_refused_under_the_lock(tmp_path: Path) -> None:
    """B passed the check before training, A claimed meanwhile with other tensors: B's claim is refused."""
    from exporter.export.write import check_config_compatible

    art = tmp_path / "artifacts"

    def checker(config: str):  # type: ignore[no-untyped-def]
        return lambda name: check_config_compatible(art, name, config)

    with repo.VersionWriter(art, None, ["xgb"], {"xgb": _config(10)}, checker(_config(10))) as a:
        with pytest.raises(ExporterError) as err:
            with repo.VersionWriter(art, None, ["xgb"], {"xgb": _config(3)}, checker(_config(3))):
                pass
        message = str(err.value)
        assert "[-1, 10]" in message and "[-1, 3]" in message and f"pid {os.getpid()}" in message, message
        with repo.VersionWriter(art, None, ["xgb"], {"xgb": _config(10)}, checker(_config(10))) as same:
            assert same.version == 2  # the same tensors still take the next version
        _fill(a.path("xgb"))
        a.commit()
    assert repo.versions(art / "xgb") == [1]
    assert "dims: [ 10 ]" in (art / "xgb" / "config.pbtxt").read_text()


def test_a_version_that_appears_at_commit_keeps_this_runs_files(tmp_path: Path) -> None:
    """Something that does not claim versions writes the target: fail with a retry hint, keep the files."""
    art = tmp_path / "artifacts"
    with pytest.raises(ExporterError) as err:
        with repo.VersionWriter(art, None, ["xgb"]) as w:
            _fill(w.path("xgb"), "mine")
            (art / "xgb" / "1").mkdir()
            (art / "xgb" / "1" / "model.onnx").write_text("theirs")
            w.commit()
    message = str(err.value)
    assert "nothing of this run was committed" in message and "run the export again" in message
    kept = repo.kept_dirs(art / "xgb")
    assert len(kept) == 1 and (kept[0] / "model.onnx").read_text() == "mine" and str(kept[0]) in message
    assert (art / "xgb" / "1" / "model.onnx").read_text() == "theirs"
    assert any(".kept-" in p for p in verify(art).problems)


def test_a_failed_export_into_a_fresh_tree_leaves_no_model_directory(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    with pytest.raises(RuntimeError):
        with repo.VersionWriter(art, None, ["xgb"]) as w:
            _fill(w.path("xgb"))
            raise RuntimeError("boom")
    assert list(art.iterdir()) == []


# ---------------------------------------------------------------------------------------------- leftovers
def test_stale_staging_is_reported_by_verify_and_removed_by_the_next_export(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    with repo.VersionWriter(art, None, ["xgb"]) as w:
        _fill(w.path("xgb"))
        w.commit()
    pid = _dead_pid()
    stale = art / "xgb" / f"{repo.STAGING_PREFIX}2-pid{pid}-0123abcd"
    stale.mkdir()
    _fill(stale)
    live = art / "xgb" / f"{repo.STAGING_PREFIX}7-pid{os.getpid()}-0123abce"
    live.mkdir()

    report = verify(art)
    assert [p for p in report.problems if stale.name in p and f"pid {pid} is no longer running" in p], report.problems
    assert [n for n in report.notes if live.name in n and "in progress" in n], report.notes
    assert not [p for p in report.problems if live.name in p]
    assert repo.next_version(art, ["xgb"]) == 8  # the live export's claim counts, the dead one's does not

    with repo.VersionWriter(art, None, ["xgb"]) as w:
        assert w.version == 8 and stale in w.removed_leftovers
        _fill(w.path("xgb"))
        w.commit()
    assert not stale.exists() and live.exists()


def test_a_recycled_pid_does_not_keep_a_staging_directory_alive(tmp_path: Path) -> None:
    """A live process that started after the staging directory was last written cannot have written it."""
    model_dir = tmp_path / "xgb"
    old = model_dir / f"{repo.STAGING_PREFIX}1-pid{os.getpid()}-0123abcd"
    old.mkdir(parents=True)
    os.utime(old, (1.0, 1.0))  # written in 1970: this process (started later) cannot be its owner
    if repo._process_start(os.getpid()) is None:
        pytest.skip("no /proc: process start times unknown")
    [s] = repo.stagings(model_dir)
    # our own pid is always alive (a writer checks its own staging); another live pid started later is not
    assert not s.stale
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        other = model_dir / f"{repo.STAGING_PREFIX}2-pid{child.pid}-0123abcd"
        other.mkdir()
        os.utime(other, (1.0, 1.0))
        assert [s.stale for s in repo.stagings(model_dir) if s.path == other] == [True]
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------------------------- two processes
def _export(art: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "export",
            "xgb",
            "--artifacts",
            str(art),
            "--rows",
            "400",
            "--param",
            "n_estimators=5",
            "--quiet",
            "--json",
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lock_is_free(art: Path) -> bool:
    import fcntl

    fd = os.open(art, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _pause_when_staging(proc: subprocess.Popen[str], art: Path, timeout: float = 240) -> bool:
    """SIGSTOP ``proc`` as soon as its ``.staging-*`` appears, before it commits and outside the claim lock.

    Returns False when the process committed before it could be caught (the scenario is then retried).
    """
    deadline = time.monotonic() + timeout
    model_dir = art / "xgb"
    while time.monotonic() < deadline:
        if model_dir.is_dir() and any(p.name.startswith(repo.STAGING_PREFIX) for p in model_dir.iterdir()):
            os.kill(proc.pid, signal.SIGSTOP)
            if repo.versions(model_dir):
                os.kill(proc.pid, signal.SIGCONT)
                return False
            if _lock_is_free(art):
                return True
            os.kill(proc.pid, signal.SIGCONT)  # stopped inside the claim: let it leave the lock first
            time.sleep(0.001)
            continue
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError("run A never staged a version")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_run_paused_in_staging_does_not_destroy_the_version_another_run_committed(tmp_path: Path) -> None:
    """The original failure, reproduced: pause A when its .staging-* appears, let B finish, resume A."""
    for attempt in range(3):
        art = tmp_path / f"artifacts{attempt}"
        a = _export(art)
        caught = _pause_when_staging(a, art)
        if not caught:
            a.communicate(timeout=240)
            continue
        try:
            b = _export(art)
            b_out, b_err = b.communicate(timeout=240)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        a_out, a_err = a.communicate(timeout=240)
        break
    else:
        pytest.skip("run A committed before it could be paused three times in a row")
    assert b.returncode == 0, b_err
    assert a.returncode == 0, a_err
    b_version = json.loads(b_out)["models"][0]["artifacts"][0]["version"]
    a_version = json.loads(a_out)["models"][0]["artifacts"][0]["version"]
    assert (a_version, b_version) == (1, 2)
    assert repo.versions(art / "xgb") == [1, 2]
    for v in (1, 2):
        meta = json.loads((art / "xgb" / str(v) / "metadata.json").read_text())
        assert repo.sha256_file(art / "xgb" / str(v) / "model.onnx") == meta["sha256"]
    report = verify(art)
    assert report.ok and len(report.passed) == 2, report.problems


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_a_concurrent_export_with_other_tensors_is_refused(tmp_path: Path) -> None:
    """A (all columns) paused in staging; B (two columns) must not commit a version whose config.pbtxt would
    then describe only one of them: B exits 2 naming both shapes, A commits, verify passes."""
    for attempt in range(3):
        art = tmp_path / f"artifacts{attempt}"
        a = _export(art)
        if not _pause_when_staging(a, art):
            a.communicate(timeout=240)
            continue
        try:
            b = _export(art, "--feature-columns", "item_ctr,user_age")
            _, b_err = b.communicate(timeout=240)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        _, a_err = a.communicate(timeout=240)
        break
    else:
        pytest.skip("run A committed before it could be paused three times in a row")
    assert a.returncode == 0, a_err
    assert b.returncode == 2, b_err
    assert "Traceback" not in b_err and "[-1, 2]" in b_err and "being written by another export" in b_err, b_err
    assert repo.versions(art / "xgb") == [1]
    report = verify(art)
    assert report.ok and len(report.passed) == 1, report.problems


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_export_leftover_is_reported_then_cleaned(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    a = _export(art)
    if not _pause_when_staging(a, art):
        a.communicate(timeout=240)
        pytest.skip("the export committed before it could be killed")
    a.kill()
    a.communicate(timeout=60)
    [left] = repo.stagings(art / "xgb")
    assert left.stale and left.pid == a.pid
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "verify", str(art)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and f"pid {a.pid} is no longer running" in proc.stdout, proc.stdout
    b = _export(art)
    out, err = b.communicate(timeout=240)
    assert b.returncode == 0, err
    assert not repo.stagings(art / "xgb")
    assert json.loads(out)["models"][0]["artifacts"][0]["version"] == 1  # the dead run's claim did not count
