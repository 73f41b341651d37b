"""The ``exact-reverse`` engine: the exact hypergradient by reverse-over-reverse autodiff on the
graphs the real steps already build.

Each real step takes its gradient with ``create_graph`` from cloned leaves and the optimiser
applies the detached gradient; then ``W' = W'_real - s * (g - g.detach())`` (s = d W'/d g) has the
real step's value exactly and the unrolled step's derivative, so one backward of the meta loss
gives the hypergradient. That backward is split at W1' when dL/dW1' must be averaged across
processes first, and at ``a`` when its graph is rebuilt (``recompute_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from lfm_core.hypergradient.steps import Hypergradient, Setup, unroll_scale
from lfm_core.hypergradient.tensors import Params, detached, frozen_bn_stats, named_params, snapshot, stage, zeros_for_none


def graph_step(w_real: Params, grads: Params, scale: float, start: Params | None = None) -> Params:
    """``W' = W'_real - scale * (g - g.detach())`` (+ ``start - start.detach()``) for the entries of
    ``grads``: the real step's value exactly, with the derivative of the unrolled step."""
    keys = list(grads)
    if not keys:
        return {}
    g = [grads[k] for k in keys]
    out = torch._foreach_add([w_real[k] for k in keys], torch._foreach_sub(g, [t.detach() for t in g]), alpha=-scale)
    if start is not None:  # W2' = W1' - lr2 * grad(W1'): the start's own term
        w0 = [start[k] for k in keys]
        out = torch._foreach_add(out, torch._foreach_sub(w0, [t.detach() for t in w0]))
    return dict(zip(keys, out))


def _clone_leaves(params: Params) -> Params:
    """The real step's loss is taken at copies, so that the optimiser's in-place step leaves the
    values saved in the graph alone."""
    return {k: t.detach().clone().requires_grad_() for k, t in params.items()}


def _backward_keeping_graph(setup: Setup, loss: Tensor, leaves: Params, params: Params) -> Params:
    """The real step's gradients from ``leaves`` into ``params``' ``.grad`` (detached copies,
    which unscaling, averaging and clipping may change in place); returns the through-
    parameters' gradients with their graph (``create_graph``; the others without one)."""
    hyper = setup.hyper_params
    through = [k for k in leaves if hyper is None or k in hyper]
    rest = [k for k in leaves if hyper is not None and k not in hyper]
    g_through = torch.autograd.grad(loss, [leaves[k] for k in through], create_graph=True, allow_unused=True)
    g_rest = torch.autograd.grad(loss, [leaves[k] for k in rest], retain_graph=True, allow_unused=True) if rest \
        else ()
    for k, g in zip(through, g_through):
        params[k].grad = None if g is None else g.detach().clone()
    for k, g in zip(rest, g_rest):
        params[k].grad = g
    return {k: g for k, g in zip(through, g_through) if g is not None and g.requires_grad}


def _graph_real_step(setup: Setup, module, opt, loss: Tensor, leaves: Params, done: tuple[Tensor, ...] = (),
                     last: bool = False) -> Params:
    """The real step whose gradient keeps its graph; returns the through-gradients (loss-scaled)."""
    held: Params = {}
    setup.real_step(opt, loss, module.parameters(), done=done, last=last,
                    backward=lambda scaled: held.update(_backward_keeping_graph(setup, scaled, leaves,
                                                                                named_params(module))))
    return held


@dataclass(frozen=True)
class GraphUnrolled:
    """The two real steps with their graphs: the upper copy every term lands on (``up``), W1' as
    the graph of its step (``w1_graph``) and as the meta loss's input (``w1_in``: a leaf of its own
    when the backward is split there), the weights' input ``a_in`` and the values at W1'."""

    loss1: Tensor
    loss2: Tensor
    loss3: Tensor
    a: Tensor
    a_in: Tensor
    up: Params
    w1_real: Params
    w1_graph: Params
    w1_in: Params
    split: bool


