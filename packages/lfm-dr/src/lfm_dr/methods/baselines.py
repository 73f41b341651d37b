"""The DR baselines of Tables VI-IX, each a :class:`~lfm_dr.methods.base.DRMethod`.

Each loss or selection rule is a small pure function (tested by hand), and each class only
wires it to the trainer:

=================  ==============================================================
``ce``             cross-entropy, the paper's "Base Model"
``focal``          focal loss (Lin et al. 2017), ``gamma`` (2.0)
``class_balanced`` class-balanced CE (Cui et al. 2019), ``beta`` (0.9999)
``finetune``       CE on the training set, then CE on the meta set for the last
                   ``finetune_epochs`` (10 % of the epochs)
``l2rw``           Learning to Reweight (Ren et al. 2018)
``mwn``            Meta-Weight-Net (Shu et al. 2019): ``normalize`` (True), ``meta_lr``
                   (1e-3), ``meta_weight_decay`` (1e-4), ``hidden`` (100)
``coteaching``     Co-teaching (Han et al. 2018): ``forget_rate`` (``noise_rate``, 0.2),
                   ``tk`` (10)
``glc``            Gold Loss Correction (Hendrycks et al. 2018): ``glc_warmup`` (half
                   of the epochs), ``meta_loader`` (optional)
=================  ==============================================================
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfm_core.registries import METHODS
from lfm_dr.diagnostics import WeightLog
from lfm_dr.methods.base import (
    DRContext,
    DRMethod,
    SingleModelMethod,
    ce_per_example,
    make_sgd,
    meta_loss,
    normalize_weights,
    sgd_step,
    virtual_step,
    weighted_ce,
    weighted_sum,
)

__all__ = [
    "focal_loss",
    "class_balanced_weights",
    "l2rw_weights",
    "coteaching_forget_rate",
    "coteaching_select",
    "estimate_corruption",
    "glc_corrected_loss",
    "gold_quota",
    "WeightNet",
    "CrossEntropy",
    "FocalLoss",
    "ClassBalanced",
    "FineTune",
    "L2RW",
    "MetaWeightNet",
    "CoTeaching",
    "GLC",
]


# ------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------
def focal_loss(logits: Tensor, y: Tensor, gamma: float = 2.0) -> Tensor:
    """Mean of ``-(1 - p_t)^gamma log p_t``; ``gamma = 0`` is cross-entropy."""
    logp = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def class_balanced_weights(counts: Iterable[int], beta: float = 0.9999) -> Tensor:
    """Per-class ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to the number of classes.

    Empty classes count as one example (their weight is then the largest, and unused).
    """
    n = torch.tensor(list(counts), dtype=torch.float64).clamp_min(1)
    w = 1.0 / n if beta >= 1 else (1 - beta) / (1 - beta**n)
    return (w / w.sum() * len(n)).float()


def l2rw_weights(model: nn.Module, x: Tensor, y: Tensor, xm: Tensor, ym: Tensor, lr: float) -> tuple[Tensor, Tensor]:
    """Learning-to-Reweight weights of a batch and the meta loss at the virtual weights.

    ``eps = 0`` (requires grad), ``W' = W - lr grad_W sum_i eps_i l_i``, meta loss at W';
    ``w = max(-dL_meta/d eps, 0)`` normalised to sum 1 (all zeros stay zeros).
    """
    eps = torch.zeros(len(y), device=x.device, requires_grad=True)
    fast = virtual_step(model, x, y, lambda losses: (eps * losses).sum(), lr)
    lm = meta_loss(model, fast, xm, ym)
    (g,) = torch.autograd.grad(lm, eps)
    return normalize_weights(torch.clamp(-g, min=0)).detach(), lm.detach()


def coteaching_forget_rate(epoch: int, tau: float, tk: int = 10) -> float:
    """``R(T) = min(T / T_k * tau, tau)`` (the fraction of each batch dropped at epoch T)."""
    return tau if tk <= 0 else min(epoch / tk * tau, tau)


def coteaching_select(losses: Tensor, keep_rate: float) -> Tensor:
    """Indices of the ``int(keep_rate * n)`` (at least one) smallest losses."""
    n_keep = max(1, int(keep_rate * losses.numel()))
    return torch.argsort(losses.detach())[:n_keep]


@torch.no_grad()
def estimate_corruption(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int) -> Tensor:
    """GLC's ``C_hat[i, j]``: mean softmax probability of class j over the gold (meta)
    examples whose true class is i, with the model in eval mode. A class without gold
    examples gets an identity row (no correction)."""
    was_training = model.training
    model.eval()
    sums = counts = None
    try:
        for x, y in batches:
            probs = F.softmax(model(x).float(), dim=1)
            if sums is None:
                sums = torch.zeros(num_classes, num_classes, device=probs.device)
                counts = torch.zeros(num_classes, device=probs.device)
            y = y.to(probs.device)
            sums.index_add_(0, y, probs)
            counts += torch.bincount(y, minlength=num_classes).float()
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("GLC needs at least one gold (meta) batch to estimate C_hat")
    eye = torch.eye(num_classes, device=sums.device)
    seen = (counts > 0)[:, None]
    return torch.where(seen, sums / counts.clamp_min(1)[:, None], eye)


def gold_quota(silver_seen: int, batch: int, n_gold: int, n_silver: int) -> int:
    """Gold examples to add to the next silver batch so that the running gold count stays at
    ``n_gold / n_silver`` of the silver count (the share each has in GLC's training union)."""
    if n_silver <= 0:
        return 0
    return (silver_seen + batch) * n_gold // n_silver - silver_seen * n_gold // n_silver


def glc_corrected_loss(logits: Tensor, y_noisy: Tensor, C: Tensor, reduction: str = "mean") -> Tensor:
    """``-log((softmax(f(x)) @ C_hat)[y_noisy])``: the probability of the noisy label."""
    p_noisy = (F.softmax(logits, dim=1) @ C.to(logits.dtype)).gather(1, y_noisy[:, None]).squeeze(1)
    losses = -torch.log(p_noisy.clamp_min(1e-12))
    return losses.mean() if reduction == "mean" else losses


# ------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------
@METHODS.register("ce")
class CrossEntropy(SingleModelMethod):
    """Plain cross-entropy on the training set (the paper's "Base Model")."""

    name = "ce"

    def loss(self, x, y, idx, epoch):
        return F.cross_entropy(self.model(x), y)


@METHODS.register("focal")
class FocalLoss(SingleModelMethod):
    name = "focal"
    DEFAULTS = {"gamma": 2.0}

    def loss(self, x, y, idx, epoch):
        return focal_loss(self.model(x), y, float(self.options["gamma"]))


@METHODS.register("class_balanced")
class ClassBalanced(SingleModelMethod):
    """CE weighted by ``class_balanced_weights[y]``, averaged over the batch."""

    name = "class_balanced"
    DEFAULTS = {"beta": 0.9999}

    def __init__(self, ctx: DRContext):
        super().__init__(ctx)
        beta = float(self.options["beta"])
        self.class_weights = class_balanced_weights(ctx.class_counts, beta).to(ctx.device)

    def loss(self, x, y, idx, epoch):
        logits = self.model(x)
        return weighted_ce(logits, y, self.class_weights.to(logits.device)[y], "mean")


@METHODS.register("finetune")
class FineTune(SingleModelMethod):
    """CE on the training set, then (last ``finetune_epochs``) CE on clean meta batches:
    each training step then draws one meta batch instead of using the training batch."""

    name = "finetune"
    DEFAULTS = {"finetune_epochs": None}  # None: the last 10% of the epochs

    def __init__(self, ctx: DRContext):
        super().__init__(ctx)
        default = max(1, int(round(0.1 * ctx.epochs)))
        self.start = ctx.epochs - int(default if self.options["finetune_epochs"] is None else self.options["finetune_epochs"])

    def loss(self, x, y, idx, epoch):
        if epoch >= self.start:
            x, y, _ = self.ctx.meta_batch(x)
        return F.cross_entropy(self.model(x), y)


@METHODS.register("l2rw")
class L2RW(SingleModelMethod):
    """Learning to Reweight: per batch, weights from one virtual step (:func:`l2rw_weights`),
    then a real step on ``sum_i w_i l_i``."""

    name = "l2rw"

    def __init__(self, ctx: DRContext):
        super().__init__(ctx)
        self.weight_log = WeightLog(ctx.n_train)

    def epoch_diagnostics(self, clean_mask):
        return self.weight_log.stats("w", clean_mask)

    def train_step(self, x, y, idx, epoch):
        self.model.train()
        xm, ym, _ = self.ctx.meta_batch(x)
        w, lm = l2rw_weights(self.model, x, y, xm, ym, self.lr)
        self.weight_log.record(idx, w * len(w))  # times the batch size: mean 1 for uniform weights
        losses = ce_per_example(self.model(x), y)
        loss = weighted_sum(losses, w, "sum")
        sgd_step(self.opt, loss, self.ctx.grad_scaler)
        return {"loss": float(loss.detach()), "ce": float(losses.detach().mean()),
                "meta_loss": float(lm), "w_zero": float((w == 0).float().mean())}


class WeightNet(nn.Module):
    """Meta-Weight-Net: per-example loss -> weight in (0, 1) by an MLP 1-hidden-1 with a sigmoid."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(1, hidden), nn.Linear(hidden, 1)

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(losses.reshape(-1, 1))))).reshape(-1)


@METHODS.register("mwn")
class MetaWeightNet(SingleModelMethod):
    """Meta-Weight-Net. Per step: a virtual classifier step with the MWN weights, the meta
    loss at it updates the MWN (Adam, not under the lr schedule), then a real classifier
    step with the updated MWN's detached weights.

    The weighted loss is ``sum_i w_i l_i / sum_i w_i`` (``normalize=True``, the official
    noisy-label code) or ``sum_i w_i l_i / n`` (``normalize=False``, the official
    long-tail code)."""

    name = "mwn"
    DEFAULTS = {"normalize": True, "meta_lr": 1e-3, "meta_weight_decay": 1e-4, "hidden": 100}

    def __init__(self, ctx: DRContext):
        super().__init__(ctx)
        self.normalize = bool(self.options["normalize"])
        device = next(self.model.parameters()).device
        self.vnet = WeightNet(int(self.options["hidden"])).to(device)
        self.vopt = torch.optim.Adam(
            self.vnet.parameters(), lr=float(self.options["meta_lr"]),
            weight_decay=float(self.options["meta_weight_decay"]),
        )
        self.weight_log = WeightLog(ctx.n_train)

    def epoch_diagnostics(self, clean_mask):
        return self.weight_log.stats("w", clean_mask)

    def modules(self):
        return {"model": self.model, "vnet": self.vnet}

    def optimizers(self):
        return {"model": self.opt, "vnet": self.vopt}

    def weigh(self, losses: Tensor, w: Tensor) -> Tensor:
        if self.normalize:
            return weighted_sum(losses, normalize_weights(w), "sum")
        return weighted_sum(losses, w, "mean")

    def train_step(self, x, y, idx, epoch):
        self.model.train()
        self.vnet.train()
        xm, ym, _ = self.ctx.meta_batch(x)
        # 1. virtual step with the current MWN, 2. MWN update from the meta loss
        fast = virtual_step(self.model, x, y, lambda losses: self.weigh(losses, self.vnet(losses.detach())), self.lr)
        lm = meta_loss(self.model, fast, xm, ym)
        vparams = list(self.vnet.parameters())
        grads = torch.autograd.grad(lm, vparams, allow_unused=True)
        if not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
            return {"loss": float("nan"), "finite": 0.0}  # nothing applied; the trainer counts it
        for p, g in zip(vparams, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        self.vopt.step()
        # 3. real classifier step with the updated MWN's weights
        losses = ce_per_example(self.model(x), y)
        with torch.no_grad():
            w = self.vnet(losses.detach())
        self.weight_log.record(idx, w)
        loss = self.weigh(losses, w)
        sgd_step(self.opt, loss, self.ctx.grad_scaler)
        return {"loss": float(loss.detach()), "ce": float(losses.detach().mean()),
                "meta_loss": float(lm.detach()), "w_mean": float(w.mean())}


@METHODS.register("coteaching")
class CoTeaching(DRMethod):
    """Two networks; each trains on the small-loss fraction ``1 - R(T)`` selected by its peer."""

    name = "coteaching"
    DEFAULTS = {"forget_rate": None, "noise_rate": 0.2, "tk": 10}  # forget_rate None: the noise rate
    scheduled = ("model", "peer")

    def __init__(self, ctx: DRContext):
        super().__init__(ctx)
        self.net1, self.net2 = ctx.model_fn(), ctx.model_fn()
        self.opt1, self.opt2 = make_sgd(self.net1.parameters(), ctx), make_sgd(self.net2.parameters(), ctx)
        self.tau = float(self.options["noise_rate"] if self.options["forget_rate"] is None else self.options["forget_rate"])
        self.tk = int(self.options["tk"])

    def modules(self):
        return {"model": self.net1, "peer": self.net2}

    def optimizers(self):
        return {"model": self.opt1, "peer": self.opt2}

    def eval_models(self):
        return {"main": self.net1, "peer": self.net2}

    def train_step(self, x, y, idx, epoch):
        self.net1.train()
        self.net2.train()
        rate = coteaching_forget_rate(epoch, self.tau, self.tk)
        l1, l2 = ce_per_example(self.net1(x), y), ce_per_example(self.net2(x), y)
        keep1, keep2 = coteaching_select(l1, 1 - rate), coteaching_select(l2, 1 - rate)
        loss1, loss2 = l1[keep2].mean(), l2[keep1].mean()  # each learns from its peer's choice
        sgd_step(self.opt1, loss1, self.ctx.grad_scaler)
        sgd_step(self.opt2, loss2, self.ctx.grad_scaler)
        return {"loss": float(loss1.detach()), "loss_peer": float(loss2.detach()), "forget_rate": rate}


@METHODS.register("glc")
class GLC(SingleModelMethod):
    """Gold Loss Correction (Hendrycks et al. 2018).

    Stage 1 (epochs < ``glc_warmup``, default half the epochs): CE on the noisy training set.
    At the switch, ``C_hat`` is estimated from the whole meta (gold) set
    (:func:`estimate_corruption`; ``options["meta_loader"]`` if given, else ``next_meta``
    is drawn until every meta index was seen). Stage 2 trains on the union of the silver
    (training) set with the corrected loss ``-log((softmax f(x) @ C_hat)[y_noisy])`` and the gold
    set with CE, each at its natural share: a step adds to its training batch the gold examples
    that keep their running count at ``n_meta / n_train`` of the silver ones
    (:func:`gold_quota`), so an epoch sees each gold example about once, as the union would.

    Simplification: the original GLC trains a *fresh* model in stage 2; here the stage-1 model
    keeps training (the same lr schedule covers both stages).
    """

    name = "glc"
    DEFAULTS = {"glc_warmup": None, "meta_loader": None}  # glc_warmup None: half the epochs

    def __init__(self, ctx: DRContext):
        super().__init__(ctx)
        self.warmup = int(ctx.epochs // 2 if self.options["glc_warmup"] is None else self.options["glc_warmup"])
        self.C: Tensor | None = None
        self.silver_seen = 0  # silver examples of stage 2 so far (sets the gold quota)

    def extra_state(self):
        state = {"silver_seen": torch.tensor(self.silver_seen)}
        return state if self.C is None else {**state, "C_hat": self.C}

    def load_extra_state(self, state):
        self.C = state.get("C_hat")
        self.silver_seen = int(state.get("silver_seen", 0))

    def _gold_batches(self, like: Tensor):
        loader = self.options.get("meta_loader")
        if loader is not None:
            for batch in loader:
                yield batch[0].to(like.device), batch[1].to(like.device)
            return
        seen: set[int] = set()
        calls, max_calls = 0, None
        while len(seen) < self.ctx.n_meta and (max_calls is None or calls < max_calls):
            xm, ym, im = self.ctx.meta_batch(like)
            calls += 1
            if max_calls is None:  # enough draws to cover a shuffled stream several times over
                max_calls = 4 * math.ceil(self.ctx.n_meta / max(1, len(ym))) + 10
            new = torch.tensor([int(i) not in seen for i in im.tolist()], dtype=torch.bool)
            seen.update(int(i) for i in im.tolist())
            if bool(new.any()):
                new = new.to(ym.device)
                yield xm[new], ym[new]

    def loss(self, x, y, idx, epoch):
        if epoch < self.warmup:
            return F.cross_entropy(self.model(x), y)
        if self.C is None:
            self.C = estimate_corruption(self.model, self._gold_batches(x), self.ctx.num_classes)
        n_gold = gold_quota(self.silver_seen, len(y), self.ctx.n_meta, self.ctx.n_train)
        self.silver_seen += len(y)
        if n_gold == 0:
            return glc_corrected_loss(self.model(x), y, self.C)
        xs, ys = [], []
        while sum(len(t) for t in ys) < n_gold:  # one meta batch, unless the quota exceeds it
            xm, ym, _ = self.ctx.meta_batch(x)
            xs.append(xm)
            ys.append(ym)
        xm, ym = torch.cat(xs)[:n_gold], torch.cat(ys)[:n_gold]
        logits = self.model(torch.cat([x, xm]))
        silver = glc_corrected_loss(logits[: len(y)], y, self.C, reduction="none")
        gold = ce_per_example(logits[len(y):], ym)
        return (silver.sum() + gold.sum()) / (len(y) + len(ym))
