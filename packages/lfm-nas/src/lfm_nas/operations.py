"""The eight DARTS primitives (Liu et al., 2019), as in the official ``operations.py``.

Every factory in :data:`OPS` takes ``(C, stride, affine)``; the search supernets build them
with ``affine=False`` (batch norm without learnable scale/shift), the evaluation networks
with ``affine=True``.
"""

from __future__ import annotations

from lfm_core.errors import check_choice

from typing import Callable

import torch
from torch import Tensor, nn

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class SearchBatchNorm2d(nn.BatchNorm2d):
    """Batch norm of the search supernets, safe under reverse-over-forward differentiation.

    PyTorch's fused ``batch_norm`` has a forward-mode (JVP) formula built on the saved batch
    statistics, whose reverse-mode derivative is not propagated: differentiating a JVP through
    a training-mode batch norm with respect to anything upstream of it (the alphas of a
    supernet) gives wrong numbers (checked on torch 2.14). ``lfm_core.hypergradient.products.mvp_exact`` is
    exactly such a reverse-over-forward product. With ``composite=True`` (the default) the
    batch statistics are computed with plain tensor ops, whose derivatives of every order are
    right; ``composite=False`` uses the fused kernel (faster; fine for the finite-difference
    and first-order engines). Running statistics are updated exactly as ``nn.BatchNorm2d``.
    """

    composite: bool

    def __init__(self, num_features: int, affine: bool = True, composite: bool = True, **kw):
        super().__init__(num_features, affine=affine, **kw)
        self.composite = composite

    def forward(self, x: Tensor) -> Tensor:
        use_batch_stats = self.training or self.running_mean is None
        if not (self.composite and use_batch_stats):
            return super().forward(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                n = x.numel() / x.shape[1]
                self.running_mean.mul_(1 - m).add_(mean.detach().flatten(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach().flatten() * (n / max(n - 1, 1)), alpha=m)
        return y


def batch_norm(C: int, affine: bool) -> nn.BatchNorm2d:
    """``affine=False`` is the search setting: :class:`SearchBatchNorm2d`; else ``nn.BatchNorm2d``."""
    return nn.BatchNorm2d(C, affine=True) if affine else SearchBatchNorm2d(C, affine=False)


def set_composite_bn(module: nn.Module, composite: bool) -> None:
    """Switch every :class:`SearchBatchNorm2d` in ``module`` to the composite or fused kernel."""
    for m in module.modules():
        if isinstance(m, SearchBatchNorm2d):
            m.composite = composite


def prepare_bn_for_engine(module: nn.Module, exact: bool) -> None:
    """Composite batch norm where the exact (reverse-over-forward) engine needs it, the fused
    kernel otherwise; warns about batch-norm layers that cannot be made exact-safe."""
    set_composite_bn(module, exact)
    if exact:
        bad = [n for n, m in module.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SearchBatchNorm2d)]
        if bad:
            import warnings

            warnings.warn(
                f"exact hypergradient engine with fused batch norm ({', '.join(bad[:3])}...): PyTorch's batch-norm "
                "JVP is not differentiable in reverse mode, so the hypergradient through these layers is wrong; "
                "use lfm_nas.operations.SearchBatchNorm2d or the finite-difference engine",
                RuntimeWarning, stacklevel=3,
            )


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            batch_norm(C_out, affine),
        )


class DilConv(nn.Sequential):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            batch_norm(C_out, affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise, pointwise, BN) blocks; only the first has the stride."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            batch_norm(C_in, affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            batch_norm(C_out, affine),
        )


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class Zero(nn.Module):
    """The 'none' operation: zeros of the output shape (kept differentiable, as in DARTS)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset stride-2 1x1 convolutions (C_out must be even)."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = batch_norm(C_out, affine)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        # pad odd sizes so the two branches agree (a no-op for the usual even sizes)
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}


def make_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    check_choice("operation", name, OPS)
    return OPS[name](C, stride, affine)
