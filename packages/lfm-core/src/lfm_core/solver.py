"""The tri-level LFM solver: Algorithm 1 of the paper and its hypergradient.

One step, given the batches bound into a :class:`TriLevelProblem`:

1. real SGD step of W1 on ``loss1(W1, upper)``              -> W1'
2. ``a = weights(W1', upper)``  (u at W1', encoder V, r)
3. real SGD step of W2 on ``loss2(W2, a, upper)``           -> W2'
4. ``L = loss3(W2', upper)``; the upper variables (B, V, r) descend dL/d(upper).

The hypergradient follows the chain W2' -> (a, upper) -> (W1', V, r, upper) -> upper.
A one-step unroll ``W' = W - lr * grad_W loss(W, lam)`` contributes
``dL/dlam = -lr * grad_lam <grad_W loss(W, lam), g>`` with ``g = dL/dW'``; this
"mixed vector product" (MVP) is what the engines compute differently:

* ``exact``: reverse-over-forward autodiff: a forward-mode JVP of the loss along ``g``
  gives ``<grad_W loss, g>`` as a function of ``lam``, whose reverse gradient is exact.
  No double backward; for per-example weights ``lam`` the reverse pass is trivial.
* ``exact-reverse``: the same exact hypergradient by reverse-over-reverse autodiff on the graphs
  the real steps already build: each real step takes its gradient with ``create_graph=True`` on
  cloned leaves (the optimiser applies the detached gradient), and the product is one backward
  through that gradient's graph along ``g``. No re-run forwards and no forward mode, at the
  memory of the held graphs; under autocast the products run in the real steps' precision.
* ``finite-difference``: DARTS-style central differences
  ``(grad_lam loss(W + eps g) - grad_lam loss(W - eps g)) / 2 eps``; no graph through W.
* ``forward-difference``: one-sided differences
  ``(grad_lam loss(W + eps g) - grad_lam loss(W)) / eps`` whose second term comes free with
  the real optimiser step at ``W`` (its backward also fills ``grad_lam``): one training-batch
  forward per product instead of two, at an O(eps) truncation error instead of O(eps^2).
* ``first-order``: all terms through the unrolled steps are dropped; only the direct
  dependence of ``loss3`` on the upper variables remains.

The unrolled steps are the real optimiser steps (Algorithm 1 updates W1 and W2 anyway), so
the derivative of W' with respect to its gradient is ``lr`` for plain or momentum SGD
(``lr * (1 + momentum)`` with Nesterov): momentum buffers and weight decay do not depend on
the upper variables. With other optimisers the hypergradient is the usual one-step
approximation. BatchNorm running statistics are touched only by the two real steps.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.func import jvp
from torch.profiler import record_function

from lfm_core.errors import check_choice

Params = dict[str, Tensor]
ENGINES = ("exact", "exact-reverse", "finite-difference", "forward-difference", "first-order")
Engine = Literal["exact", "exact-reverse", "finite-difference", "forward-difference", "first-order"]
# the engines whose hypergradients are equal to rounding (the others approximate it)
EXACT_ENGINES = ("exact", "exact-reverse")


class TriLevelProblem(Protocol):
    """The four functions of one LFM step, with the step's batches already bound.

    Parameters arrive as name -> tensor dicts (``module.named_parameters()`` names), so an
    implementation evaluates its networks with ``torch.func.functional_call``.
    ``upper`` holds the upper-level tensors (e.g. ``"B"``, ``"r"`` and the encoder's
    parameters under ``"V.<name>"``); each function may ignore the ones it does not use.
    """

    def loss1(self, w1: Params, upper: Params) -> Tensor: ...

    def weights(self, w1: Params, upper: Params) -> Tensor: ...

    def loss2(self, w2: Params, a: Tensor, upper: Params) -> Tensor: ...

    def loss3(self, w2: Params, upper: Params) -> Tensor: ...

    # Optional, used with ``recompute_weights``: ``<da, weights(w1, upper)>`` differentiated with
    # respect to w1 and upper, as one dict keyed by both dicts' names (absent: zero). A problem
    # whose weights come from several network passes can rebuild and free their graphs one at a
    # time instead of holding all of them (see ``lfm_nas.problem.LFMNASProblem``).
    # def weights_vjp(self, w1: Params, upper: Params, da: Tensor) -> Params: ...

    # Optional, used with ``hyper_params``: a context manager inside which the solver calls loss1
    # and loss2 (its products) with every parameter outside ``hyper_params`` at the values of the
    # step's real training step, so the problem may reuse that step's features (e.g. the input of
    # the classifier) instead of running the rest of the network again.
    # def fixed_trunk(self) -> ContextManager: ...


@dataclass
class StepStats:
    loss1: float
    loss2: float
    loss3: float
    a_mean: float
    finite: bool = True
    grads: Params = field(default_factory=dict, repr=False)


def check_engine(engine: str) -> str:
    check_choice("hypergradient engine", engine, ENGINES)
    return engine


# ------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen_bn_stats(*modules: nn.Module | None) -> Iterator[None]:
    """Batch norm uses batch statistics but leaves its running buffers alone (virtual passes)."""
    saved = []
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                saved.append(m)
                m.track_running_stats = False
    try:
        yield
    finally:
        for m in saved:
            m.track_running_stats = True


def _plain_batch_norm(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Batch norm from elementary ops (same values as the fused kernel, running stats untouched)."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    if self.training or self.running_mean is None:
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
    else:
        mean, var = self.running_mean.view(shape), self.running_var.view(shape)
    y = (x - mean) / torch.sqrt(var + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y


@contextlib.contextmanager
def plain_batch_norm(*modules: nn.Module | None) -> Iterator[None]:
    """Swap fused batch norm for elementary ops: in torch 2.11-2.14 the reverse-mode derivative
    of the fused kernel's forward-mode tangent is wrong, which ``mvp_exact`` relies on."""
    swapped = []
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and "forward" not in m.__dict__:
                m.forward = _plain_batch_norm.__get__(m)
                swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


