"""The real optimiser steps of Algorithm 1 and what every engine is handed.

:class:`RealStep` is the one SGD step of W1 or W2 (fp16 loss scaling, cross-process averaging,
gradient clipping and the non-finite guard); :class:`Setup` is the solver's fixed part that
an engine reads; :class:`Hypergradient` is what an engine returns.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from lfm_core.hypergradient.tensors import Params, finite_flag


@dataclass
class StepStats:
    loss1: float
    loss2: float
    loss3: float
    a_mean: float
    finite: bool = True
    grads: Params = field(default_factory=dict, repr=False)


class SkippedStep(Exception):
    """A real step met a non-finite loss or an overflowed loss-scaled gradient and was not taken:
    the rest of the iteration is skipped. ``losses`` are the losses evaluated so far."""

    def __init__(self, losses: Sequence[Tensor], overflow: bool):
        super().__init__("non-finite step")
        self.losses, self.overflow = tuple(losses), overflow

    def stats(self, a_mean: float = math.nan) -> StepStats:
        values = [float(loss.detach()) for loss in self.losses]
        loss1, loss2, loss3 = values + [math.nan] * (3 - len(values))
        return StepStats(loss1, loss2, loss3, a_mean, finite=False)


def _grads(params: Iterable[Tensor]) -> list[Tensor]:
    """The gradients of those of ``params`` that have one."""
    return [p.grad for p in params if p.grad is not None]


def unroll_scale(optimizer: torch.optim.Optimizer) -> float:
    """d(W')/d(grad) of one optimiser step: lr, times (1 + momentum) for Nesterov SGD."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if isinstance(optimizer, torch.optim.SGD) and group.get("nesterov"):
        lr *= 1.0 + float(group.get("momentum", 0.0))
    return lr


@dataclass(frozen=True)
class RealStep:
    """One optimiser step of a learner. ``scaler``: fp16 loss scaling (None: off); ``reduce``
    averages gradients across processes (None: one process); ``grad_clip``: max gradient norm."""

    scaler: torch.amp.GradScaler | None = None
    reduce: Callable[[list[Tensor]], None] | None = None
    grad_clip: float | None = None

    def __call__(self, opt: torch.optim.Optimizer, loss: Tensor, params: Iterable[Tensor],
                 done: Sequence[Tensor] = (), last: bool = False,
                 backward: Callable[[Tensor], None] | None = None) -> None:
        """Backward of ``loss`` and a step of ``opt`` on the gradients of ``params``; raises
        :class:`SkippedStep` (with ``done``, the losses before this one) on a non-finite loss or an
        overflowed scaled step. The scaler is updated after an overflow and after the ``last`` real
        step of an iteration. ``backward`` replaces ``loss.backward()`` (it gets the scaled loss)."""
        if not torch.isfinite(loss):
            raise SkippedStep((*done, loss), overflow=False)
        params = list(params)
        opt.zero_grad(set_to_none=True)
        scaled = loss if self.scaler is None else self.scaler.scale(loss)
        if backward is None:
            scaled.backward()
        else:
            backward(scaled)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        with_grad = [p for p in params if p.grad is not None]
        if self.reduce is not None:
            self.reduce(_grads(with_grad))
        if self.grad_clip:
            nn.utils.clip_grad_norm_(with_grad, self.grad_clip)
        if self.scaler is None:
            opt.step()
            return
        finite = bool(finite_flag(_grads(with_grad)))
        self.scaler.step(opt)  # skips the step itself when unscale_ found an inf or nan
        if last or not finite:
            self.scaler.update()  # once for both real steps
        if not finite:
            raise SkippedStep((*done, loss), overflow=True)

    @property
    def loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler is not None else 1.0


@dataclass(frozen=True)
class Setup:
    """The solver's fixed part, as the engines read it (see :class:`lfm_core.solver.TriLevelSolver`)."""

    w1: nn.Module
    w2: nn.Module
    upper: Params
    opt1: torch.optim.Optimizer
    opt2: torch.optim.Optimizer
    real_step: RealStep
    bn_layers: tuple[nn.Module, ...]
    hyper_params: frozenset[str] | None
    recompute_weights: bool
    plain_bn: bool
    fd_eps: float

    @property
    def single(self) -> bool:
        """W2 is W1 (single-network variant): W2's step starts at W1'."""
        return self.w2 is self.w1

    def through(self, params: Params) -> Params:
        """The entries of ``params`` the hypergradient flows through."""
        if self.hyper_params is None:
            return params
        return {k: t for k, t in params.items() if k in self.hyper_params}

    def fixed_trunk(self, problem) -> contextlib.AbstractContextManager:
        """The problem's ``fixed_trunk`` with the layer-wise approximation, else nothing."""
        if self.hyper_params is None or not hasattr(problem, "fixed_trunk"):
            return contextlib.nullcontext()
        return problem.fixed_trunk()


@dataclass(frozen=True)
class Hypergradient:
    """An engine's result: d(loss3)/d(upper) for every upper name, and the step's values."""

    grads: Params
    loss1: Tensor
    loss2: Tensor
    loss3: Tensor
    a: Tensor
