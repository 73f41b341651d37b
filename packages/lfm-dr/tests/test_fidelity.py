"""Issue 17: protocol fixes (meta set of the long tail, GLC's gold share, no first-order DR),
the per-epoch weight diagnostics, LFM-DR+ and the ablation's cells."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lfm_core.data import load_dataset, make_splits
from lfm_core.errors import UsageError
from lfm_core.experiments import get_experiment
from lfm_core.registries import METHODS
from lfm_core.runner import RunContext
from lfm_core.weighting import lfm_weights
from lfm_dr.diagnostics import WeightLog, noise_auroc, weight_stats
from lfm_dr.experiments import PLUS_ROW, paper_meta_per_class
from lfm_dr.methods.baselines import GLC, gold_quota
from lfm_dr.methods.lfm import DRProblem, LFMReweighting
from lfm_dr.methods.lfm_plus import LFMPlus
from lfm_dr.train import TrainConfig, train_dr

from test_baselines import MetaStream, batch, tiny_ctx


# -- (a) the long tail's meta set ---------------------------------------------------------------
def test_paper_meta_set_is_ten_per_class_on_every_long_tail_column():
    assert paper_meta_per_class(10, {"noise": "flip", "rate": 0.4}) == 100
    assert paper_meta_per_class(10, {"imbalance": "longtail", "factor": 200.0}) == 10
    assert paper_meta_per_class(10, {"imbalance": "none"}) == 100
    assert paper_meta_per_class(100, {"imbalance": "longtail", "factor": 10.0}) == 10
    assert paper_meta_per_class(100, {"noise": "uniform"}) == 10


@pytest.mark.parametrize("k, per_class, n_max, rarest", [(10, 5000, 4990, 24), (100, 500, 490, 2)])
def test_paper_long_tail_split_has_cifar_counts(monkeypatch, k, per_class, n_max, rarest):
    """CIFAR-10/100 stand-ins with CIFAR's class sizes: IF 200 keeps n_max 4990 / 490 ... 24 / 2."""
    bundle = load_dataset("synthetic", num_classes=k, n_train=k * per_class, n_test=k, image_size=1)
    monkeypatch.setattr("lfm_dr.experiments.load_dataset", lambda *a, **kw: bundle)
    ctx = SimpleNamespace(data_root=None, download=False)
    exp = get_experiment("table6")
    column = "CIFAR-10 IF 200" if k == 10 else "CIFAR-100 IF 200"
    cell = next(c for c in exp.cells("paper", {}) if c.column == column and c.row == "Base Model")
    splits = exp.build_splits(exp.settings(cell, "paper", {}), 0, ctx)
    counts = splits.info["imbalance_counts"]
    assert splits.info["meta_per_class"] == 10 and len(splits.meta) == 10 * k
    assert counts[0] == n_max and counts[-1] == rarest


# -- (b) GLC: gold data at its natural share of the union -----------------------------------------
def test_gold_quota_keeps_the_union_share():
    n_silver, n_gold, b = 1157, 100, 50
    seen, quotas = 0, []
    while seen < 3 * n_silver:
        quotas.append(gold_quota(seen, b, n_gold, n_silver))
        seen += b
    assert sum(quotas) == seen * n_gold // n_silver  # exact running share
    assert max(quotas) - min(quotas) <= 1  # spread evenly: 4 or 5 of every 50
    assert gold_quota(0, b, n_gold, 0) == 0


def test_glc_stage_two_adds_only_the_gold_quota():
    torch.manual_seed(0)
    method = GLC(tiny_ctx(glc_warmup=1))  # n_train 75, n_meta 12
    sizes = []
    method.model.register_forward_hook(lambda m, inp, out: sizes.append(len(inp[0])))
    x, y, idx = batch(n=25)
    method.train_step(x, y, idx, 0)
    method.ctx.next_meta = MetaStream(batch=3)  # a quota of 4 takes two of these
    for _ in range(3):  # one stage-2 epoch: 75 silver examples
        method.train_step(x, y, idx, 1)
    assert sizes[-3:] == [25 + 4, 25 + 4, 25 + 4]  # 12 gold over 75 silver: 4 per 25
    assert method.silver_seen == 75
    fresh = GLC(tiny_ctx(glc_warmup=1))
    fresh.load_extra_state(method.extra_state())
    assert fresh.silver_seen == 75 and torch.equal(fresh.C, method.C)