def detached(params: Params, requires_grad: bool = False) -> Params:
    return {k: v.detach().requires_grad_(requires_grad) for k, v in params.items()}


def snapshot(params: Params) -> Params:
    """A copy that in-place optimiser steps cannot change."""
    return {k: v.detach().clone() for k, v in params.items()}


def named_params(module: nn.Module) -> Params:
    return {k: p for k, p in module.named_parameters() if p.requires_grad}


def _zeros_for_none(grads: Iterable[Tensor | None], like: Iterable[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def _stage(name: str) -> contextlib.AbstractContextManager:
    """A torch.profiler range for one stage of the step, only while a profiler records (a range
    costs ~6 us, which a small model's step notices)."""
    return record_function(name) if torch.autograd.profiler._is_profiler_enabled else contextlib.nullcontext()


def _finite_flag(tensors: list[Tensor]) -> Tensor | bool:
    """Whether every entry is finite, as one reduction left on the device (an inf and a -inf sum
    to nan, still caught)."""
    if not tensors:
        return True
    return torch.isfinite(torch.stack([t.detach().float().sum() for t in tensors])).all()


def _all_finite(tensors: list[Tensor]) -> bool:
    """One reduction and one sync for a whole list."""
    return bool(_finite_flag(tensors))


def _read_scalars(*values: Tensor | bool) -> list[float]:
    """Several 0-d tensors as Python floats with one device sync (each float() is one); the
    values are those float() would give (every float dtype converts exactly to float64)."""
    device = next(v.device for v in values if isinstance(v, Tensor))
    return torch.stack([v.detach().double() if isinstance(v, Tensor)
                        else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values]).tolist()


def _unrolled(w_real: Params, grads: Params, scale: float, start: Params | None = None) -> Params:
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


def unroll_scale(optimizer: torch.optim.Optimizer) -> float:
    """d(W')/d(grad) of one optimiser step: lr, times (1 + momentum) for Nesterov SGD."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if isinstance(optimizer, torch.optim.SGD) and group.get("nesterov"):
        lr *= 1.0 + float(group.get("momentum", 0.0))
    return lr




# ------------------------------------------------------------------------------------
# mixed vector products  grad_lam < grad_W loss(W, lam), v >
# ------------------------------------------------------------------------------------
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
    _, tangent = jvp(lambda w_in: loss({**fixed, **w_in} if fixed else w_in, lam_), (moving,), (v_,))
    grads = torch.autograd.grad(tangent, list(lam_.values()), allow_unused=True)
    return {k: g for k, g in zip(lam_, grads) if g is not None}


def _fd_step(v: Params, eps: float) -> float | None:
    """The step along ``v`` whose length is ``eps`` (None when ``v`` is zero or not finite)."""
    norm = torch.sqrt(sum((t.detach().double() ** 2).sum() for t in v.values()))
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


# ------------------------------------------------------------------------------------
# the solver
# ------------------------------------------------------------------------------------
class TriLevelSolver:
    """Runs Algorithm 1 one step at a time and owns the hypergradient.

    ``upper`` maps names to leaf tensors (or parameters) that ``upper_optimizer`` updates.
    ``w2`` may be the same module as ``w1`` (single-network variant): then the W2 step
    starts from W1'. ``modules`` lists every module whose batch norm must be frozen
    during virtual passes (the networks and the encoder).
    """

    def __init__(
        self,
        w1: nn.Module,
        w2: nn.Module,
        upper: dict[str, Tensor],
        opt1: torch.optim.Optimizer,
        opt2: torch.optim.Optimizer,
        upper_optimizer: torch.optim.Optimizer,
        engine: Engine = "exact",
        fd_eps: float | None = None,
        modules: Iterable[nn.Module] = (),
        grad_clip: float | None = None,
        reduce: Callable[[list[Tensor]], None] | None = None,
        upper_reaches_batch_norm: bool = True,
        recompute_weights: bool = False,
        grad_scaler: torch.amp.GradScaler | None = None,
        hyper_params: Iterable[str] | None = None,
    ):
        self.w1, self.w2 = w1, w2
        self.upper = upper
        self.opt1, self.opt2, self.upper_optimizer = opt1, opt2, upper_optimizer
        self.engine = check_engine(engine)
        # the step length of the difference engines: DARTS's 0.01 for central differences; the
        # one-sided ones' truncation error is first order, and 1e-3 brings it from 5% to 0.4% of
        # the exact hypergradient on ResNet-32 (benchmarks/step_cost.py, fwd_rel_err)
        self.fd_eps = fd_eps if fd_eps is not None else (1e-3 if engine == "forward-difference" else 0.01)
        self.modules = [w1, w2, *modules]
        # the batch-norm layers, found once: each virtual pass freezes their statistics, and
        # walking every module tree several times a step is a visible cost for small models
        layers = {id(m): m for mod in self.modules for m in mod.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        self._bn_layers = list(layers.values())
        self.grad_clip = grad_clip
        # averages gradients across processes (multi-process data parallel); None: one process
        self.reduce = reduce
        # The exact engine differentiates forward-mode tangents; fused batch norm gets that wrong
        # when an upper variable reaches a batch-norm input (architecture weights do), so it is
        # swapped for elementary ops. A problem whose upper variables only weight the per-example
        # losses (data reweighting) may pass False and keep the faster fused kernel.
        self.plain_bn = upper_reaches_batch_norm
        # Memory for time: the graph of a = weights(W1', upper) (W1' on the validation batch and
        # the encoder) would stay alive through the W2 step, loss3 and the W2 product; with
        # recompute_weights it is built without a graph and rebuilt (one more forward) when the
        # hypergradient needs it, so at most one network's activations are held at a time.
        self.recompute_weights = recompute_weights
        # fp16 autocast: the real steps' losses and loss3 are scaled against underflow; a step
        # whose gradients overflow is skipped and the scale lowered (torch.amp.GradScaler)
        self.scaler = grad_scaler if grad_scaler is not None and grad_scaler.is_enabled() else None
        # A layer-wise approximation: the hypergradient flows through these parameters of W1 and
        # W2 only (e.g. the classifier); the others count as constants of the unrolled steps, so
        # dL/dW2' and dL/dW1' stop at those layers and the products move only them. None: all.
        self.hyper_params = None if hyper_params is None else set(hyper_params)
        if self.hyper_params is not None:
            for name, module in (("w1", w1), ("w2", w2)):
                unknown = self.hyper_params - set(dict(module.named_parameters()))
                if unknown or not self.hyper_params:
                    raise ValueError(f"hyper_params {sorted(unknown) or '(empty)'} are not parameters of {name}")

    def _fixed_trunk(self, problem: TriLevelProblem) -> contextlib.AbstractContextManager:
        if self.hyper_params is None or not hasattr(problem, "fixed_trunk"):
            return contextlib.nullcontext()
        return problem.fixed_trunk()

    def _through(self, params: Params) -> Params:
        """The entries of ``params`` the hypergradient flows through."""
        if self.hyper_params is None:
            return params
        return {k: t for k, t in params.items() if k in self.hyper_params}

    # -- the MVP of the selected engine -------------------------------------------------
    def mvp(self, loss: LossFn, w: Params, lam: Params, v: Params, base: Params | None = None) -> Params:
        # forward-mode AD does not mix with autocast: the MVPs run in full precision
        device_type = next(iter(w.values())).device.type
        with frozen_bn_stats(*self._bn_layers), torch.autocast(device_type, enabled=False):
            if self.engine == "exact":
                with plain_batch_norm(*(self._bn_layers if self.plain_bn else ())):
                    return mvp_exact(loss, w, lam, v)
            if self.engine == "forward-difference":
                return mvp_forward_difference(loss, w, lam, v, self.fd_eps, base)
            return mvp_finite_difference(loss, w, lam, v, self.fd_eps)

    def _keeps_base(self, w: Params) -> bool:
        """Whether a real step's backward also yields ``grad_lam`` for the forward differences:
        not under autocast, whose low-precision values would swamp an eps-sized difference."""
        device_type = next(iter(w.values())).device.type
        return self.engine == "forward-difference" and not torch.is_autocast_enabled(device_type)

    def _real_step(self, module: nn.Module, opt: torch.optim.Optimizer, loss: Tensor,
                   leaves: Params | None = None, held: Params | None = None) -> bool:
        """Backward and optimiser step; False when a loss-scaled step overflowed (and was skipped).
        With ``leaves`` (exact-reverse: the loss was evaluated at these clones of the module's
        parameters) the gradient is taken from them, and ``held`` receives the through-gradients
        with their graph (loss-scaled) for the products."""
        opt.zero_grad(set_to_none=True)
        scaled = loss if self.scaler is None else self.scaler.scale(loss)
        if leaves is None:
            scaled.backward()
        else:
            held.update(self._backward_keeping_graph(scaled, leaves, named_params(module)))
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        params = [p for p in module.parameters() if p.grad is not None]
        if self.reduce is not None:
            self.reduce([p.grad for p in params])
        if self.grad_clip:
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is None:
            opt.step()
            return True
        finite = _all_finite([p.grad for p in params])
        self.scaler.step(opt)  # skips the step itself when unscale_ found an inf or nan
        return finite

    def _backward_keeping_graph(self, loss: Tensor, leaves: Params, params: Params) -> Params:
        """The real step's gradients from ``leaves`` into ``params``' ``.grad`` (detached copies,
        which unscaling, averaging and clipping may change in place); returns the through-
        parameters' gradients with their graph (``create_graph``; the others without one)."""
        through = [k for k in leaves if self.hyper_params is None or k in self.hyper_params]
        rest = [k for k in leaves if self.hyper_params is not None and k not in self.hyper_params]
        g_through = torch.autograd.grad(loss, [leaves[k] for k in through], create_graph=True, allow_unused=True)
        g_rest = torch.autograd.grad(loss, [leaves[k] for k in rest], retain_graph=True, allow_unused=True) if rest \
            else ()
        for k, g in zip(through, g_through):
            params[k].grad = None if g is None else g.detach().clone()
        for k, g in zip(rest, g_rest):
            params[k].grad = g
        return {k: g for k, g in zip(through, g_through) if g is not None and g.requires_grad}

    @staticmethod
    def _clone_leaves(params: Params) -> Params:
        """exact-reverse: the real step's loss is taken at copies, so that the optimiser's in-place
        step leaves the values saved in the graph alone."""
        return {k: t.detach().clone().requires_grad_() for k, t in params.items()}

    def lower_step(self, problem: TriLevelProblem) -> StepStats:
        """The two real steps of Algorithm 1 with the upper variables held fixed: W1 on loss1,
        ``a = weights(W1', upper)`` without a graph, W2 on loss2. No snapshots, no meta loss, no
        hypergradient: the steps between two meta-updates when they are taken every k-th step."""
        upper = detached(self.upper)
        loss1 = problem.loss1(named_params(self.w1), upper)
        if not torch.isfinite(loss1):
            return StepStats(float(loss1.detach()), math.nan, math.nan, math.nan, finite=False)
        if not self._real_step(self.w1, self.opt1, loss1):
            self.scaler.update()
            return StepStats(float(loss1.detach()), math.nan, math.nan, math.nan, finite=False)
        with frozen_bn_stats(*self._bn_layers), torch.no_grad():
            a = problem.weights(named_params(self.w1), upper)
        loss2 = problem.loss2(named_params(self.w2), a, upper)
        if not torch.isfinite(loss2):
            return StepStats(float(loss1.detach()), float(loss2.detach()), math.nan, math.nan, finite=False)
        stepped = self._real_step(self.w2, self.opt2, loss2)
        if self.scaler is not None:
            self.scaler.update()
        l1, l2, a_mean = _read_scalars(loss1, loss2, a.mean())
        return StepStats(l1, l2, math.nan, a_mean, finite=stepped)

    def step(self, problem: TriLevelProblem, update_upper: bool = True) -> StepStats:
        if self.engine == "exact-reverse" and update_upper:
            return self._step_reverse(problem)
        upper_fixed = detached(self.upper)

        # Stage I: real step of W1 (its weights before the step are kept for the MVP).
        with _stage("lfm.w1_step"):
            w1_old = snapshot(named_params(self.w1))
            scale1 = unroll_scale(self.opt1)
            keep1 = self._keeps_base(w1_old)
            upper1 = detached(self.upper, True) if keep1 else upper_fixed
            loss1 = problem.loss1(named_params(self.w1), upper1)
            if not torch.isfinite(loss1):
                return StepStats(float(loss1.detach()), math.nan, math.nan, math.nan, finite=False)
            if not self._real_step(self.w1, self.opt1, loss1):
                self.scaler.update()
                return StepStats(float(loss1.detach()), math.nan, math.nan, math.nan, finite=False)
            base1 = {k: t.grad for k, t in upper1.items() if t.grad is not None} if keep1 else None

        # Stage II: a from W1', then a real step of W2.
        with _stage("lfm.weights"):
            w1_new = snapshot(named_params(self.w1))
            for t in self._through(w1_new).values():
                t.requires_grad_()
            upper_live = detached(self.upper, True)
            with frozen_bn_stats(*self._bn_layers), torch.set_grad_enabled(not self.recompute_weights):
                a = problem.weights(w1_new, upper_live)
        with _stage("lfm.w2_step"):
            w2_old = snapshot(named_params(self.w2))
            scale2 = unroll_scale(self.opt2)
            keep2 = self._keeps_base(w2_old)
            a2 = a.detach().requires_grad_(keep2)
            upper2 = detached(self.upper, True) if keep2 else upper_fixed
            loss2 = problem.loss2(named_params(self.w2), a2, upper2)
            if not torch.isfinite(loss2):
                return StepStats(float(loss1.detach()), float(loss2.detach()), math.nan, math.nan, finite=False)
            stepped = self._real_step(self.w2, self.opt2, loss2)
            if self.scaler is not None:
                self.scaler.update()  # once for both real steps
            if not stepped:
                return StepStats(float(loss1.detach()), float(loss2.detach()), math.nan, math.nan, finite=False)
            base2 = None
            if keep2:
                base2 = {k: t.grad for k, t in upper2.items() if t.grad is not None}
                base2["__a__"] = a2.grad if a2.grad is not None else torch.zeros_like(a2)

        # Stage III: validation loss of W2'.
        with _stage("lfm.loss3"):
            w2_new = detached(named_params(self.w2))
            for t in self._through(w2_new).values():
                t.requires_grad_()
            upper3 = detached(self.upper, True)
            with frozen_bn_stats(*self._bn_layers):
                loss3 = problem.loss3(w2_new, upper3)
        if not update_upper:
            return StepStats(*_read_scalars(loss1, loss2, loss3, a.detach().mean()))
        grads = self.hypergradient(
            problem, loss3, w2_new, upper3, upper_fixed, a, w1_new, upper_live, w1_old, w2_old, scale1, scale2,
            base1, base2,
        )
        return self._apply(grads, loss1, loss2, loss3, a)

    def _step_reverse(self, problem: TriLevelProblem) -> StepStats:
        """One step of the ``exact-reverse`` engine. The real steps take their gradients with
        ``create_graph`` from cloned leaves and the optimiser applies the detached gradient; then
        ``W' = W'_real - s * (g - g.detach())`` (s = d W'/d g) has the real step's value exactly and
        the unrolled step's derivative, so one backward of the meta loss gives the hypergradient.
        That backward is split at W1' when dL/dW1' must be averaged across processes first, and at
        ``a`` when its graph is rebuilt (``recompute_weights``)."""
        single = self.w2 is self.w1
        split = self.reduce is not None or self.recompute_weights
        up = detached(self.upper, True)  # one copy: every term lands on it
        # the loss scale of both real steps' gradients (the scaler updates only after them)
        real_scale = self.scaler.get_scale() if self.scaler is not None else 1.0

        with _stage("lfm.w1_step"):
            s1 = unroll_scale(self.opt1) / real_scale
            leaves1 = self._clone_leaves(named_params(self.w1))
            loss1 = problem.loss1(leaves1, up)
            if not torch.isfinite(loss1):
                return StepStats(float(loss1.detach()), math.nan, math.nan, math.nan, finite=False)
            g1: Params = {}
            if not self._real_step(self.w1, self.opt1, loss1, leaves1, g1):
                self.scaler.update()
                return StepStats(float(loss1.detach()), math.nan, math.nan, math.nan, finite=False)
            # W1' (a snapshot where the single network's W2 step changes it in place)
            w1_real = (snapshot if single else detached)(named_params(self.w1))
            w1_graph = _unrolled(w1_real, g1, s1)
            # split: W1' enters as a leaf whose gradient is collected (and averaged) first
            w1_in = {k: t.detach().requires_grad_() for k, t in w1_graph.items()} if split else w1_graph
            w1_new = {**w1_real, **w1_in}

        with _stage("lfm.weights"):
            with frozen_bn_stats(*self._bn_layers), torch.set_grad_enabled(not self.recompute_weights):
                a = problem.weights(w1_new, up)
            a_in = a.detach().requires_grad_() if self.recompute_weights else a
        with _stage("lfm.w2_step"):
            s2 = unroll_scale(self.opt2) / real_scale
            if single:  # W2's step starts at W1': the graph goes on through it (a view of its own, so
                # the real gradient is loss2's through W2's start only, not through a as well)
                leaves2 = {k: w1_in[k].view_as(w1_in[k]) if k in w1_in else w1_real[k].detach().requires_grad_()
                           for k in w1_real}
            else:
                leaves2 = self._clone_leaves(named_params(self.w2))
            loss2 = problem.loss2(leaves2, a_in, up)
            if not torch.isfinite(loss2):
                return StepStats(float(loss1.detach()), float(loss2.detach()), math.nan, math.nan, finite=False)
            g2: Params = {}
            stepped = self._real_step(self.w2, self.opt2, loss2, leaves2, g2)
            if self.scaler is not None:
                self.scaler.update()  # once for both real steps
            if not stepped:
                return StepStats(float(loss1.detach()), float(loss2.detach()), math.nan, math.nan, finite=False)
            w2_real = detached(named_params(self.w2))
            # single network: dW2'/dW1' = I - s2 * Hessian(loss2); the identity is the start term
            w2_new = {**w2_real, **_unrolled(w2_real, g2, s2, start=leaves2 if single else None)}

        with _stage("lfm.loss3"), frozen_bn_stats(*self._bn_layers):
            loss3 = problem.loss3(w2_new, up)
        # the whole chain runs scaled (no fp16 underflow in the backward passes), unscaled at the end
        loss_scale = self.scaler.get_scale() if self.scaler is not None else 1.0
        names = list(self.upper)
        with _stage("lfm.meta_backward"):
            inputs = [*up.values(), *([a_in] if self.recompute_weights else []), *(w1_in.values() if split else [])]
            grads = list(torch.autograd.grad(loss3 * loss_scale if loss_scale != 1.0 else loss3, inputs,
                                             allow_unused=True))
            total = dict(zip(names, grads[: len(names)]))
            if split:
                h = dict(zip(w1_in, _zeros_for_none(grads[len(inputs) - len(w1_in):], w1_in.values())))
                if self.recompute_weights:  # through a(W1', upper), rebuilt now
                    da = grads[len(names)]
                    da = torch.zeros_like(a_in) if da is None else da
                    # (every through-parameter is live, as in the exact engine: a problem's weights_vjp
                    # may differentiate them all; those whose W1' has no upper path are dropped)
                    w1_live = {**w1_real, **{k: t.detach().requires_grad_() for k, t in self._through(w1_real).items()}}
                    with frozen_bn_stats(*self._bn_layers):
                        if hasattr(problem, "weights_vjp"):
                            vjp = problem.weights_vjp(w1_live, up, da)
                            ga = [vjp.get(k) for k in (*w1_in, *up)]
                        else:
                            targets = [w1_live[k] for k in w1_in] + list(up.values())
                            ga = torch.autograd.grad(problem.weights(w1_live, up), targets, grad_outputs=da,
                                                     allow_unused=True)
                    for k, g in zip(w1_in, ga):
                        if g is not None:
                            h[k] = h[k] + g
                    for k, g in zip(names, ga[len(w1_in):]):
                        if g is not None:
                            total[k] = g if total[k] is None else total[k] + g
                if self.reduce is not None:
                    # dL/dW1' sums over every process's training examples before it meets loss1's product
                    values = list(h.values())
                    self.reduce(values)
                    h = dict(zip(h, values))
                keys = [k for k in h if w1_graph[k].requires_grad]
                if keys:
                    more = torch.autograd.grad([w1_graph[k] for k in keys], list(up.values()),
                                               grad_outputs=[h[k] for k in keys], allow_unused=True)
                    for k, g in zip(names, more):
                        if g is not None:
                            total[k] = g if total[k] is None else total[k] + g
        total = {k: torch.zeros_like(self.upper[k]) if total[k] is None else total[k] / loss_scale if loss_scale != 1.0
                 else total[k] for k in names}
        if self.reduce is not None:
            values = [total[k] for k in names]
            self.reduce(values)
            total = dict(zip(names, values))
        return self._apply(total, loss1, loss2, loss3, a)

    def _apply(self, grads: Params, loss1: Tensor, loss2: Tensor, loss3: Tensor, a: Tensor) -> StepStats:
        """The upper step with a finite hypergradient; the statistics and the finiteness of the whole
        hypergradient (one reduction instead of a check per tensor: the encoder alone has 62) are
        read with one device sync."""
        l1, l2, l3, a_mean, finite = _read_scalars(loss1, loss2, loss3, a.detach().mean(),
                                                   _finite_flag(list(grads.values())))
        stats = StepStats(l1, l2, l3, a_mean, finite=bool(finite), grads=grads)
        if not stats.finite:
            if self.scaler is not None:  # the scaled hypergradient overflowed: lower the scale
                self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
            return stats  # the caller decides (skip and count); nothing was applied
        with _stage("lfm.upper_step"):
            self.upper_optimizer.zero_grad(set_to_none=True)
            for k, t in self.upper.items():
                t.grad = grads[k].to(t.dtype)
            self.upper_optimizer.step()
        return stats

    def hypergradient(
        self, problem, loss3, w2_new, upper3, upper_fixed, a, w1_new, upper_live, w1_old, w2_old, scale1, scale2,
        base1: Params | None = None, base2: Params | None = None,
    ) -> Params:
        names = list(self.upper)
        need_second = self.engine != "first-order"
        # every term is linear in dL/dW2' and the direct gradients: with a loss scale the whole
        # chain runs scaled (no fp16 underflow in the backward passes) and is unscaled at the end
        loss_scale = self.scaler.get_scale() if self.scaler is not None else 1.0
        w2_through, w1_through = self._through(w2_new), self._through(w1_new)
        with _stage("lfm.loss3_backward"):
            inputs = list(upper3.values()) + (list(w2_through.values()) if need_second else [])
            grads = torch.autograd.grad(loss3 * loss_scale, inputs, allow_unused=True)
        # terms are accumulated only for the upper variables they touch (an unused encoder
        # would otherwise cost several full-size zero tensors per step)
        total: dict[str, Tensor] = {k: g for k, g in zip(names, grads[: len(names)]) if g is not None}

        def add(terms: Params, scale: float = 1.0) -> None:
            # in place and without copies: an encoder's gradient is as large as the encoder
            # (45 MB for ResNet-18), and every copy alive during the next product adds to the peak
            for k, g in terms.items():
                if k not in self.upper or g is None:
                    continue
                if k in total:
                    total[k].add_(g, alpha=scale)
                else:
                    total[k] = g if scale == 1.0 else g.mul_(scale)

        if need_second:
            g2 = dict(zip(w2_through, _zeros_for_none(grads[len(names):], w2_through.values())))
            # through W2' = W2 - lr2 grad loss2(W2, a, upper)
            with _stage("lfm.mvp_w2"), self._fixed_trunk(problem):
                lam2 = {"__a__": a.detach(), **upper3}
                m2 = self.mvp(lambda w, lam: problem.loss2(w, lam["__a__"], lam), w2_old, lam2, g2, base2)
            da = -scale2 * m2.pop("__a__", torch.zeros_like(a))
            add(m2, -scale2)
            # through a(W1', upper)
            with _stage("lfm.weights_backward"):
                if self.recompute_weights and hasattr(problem, "weights_vjp"):
                    # the problem rebuilds its networks' graphs one at a time (lowest peak memory)
                    with frozen_bn_stats(*self._bn_layers):
                        vjp = problem.weights_vjp(w1_new, upper_live, da)
                    ga = [vjp.get(k) for k in (*w1_through, *upper_live)]
                else:
                    if self.recompute_weights:
                        with frozen_bn_stats(*self._bn_layers):
                            a = problem.weights(w1_new, upper_live)
                    targets = list(w1_through.values()) + list(upper_live.values())
                    ga = list(torch.autograd.grad(a, targets, grad_outputs=da, allow_unused=True))
            n1 = len(w1_through)
            ga[:n1] = _zeros_for_none(ga[:n1], w1_through.values())
            h = dict(zip(w1_through, ga[:n1]))
            if self.w2 is self.w1:
                # single network: W2's step starts at W1', so W1' also reaches W2' directly:
                # dW2'/dW1' = I - lr2 * Hessian(loss2); the Hessian-vector product is the MVP of
                # loss2(W + delta) with respect to delta at delta = 0.
                with _stage("lfm.hvp_single"), self._fixed_trunk(problem):
                    zero = {k: torch.zeros_like(w2_old[k]) for k in g2}
                    a_fixed = a.detach()
                    hv = self.mvp(
                        lambda w, d: problem.loss2({k: w[k] + d[k] if k in d else w[k] for k in w}, a_fixed,
                                                   upper_fixed),
                        w2_old, zero, g2,
                    )
                h = {k: h[k] + g2[k] - scale2 * hv.get(k, torch.zeros_like(h[k])) for k in h}
            if self.reduce is not None:
                # dL/dW1' sums over every process's training examples before it meets loss1's MVP
                values = list(h.values())
                self.reduce(values)
                h = dict(zip(h, values))
            add(dict(zip(names, ga[n1:])))
            # through W1' = W1 - lr1 grad loss1(W1, upper)
            with _stage("lfm.mvp_w1"), self._fixed_trunk(problem):
                add(self.mvp(problem.loss1, w1_old, upper3, h, base1), -scale1)
        total = {k: total[k] / loss_scale if k in total else torch.zeros_like(self.upper[k]) for k in names}
        if self.reduce is not None:
            values = [total[k] for k in names]
            self.reduce(values)
            total = dict(zip(names, values))
        return total
