import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfm_core.registries import METHODS
from lfm_dr.methods.base import DRContext, DRMethod, make_sgd, normalize_weights, weighted_ce
from lfm_dr.methods.baselines import (
    GLC,
    L2RW,
    ClassBalanced,
    CoTeaching,
    FineTune,
    MetaWeightNet,
    WeightNet,
    class_balanced_weights,
    coteaching_forget_rate,
    coteaching_select,
    estimate_corruption,
    focal_loss,
    glc_corrected_loss,
    l2rw_weights,
)
from lfm_dr.models import resnet32

K = 4
ALL = ["ce", "focal", "class_balanced", "finetune", "l2rw", "mwn", "coteaching", "glc"]


class MetaStream:
    """A clean meta set served in shuffled batches, counting the draws."""

    def __init__(self, n=12, batch=5, k=K, seed=1, shape=(3, 32, 32)):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, *shape, generator=g)
        self.y = torch.arange(n) % k
        self.batch, self.calls, self.pos = batch, 0, n
        self.order = torch.arange(n)

    def __call__(self):
        self.calls += 1
        n = len(self.y)
        if self.pos >= n:
            self.order, self.pos = torch.randperm(n), 0
        i = self.order[self.pos: self.pos + self.batch]
        self.pos += self.batch
        return self.x[i], self.y[i], i


def tiny_ctx(**options):
    return DRContext(
        model_fn=lambda: resnet32(num_classes=K, width=4, blocks_per_stage=1),
        num_classes=K, class_counts=[40, 20, 10, 5], n_train=75, n_meta=12,
        lr=0.05, epochs=4, next_meta=MetaStream(), options=options,
    )


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, K, (n,), generator=g), torch.arange(n)


def params_of(m):
    return [p.detach().clone() for p in m.parameters()]


# ------------------------------------------------------------------------------------
# every method through the trainer's interface
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_each_method_runs_two_steps(name):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    assert issubclass(cls, DRMethod) and cls.name == name
    method = cls(tiny_ctx(noise_rate=0.25))
    before = {k: params_of(m) for k, m in method.modules().items()}
    x, y, idx = batch()
    for epoch in (0, 3):  # 3 is past the warm-up / inside the fine-tuning epochs
        out = method.train_step(x, y, idx, epoch)
        assert math.isfinite(out["loss"]), (name, out)
        method.end_epoch(epoch)
    assert "main" in method.eval_models()
    assert set(method.scheduled) <= set(method.optimizers())
    for k, m in method.modules().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], params_of(m))), k
    extra = method.extra_state()
    method.load_extra_state(extra)
    assert all(isinstance(v, torch.Tensor) for v in extra.values())


def test_make_sgd_uses_context():
    ctx = tiny_ctx()
    ctx.nesterov, ctx.momentum, ctx.weight_decay = True, 0.8, 1e-3
    group = make_sgd(nn.Linear(2, 2).parameters(), ctx).param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.05, 0.8, 1e-3, True)


# ------------------------------------------------------------------------------------
# losses by hand
# ------------------------------------------------------------------------------------
def test_focal_gamma_zero_is_ce():
    logits, y = torch.randn(6, K), torch.randint(0, K, (6,))
    torch.testing.assert_close(focal_loss(logits, y, 0.0), F.cross_entropy(logits, y))


def test_focal_known_logits():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
    y = [0, 2]
    expected = []
    for row, t in zip(logits, y):
        p = math.exp(row[t]) / sum(math.exp(v) for v in row)
        expected.append(-((1 - p) ** 2) * math.log(p))
    got = focal_loss(torch.tensor(logits), torch.tensor(y), 2.0)
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_class_balanced_weights_by_hand():
    counts, beta = [100, 10, 1], 0.9
    raw = np.array([(1 - beta) / (1 - beta**n) for n in counts])
    expected = raw / raw.sum() * 3
    got = class_balanced_weights(counts, beta)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert got.sum().item() == pytest.approx(3.0)
    np.testing.assert_allclose(class_balanced_weights([5, 50], 0.0).numpy(), [1.0, 1.0])


def test_class_balanced_loss_is_weighted_mean():
    method = ClassBalanced(tiny_ctx(beta=0.99))
    w = class_balanced_weights([40, 20, 10, 5], 0.99)
    logits, y = torch.randn(5, K), torch.tensor([0, 1, 3, 3, 2])
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(weighted_ce(logits, y, method.class_weights[y]), (w[y] * ce).sum() / 5)


def test_normalize_weights():
    torch.testing.assert_close(normalize_weights(torch.tensor([1.0, 3.0])), torch.tensor([0.25, 0.75]))
    assert torch.equal(normalize_weights(torch.zeros(3)), torch.zeros(3))


# ------------------------------------------------------------------------------------
# co-teaching
# ------------------------------------------------------------------------------------
def test_coteaching_selection_and_schedule():
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3, 2.0, 0.2, 0.7, 1.1, 0.05, 0.4])
    keep = coteaching_select(losses, 0.7)
    assert len(keep) == 7
    assert set(keep.tolist()) == set(torch.argsort(losses)[:7].tolist())
    assert losses[keep].max() < losses[[i for i in range(10) if i not in keep.tolist()]].min()
    assert len(coteaching_select(losses, 0.0)) == 1
    assert [coteaching_forget_rate(t, 0.4, 10) for t in (0, 5, 10, 50)] == [0.0, 0.2, 0.4, 0.4]


