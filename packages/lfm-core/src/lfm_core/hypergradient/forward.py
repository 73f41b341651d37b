"""The engines that differentiate the unrolled steps through mixed vector products: ``exact``
(reverse-over-forward), ``finite-difference`` (central), ``forward-difference`` (one-sided, its
base from the real step) and ``first-order`` (no product at all).

:func:`unroll` takes the two real steps and evaluates the meta loss, keeping what the chain
rule needs in an :class:`Unrolled` record; :func:`chain` then follows
W2' -> (a, upper) -> (W1', V, r, upper) -> upper with the engine's product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from lfm_core.hypergradient.products import LossFn, mvp_exact, mvp_finite_difference, mvp_forward_difference
from lfm_core.hypergradient.steps import Hypergradient, Setup, unroll_scale
from lfm_core.hypergradient.tensors import (Params, detached, frozen_bn_stats, named_params, plain_batch_norm,
                                            snapshot, stage, zeros_for_none)


@dataclass(frozen=True)
class ForwardBase:
    """``grad_lam loss(W, lam)`` of a real step, filled by its own backward: the second term of
    the one-sided differences, for free. ``a``: the gradient with respect to the weights a."""

    upper: Params
    a: Tensor | None = None


@dataclass(frozen=True)
class Unrolled:
    """One iteration's two real steps, as the chain rule needs them: the learners before
    (``*_old``) and after (``*_new``, their through-entries leaves) each step, the upper variables
    as each stage saw them, the steps' d(W')/d(grad) and the forward differences' bases."""

    loss1: Tensor
    loss2: Tensor
    loss3: Tensor
    a: Tensor
    w1_old: Params
    w1_new: Params
    w2_old: Params
    w2_new: Params
    upper_fixed: Params
    upper_live: Params
    upper3: Params
    scale1: float
    scale2: float
    base1: ForwardBase | None
    base2: ForwardBase | None


def keeps_base(w: Params) -> bool:
    """Whether a real step's backward can serve as the forward differences' base: not under
    autocast, whose low-precision values would swamp an eps-sized difference."""
    return not torch.is_autocast_enabled(next(iter(w.values())).device.type)


def unroll(setup: Setup, problem, keep_base: bool = False) -> Unrolled:
    """Stages I-III of Algorithm 1 (raises :class:`~lfm_core.hypergradient.steps.SkippedStep`).
    ``keep_base``: the real steps' backwards also fill ``grad_lam`` (forward differences)."""
    upper_fixed = detached(setup.upper)
    # Stage I: real step of W1 (its weights before the step are kept for the product).
    with stage("lfm.w1_step"):
        w1_old = snapshot(named_params(setup.w1))
        scale1 = unroll_scale(setup.opt1)
        keep1 = keep_base and keeps_base(w1_old)
        upper1 = detached(setup.upper, True) if keep1 else upper_fixed
        loss1 = problem.loss1(named_params(setup.w1), upper1)
        setup.real_step(setup.opt1, loss1, setup.w1.parameters())
        base1 = ForwardBase({k: t.grad for k, t in upper1.items() if t.grad is not None}) if keep1 else None
    # Stage II: a from W1', then a real step of W2.
    with stage("lfm.weights"):
        w1_new = snapshot(named_params(setup.w1))
        for t in setup.through(w1_new).values():
            t.requires_grad_()
        upper_live = detached(setup.upper, True)
        with frozen_bn_stats(*setup.bn_layers), torch.set_grad_enabled(not setup.recompute_weights):
            a = problem.weights(w1_new, upper_live)
    with stage("lfm.w2_step"):
        w2_old = snapshot(named_params(setup.w2))
        scale2 = unroll_scale(setup.opt2)
        keep2 = keep_base and keeps_base(w2_old)
        a2 = a.detach().requires_grad_(keep2)
        upper2 = detached(setup.upper, True) if keep2 else upper_fixed
        loss2 = problem.loss2(named_params(setup.w2), a2, upper2)
        setup.real_step(setup.opt2, loss2, setup.w2.parameters(), done=(loss1,), last=True)
        base2 = None
        if keep2:
            base2 = ForwardBase({k: t.grad for k, t in upper2.items() if t.grad is not None},
                                a2.grad if a2.grad is not None else torch.zeros_like(a2))
    # Stage III: validation loss of W2'.
    with stage("lfm.loss3"):
        w2_new = detached(named_params(setup.w2))
        for t in setup.through(w2_new).values():
            t.requires_grad_()
        upper3 = detached(setup.upper, True)
        with frozen_bn_stats(*setup.bn_layers):
            loss3 = problem.loss3(w2_new, upper3)
    return Unrolled(loss1, loss2, loss3, a, w1_old, w1_new, w2_old, w2_new, upper_fixed, upper_live, upper3,
                    scale1, scale2, base1, base2)


