"""Train a model with LFM reweighting (or any registered method) on your own data.

    from lfm_dr import fit
    result = fit(train_set, meta_set, num_classes=10, test=test_set, epochs=30)
    model = result.model            # W2, the network trained on the LFM-weighted loss
    result.weights                  # b_i per training example (what B learned)

``train_set``, ``meta_set`` and ``test_set`` are any map-style datasets whose items start with
``(image_tensor, label)``; the meta set is a small clean subset (e.g. 10-100 per class).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from lfm_core.runner import RunContext
from lfm_dr.train import TrainConfig, build_method, device_of, train_dr


class _WithLabels(Dataset):
    """Exposes ``labels`` of any dataset whose items start with (x, y)."""

    def __init__(self, data: Dataset):
        self.data = data
        labels = getattr(data, "labels", None) if not isinstance(data, _WithLabels) else data.labels
        if labels is None:
            labels = [int(data[i][1]) for i in range(len(data))]
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        item = self.data[i]
        return item[0], int(item[1]), i


@dataclass
class FitResult:
    model: nn.Module
    models: dict[str, nn.Module]
    metrics: dict[str, Any]
    weights: torch.Tensor | None
    run_dir: Path
    encoder: nn.Module | None = None  # LFM's trained V (None for other methods)
    r: torch.Tensor | None = None  # LFM's r_j per meta example


def fit(
    train: Dataset,
    meta: Dataset,
    *,
    num_classes: int,
    test: Dataset | None = None,
    model: str = "resnet32",
    model_kwargs: dict[str, Any] | None = None,
    method: str = "lfm",
    epochs: int = 30,
    batch_size: int = 100,
    lr: float = 0.1,
    seed: int = 0,
    run_dir: str | Path | None = None,
    device: str | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` (a registered name, see ``lfm-bench list -r models``) with ``method``.

    ``options`` go to the method, e.g. ``encoder="resnet18", pretrained=True,
    encoder_weights="resnet18.pth", engine="finite-difference"`` for LFM. A ``run_dir``
    makes the run resumable (checkpoint every epoch); without one a temporary folder is used.
    """
    options.setdefault("pretrained", False)
    options.setdefault("encoder", "smallcnn")
    tr, me = _WithLabels(train), _WithLabels(meta)
    te = _WithLabels(test) if test is not None else me
    splits = SimpleNamespace(train=tr, meta=me, test=te, num_classes=num_classes, info={})
    cfg = TrainConfig(method=method, model=model, model_kwargs=model_kwargs or {}, epochs=epochs,
                      batch_size=batch_size, meta_batch_size=batch_size, lr=lr, device=device, options=options)
    folder = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="lfm-fit-"))
    folder.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run_dir=folder, config={"method": method, "model": model, "seed": seed})
    metrics = train_dr(cfg, splits, seed, ctx)
    # rebuild the method from the final checkpoint to hand its trained modules back
    built, _, _ = build_method(cfg, splits, seed, device_of(cfg))
    state = ctx.load_checkpoint()
    for name, module in built.modules().items():
        module.load_state_dict(state["modules"][name])
    built.load_extra_state(state["extra"])
    models = built.eval_models()
    weights = getattr(built, "b", None)
    r = getattr(built, "r", None)
    return FitResult(models["main"], models, metrics, None if weights is None else weights.detach().cpu(), folder,
                     encoder=getattr(built, "encoder", None), r=None if r is None else r.detach().cpu())

