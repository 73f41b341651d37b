"""engine="auto": the faster exact engine, picked on the first meta step without touching the run."""

import pytest
import torch
from torch.utils.data import TensorDataset

from lfm_core.errors import UsageError
from lfm_dr import fit
from lfm_dr.methods.lfm import check_dr_engine

SMALL = {"width": 4, "blocks_per_stage": 1}
OPTS = {"encoder": "smallcnn", "pretrained": False}


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, 16, 16, generator=g)
    y = torch.randint(0, 3, (60,), generator=g)
    x += y.view(-1, 1, 1, 1).float()
    return TensorDataset(x[:40], y[:40]), TensorDataset(x[40:50], y[40:50]), TensorDataset(x[50:], y[50:])


def run(tmp_path, name, engine):
    train, meta, test = data()
    return fit(train, meta, num_classes=3, test=test, epochs=1, batch_size=20, lr=0.05, model_kwargs=SMALL,
               run_dir=tmp_path / name, progress=False, engine=engine, **OPTS)


def test_auto_picks_an_exact_engine_and_leaves_the_run_as_that_engine_runs_it(tmp_path):
    auto = run(tmp_path, "auto", "auto")
    picked = auto.metrics["engine_used"]
    assert picked in ("exact", "exact-reverse")
    assert f"engine auto: {picked}" in (tmp_path / "auto" / "log.txt").read_text()
    fixed = run(tmp_path, "fixed", picked)
    assert "engine_used" not in fixed.metrics  # reported only where it was chosen
    # the timed trial steps ran on copies: the run is the one the picked engine gives
    assert torch.equal(auto.weights, fixed.weights)
    for (k, a), b in zip(auto.model.state_dict().items(), fixed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert {k: v for k, v in auto.metrics.items() if k != "engine_used"} == fixed.metrics


def test_a_resumed_auto_run_keeps_its_engine():
    from lfm_dr.methods.base import DRContext
    from lfm_dr.methods.lfm import LFMReweighting
    from lfm_core.registries import MODELS

    ctx = DRContext(model_fn=lambda: MODELS.create("resnet32", num_classes=3, **SMALL), num_classes=3,
                    class_counts=[4, 4, 4], n_train=12, n_meta=6, options={"engine": "auto", **OPTS})
    method = LFMReweighting(ctx)
    assert method.engine_used is None
    state = method.extra_state()
    state["engine_used"] = "exact-reverse"
    again = LFMReweighting(ctx)
    again.load_extra_state(state)
    assert again.engine_used == again.solver.engine == "exact-reverse"


def test_auto_is_a_valid_choice_and_a_bad_engine_lists_it():
    assert check_dr_engine("auto") == "auto"
    with pytest.raises(UsageError, match="auto"):
        check_dr_engine("fastest")
