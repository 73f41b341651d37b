"""An evaluation network trained with a checkpoint resumes, after a graceful stop or a crash at any
step, to exactly the result of an uninterrupted training (test accuracy, weights, optimiser and
RNG state, per-epoch records)."""

import pytest
import torch
from test_search_checkpoint import MemoryCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lfm_core.errors import CheckpointError, GracefulStop
from lfm_nas.evaluation import train_eval_imagenet
from lfm_nas.genotypes import DARTS_V2
from lfm_nas.search import train_eval

EPOCHS, STEPS = 3, 5  # 20 examples in batches of 4
# drop path and cutout draw from the global RNG
TINY = dict(C=2, layers=3, auxiliary_weight=0.4, drop_path=0.2, cutout=4, lr=0.05, seed=0)


def loaders(with_generator: bool):
    g = torch.Generator().manual_seed(0)
    tr = TensorDataset(torch.randn(20, 3, 16, 16, generator=g), torch.randint(0, 3, (20,), generator=g))
    te = TensorDataset(torch.randn(12, 3, 16, 16, generator=g), torch.randint(0, 3, (12,), generator=g))
    gen = torch.Generator().manual_seed(1) if with_generator else None
    return DataLoader(tr, batch_size=4, shuffle=True, generator=gen), DataLoader(te, batch_size=6)


def run(with_generator, imagenet=False, **kw):
    torch.manual_seed(1234)  # whatever a fresh process's global RNG holds: the training must not depend on it
    if imagenet:
        return train_eval_imagenet(DARTS_V2, *loaders(with_generator), EPOCHS, C=2, layers=3, num_classes=3,
                                   lr=0.05, seed=0, **kw)
    return train_eval(DARTS_V2, *loaders(with_generator), EPOCHS, **TINY, **kw)


def same_training(a, b):
    """Two finished trainings' results and final checkpoints (weights, optimiser, scheduler, RNG)."""
    (res_a, ckpt_a), (res_b, ckpt_b) = a, b
    drop = ("epoch_time_s", "peak_mem_mb")
    assert {k: v for k, v in res_a.items() if k not in drop} == {k: v for k, v in res_b.items() if k not in drop}
    sa, sb = ckpt_a.load(), ckpt_b.load()
    assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"]) == (EPOCHS, 0)
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for k, state in sa["opt"]["state"].items():
        assert torch.equal(state["momentum_buffer"], sb["opt"]["state"][k]["momentum_buffer"])
    assert sa["sched"] == sb["sched"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted trainings, with and without a checkpoint (which must not change them)."""
    out = {}
    for with_generator in (True, False):
        plain = run(with_generator)
        ckpt, logged = MemoryCheckpoint(), []
        res = run(with_generator, checkpoint=ckpt, log=logged.append)
        assert plain["test_acc"] == res["test_acc"]
        assert ckpt.saves == EPOCHS
        out[with_generator] = (res, ckpt, logged)
    return out


def records(logged):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in logged]


@pytest.mark.parametrize("stop_at,with_generator", [("eval:1:2:mid", True), ("eval:0:4:mid", False),
                                                    ("eval:2:0:mid", True)])
def test_sigterm_mid_step_resumes_to_the_uninterrupted_training(stop_at, with_generator, reference, monkeypatch):
    ckpt = MemoryCheckpoint()
    logged = []
    monkeypatch.setenv("LFM_TEST_STOP_AT", stop_at)
    with pytest.raises(GracefulStop, match="rerun the same command to resume") as stopped:
        run(with_generator, checkpoint=ckpt, log=logged.append)
    assert stopped.value.exit_code == 143
    epoch, step = (int(v) for v in stop_at.split(":")[1:3])
    # the step in progress finishes; after an epoch's last step the epoch's end is saved
    expected = (epoch, step + 1) if step + 1 < STEPS else (epoch + 1, 0)
    position = ckpt.load()
    assert (position["epoch"], position["step"]) == expected
    assert f"at evaluation epoch {expected[0]} step {expected[1]}" in str(stopped.value)
    monkeypatch.delenv("LFM_TEST_STOP_AT")
    res, ref_ckpt, ref_logged = reference[with_generator]
    resumed = run(with_generator, checkpoint=ckpt, log=logged.append)
    same_training((res, ref_ckpt), (resumed, ckpt))
    assert records(logged) == records(ref_logged)  # each epoch logged once


@pytest.mark.parametrize("with_generator", [True, False])
def test_a_crash_resumes_from_the_last_epoch(with_generator, reference):
    """SIGKILL (here: an exception in the middle of epoch 2) loses only the epoch in progress."""
    ckpt = MemoryCheckpoint()

    def crash(done, total):
        if done == 2 * STEPS + 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run(with_generator, checkpoint=ckpt, progress=crash)
    assert ckpt.saves == 2 and (ckpt.load()["epoch"], ckpt.load()["step"]) == (2, 0)
    logged, seen = [], []
    res, ref_ckpt, ref_logged = reference[with_generator]
    resumed = run(with_generator, checkpoint=ckpt, log=logged.append, progress=lambda d, t: seen.append((d, t)))
    same_training((res, ref_ckpt), (resumed, ckpt))
    assert [r["epoch"] for r in logged] == [2]  # only the lost epoch is run (and logged) again
    assert seen[0] == (2 * STEPS + 1, EPOCHS * STEPS) and seen[-1] == (EPOCHS * STEPS, EPOCHS * STEPS)


def test_the_imagenet_evaluation_resumes_too(monkeypatch):
    ref_ckpt = MemoryCheckpoint()
    reference = run(True, imagenet=True, checkpoint=ref_ckpt)
    ckpt = MemoryCheckpoint()
    monkeypatch.setenv("LFM_TEST_STOP_AT", "eval:1:1:mid")
    with pytest.raises(GracefulStop):
        run(True, imagenet=True, checkpoint=ckpt)
    monkeypatch.delenv("LFM_TEST_STOP_AT")
    same_training((reference, ref_ckpt), (run(True, imagenet=True, checkpoint=ckpt), ckpt))


def test_a_checkpoint_of_another_network_is_refused(reference):
    _, ckpt, _ = reference[True]
    with pytest.raises(CheckpointError, match="evaluation checkpoint does not match this evaluation"):
        train_eval(DARTS_V2, *loaders(True), EPOCHS, **{**TINY, "C": 4}, checkpoint=ckpt)


def test_the_loader_is_drawn_from_as_by_a_for_loop():
    """Each epoch runs its pass to the end, as the loop did before it had a checkpoint: an
    exhausted shuffling sampler draws once more from the loader's generator."""
    tr, te = loaders(True)
    train_eval(DARTS_V2, tr, te, EPOCHS, **TINY)
    plain, _ = loaders(True)
    for _ in range(EPOCHS):
        for _ in plain:
            pass
    assert torch.equal(tr.generator.get_state(), plain.generator.get_state())


RUN_CELL = """
import sys
from pathlib import Path
from lfm_core.runner import run_one
from lfm_nas.experiments import Table1
exp = Table1()
cell = next(c for c in exp.cells("smoke", {}) if c.row == "DARTS-2nd")
run_one(exp, cell, "smoke", 0, Path(sys.argv[1]),
        options={"eval_epochs": 2, "set": {"drop_path": 0.2, "cutout": 2}})
"""


def _run_cell(root, **env):
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", RUN_CELL, str(root)], capture_output=True, text=True,
                          timeout=600, env=full_env)


