"""Evaluation networks built from a genotype (DARTS' ``model.py``), drop path and cutout.

``NetworkCIFAR(C=36, num_classes=10, layers=20, auxiliary=True, genotype=...)`` and
``NetworkImageNet(C=48, num_classes=1000, layers=14, ...)``; both return
``(logits, logits_aux)`` where ``logits_aux`` is ``None`` unless training with the
auxiliary head (weight 0.4 in the loss: :func:`eval_loss`). Width, depth and image size
are arguments, so a CPU profile can use e.g. ``C=8, layers=5`` on 16x16 images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfm_nas.genotypes import Genotype
from lfm_nas.operations import FactorizedReduce, Identity, ReLUConvBN, make_op


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole examples of a branch with probability ``drop_prob`` (rescaling the rest)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def cutout(img: Tensor, length: int = 16, generator: torch.Generator | None = None) -> Tensor:
    """DeVries & Taylor cutout as in DARTS: one ``length`` x ``length`` square (clipped at the
    border, centre uniform over the image) set to zero; ``img`` is ``CHW`` or a batch ``NCHW``
    (one square per image). Returns a new tensor."""
    if length <= 0:
        return img
    single = img.dim() == 3
    x = img.unsqueeze(0) if single else img
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    ys = torch.arange(h)[None, :]
    xs = torch.arange(w)[None, :]
    in_y = (ys >= (cy[:, None] - length // 2).clamp(0, h)) & (ys < (cy[:, None] + length // 2).clamp(0, h))
    in_x = (xs >= (cx[:, None] - length // 2).clamp(0, w)) & (xs < (cx[:, None] + length // 2).clamp(0, w))
    mask = ~(in_y[:, :, None] & in_x[:, None, :])
    out = x * mask[:, None].to(device=x.device, dtype=x.dtype)
    return out[0] if single else out


class EvalCell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        op_names, indices = zip(*pairs)
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = list(indices)
        self._ops = nn.ModuleList()
        for name, index in zip(op_names, indices):
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(make_op(name, C, stride, True))

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            hs = []
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


class _AuxHead(nn.Module):
    """Auxiliary classifier after the second reduction (2/3 depth).

    The canonical input is 8x8 (CIFAR, pooled 5/3 to 2x2) or 7x7 (ImageNet, 5/2 to 2x2); any
    other size is average-pooled adaptively to 2x2 so shrunken profiles work.
    """

    def __init__(self, C: int, num_classes: int, size: int, stride: int, bn_last: bool):
        super().__init__()
        self.size, self.stride = size, stride
        layers: list[nn.Module] = [nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
                                   nn.Conv2d(128, 768, 2, bias=False)]
        if bn_last:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            x = F.avg_pool2d(x, 5, stride=self.stride, padding=0, count_include_pad=False)
        else:
            x = F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadCIFAR(_AuxHead):
    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, size=8, stride=3, bn_last=True)


class AuxiliaryHeadImageNet(_AuxHead):
    def __init__(self, C: int, num_classes: int):
        # the official code has no BN after the 768-channel convolution here
        super().__init__(C, num_classes, size=7, stride=2, bn_last=False)


class _EvalNetwork(nn.Module):
    def _build_cells(self, genotype, C, layers, C_prev_prev, C_prev, reduction_prev, num_classes, aux_cls):
        self._layers = layers
        self.cells = nn.ModuleList()
        C_curr = C
        C_aux = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_aux = C_prev
        self.auxiliary_head = aux_cls(C_aux, num_classes) if self._auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _run_cells(self, s0: Tensor, s1: Tensor) -> tuple[Tensor, Tensor | None]:
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


class NetworkCIFAR(_EvalNetwork):
    def __init__(self, C: int = 36, num_classes: int = 10, layers: int = 20, auxiliary: bool = True,
                 genotype: Genotype | None = None, drop_path_prob: float = 0.2, stem_multiplier: int = 3,
                 in_channels: int = 3):
        super().__init__()
        if genotype is None:
            raise ValueError("NetworkCIFAR needs a genotype")
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self._build_cells(genotype, C, layers, C_stem, C_stem, False, num_classes, AuxiliaryHeadCIFAR)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_EvalNetwork):
    def __init__(self, C: int = 48, num_classes: int = 1000, layers: int = 14, auxiliary: bool = True,
                 genotype: Genotype | None = None, drop_path_prob: float = 0.0, in_channels: int = 3):
        super().__init__()
        if genotype is None:
            raise ValueError("NetworkImageNet needs a genotype")
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=False), nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        self._build_cells(genotype, C, layers, C, C, True, num_classes, AuxiliaryHeadImageNet)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._run_cells(s0, s1)


def eval_loss(logits: Tensor, logits_aux: Tensor | None, y: Tensor, auxiliary_weight: float = 0.4,
              label_smoothing: float = 0.0) -> Tensor:
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if logits_aux is not None and auxiliary_weight:
        loss = loss + auxiliary_weight * F.cross_entropy(logits_aux, y, label_smoothing=label_smoothing)
    return loss

