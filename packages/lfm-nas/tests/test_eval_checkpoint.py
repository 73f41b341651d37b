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