def _outcome(root):
    import json

    (path,) = list(root.rglob("result.json"))
    metrics = json.loads(path.read_text())["metrics"]
    records = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    timing = ("time_s", "search_s", "search_epoch_s", "search_wall_s", "peak_mem_mb", "search_gpu_days",
              "search_cpu_hours", "eval_epoch_s")
    return ({k: v for k, v in metrics.items() if k not in timing},
            [{k: v for k, v in r.items() if k != "time_s"} for r in records])


def test_a_smoke_evaluation_stopped_then_killed_resumes_without_searching_again(tmp_path):
    """Table 1's DARTS-2nd cell (smoke, 2 evaluation epochs): SIGTERM in the evaluation's epoch 0,
    then SIGKILL in its epoch 1; the third start finishes with the uninterrupted test accuracy and
    records (no epoch logged twice), and neither restart searches again (a stop planted in the
    search's first step would end them)."""
    ref = _run_cell(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    root = tmp_path / "stopped"
    stopped = _run_cell(root, LFM_TEST_STOP_AT="eval:0:3:mid")
    assert "GracefulStop" in stopped.stderr and "stopped at evaluation epoch 0 step 4" in stopped.stderr
    (checkpoint,) = list(root.rglob("checkpoint.pt"))
    from lfm_core.io import load_checkpoint

    assert set(load_checkpoint(checkpoint)) == {"eval", "key", "n_metrics"}
    killed = _run_cell(root, LFM_TEST_STOP_AT="eval:1:2:mid", LFM_TEST_STOP_SIGNAL="KILL")
    assert killed.returncode == -9 and not list(root.rglob("result.json"))
    done = _run_cell(root, LFM_TEST_STOP_AT="nas:0:0:0:mid")
    assert done.returncode == 0, done.stderr[-2000:]
    reference = _outcome(tmp_path / "ref")
    assert _outcome(root) == reference
    assert [r["phase"] for r in reference[1]].count("eval") == 2
    log = next(root.rglob("log.txt")).read_text()
    assert "resumed the evaluation at epoch 0 step 4" in log and "resumed the evaluation at epoch 1 step 0" in log
    assert not list(root.rglob("checkpoint.pt"))  # dropped once the evaluation is in the cache


class _Ctx:
    """What _EvalCheckpoint reads of a run's context."""

    def __init__(self, saved):
        from pathlib import Path

        self.saved, self.checkpoint_path, self.metrics = saved, Path("run/checkpoint.pt"), []

    def load_checkpoint(self):
        return self.saved

    def truncate_metrics(self, n):
        self.metrics = self.metrics[:n]

    def log(self, line):
        pass


def test_a_foreign_or_stale_evaluation_checkpoint_is_one_line():
    from lfm_nas.cache import _key_hash
    from lfm_nas.nas_experiment import _EvalCheckpoint

    ekey, skey = {"eval": "cifar", "seed": 0}, {"search": 1}
    for saved in ({"eval": {}, "key": _key_hash({"eval": "cifar", "seed": 1})},  # another evaluation's
                  {"search": {}, "key": _key_hash({"search": 2})},  # another search's
                  {"dr": {}, "key": _key_hash(ekey)}):  # garbled
        with pytest.raises(CheckpointError, match=r"checkpoint run/checkpoint.pt is not this evaluation's") as err:
            _EvalCheckpoint(_Ctx(saved), ekey, skey).load()
        assert "\n" not in str(err.value)
    # this cell's own search, finished and cached (killed before its position was deleted): start over
    assert _EvalCheckpoint(_Ctx({"search": {}, "key": _key_hash(skey)}), ekey, skey).load() is None
    assert _EvalCheckpoint(_Ctx({"eval": {"epoch": 1}, "key": _key_hash(ekey)}), ekey, skey).load() == {"epoch": 1}
