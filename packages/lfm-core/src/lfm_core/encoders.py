"""Image encoders V for the LFM weighting: modules mapping [B, 3, H, W] to [B, D] features.

Registered factories (``lfm_core.registries.ENCODERS``) take ``pretrained: bool = False``
and return a module with a ``num_features`` attribute; ``create_encoder`` adds loading of
a local weights file. Nothing is ever downloaded: ImageNet weights come from the local
Hugging Face cache only.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lfm_core.errors import DataNotFoundError, LFMError, UsageError
from lfm_core.registries import ENCODERS

PRETRAINED_TAG = "tv_in1k"  # torchvision's ImageNet weights, as the paper's ResNet encoders
HEAD_PREFIXES = ("fc.", "classifier.", "head.")  # classifier keys an encoder file may carry


class SmallCNN(nn.Module):
    """Three 3x3 conv-BN-ReLU blocks (16, 32, 64 channels) and global average pooling."""

    def __init__(self, in_chans: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@ENCODERS.register("smallcnn")
def smallcnn(pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise UsageError("encoder 'smallcnn' has no pretrained weights; use pretrained=False or give a weights file")
    return SmallCNN()


class PixelEncoder(nn.Module):
    """Fixed features: each image's pixels, centred on their own mean, L2-normalised, times ``scale``.

    No parameters, no download, no labels: the dot product of two images' features is ``scale**2``
    times the correlation of their pixels, so the LFM attention ``softmax_j`` picks the meta
    images that look most alike. On the cpu profile's digits this is the informative, label-free
    stand-in for the paper's ImageNet-pretrained encoder (a random CNN's features are not).
    """

    def __init__(self, scale: float = 30.0):
        super().__init__()
        self.scale = float(scale)
        self.num_features = 0  # set by the first call (depends on the image size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        self.num_features = flat.shape[1]
        return self.scale * torch.nn.functional.normalize(flat - flat.mean(1, keepdim=True), dim=1)


@ENCODERS.register("pixels")
def pixels(pretrained: bool = False) -> nn.Module:
    if pretrained:
        raise UsageError("encoder 'pixels' is fixed (no weights to load); use pretrained=False")
    return PixelEncoder()


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


@contextmanager
def _hf_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for one call (huggingface_hub also reads it once at import)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    hc: Any  # huggingface_hub.constants, or None without it; its flag is set and restored
    try:
        import huggingface_hub.constants as hc
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        hc = None
    old_const = getattr(hc, "HF_HUB_OFFLINE", None)
    if hc is not None:
        hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const


def cached_pretrained_file(tag: str) -> str | None:
    """Path of timm's weights for ``tag`` (e.g. "resnet18.tv_in1k") in the local HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _timm_factory(arch: str):
    def factory(pretrained: bool = False) -> nn.Module:
        import timm

        if not pretrained:
            return timm.create_model(arch, pretrained=False, num_classes=0)
        tag = f"{arch}.{PRETRAINED_TAG}"
        path = cached_pretrained_file(tag)
        if path is None:
            raise DataNotFoundError(
                f"no ImageNet weights for timm model {tag!r} in the Hugging Face cache {hf_cache_dir()} "
                f"(repo timm/{tag}); on a machine with internet run "
                f"`python -c \"import timm; timm.create_model('{tag}', pretrained=True)\"` and copy that cache "
                f"here (or set HF_HOME), or pass --encoder-weights FILE"
            )
        # Load the cached file directly so timm can never fall back to a download URL.
        with _hf_offline():
            return timm.create_model(tag, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": path})

    factory.__name__ = arch
    factory.__doc__ = f"timm {arch} without its classifier (pooled features); pretrained = {arch}.{PRETRAINED_TAG}."
    return factory


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    ENCODERS.add(_arch, _timm_factory(_arch))


def encoder_label(name: str, pretrained: bool, weights: dict[str, Any] | None = None, paper: str = "ResNet-18") -> str:
    """What an encoder started from, for reports: a weights file (``identity.file_digest``), the
    pretrained weights, fixed pixel features or random init (then the paper's ``paper`` encoder)."""
    if weights:
        return f"{name}, weights from {Path(weights['path']).name} (sha256 {weights['sha256'][:8]})"
    kind = "fixed, label-free" if name == "pixels" else "pretrained" if pretrained else "random init"
    return f"{name}, {kind}" + ("" if pretrained else f" (paper: ImageNet-pretrained {paper})")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch (.pth/.pt, weights only) file.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and a DDP ``module.`` prefix.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataNotFoundError(f"encoder weights file {p} does not exist; pass an existing .pth/.pt/.safetensors file")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if p.suffix == ".safetensors":
            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    # corrupt or truncated file, or a pickle holding more than tensors (weights_only refuses it)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LFMError(f"cannot read encoder weights file {p}: {msg}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"encoder weights file {p} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, path: str | os.PathLike, name: str = "encoder") -> nn.Module:
    """Load a weights file into ``model`` strictly (classifier keys the encoder lacks are dropped)."""
    sd = read_state_dict(path)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(HEAD_PREFIXES)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} keys (e.g. {keys[0]})")
        raise UsageError(f"weights file {path} does not match encoder {name!r}: {', '.join(parts)}")
    model.load_state_dict(sd, strict=True)
    return model


def create_encoder(
    name: str = "resnet18", pretrained: bool = False, weights: str | os.PathLike | None = None
) -> nn.Module:
    """An encoder mapping [B, 3, H, W] to [B, num_features].

    ``weights`` (a local state-dict file) wins over ``pretrained``; ``pretrained=True`` alone
    uses timm's ``<name>.tv_in1k`` weights from the local Hugging Face cache.
    """
    factory = ENCODERS.get(name)
    model = factory(pretrained=bool(pretrained) and weights is None)
    if weights is not None:
        load_weights(model, weights, name)
    if not hasattr(model, "num_features"):
        raise LFMError(f"encoder {name!r} has no num_features attribute")
    return model
