"""Small tensor helpers shared by the solver and the engines: parameter dicts, batch-norm
contexts, profiler ranges and finiteness checks read with one device sync."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.profiler import record_function

Params = dict[str, Tensor]


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
        assert self.running_var is not None  # tracked with running_mean
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
                setattr(m, "forward", _plain_batch_norm.__get__(m))  # an instance attribute, deleted after
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


def zeros_for_none(grads: Iterable[Tensor | None], like: Iterable[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def stage(name: str) -> contextlib.AbstractContextManager:
    """A torch.profiler range for one stage of the step, only while a profiler records (a range
    has a cost that a small model's step notices)."""
    return record_function(name) if torch.autograd.profiler._is_profiler_enabled else contextlib.nullcontext()


def finite_flag(tensors: list[Tensor]) -> Tensor | bool:
    """Whether every entry is finite, as one reduction left on the device (an inf and a -inf sum
    to nan, still caught)."""
    if not tensors:
        return True
    return torch.isfinite(torch.stack([t.detach().float().sum() for t in tensors])).all()


def read_scalars(*values: Tensor | bool) -> list[float]:
    """Several 0-d tensors as Python floats with one device sync (each float() is one); the
    values are those float() would give (every float dtype converts exactly to float64)."""
    device = next(v.device for v in values if isinstance(v, Tensor))
    return torch.stack([v.detach().double() if isinstance(v, Tensor)
                        else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values]).tolist()
