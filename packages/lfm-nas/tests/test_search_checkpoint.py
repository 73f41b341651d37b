"""A search with a checkpoint resumes, after a graceful stop or a crash at any step, to exactly
the result of an uninterrupted search (genotype, alphas, r, per-epoch history)."""

import io

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lfm_core.data import WithIndices
from lfm_core.errors import GracefulStop
from lfm_nas.search import search

TINY = dict(C=2, layers=3, steps_per_epoch=3, seed=0)


class MemoryCheckpoint:
    """What the experiment layer's checkpoint does, in memory: the state goes through
    torch.save / weights_only torch.load like the file would."""

    def __init__(self):
        self.blob, self.saves = None, 0

    def save(self, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.blob, self.saves = buf.getvalue(), self.saves + 1

    def load(self):
        return None if self.blob is None else torch.load(io.BytesIO(self.blob), weights_only=True)


def loaders(with_generator: bool):
    g = torch.Generator().manual_seed(0)
    tr = TensorDataset(torch.randn(20, 3, 8, 8, generator=g), torch.randint(0, 3, (20,), generator=g))
    va = TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
    gens = (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)) if with_generator else (None, None)
    # 20 / 4 = 5 batches a pass: the passes do not line up with the 3-step epochs
    return (DataLoader(tr, batch_size=4, shuffle=True, generator=gens[0]),
            DataLoader(WithIndices(va), batch_size=4, shuffle=True, generator=gens[1]))


def run(config, epochs, with_generator, **kw):
    torch.manual_seed(1234)  # whatever a fresh process's global RNG holds: the search must not depend on it
    return search(config, *loaders(with_generator), epochs, **kw)


def same_search(a, b):
    assert a["genotype"] == b["genotype"]
    for k in a["alphas"]:
        assert torch.equal(a["alphas"][k], b["alphas"][k])
    if "r" in a:
        assert torch.equal(a["r"], b["r"])
    drop = ("time_s",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in a["history"]] == \
           [{k: v for k, v in h.items() if k not in drop} for h in b["history"]]
    assert a["val_acc"] == b["val_acc"] and a["nonfinite_steps"] == b["nonfinite_steps"]


CASES = [
    ("lfm-darts", {"engine": "first-order"}, 3, "nas:0:1:1:mid", True),
    ("darts2", {"engine": "finite-difference"}, 3, "nas:0:2:0:mid", False),
    ("lfm-pdarts", {"engine": "first-order", "pdarts_layers": (2, 3, 3), "lfm_start": 1}, 2, "nas:1:1:2:mid", False),
]


@pytest.mark.parametrize("method,extra,epochs,stop_at,with_generator", CASES)
def test_sigterm_mid_step_resumes_to_the_uninterrupted_search(method, extra, epochs, stop_at, with_generator,
                                                               monkeypatch):
    config = {"method": method, **TINY, **extra}
    reference = run(config, epochs, with_generator)
    ckpt = MemoryCheckpoint()
    monkeypatch.setenv("LFM_TEST_STOP_AT", stop_at)
    with pytest.raises(GracefulStop, match="rerun the same command to resume") as stopped:
        run(config, epochs, with_generator, checkpoint=ckpt)
    assert stopped.value.exit_code == 143
    stage, epoch, step = (int(v) for v in stop_at.split(":")[1:4])
    # the step in progress finishes; after an epoch's last step the epoch's end is saved
    expected = (stage, epoch, step + 1) if step + 1 < TINY["steps_per_epoch"] else (stage, epoch + 1, 0)
    position = ckpt.load()
    assert (position["stage"], position["epoch"], position["step"]) == expected
    monkeypatch.delenv("LFM_TEST_STOP_AT")
    same_search(reference, run(config, epochs, with_generator, checkpoint=ckpt))


def test_a_crash_resumes_from_the_last_epoch():
    """SIGKILL (here: an exception in the middle of epoch 2) loses only the epoch in progress."""
    config = {"method": "lfm-darts", **TINY, "engine": "first-order"}
    reference = run(config, 3, True)
    ckpt = MemoryCheckpoint()

    def crash(done, total):
        if done == 2 * TINY["steps_per_epoch"] + 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run(config, 3, True, checkpoint=ckpt, progress=crash)
    assert ckpt.saves == 2 and ckpt.load()["epoch"] == 2
    logged = []
    resumed = run(config, 3, True, checkpoint=ckpt, log=logged.append)
    same_search(reference, resumed)
    assert [r["epoch"] for r in logged] == [2]  # only the lost epoch is run (and logged) again


def test_without_a_checkpoint_signals_keep_their_handlers():
    import signal

    seen = []
    config = {"method": "darts1", **TINY}
    before = signal.getsignal(signal.SIGTERM)
    run(config, 1, False, progress=lambda d, t: seen.append(signal.getsignal(signal.SIGTERM)))
    assert set(seen) == {before}


RUN_CELL = """
import json, sys
from pathlib import Path
from lfm_core.runner import run_one
from lfm_nas.experiments import Table10
exp = Table10()
cell = next(c for c in exp.cells("smoke", {}) if c.row == "LFM+DARTS+PS" and c.params["measure"] == "memory")
run_one(exp, cell, "smoke", 0, Path(sys.argv[1]), options={"search_epochs": 3})
"""


def _run_cell(root, **env):
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", RUN_CELL, str(root)], capture_output=True, text=True,
                          timeout=600, env=full_env)


def _search_outcome(root):
    import json

    (path,) = list(root.rglob("result.json"))
    metrics = json.loads(path.read_text())["metrics"]
    records = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    # measured times and memory (the memory column's value is the peak memory) differ from run to run
    timing = ("time_s", "search_s", "search_epoch_s", "search_wall_s", "peak_mem_mb", "search_gpu_days", "search_cpu_hours",
              "value")
    return ({k: v for k, v in metrics.items() if k not in timing},
            [{k: v for k, v in r.items() if k != "time_s"} for r in records])


def test_a_smoke_search_stopped_then_killed_resumes_to_the_uninterrupted_one(tmp_path):
    """Table X's LFM+DARTS+PS search (smoke, 3 epochs of 2 steps): SIGTERM in epoch 0's last step,
    then SIGKILL in the middle of epoch 2; the third start finishes with the uninterrupted
    genotype, metrics and per-epoch records (no epoch logged twice)."""
    ref = _run_cell(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    root = tmp_path / "stopped"
    stopped = _run_cell(root, LFM_TEST_STOP_AT="nas:0:0:1:mid")
    assert "GracefulStop" in stopped.stderr and "stopped at search stage 0 epoch 1 step 0" in stopped.stderr
    killed = _run_cell(root, LFM_TEST_STOP_AT="nas:0:2:0:mid", LFM_TEST_STOP_SIGNAL="KILL")
    assert killed.returncode == -9 and not list(root.rglob("result.json"))
    done = _run_cell(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _search_outcome(root) == _search_outcome(tmp_path / "ref")
    assert "resumed the search at stage 0 epoch 2 step 0" in next(root.rglob("log.txt")).read_text()
    assert not list(root.rglob("checkpoint.pt"))  # dropped once the search is in the cache