# ------------------------------------------------------------------------------------
# the products of each engine:  grad_lam < grad_W loss(W, lam), v >
# ------------------------------------------------------------------------------------
Product = Callable[[Setup, LossFn, Params, Params, Params, "Params | None"], Params]


def exact_product(setup: Setup, loss: LossFn, w: Params, lam: Params, v: Params, base: Params | None) -> Params:
    with plain_batch_norm(*(setup.bn_layers if setup.plain_bn else ())):
        return mvp_exact(loss, w, lam, v)


def central_product(setup: Setup, loss: LossFn, w: Params, lam: Params, v: Params, base: Params | None) -> Params:
    return mvp_finite_difference(loss, w, lam, v, setup.fd_eps)


def one_sided_product(setup: Setup, loss: LossFn, w: Params, lam: Params, v: Params, base: Params | None) -> Params:
    return mvp_forward_difference(loss, w, lam, v, setup.fd_eps, base)


def _product(setup: Setup, product: Product, loss: LossFn, w: Params, lam: Params, v: Params,
             base: Params | None = None) -> Params:
    """The product with batch-norm statistics frozen and in full precision (forward-mode AD
    does not mix with autocast)."""
    device_type = next(iter(w.values())).device.type
    with frozen_bn_stats(*setup.bn_layers), torch.autocast(device_type, enabled=False):
        return product(setup, loss, w, lam, v, base)


# ------------------------------------------------------------------------------------
# the chain rule through the unrolled steps
# ------------------------------------------------------------------------------------
def _accumulate(total: Params, upper: Params, terms: Mapping[str, Tensor | None], scale: float = 1.0) -> None:
    """``total += scale * terms`` for the upper names, in place and without copies: an encoder's
    gradient is as large as the encoder, and every copy alive during the next product adds to the
    peak memory. Terms are kept only for the upper variables they touch."""
    for k, g in terms.items():
        if k not in upper or g is None:
            continue
        if k in total:
            total[k].add_(g, alpha=scale)
        else:
            total[k] = g if scale == 1.0 else g.mul_(scale)


def _through_w2_step(setup: Setup, problem, u: Unrolled, product: Product, g2: Params) -> tuple[Tensor, Params]:
    """``(dL/da, dL/d upper)`` through ``W2' = W2 - lr2 grad loss2(W2, a, upper)``: one product over
    a and the upper variables together (a rides in the product's dict under a private key)."""
    key = "__a__"
    with stage("lfm.mvp_w2"), setup.fixed_trunk(problem):
        lam = {key: u.a.detach(), **u.upper3}
        base = None
        if u.base2 is not None:
            assert u.base2.a is not None  # W2's real step always fills dL2/da
            base = {**u.base2.upper, key: u.base2.a}
        m2 = _product(setup, product, lambda w, lam: problem.loss2(w, lam[key], lam), u.w2_old, lam, g2, base)
    da = -u.scale2 * m2.pop(key, torch.zeros_like(u.a))
    return da, m2


def _through_weights(setup: Setup, problem, u: Unrolled, da: Tensor, w1_through: Params) -> list[Tensor | None]:
    """``<da, d a(W1', upper) / d(W1'_through, upper_live)>``, rebuilding a's graph when it was
    computed without one (``recompute_weights``)."""
    with stage("lfm.weights_backward"):
        if setup.recompute_weights and hasattr(problem, "weights_vjp"):
            # the problem rebuilds its networks' graphs one at a time (lowest peak memory)
            with frozen_bn_stats(*setup.bn_layers):
                vjp = problem.weights_vjp(u.w1_new, u.upper_live, da)
            return [vjp.get(k) for k in (*w1_through, *u.upper_live)]
        a = u.a
        if setup.recompute_weights:
            with frozen_bn_stats(*setup.bn_layers):
                a = problem.weights(u.w1_new, u.upper_live)
        targets = list(w1_through.values()) + list(u.upper_live.values())
        return list(torch.autograd.grad(a, targets, grad_outputs=da, allow_unused=True))


