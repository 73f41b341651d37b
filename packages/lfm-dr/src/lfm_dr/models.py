"""CIFAR / ANIMAL-10N classifiers of the data-reweighting experiments.

* ``resnet32``: the CIFAR ResNet of He et al. (2016) as used by Meta-Weight-Net
  (3 stages x 5 BasicBlocks, 16/32/64 channels, option-A shortcuts; ~0.46 M parameters).
* ``wrn28_10``: Wide ResNet-28-10 (Zagoruyko & Komodakis 2016) with the correct stage
  strides 1, 2, 2 (the official LFM code had a stride bug).
* ``vgg19_bn``: VGG19 with batch norm; the classifier is sized for the input resolution
  (32x32 for CIFAR, 64x64 for ANIMAL-10N).

Every network takes ``[B, 3, H, W]`` and returns logits. They are built from standard
``nn`` layers and out-of-place ``F.relu`` only, so ``torch.func.functional_call`` and
forward-mode AD (``torch.func.jvp``) work through them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lfm_core.errors import UsageError
from lfm_core.registries import MODELS

__all__ = ["CifarResNet", "WideResNet", "VGG", "resnet32", "wrn28_10", "vgg19_bn"]


def _kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------
# ResNet-32 (He et al. 2016, CIFAR variant)
# ------------------------------------------------------------------------------------
class _ShortcutA(nn.Module):
    """Option A: subsample by the stride and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ShortcutA(in_planes, planes, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            raise UsageError(f"unknown ResNet shortcut {shortcut!r}. Valid choices: A, B.")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, blocks_per_stage: int = 5, shortcut: str = "A"):
        super().__init__()
        if width < 1 or blocks_per_stage < 1:
            raise UsageError("ResNet width and blocks_per_stage must be positive")
        channels = [width, 2 * width, 4 * width]  # 16/32/64 scaled by width/16
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        layers, in_planes = [], channels[0]
        for i, planes in enumerate(channels):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(channels[2], num_classes)
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("resnet32")
def resnet32(num_classes: int = 10, width: int = 16, blocks_per_stage: int = 5, shortcut: str = "A") -> CifarResNet:
    """ResNet-32 for 32x32 inputs; ``width``/``blocks_per_stage`` shrink it for tests and CPU runs."""
    return CifarResNet(num_classes, width, blocks_per_stage, shortcut)


# ------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis 2016)
# ------------------------------------------------------------------------------------
class WideBasic(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 + shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        out = self.conv1(o)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, num_classes: int = 10, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise UsageError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for b in range(n):
                blocks.append(WideBasic(in_planes, planes, stride if b == 0 else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@MODELS.register("wrn28_10")
def wrn28_10(num_classes: int = 10, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10; ``depth``/``widen_factor`` shrink it (e.g. WRN-10-1 for tests)."""
    return WideResNet(num_classes, depth, widen_factor, dropout)


# ------------------------------------------------------------------------------------
# VGG19-BN (Simonyan & Zisserman 2015)
# ------------------------------------------------------------------------------------
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with batch norm; the single linear classifier reads the flattened final feature map,
    whose size follows from ``image_size`` (1x1 at 32x32, 2x2 at 64x64)."""

    def __init__(self, cfg=VGG19_CFG, num_classes: int = 10, width_mult: float = 1.0, image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, side = 3, int(image_size)
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                side //= 2
            else:
                out_ch = max(1, int(round(v * width_mult)))
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
                in_ch = out_ch
        if side < 1:
            raise UsageError(f"VGG needs images of at least 32x32 pixels, got image_size={image_size}")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * side * side, num_classes)
        _kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@MODELS.register("vgg19_bn")
def vgg19_bn(num_classes: int = 10, width_mult: float = 1.0, image_size: int = 32) -> VGG:
    """VGG19-BN; ``image_size=64`` for ANIMAL-10N, ``width_mult`` < 1 shrinks the channels."""
    return VGG(VGG19_CFG, num_classes, width_mult, image_size)
