"""Mixed vector products ``grad_lam <grad_W loss(W, lam), v>``, the one term the engines
compute differently: exactly by reverse-over-forward autodiff, or by central or one-sided
differences of ``grad_lam loss`` along ``v``."""

from __future__ import annotations

from typing import Callable, cast

import torch
from torch import Tensor
from torch.func import jvp

from lfm_core.hypergradient.tensors import Params, detached

LossFn = Callable[[Params, Params], Tensor]


def mvp_exact(loss: LossFn, w: Params, lam: Params, v: Params) -> Params:
    """``v`` may cover only some of ``w``: the others are held as constants, outside the
    transform, so the passes before the first moving layer carry no tangents."""
    # torch.func.jvp, not autograd's dual tensors: some of autograd's native forward-mode formulas
    # work in place (softmax-based losses), which breaks the reverse pass over the tangent
    lam_ = detached(lam, True)
    w_ = detached(w)
    fixed = {k: t for k, t in w_.items() if k not in v}
    moving = {k: w_[k] for k in v}
    v_ = {k: v[k].detach() for k in moving}
    _, tangent = cast(tuple[Tensor, Tensor],
                      jvp(lambda w_in: loss({**fixed, **w_in} if fixed else w_in, lam_), (moving,), (v_,)))
    grads = torch.autograd.grad(tangent, list(lam_.values()), allow_unused=True)
    return {k: g for k, g in zip(lam_, grads) if g is not None}


def _fd_step(v: Params, eps: float) -> float | None:
    """The step along ``v`` whose length is ``eps`` (None when ``v`` is zero or not finite)."""
    norm = torch.sqrt(cast(Tensor, sum((t.detach().double() ** 2).sum() for t in v.values())))
    if not torch.isfinite(norm) or norm == 0:
        return None
    return eps / float(norm)


def _grad_lam(loss: LossFn, w: Params, lam: Params, v: Params, step: float) -> tuple[Tensor | None, ...]:
    """``grad_lam loss(W + step * v, lam)`` (no graph through W)."""
    w_ = {k: (w[k].detach() + step * v[k].detach()) if step and k in v else w[k].detach() for k in w}
    lam_ = detached(lam, True)
    return torch.autograd.grad(loss(w_, lam_), list(lam_.values()), allow_unused=True)


def mvp_finite_difference(loss: LossFn, w: Params, lam: Params, v: Params, eps: float = 0.01) -> Params:
    step = _fd_step(v, eps)
    if step is None:
        return {}
    plus, minus = _grad_lam(loss, w, lam, v, step), _grad_lam(loss, w, lam, v, -step)
    return {k: (gp - gm) / (2 * step) for k, gp, gm in zip(lam, plus, minus) if gp is not None and gm is not None}


def mvp_forward_difference(
    loss: LossFn, w: Params, lam: Params, v: Params, eps: float = 0.01, base: Params | None = None
) -> Params:
    """One-sided differences; ``base`` is ``grad_lam loss(W, lam)`` when the caller has it."""
    step = _fd_step(v, eps)
    if step is None:
        return {}
    if base is None:
        base = {k: g for k, g in zip(lam, _grad_lam(loss, w, lam, v, 0.0)) if g is not None}
    plus = _grad_lam(loss, w, lam, v, step)
    return {k: (gp - base[k]) / step for k, gp in zip(lam, plus) if gp is not None and k in base}
