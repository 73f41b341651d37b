"""End-to-end smoke of the search / evaluation loops on tiny synthetic data."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lfm_core.data import WithIndices
from lfm_core.errors import UsageError
from lfm_nas.genotypes import Genotype, count_ops
from lfm_nas.problem import build_lfm_search
from lfm_nas.search import search, train_eval

TINY = dict(C=2, layers=3, steps_per_epoch=2, seed=0)


def loaders(n_tr=16, n_val=12, side=8, classes=3):
    g = torch.Generator().manual_seed(0)
    tr = TensorDataset(torch.randn(n_tr, 3, side, side, generator=g), torch.randint(0, classes, (n_tr,), generator=g))
    va = TensorDataset(torch.randn(n_val, 3, side, side, generator=g), torch.randint(0, classes, (n_val,), generator=g))
    return (DataLoader(tr, batch_size=4, shuffle=True),
            DataLoader(WithIndices(va), batch_size=4, shuffle=True))


@pytest.mark.parametrize("method,extra", [
    ("darts1", {}),
    ("darts2", {"engine": "finite-difference"}),
    ("lfm-darts", {"engine": "exact"}),
    ("lfm-darts", {"variant": "ps", "engine": "finite-difference"}),
    ("lfm-darts", {"variant": "single", "engine": "first-order", "similarity": "cosine", "drop": "x"}),
])
def test_search_darts_methods(method, extra):
    tr, va = loaders()
    seen = []
    out = search({"method": method, **TINY, **extra}, tr, va, epochs=1, progress=lambda d, t: seen.append((d, t)),
                 log=lambda rec: None)
    assert isinstance(out["genotype"], Genotype) and len(out["genotype"].normal) == 8
    assert out["alphas"]["normal"].shape == (14, 8)
    assert 0 <= out["val_acc"] <= 100 and out["epoch_time_s"] > 0 and out["peak_mem_mb"] >= 0
    assert seen[-1] == (2, 2)
    if method.startswith("lfm"):
        assert out["r"].shape == (12,) and "val_acc_w1" in out


@pytest.mark.parametrize("method", ["pdarts", "lfm-pdarts"])
def test_search_pdarts_three_stages(method):
    tr, va = loaders()
    out = search({"method": method, **TINY, "pdarts_layers": (2, 3, 3), "lfm_start": 0, "engine": "first-order"},
                 tr, va, epochs=1)
    assert [len(set(c)) for c in ([sum(s) for s in out["switches"]["normal"]],)] == [1]
    assert {sum(s) for s in out["switches"]["normal"]} == {3}  # 8 -> 5 -> 3 candidates
    assert out["alphas"]["normal"].shape == (14, 3)
    assert count_ops(out["genotype"], "skip_connect") <= 2
    assert [h["stage"] for h in out["history"]] == [0, 1, 2]


def test_lfm_needs_indexed_validation_batches():
    tr, _ = loaders()
    va = DataLoader(TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))), batch_size=4)
    with pytest.raises(UsageError):
        search({"method": "lfm-darts", **TINY}, tr, va, epochs=1)


def test_unknown_option_and_method():
    tr, va = loaders()
    with pytest.raises(UsageError):
        search({"method": "enas"}, tr, va, epochs=1)
    with pytest.raises(UsageError):
        search({"method": "darts1", "lr": 0.1}, tr, va, epochs=1)


def test_build_lfm_search_runs_a_step():
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    solver, make_problem = build_lfm_search(dict(C=2, layers=3, num_classes=3), "two", enc, n_val=12,
                                            engine="first-order")
    assert {"alpha_normal", "alpha_reduce", "r"} <= set(solver.upper)
    assert torch.equal(solver.upper["r"].detach(), torch.ones(12))
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    before = solver.upper["alpha_normal"].detach().clone()
    stats = solver.step(make_problem((x, y), (x, y, torch.tensor([0, 5, 7, 11]))))
    assert stats.finite and 0 < stats.a_mean < 1
    assert not torch.equal(before, solver.upper["alpha_normal"].detach())


def test_train_eval_tiny():
    tr, va = loaders(side=16)
    from lfm_nas.genotypes import DARTS_V2

    out = train_eval(DARTS_V2, tr, va, epochs=1, C=2, layers=3, cutout=4, num_classes=3)
    assert 0 <= out["test_acc"] <= 100 and out["test_err"] == pytest.approx(100 - out["test_acc"])


def test_lfm_warmup_then_lfm():
    tr, va = loaders()
    out = search({"method": "lfm-darts", **TINY, "steps_per_epoch": 1, "lfm_start": 1, "engine": "first-order"},
                 tr, va, epochs=2)
    assert [h["arch"] for h in out["history"]] == [False, True]
    assert float(out["alphas"]["normal"].abs().max()) > 0


@pytest.mark.parametrize("engine", ["exact", "finite-difference"])
def test_bf16_search_has_finite_hypergradients(engine):
    """LFM-DARTS under bf16 autocast on CPU: every step finite (max_nonfinite 0), r updated."""
    tr, va = loaders()
    out = search({"method": "lfm-darts", **TINY, "engine": engine, "mixed_precision": "bf16", "max_nonfinite": 0},
                 tr, va, epochs=1)
    assert torch.isfinite(out["alphas"]["normal"]).all() and torch.isfinite(out["r"]).all()
    assert (out["r"] != 1).any()  # r starts at ones: its hypergradient was finite and applied
    with pytest.raises(UsageError, match="fp16"):
        search({"method": "lfm-darts", **TINY, "mixed_precision": "fp16"}, tr, va, epochs=1)