# -- (c) first-order is refused for DR ----------------------------------------------------------
def test_first_order_engine_is_refused_for_lfm_dr():
    valid = "exact, exact-reverse, finite-difference, forward-difference, auto"
    with pytest.raises(UsageError, match=rf"first-order.*Valid choices: {valid}"):
        LFMReweighting(tiny_ctx(engine="first-order", encoder="smallcnn", pretrained=False))
    exp = get_experiment("table7")
    with pytest.raises(UsageError, match="first-order"):
        exp.validate("smoke", {"engine": "first-order"})
    exp.validate("smoke", {"engine": "first-order", "methods": "Base Model,L2RW"})  # no LFM row: allowed
    for name in ("table9", "figure7", "ablation_dr"):
        with pytest.raises(UsageError, match="first-order"):
            get_experiment(name).validate("smoke", {"engine": "first-order"})


# -- diagnostics --------------------------------------------------------------------------------
def test_noise_auroc_matches_pairwise_count():
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 5, (60,), generator=g).float()  # many ties
    clean = torch.rand(60, generator=g) > 0.3
    wins = sum((a > b) + 0.5 * (a == b) for a in w[clean] for b in w[~clean])
    assert noise_auroc(w, clean) == pytest.approx(float(wins) / (clean.sum() * (~clean).sum()).item())
    assert noise_auroc(torch.tensor([1.0, 0.0]), torch.tensor([True, False])) == 1.0
    assert math.isnan(noise_auroc(w, torch.ones(60, dtype=torch.bool)))


def test_weight_log_reports_seen_examples_only():
    log = WeightLog(5)
    log.record(torch.tensor([0, 1, 3]), torch.tensor([0.9, 0.8, 0.1]))
    clean = torch.tensor([True, True, False, False, True])
    out = log.stats("a", clean)
    assert out["a_mean"] == pytest.approx(0.6) and out["a_clean"] == pytest.approx(0.85)
    assert out["a_noisy"] == pytest.approx(0.1) and out["a_auroc"] == 1.0
    assert set(weight_stats("b", torch.ones(5), torch.ones(5, dtype=torch.bool))) == {"b_mean"}


@pytest.mark.parametrize("method", ["lfm_plus", "l2rw", "mwn"])
def test_each_epoch_records_weight_diagnostics(tmp_path, method):
    bundle = load_dataset("digits", image_size=8)
    splits = make_splits(bundle, meta_per_class=3, seed=0, noise="flip", noise_rate=0.4, max_train=100)
    cfg = TrainConfig(method=method, model="resnet32", model_kwargs={"width": 4, "blocks_per_stage": 1}, epochs=1,
                      batch_size=50, meta_batch_size=30, lr=0.05, device="cpu", options={"encoder": "pixels"})
    train_dr(cfg, splits, 0, RunContext(run_dir=tmp_path, config={}))
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    w = "a" if method == "lfm_plus" else "w"
    for key in ("mean", "clean", "noisy", "auroc"):
        assert math.isfinite(line[f"{w}_{key}"]), key
    if method == "lfm_plus":
        assert {"b_clean", "b_noisy", "b_auroc", "r_mean", "r_std", "r_min", "r_max", "c"} <= set(line)


# -- LFM-DR+ ------------------------------------------------------------------------------------
def test_offset_shifts_the_sigmoid_argument():
    g = torch.Generator().manual_seed(0)
    f_tr, f_val = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    y_tr, y_val = torch.tensor([0, 1, 0, 1, 2, 2]), torch.tensor([0, 1, 2, 0, 1])
    u, r = torch.rand(5, generator=g), torch.ones(5)
    a = lfm_weights(f_tr, f_val, y_tr, y_val, u, r)
    assert (a >= 0.5).all()  # eq. 5 with x, z, u, r >= 0: never below one half
    shifted = lfm_weights(f_tr, f_val, y_tr, y_val, u, r, offset=torch.tensor([-3.0]))
    torch.testing.assert_close(shifted, torch.sigmoid(torch.logit(a) - 3.0))
    assert (shifted < 0.5).all()