def _single_network_term(setup: Setup, problem, u: Unrolled, product: Product, g2: Params, h: Params) -> Params:
    """Single network: W2's step starts at W1', so W1' also reaches W2' directly:
    dW2'/dW1' = I - lr2 * Hessian(loss2); the Hessian-vector product is the product of
    loss2(W + delta) with respect to delta at delta = 0."""
    with stage("lfm.hvp_single"), setup.fixed_trunk(problem):
        zero = {k: torch.zeros_like(u.w2_old[k]) for k in g2}
        a_fixed = u.a.detach()
        hv = _product(setup, product,
                      lambda w, d: problem.loss2({k: w[k] + d[k] if k in d else w[k] for k in w}, a_fixed,
                                                 u.upper_fixed),
                      u.w2_old, zero, g2)
    return {k: h[k] + g2[k] - u.scale2 * hv.get(k, torch.zeros_like(h[k])) for k in h}


def chain(setup: Setup, problem, u: Unrolled, product: Product | None) -> Params:
    """dL/d(upper) through both unrolled steps (``product`` None: first order, direct terms only).
    Every term is linear in dL/dW2' and the direct gradients: with a loss scale the whole chain
    runs scaled (no fp16 underflow in the backward passes) and is unscaled at the end."""
    names = list(setup.upper)
    loss_scale = setup.real_step.loss_scale
    reduce = setup.real_step.reduce
    w2_through, w1_through = setup.through(u.w2_new), setup.through(u.w1_new)
    with stage("lfm.loss3_backward"):
        inputs = list(u.upper3.values()) + (list(w2_through.values()) if product is not None else [])
        grads = torch.autograd.grad(u.loss3 * loss_scale, inputs, allow_unused=True)
    total: Params = {k: g for k, g in zip(names, grads[: len(names)]) if g is not None}
    if product is not None:
        g2 = dict(zip(w2_through, zeros_for_none(grads[len(names):], w2_through.values())))
        da, m2 = _through_w2_step(setup, problem, u, product, g2)
        _accumulate(total, setup.upper, m2, -u.scale2)
        ga = _through_weights(setup, problem, u, da, w1_through)
        n1 = len(w1_through)
        h = dict(zip(w1_through, zeros_for_none(ga[:n1], w1_through.values())))
        if setup.single:
            h = _single_network_term(setup, problem, u, product, g2, h)
        if reduce is not None:
            # dL/dW1' sums over every process's training examples before it meets loss1's product
            values = list(h.values())
            reduce(values)
            h = dict(zip(h, values))
        _accumulate(total, setup.upper, dict(zip(names, ga[n1:])))
        # through W1' = W1 - lr1 grad loss1(W1, upper)
        with stage("lfm.mvp_w1"), setup.fixed_trunk(problem):
            base1 = None if u.base1 is None else u.base1.upper
            _accumulate(total, setup.upper, _product(setup, product, problem.loss1, u.w1_old, u.upper3, h, base1),
                        -u.scale1)
    total = {k: total[k] / loss_scale if k in total else torch.zeros_like(setup.upper[k]) for k in names}
    if reduce is not None:
        values = [total[k] for k in names]
        reduce(values)
        total = dict(zip(names, values))
    return total


def _engine(product: Product | None, one_sided: bool = False) -> Callable[[Setup, object], Hypergradient]:
    def engine(setup: Setup, problem) -> Hypergradient:
        u = unroll(setup, problem, keep_base=one_sided)
        return Hypergradient(chain(setup, problem, u, product), u.loss1, u.loss2, u.loss3, u.a)

    return engine


exact = _engine(exact_product)
finite_difference = _engine(central_product)
forward_difference = _engine(one_sided_product, one_sided=True)
first_order = _engine(None)
