"""The tri-level LFM solver: Algorithm 1 of the paper and its hypergradient.

One step, given the batches bound into a :class:`TriLevelProblem`:

1. real SGD step of W1 on ``loss1(W1, upper)``              -> W1'
2. ``a = weights(W1', upper)``  (u at W1', encoder V, r)
3. real SGD step of W2 on ``loss2(W2, a, upper)``           -> W2'
4. ``L = loss3(W2', upper)``; the upper variables (B, V, r) descend dL/d(upper).

The hypergradient follows the chain W2' -> (a, upper) -> (W1', V, r, upper) -> upper; the
engines that compute it are the functions of :data:`lfm_core.hypergradient.ENGINES`.

The unrolled steps are the real optimiser steps (Algorithm 1 updates W1 and W2 anyway), so
the derivative of W' with respect to its gradient is ``lr`` for plain or momentum SGD
(``lr * (1 + momentum)`` with Nesterov): momentum buffers and weight decay do not depend on
the upper variables. With other optimisers the hypergradient is the usual one-step
approximation. BatchNorm running statistics are touched only by the two real steps.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Protocol

import torch
from torch import Tensor, nn

from lfm_core.hypergradient import ENGINES, EXACT_ENGINES, Engine, check_engine, default_fd_eps
from lfm_core.hypergradient.forward import unroll
from lfm_core.hypergradient.steps import Hypergradient, RealStep, Setup, SkippedStep, StepStats
from lfm_core.hypergradient.tensors import Params, detached, finite_flag, frozen_bn_stats, named_params, read_scalars, stage

__all__ = ["ENGINES", "EXACT_ENGINES", "Engine", "Params", "StepStats", "TriLevelProblem", "TriLevelSolver",
           "check_engine", "frozen_bn_stats", "named_params"]


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


def _check_hyper_params(hyper_params: Iterable[str] | None, w1: nn.Module, w2: nn.Module) -> frozenset[str] | None:
    if hyper_params is None:
        return None
    names = frozenset(hyper_params)
    for name, module in (("w1", w1), ("w2", w2)):
        unknown = names - set(dict(module.named_parameters()))
        if unknown or not names:
            raise ValueError(f"hyper_params {sorted(unknown) or '(empty)'} are not parameters of {name}")
    return names


class TriLevelSolver:
    """Runs Algorithm 1 one step at a time with the hypergradient engine ``engine``.

    ``upper`` maps names to leaf tensors (or parameters) that ``upper_optimizer`` updates.
    ``w2`` may be the same module as ``w1`` (single-network variant): then the W2 step
    starts from W1'. ``modules`` lists every module whose batch norm must be frozen
    during virtual passes (the networks and the encoder). ``reduce`` averages gradients
    across processes (None: one process).

    ``upper_reaches_batch_norm``: the exact engine differentiates forward-mode tangents, which
    fused batch norm gets wrong when an upper variable reaches a batch-norm input (architecture
    weights do), so it is swapped for elementary ops; a problem whose upper variables only weight
    the per-example losses (data reweighting) may pass False and keep the faster fused kernel.
    ``recompute_weights``: memory for time: ``a = weights(W1', upper)`` is built without a graph
    and rebuilt when the hypergradient needs it, so at most one network's activations are held.
    ``grad_scaler``: fp16 autocast; the real steps' losses and loss3 are scaled against underflow,
    a step whose gradients overflow is skipped and the scale lowered.
    ``hyper_params``: a layer-wise approximation: the hypergradient flows through these parameters
    of W1 and W2 only (e.g. the classifier); the others count as constants of the unrolled steps.
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
        self.w1, self.w2, self.upper = w1, w2, upper
        self.opt1, self.opt2, self.upper_optimizer = opt1, opt2, upper_optimizer
        self.engine = check_engine(engine)
        self.hyper_params = _check_hyper_params(hyper_params, w1, w2)
        scaler = grad_scaler if grad_scaler is not None and grad_scaler.is_enabled() else None
        self.real_step = RealStep(scaler, reduce, grad_clip)
        # the batch-norm layers, found once: each virtual pass freezes their statistics, and
        # walking every module tree several times a step is a visible cost for small models
        layers = {id(m): m for mod in (w1, w2, *modules) for m in mod.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        self.setup = Setup(w1, w2, upper, opt1, opt2, self.real_step, tuple(layers.values()), self.hyper_params,
                           recompute_weights, upper_reaches_batch_norm,
                           fd_eps if fd_eps is not None else default_fd_eps(engine))

    def step(self, problem: TriLevelProblem, update_upper: bool = True) -> StepStats:
        """One iteration of Algorithm 1; without ``update_upper`` the meta loss is evaluated but
        no hypergradient taken. A non-finite step returns stats with ``finite=False``."""
        try:
            if not update_upper:
                u = unroll(self.setup, problem)
                loss1, loss2, loss3, a_mean = read_scalars(u.loss1, u.loss2, u.loss3, u.a.detach().mean())
                return StepStats(loss1, loss2, loss3, a_mean)
            result = ENGINES[self.engine](self.setup, problem)
        except SkippedStep as skipped:
            return skipped.stats()
        return self._apply(result)

    def lower_step(self, problem: TriLevelProblem) -> StepStats:
        """The two real steps of Algorithm 1 with the upper variables held fixed: W1 on loss1,
        ``a = weights(W1', upper)`` without a graph, W2 on loss2. No snapshots, no meta loss, no
        hypergradient: the steps between two meta-updates when they are taken every k-th step."""
        upper = detached(self.upper)
        a = None
        try:
            loss1 = problem.loss1(named_params(self.w1), upper)
            self.real_step(self.opt1, loss1, self.w1.parameters())
            with frozen_bn_stats(*self.setup.bn_layers), torch.no_grad():
                a = problem.weights(named_params(self.w1), upper)
            loss2 = problem.loss2(named_params(self.w2), a, upper)
            self.real_step(self.opt2, loss2, self.w2.parameters(), done=(loss1,), last=True)
        except SkippedStep as skipped:
            # the weights W2 was stepped with are reported even when that step overflowed
            return skipped.stats(float(a.mean()) if skipped.overflow and a is not None else math.nan)
        l1, l2, a_mean = read_scalars(loss1, loss2, a.mean())
        return StepStats(l1, l2, math.nan, a_mean)

    def _apply(self, result: Hypergradient) -> StepStats:
        """The upper step with a finite hypergradient; the statistics and the finiteness of the whole
        hypergradient (one reduction instead of a check per tensor) are read with one device sync."""
        grads = result.grads
        l1, l2, l3, a_mean, finite = read_scalars(result.loss1, result.loss2, result.loss3, result.a.detach().mean(),
                                                  finite_flag(list(grads.values())))
        stats = StepStats(l1, l2, l3, a_mean, finite=bool(finite), grads=grads)
        scaler = self.real_step.scaler
        if not stats.finite:
            if scaler is not None:  # the scaled hypergradient overflowed: lower the scale
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            return stats  # the caller decides (skip and count); nothing was applied
        with stage("lfm.upper_step"):
            self.upper_optimizer.zero_grad(set_to_none=True)
            for k, t in self.upper.items():
                t.grad = grads[k].to(t.dtype)
            self.upper_optimizer.step()
        return stats