def unroll_with_graph(setup: Setup, problem) -> GraphUnrolled:
    """Stages I-III with the real steps' gradients kept as graphs (raises ``SkippedStep``)."""
    single = setup.single
    split = setup.real_step.reduce is not None or setup.recompute_weights
    up = detached(setup.upper, True)  # one copy: every term lands on it
    # the loss scale of both real steps' gradients (the scaler updates only after them)
    real_scale = setup.real_step.loss_scale
    with stage("lfm.w1_step"):
        s1 = unroll_scale(setup.opt1) / real_scale
        leaves1 = _clone_leaves(named_params(setup.w1))
        loss1 = problem.loss1(leaves1, up)
        g1 = _graph_real_step(setup, setup.w1, setup.opt1, loss1, leaves1)
        # W1' (a snapshot where the single network's W2 step changes it in place)
        w1_real = (snapshot if single else detached)(named_params(setup.w1))
        w1_graph = graph_step(w1_real, g1, s1)
        # split: W1' enters as a leaf whose gradient is collected (and averaged) first
        w1_in = {k: t.detach().requires_grad_() for k, t in w1_graph.items()} if split else w1_graph
        w1_new = {**w1_real, **w1_in}
    with stage("lfm.weights"):
        with frozen_bn_stats(*setup.bn_layers), torch.set_grad_enabled(not setup.recompute_weights):
            a = problem.weights(w1_new, up)
        a_in = a.detach().requires_grad_() if setup.recompute_weights else a
    with stage("lfm.w2_step"):
        s2 = unroll_scale(setup.opt2) / real_scale
        if single:  # W2's step starts at W1': the graph goes on through it (a view of its own, so
            # the real gradient is loss2's through W2's start only, not through a as well)
            leaves2 = {k: w1_in[k].view_as(w1_in[k]) if k in w1_in else w1_real[k].detach().requires_grad_()
                       for k in w1_real}
        else:
            leaves2 = _clone_leaves(named_params(setup.w2))
        loss2 = problem.loss2(leaves2, a_in, up)
        g2 = _graph_real_step(setup, setup.w2, setup.opt2, loss2, leaves2, done=(loss1,), last=True)
        w2_real = detached(named_params(setup.w2))
        # single network: dW2'/dW1' = I - s2 * Hessian(loss2); the identity is the start term
        w2_new = {**w2_real, **graph_step(w2_real, g2, s2, start=leaves2 if single else None)}
    with stage("lfm.loss3"), frozen_bn_stats(*setup.bn_layers):
        loss3 = problem.loss3(w2_new, up)
    return GraphUnrolled(loss1, loss2, loss3, a, a_in, up, w1_real, w1_graph, w1_in, split)


def _add(total: dict[str, Tensor | None], names: list[str], grads) -> None:
    for k, g in zip(names, grads):
        if g is not None:
            total[k] = g if total[k] is None else total[k] + g


def _through_rebuilt_weights(setup: Setup, problem, u: GraphUnrolled, da: Tensor | None, h: Params,
                             total: dict[str, Tensor | None]) -> None:
    """Adds the terms through ``a(W1', upper)``, its graph rebuilt now, to ``h`` and ``total``."""
    da = torch.zeros_like(u.a_in) if da is None else da
    # (every through-parameter is live, as in the exact engine: a problem's weights_vjp may
    # differentiate them all; those whose W1' has no upper path are dropped)
    w1_live = {**u.w1_real, **{k: t.detach().requires_grad_() for k, t in setup.through(u.w1_real).items()}}
    with frozen_bn_stats(*setup.bn_layers):
        if hasattr(problem, "weights_vjp"):
            vjp = problem.weights_vjp(w1_live, u.up, da)
            ga: Sequence[Tensor | None] = [vjp.get(k) for k in (*u.w1_in, *u.up)]
        else:
            targets = [w1_live[k] for k in u.w1_in] + list(u.up.values())
            ga = torch.autograd.grad(problem.weights(w1_live, u.up), targets, grad_outputs=da, allow_unused=True)
    for k, g in zip(u.w1_in, ga):
        if g is not None:
            h[k] = h[k] + g
    _add(total, list(setup.upper), ga[len(u.w1_in):])


def meta_backward(setup: Setup, problem, u: GraphUnrolled) -> Params:
    """dL/d(upper): one backward of the (loss-scaled) meta loss, split at W1' and a if asked."""
    # the whole chain runs scaled (no fp16 underflow in the backward passes), unscaled at the end
    loss_scale = setup.real_step.loss_scale
    reduce = setup.real_step.reduce
    names = list(setup.upper)
    with stage("lfm.meta_backward"):
        inputs = [*u.up.values(), *([u.a_in] if setup.recompute_weights else []),
                  *(u.w1_in.values() if u.split else [])]
        grads = list(torch.autograd.grad(u.loss3 * loss_scale if loss_scale != 1.0 else u.loss3, inputs,
                                         allow_unused=True))
        total: dict[str, Tensor | None] = dict(zip(names, grads[: len(names)]))
        if u.split:
            h = dict(zip(u.w1_in, zeros_for_none(grads[len(inputs) - len(u.w1_in):], u.w1_in.values())))
            if setup.recompute_weights:
                _through_rebuilt_weights(setup, problem, u, grads[len(names)], h, total)
            if reduce is not None:
                # dL/dW1' sums over every process's training examples before it meets loss1's product
                values = list(h.values())
                reduce(values)
                h = dict(zip(h, values))
            keys = [k for k in h if u.w1_graph[k].requires_grad]
            if keys:
                _add(total, names, torch.autograd.grad([u.w1_graph[k] for k in keys], list(u.up.values()),
                                                       grad_outputs=[h[k] for k in keys], allow_unused=True))
    # (total's keys are names, in order)
    grad: Params = {k: torch.zeros_like(setup.upper[k]) if g is None else g / loss_scale if loss_scale != 1.0 else g
                    for k, g in total.items()}
    if reduce is not None:
        values = [grad[k] for k in names]
        reduce(values)
        grad = dict(zip(names, values))
    return grad


def exact_reverse(setup: Setup, problem) -> Hypergradient:
    u = unroll_with_graph(setup, problem)
    return Hypergradient(meta_backward(setup, problem, u), u.loss1, u.loss2, u.loss3, u.a)