def test_coteaching_uses_forget_rate_option():
    m = CoTeaching(tiny_ctx(noise_rate=0.4))
    assert m.tau == 0.4 and set(m.eval_models()) == {"main", "peer"}
    assert CoTeaching(tiny_ctx(noise_rate=0.4, forget_rate=0.1)).tau == 0.1
    assert CoTeaching(tiny_ctx()).tau == 0.2


# ------------------------------------------------------------------------------------
# L2RW and Meta-Weight-Net
# ------------------------------------------------------------------------------------
def test_l2rw_weights_on_toy_problem():
    model = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(model.weight)
    # meta: class 0 at (1, 0). Train: agrees (x2), the same input mislabelled, orthogonal input.
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 0])
    xm, ym = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    w, lm = l2rw_weights(model, x, y, xm, ym, lr=0.1)
    assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0)
    assert w[2] == 0 and w[3] == 0  # disagreeing / unrelated gradients get no weight
    assert w[1].item() == pytest.approx(2 * w[0].item())  # weight ~ gradient alignment
    assert lm.item() == pytest.approx(math.log(2))
    # nothing agrees: all zeros
    w0, _ = l2rw_weights(model, x[2:3], y[2:3], xm, ym, lr=0.1)
    assert torch.equal(w0, torch.zeros(1))
    assert model.weight.grad is None


def test_mwn_weights_in_unit_interval_and_update():
    torch.manual_seed(0)
    vnet = WeightNet()
    w = vnet(torch.linspace(0, 20, 50))
    assert w.shape == (50,) and ((w > 0) & (w < 1)).all()
    method = MetaWeightNet(tiny_ctx())
    before = params_of(method.vnet)
    method.train_step(*batch(), epoch=0)
    assert all(not torch.equal(a, b) for a, b in zip(before, params_of(method.vnet)))
    assert set(method.optimizers()) == {"model", "vnet"} and method.scheduled == ("model",)


@pytest.mark.parametrize("cls", [L2RW, MetaWeightNet])
def test_virtual_passes_leave_bn_stats_alone(cls):
    torch.manual_seed(0)
    method = cls(tiny_ctx())
    x, y, idx = batch()
    reference = copy.deepcopy(method.model).train()
    with torch.no_grad():
        reference(x)  # exactly one real forward on the training batch
    method.train_step(x, y, idx, 0)
    ref_buffers = dict(reference.named_buffers())
    for name, buf in method.model.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name], msg=name)
    assert all(b.item() == 1 for n, b in method.model.named_buffers() if n.endswith("num_batches_tracked"))


# ------------------------------------------------------------------------------------
# fine-tuning and GLC
# ------------------------------------------------------------------------------------
def test_finetune_switches_to_meta_set():
    method = FineTune(tiny_ctx(finetune_epochs=1))
    stream = method.ctx.next_meta
    x, y, idx = batch()
    method.train_step(x, y, idx, 2)
    assert stream.calls == 0
    method.train_step(x, y, idx, 3)
    assert stream.calls == 1
    assert FineTune(tiny_ctx()).start == 3  # 10 % of 4 epochs, at least one


def test_glc_corruption_estimate_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [0.5, 0.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    batches = [(logits[:3], y[:3]), (logits[3:], y[3:])]
    C = estimate_corruption(nn.Identity(), batches, 3)
    sm = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    expected = np.stack([sm[:2].mean(0), sm[2:].mean(0), np.eye(3)[2]])  # class 2 unseen: identity
    np.testing.assert_allclose(C.numpy(), expected, rtol=1e-6)


def test_glc_corrected_loss():
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(glc_corrected_loss(logits, y, torch.eye(3)), F.cross_entropy(logits, y))
    C = torch.tensor([[0.8, 0.2, 0.0], [0.0, 1.0, 0.0], [0.1, 0.1, 0.8]])
    p = F.softmax(logits, 1).numpy() @ C.numpy()
    expected = -np.log(p[np.arange(5), y.numpy()]).mean()
    assert glc_corrected_loss(logits, y, C).item() == pytest.approx(expected, rel=1e-5)


def test_glc_switch_uses_whole_meta_set_and_checkpoints():
    torch.manual_seed(0)
    method = GLC(tiny_ctx(glc_warmup=1))
    x, y, idx = batch()
    method.train_step(x, y, idx, 0)
    assert method.C is None and method.ctx.next_meta.calls == 0
    method.train_step(x, y, idx, 1)
    C = method.C
    assert C.shape == (K, K)
    torch.testing.assert_close(C.sum(1), torch.ones(K))
    fresh = GLC(tiny_ctx(glc_warmup=1))
    fresh.load_extra_state(method.extra_state())
    assert torch.equal(fresh.C, C)


def test_glc_gold_batches_cover_meta_set_once():
    method = GLC(tiny_ctx())
    ys = [y for _, y in method._gold_batches(torch.zeros(1))]
    assert sum(len(y) for y in ys) == 12  # each of the 12 meta examples exactly once
    torch.testing.assert_close(torch.cat(ys).bincount(minlength=K), torch.full((K,), 3))
