"""Fault injection against `lfm-bench`: every fault ends in one line on stderr (no traceback), the
documented exit code, and no lost or stale result; a stopped or killed run resumes to exactly
the result of an uninterrupted one.

Runs use the smoke profile's LFM-DR cell of table7 with 2 epochs (6 steps each) and seed 0. Exact
moments are hit with the training loop's test hook (``LFM_TEST_STOP_AT``, lfm_core.stopping).
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = ["run", "table7", "--profile", "smoke", "--methods", "LFM-DR", "--epochs", "2", "--seeds", "0"]
RESUME = "rerun the same command to resume"


def cli(*args: str, env: dict[str, str] | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """``lfm-bench ARGS`` in a fresh process; ``prelude``: Python run first (to inject a fault)."""
    code = f"{prelude}\nfrom lfm_core.cli import main\nmain()"
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          env=full_env)


def error_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The one line a fault prints: the last line of stderr, with no traceback before it."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1]
    assert sum(line.startswith(("error:", "stopped at", "interrupted")) for line in lines) == 1, lines[-5:]
    for w in words:
        assert w in last, (w, last)
    return last


def result_of(root: Path) -> Path:
    (path,) = list(root.rglob("result.json"))
    return path


def comparable(root: Path) -> tuple[dict, list[dict]]:
    """The result's metrics and the per-epoch records, without wall-clock times."""
    path = result_of(root)
    metrics = json.loads(path.read_text())["metrics"]
    records = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    return metrics, [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run: what every stopped or damaged run must give back."""
    root = tmp_path_factory.mktemp("reference")
    proc = cli(*ARGS, "--results", str(root))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def copy_of(reference: Path, tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(reference, root)
    return root


# ----------------------------------------------------------------------------------------------
# graceful stop and resume
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("moment, sig, code, where", [
    ("dr:1:2:end", "TERM", 143, "epoch 1 step 3"),  # at a step boundary
    ("dr:0:3:mid", "TERM", 143, "epoch 0 step 4"),  # mid-step: the step in progress finishes
    ("dr:0:eval", "TERM", 143, "epoch 1 step 0"),  # during evaluation: the epoch is done once
    ("dr:1:0:mid", "INT", 130, "epoch 1 step 1"),  # Ctrl-C
])
def test_a_stopped_run_resumes_to_the_uninterrupted_result(moment, sig, code, where, reference, tmp_path):
    root = tmp_path / "results"
    stopped = cli(*ARGS, "--results", str(root), env={"LFM_TEST_STOP_AT": moment, "LFM_TEST_STOP_SIGNAL": sig})
    assert error_line(stopped, code) == f"stopped at {where}; {RESUME}"
    assert not list(root.rglob("result.json"))
    resumed = cli(*ARGS, "--results", str(root))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(root) == comparable(reference)


def test_sigterm_at_an_arbitrary_moment_resumes_to_the_uninterrupted_result(reference, tmp_path):
    root = tmp_path / "results"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lfm_core.cli", *ARGS, "--results", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not list(root.rglob("checkpoint.pt")):  # after the first epoch
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 0:  # (0: it finished before the signal came)
        assert proc.returncode == 143 and RESUME in err.splitlines()[-1] and "Traceback" not in err
        assert cli(*ARGS, "--results", str(root)).returncode == 0
    assert comparable(root) == comparable(reference)


# ----------------------------------------------------------------------------------------------
# the run lock
# ----------------------------------------------------------------------------------------------
def _contend(path: str, start, done, wins) -> None:
    from lfm_core.locking import RunLock, RunLockedError

    start.wait()
    try:
        with RunLock(path):
            wins.put(os.getpid())
            done.wait()  # hold it until every contender has tried
    except RunLockedError:
        done.wait()


def test_100_concurrent_takeovers_of_a_stale_lock_have_exactly_one_winner(tmp_path):
    ctx = mp.get_context("fork")
    lock = tmp_path / ".lock"
    contenders = 4
    for trial in range(100):
        lock.write_text("999999999")  # left by a killed run: nobody holds it
        start, done, wins = ctx.Barrier(contenders), ctx.Barrier(contenders), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(lock), start, done, wins)) for _ in range(contenders)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"trial {trial}: a contender crashed"
        winners = []
        while not wins.empty():
            winners.append(wins.get())
        assert len(winners) == 1, f"trial {trial}: {len(winners)} winners"


def test_a_run_held_by_a_live_process_is_refused(reference, tmp_path):
    from lfm_core.locking import RunLock

    root = copy_of(reference, tmp_path)
    result = result_of(root)
    result.unlink()
    with RunLock(result.parent / ".lock"):
        error_line(cli(*ARGS, "--results", str(root)), 1, "in use by process", str(os.getpid()))
    assert not result.exists()


# ----------------------------------------------------------------------------------------------
# damaged files
# ----------------------------------------------------------------------------------------------
def _wrong_shapes(good: dict) -> dict[str, object]:
    return {"empty": {}, "null": None, "list": [1, 2], "no metric": {**good, "metrics": {}},
            "string metric": {**good, "metrics": {**good["metrics"], "test_acc": "high"}}}


@pytest.mark.parametrize("shape", ["empty", "null", "list", "no metric", "string metric"])
def test_a_result_of_the_wrong_shape_is_named_not_overwritten(shape, reference, tmp_path):
    root = copy_of(reference, tmp_path)
    result = result_of(root)
    bad = _wrong_shapes(json.loads(result.read_text()))[shape]
    result.write_text(json.dumps(bad))
    error_line(cli(*ARGS, "--results", str(root)), 1, str(result), "--force")
    assert json.loads(result.read_text()) == bad  # left for the user to look at
    if shape == "string metric":  # (one case is enough for the fix the message names)
        assert cli(*ARGS, "--results", str(root), "--force").returncode == 0
        assert comparable(root) == comparable(reference)


def test_report_skips_foreign_and_malformed_results_with_a_warning(reference, tmp_path):
    root = copy_of(reference, tmp_path)
    good = json.loads(result_of(root).read_text())
    for i, bad in enumerate([*_wrong_shapes(good).values(), "{torn"]):
        path = root / "foreign" / f"r{i}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    proc = cli("report", "table7", "--results", str(root), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("warning: skipping") == 6
    table = (tmp_path / "report" / "table7.md").read_text()
    assert f"{good['metrics']['test_acc']:.2f}" in table
    again = cli(*ARGS, "--results", str(root))  # the run's final table skips them too
    assert again.returncode == 0 and "cached" in again.stderr and "Traceback" not in again.stderr


def test_a_torn_result_is_computed_again(reference, tmp_path):
    root = copy_of(reference, tmp_path)
    result = result_of(root)
    result.write_text(result.read_text()[:40])
    assert cli(*ARGS, "--results", str(root)).returncode == 0
    assert comparable(root) == comparable(reference)


def test_random_bytes_in_metrics_are_dropped_with_a_warning(reference, tmp_path):
    root = copy_of(reference, tmp_path)
    result = result_of(root)
    metrics = result.parent / "metrics.jsonl"
    first = metrics.read_text().splitlines()[0]
    metrics.write_bytes(first.encode() + b"\n" + os.urandom(200) + b"\n")
    result.unlink()  # the run resumes from its checkpoint (after epoch 2) and reads metrics.jsonl
    proc = cli(*ARGS, "--results", str(root))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "warning:" in proc.stderr and "line 2 is not a JSON record" in (result.parent / "log.txt").read_text()
    assert json.loads(result.read_text())["metrics"] == comparable(reference)[0]


def test_a_checkpoint_missing_a_key_is_named(reference, tmp_path):
    root = copy_of(reference, tmp_path)
    result = result_of(root)
    result.unlink()
    ckpt = result.parent / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["meta_epoch"]
    torch.save(state, ckpt)
    error_line(cli(*ARGS, "--results", str(root)), 1, str(ckpt), "missing 'meta_epoch'", "--force")
    assert not result.exists()


def test_orphan_temporary_files_are_removed_on_the_next_run(reference, tmp_path):
    root = copy_of(reference, tmp_path)
    result = result_of(root)
    result.unlink()
    orphan = result.parent / ".checkpoint.pt.x1y2z3.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert cli(*ARGS, "--results", str(root)).returncode == 0
    assert not orphan.exists() and comparable(root) == comparable(reference)


# ----------------------------------------------------------------------------------------------
# the operating system
# ----------------------------------------------------------------------------------------------
FULL_DISK = """
import errno, os
def fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = fsync
"""
READ_ONLY = """
import errno, os, tempfile
def mkstemp(*args, dir=None, **kw):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)
tempfile.mkstemp = mkstemp
"""


@pytest.mark.parametrize("prelude, words", [(FULL_DISK, ["No space left on device", "free some space"]),
                                            (READ_ONLY, ["Read-only file system", "writable --results"])])
def test_an_unwritable_results_folder_is_one_line(prelude, words, tmp_path):
    root = tmp_path / "results"
    error_line(cli(*ARGS, "--results", str(root), prelude=prelude), 1, str(root), *words)
    assert not list(root.rglob("result.json")) and not list(root.rglob("*.tmp"))


def test_a_results_path_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    error_line(cli(*ARGS, "--results", str(tmp_path / "file" / "results")), 1, str(tmp_path / "file"),
               "Not a directory")


def test_a_name_too_long_is_one_line(tmp_path):
    error_line(cli(*ARGS, "--results", str(tmp_path / ("x" * 300))), 1, "File name too long")


@pytest.mark.parametrize("seeds", ["-1", "18446744073709551616", "4294967296", ",", "1,x"])
def test_bad_seeds_fail_before_any_folder_is_made(seeds, tmp_path):
    root = tmp_path / "results"
    error_line(cli(*ARGS[:-2], "--seeds", seeds, "--results", str(root)), 2, repr(seeds), "[0, 2**32)")
    assert not root.exists()


@pytest.mark.parametrize("device, code, words", [("bogus", 2, ["'bogus'", "cpu, cuda"]),
                                                 ("cuda:3", 1, ["cuda:3"])])
def test_a_device_that_is_not_there_is_one_line(device, code, words, tmp_path):
    if device.startswith("cuda") and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    root = tmp_path / "results"
    error_line(cli(*ARGS, "--device", device, "--results", str(root)), code, *words)
    assert not root.exists()


def test_only_that_matches_nothing_fails_before_any_folder_is_made(tmp_path):
    root = tmp_path / "results"
    error_line(cli(*ARGS, "--only", "no such cell", "--results", str(root)), 2, "no such cell")
    assert not root.exists()


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def test_an_empty_class_is_named():
    from lfm_core.data import DataBundle, IndexedTensorDataset, make_splits
    from lfm_core.errors import UsageError

    labels = torch.tensor([0] * 10 + [2] * 10)  # class 1 ("cat") has no images
    data = IndexedTensorDataset(torch.zeros(20, 3, 4, 4), labels, 3)
    bundle = DataBundle("folder", 3, data, data, classes=["ant", "cat", "dog"])
    with pytest.raises(UsageError, match="class 'cat' of folder has no training examples"):
        make_splits(bundle, meta_per_class=1)


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    from lfm_core.io import atomic_write_json

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write_json(tmp_path / "result.json", {"a": 1})
    assert caught.value.filename == str(tmp_path / "result.json") and not list(tmp_path.iterdir())