def test_normalised_a_makes_w2_loss_scale_free():
    torch.manual_seed(0)
    method = LFMReweighting(tiny_ctx(encoder="smallcnn", pretrained=False))
    x, y, idx = batch()
    from lfm_core.solver import named_params

    def loss2(normalize, a):
        p = DRProblem(method.w1, method.w2, method.encoder, x, y, idx, x, y, idx, "dot", "none", normalize)
        return p.loss2(named_params(method.w2), a, {})

    a = torch.rand(len(y)) + 0.1
    torch.testing.assert_close(loss2(True, a), loss2(True, 3 * a))
    torch.testing.assert_close(loss2(False, 3 * a), 3 * loss2(False, a))


def _w2_after_steps(method, steps=2):
    x, y, idx = batch()
    for _ in range(steps):
        method.train_step(x, y, idx, 0)
    return [p.detach().clone() for p in method.w2.parameters()]


def test_lfm_plus_without_its_changes_is_lfm_dr():
    paper = dict(encoder="smallcnn", pretrained=False, lr_b=0.01, lr_r=0.01)
    torch.manual_seed(0)
    lfm = _w2_after_steps(LFMReweighting(tiny_ctx(**paper)))
    torch.manual_seed(0)
    plus = _w2_after_steps(LFMPlus(tiny_ctx(**paper, offset=False)))
    assert all(torch.equal(a, b) for a, b in zip(lfm, plus))


def test_lfm_plus_learns_its_offset_and_checkpoints_it():
    torch.manual_seed(0)
    method = LFMPlus(tiny_ctx())
    assert method.opt["encoder"] == "pixels" and method.opt["lr_r"] == 0.1 and float(method.c.detach()) == 0.0
    _w2_after_steps(method)
    assert float(method.c.detach()) != 0.0
    fresh = LFMPlus(tiny_ctx())
    fresh.load_extra_state(method.extra_state())
    assert torch.equal(fresh.c, method.c)
    assert METHODS.get("lfm_plus") is LFMPlus


def test_plus_row_is_ours_and_has_no_paper_number():
    for name in ("table6", "table7", "table8"):
        exp = get_experiment(name)
        assert PLUS_ROW in exp.rows and exp.method_of(PLUS_ROW) == "lfm_plus"
        assert not any(row == PLUS_ROW for row, _ in exp.paper)


# -- the ablation -------------------------------------------------------------------------------
def test_ablation_cells_carry_their_variant_options():
    exp = get_experiment("ablation_dr")
    cells = exp.cells("cpu", {})
    assert len(cells) == len(exp.rows) * 2 and exp.seeds["cpu"] == [0, 1, 2, 3, 4]
    identities = {json.dumps(c.params, sort_keys=True) for c in cells}
    assert len(identities) == len(cells)  # every variant is its own run
    ctx = SimpleNamespace(device="cpu", mixed_precision="no")
    by_row = {c.row: c for c in cells if "flip" in c.column}
    cfg = exp.train_config(exp.settings(by_row["B fixed at 1"], "cpu", {}), ctx)
    assert cfg.method == "lfm" and cfg.options["lr_b"] == 0.0 and cfg.options["encoder"] == "smallcnn"
    cfg = exp.train_config(exp.settings(by_row["LFM-DR+ w/o offset c"], "cpu", {}), ctx)
    assert cfg.method == "lfm_plus" and cfg.options["offset"] is False and cfg.options["encoder"] == "pixels"
    assert not any("," in row for row in exp.rows)  # --methods takes them comma-separated
    smoke = exp.cells("smoke", {})
    assert [c.row for c in smoke] == ["LFM-DR (paper)", "LFM-DR+ (ours)"]
    with pytest.raises(UsageError, match="unknown variant"):
        exp.validate("cpu", {"methods": "LFM-DR+ w/o everything"})
