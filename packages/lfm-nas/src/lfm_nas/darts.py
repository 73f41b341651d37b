"""Plain DARTS baselines (bilevel search) in the same code as LFM.

``DartsArchitect(model, order="first" | "second", engine="exact" | "finite-difference")``
owns the alphas and their Adam optimiser. :meth:`DartsArchitect.step` takes a training and a
validation batch and the current W learning rate ``lr``:

* first order: ``grad_alpha L_val(w, alpha)``;
* second order: ``w' = w - lr * grad_w L_train(w, alpha)`` and
  ``grad_alpha L_val(w', alpha) - lr * grad_alpha <grad_w L_train(w, alpha), grad_w' L_val(w', alpha)>``,
  the mixed product computed by :func:`lfm_core.hypergradient.products.mvp_exact` (forward-over-reverse, exact)
  or :func:`lfm_core.hypergradient.products.mvp_finite_difference` (DARTS' central differences).

All passes of the architect are virtual: batch-norm running statistics are left alone.
The W step itself is the caller's (see :func:`lfm_nas.search.search`).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lfm_core.errors import check_choice, UsageError
from lfm_core.hypergradient.products import mvp_exact, mvp_finite_difference
from lfm_core.hypergradient.tensors import detached, frozen_bn_stats, named_params
from lfm_nas.genotypes import Genotype
from lfm_nas.operations import prepare_bn_for_engine
from lfm_nas.problem import ArchitectSettings

ORDERS = ("first", "second")
DARTS_ENGINES = ("exact", "finite-difference")


class DartsArchitect:
    def __init__(self, model: nn.Module, order: str = "second", engine: str = "exact",
                 alphas: Mapping[str, Tensor] | None = None, alpha_scale: float = ArchitectSettings.alpha_scale,
                 arch_lr: float = ArchitectSettings.arch_lr, arch_betas: tuple[float, float] = ArchitectSettings.arch_betas,
                 arch_weight_decay: float = ArchitectSettings.arch_weight_decay,
                 fd_eps: float = 0.01, arch_grad_clip: float | None = None,
                 w_optimizer: torch.optim.Optimizer | None = None):
        check_choice("DARTS order", order, ORDERS)
        check_choice("DARTS engine", engine, DARTS_ENGINES)
        self.model, self.order, self.engine = model, order, engine
        self.fd_eps, self.arch_grad_clip, self.w_optimizer = fd_eps, arch_grad_clip, w_optimizer
        prepare_bn_for_engine(model, order == "second" and engine == "exact")
        p0 = next(model.parameters())
        if alphas is None:
            alphas = model.new_alphas(alpha_scale)
        self._alphas = {k: alphas[k].detach().clone().to(p0.device, p0.dtype).requires_grad_() for k in ("normal", "reduce")}
        self.optimizer = torch.optim.Adam(list(self._alphas.values()), lr=arch_lr, betas=tuple(arch_betas),
                                          weight_decay=arch_weight_decay)

    # -- accessors ------------------------------------------------------------------------
    @property
    def alphas(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self._alphas.items()}

    @property
    def parameters(self) -> list[Tensor]:
        return list(self._alphas.values())

    def genotype(self) -> Genotype:
        return self.model.genotype(self.alphas)

    # -- losses ---------------------------------------------------------------------------
    def _loss(self, w: Mapping[str, Tensor], alphas: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.model, dict(w), (x, dict(alphas))), y)

    def _lr(self, lr: float | None) -> float:
        if lr is not None:
            return float(lr)
        if self.w_optimizer is None:
            raise UsageError("second-order DARTS needs the W learning rate (lr=...) or w_optimizer")
        return float(self.w_optimizer.param_groups[0]["lr"])

    def hypergradient(self, x_tr: Tensor, y_tr: Tensor, x_val: Tensor, y_val: Tensor,
                      lr: float | None = None) -> dict[str, Tensor]:
        """d L_val / d alpha (first or second order); nothing is updated."""
        with frozen_bn_stats(self.model):
            alphas = detached(self._alphas, True)
            w = detached(named_params(self.model))
            if self.order == "first":
                grads = torch.autograd.grad(self._loss(w, alphas, x_val, y_val), list(alphas.values()), allow_unused=True)
                return {k: torch.zeros_like(t) if gr is None else gr for (k, t), gr in zip(alphas.items(), grads)}
            eta = self._lr(lr)
            # the virtual step w' = w - eta * grad_w L_train(w, alpha)
            w_ = detached(w, True)
            g = torch.autograd.grad(self._loss(w_, detached(alphas), x_tr, y_tr), list(w_.values()))
            w_prime = {k: (w[k] - eta * gk).detach().requires_grad_() for k, gk in zip(w, g)}
            loss_val = self._loss(w_prime, alphas, x_val, y_val)
            inputs = list(alphas.values()) + list(w_prime.values())
            grads = torch.autograd.grad(loss_val, inputs, allow_unused=True)
            grads = [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, inputs)]
            direct = dict(zip(alphas, grads[: len(alphas)]))
            g_w = dict(zip(w_prime, grads[len(alphas):]))

            def train_loss(ww, lam):
                return self._loss(ww, lam, x_tr, y_tr)

            if self.engine == "exact":
                mvp = mvp_exact(train_loss, w, alphas, g_w)
            else:
                mvp = mvp_finite_difference(train_loss, w, alphas, g_w, self.fd_eps)
            return {k: direct[k] - eta * mvp[k] for k in alphas}

    def step(self, x_tr: Tensor, y_tr: Tensor, x_val: Tensor, y_val: Tensor,
             lr: float | None = None) -> dict[str, Tensor]:
        """One Adam step of the alphas; returns the gradients it used."""
        grads = self.hypergradient(x_tr, y_tr, x_val, y_val, lr)
        self.optimizer.zero_grad(set_to_none=True)
        for k, t in self._alphas.items():
            t.grad = grads[k].to(t.dtype)
        if self.arch_grad_clip:
            nn.utils.clip_grad_norm_(list(self._alphas.values()), self.arch_grad_clip)
        self.optimizer.step()
        return grads
