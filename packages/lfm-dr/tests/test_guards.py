"""Numerical guards: a non-finite hypergradient or loss is caught, skipped and, if it persists, stops the run."""

from types import SimpleNamespace

import pytest
import torch

from lfm_core.errors import NonFiniteError
from lfm_core.runner import RunContext
from lfm_dr.methods.lfm import LFMReweighting
from lfm_dr.train import MAX_BAD_STEPS, TrainConfig, train_dr


def _splits(n=60, k=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, k, (n,), generator=g)

    class D(torch.utils.data.Dataset):
        def __init__(self, lo, hi):
            self.images, self.labels, self.clean_labels, self.transform = x[lo:hi], y[lo:hi], y[lo:hi], None

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.images[i], int(self.labels[i]), i

    return SimpleNamespace(train=D(0, 40), meta=D(40, 50), test=D(50, 60), num_classes=k, info={})


CFG = dict(method="lfm", model="resnet32", model_kwargs={"width": 4, "blocks_per_stage": 1}, epochs=2,
           batch_size=10, meta_batch_size=10, lr=0.05, options={"encoder": "smallcnn", "pretrained": False})


def test_nan_hypergradient_is_skipped_without_touching_upper_variables(tmp_path, monkeypatch):
    splits = _splits()
    calls = {"n": 0}
    original = LFMReweighting.train_step

    def poisoned(self, x, y, idx, epoch):
        calls["n"] += 1
        if calls["n"] == 2:  # one poisoned step: r becomes NaN inside the hypergradient only
            with torch.no_grad():
                saved = self.r.clone()
                self.r.fill_(float("nan"))
            b_before = self.b.detach().clone()
            out = original(self, x, y, idx, epoch)
            with torch.no_grad():
                self.r.copy_(saved)
            assert out["finite"] == 0.0
            assert torch.equal(self.b.detach(), b_before)  # nothing applied
            return out
        return original(self, x, y, idx, epoch)

    monkeypatch.setattr(LFMReweighting, "train_step", poisoned)
    ctx = RunContext(run_dir=tmp_path, config={})
    metrics = train_dr(TrainConfig(**CFG), splits, 0, ctx)
    assert metrics["skipped_steps"] == 1
    assert ctx.metrics[-1]["skipped_steps"] == 1


def test_persistent_nan_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    splits = _splits()
    original = LFMReweighting.train_step

    def broken_in_epoch_two(self, x, y, idx, epoch):
        if epoch >= 1:
            return {"loss": float("nan"), "finite": 0.0}
        return original(self, x, y, idx, epoch)

    monkeypatch.setattr(LFMReweighting, "train_step", broken_in_epoch_two)
    ctx = RunContext(run_dir=tmp_path, config={})
    with pytest.raises(NonFiniteError, match=f"{MAX_BAD_STEPS} non-finite steps in a row"):
        train_dr(TrainConfig(**{**CFG, "epochs": 3}), splits, 0, ctx)
    state = ctx.load_checkpoint()
    # 4 steps per epoch: the 5th bad step is the first of epoch 3; epoch 2 applied nothing
    assert state["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in state["modules"]["w1"].values() if t.is_floating_point())


def test_bf16_autocast_trains_with_finite_hypergradients(tmp_path):
    for engine in ("exact", "finite-difference"):
        cfg = TrainConfig(**{**CFG, "epochs": 1, "mixed_precision": "bf16",
                             "options": {**CFG["options"], "engine": engine}})
        metrics = train_dr(cfg, _splits(), 0, RunContext(run_dir=tmp_path / engine, config={}))
        assert metrics["skipped_steps"] == 0
        assert all(map(lambda v: v == v, (metrics["test_acc"], metrics["b_mean"], metrics["r_mean"])))
        assert metrics["b_mean"] != 1.0  # B moved, so its hypergradient was finite and applied


def test_fp16_with_loss_scaling_trains_and_resumes_the_scale(tmp_path):
    """fp16 autocast (CPU here; meant for GPUs) with the trainer's loss scaler: finite steps, the
    scaler's state in the checkpoint, and a baseline on the same scaled path."""
    for method, options in (("lfm", {**CFG["options"], "engine": "exact"}), ("ce", {})):
        cfg = TrainConfig(**{**CFG, "method": method, "epochs": 1, "mixed_precision": "fp16", "options": options})
        run = RunContext(run_dir=tmp_path / method, config={})
        metrics = train_dr(cfg, _splits(), 0, run)
        assert metrics["skipped_steps"] == 0 and metrics["test_acc"] == metrics["test_acc"]
        state = torch.load(run.checkpoint_path, weights_only=True)
        assert state["scaler"]["scale"] == 2.0**10  # no overflow on this data
        if method == "lfm":
            assert metrics["b_mean"] != 1.0
