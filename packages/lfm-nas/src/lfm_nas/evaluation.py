"""Data for the searches and evaluations, and the ImageNet-style evaluation (top-1 / top-5)."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import torch

from lfm_core.errors import check_choice
from lfm_nas.profiles import STANDINS, EvalSettings

CIFARS = ("cifar10", "cifar100")  # the paper's search data sets (read from --data-root)
_EVAL = EvalSettings()  # the paper's evaluation protocol: the defaults of train_eval_imagenet


def _device(ctx) -> torch.device:
    if getattr(ctx, "device", None):
        return torch.device(ctx.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_WARM: set[Any] = set()


def _warm_up(cfg: dict[str, Any], tr, va, device: torch.device) -> None:
    """Pay the process's one-time costs before a search is measured: importing timm, the lazy
    imports of the first optimiser step and forward-mode AD (torch._dynamo alone is ~150 MB of
    resident memory on CPU), the first use of each convolution kernel. One step of a 3-cell
    supernet of the same kind on 4 examples, once per process and kind of search."""
    from lfm_nas.search import search

    method = {"pdarts": "darts1", "lfm-pdarts": "lfm-darts"}.get(cfg["method"], cfg["method"])
    key = (method, cfg.get("variant"), cfg.get("encoder"), cfg.get("engine"), device.type)
    if key in _WARM:
        return
    tiny = {k: v for k, v in cfg.items() if not k.startswith("pdarts_") and k != "lfm_start"}
    tiny.update(method=method, layers=3, steps_per_epoch=1, seed=0)
    if isinstance(tiny.get("encoder_kwargs"), dict):
        tiny["encoder_kwargs"] = {**tiny["encoder_kwargs"], "pretrained": False, "weights": None}
    n = min(4, len(tr), len(va))
    sub_tr, sub_va = tr.subset(list(range(n))), va.subset(list(range(n)))
    search(tiny, _loader(sub_tr, 2, False, 0, device=device), _loader(sub_va, 2, False, 0, device=device), 1,
           device=device)
    _WARM.add(key)


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False, device=None):
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(int(seed))
    workers = 0
    if not hasattr(dataset, "images"):  # read from disk (ImageNet): a few workers
        workers = min(8, os.cpu_count() or 1)
    pin = bool(device is not None and torch.device(device).type == "cuda")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None,
                      drop_last=drop_last and len(dataset) >= batch_size, num_workers=workers, pin_memory=pin)


def load_bundle(name: str, ctx, image_size: int):
    """A cell's data: an embedded stand-in at ``image_size``, or CIFAR (augmented training images)
    from the run's data root."""
    from lfm_core.data import load_dataset

    if name in STANDINS:
        return load_dataset(name, image_size=image_size)
    check_choice("search data set", name, (*STANDINS, *CIFARS))
    return load_dataset(name, root=ctx.data_root, download=ctx.download, augment=True)


def search_split(bundle, seed: int, pool: int | None):
    """Search-train / search-val halves of the training pool (a seeded permutation; ``pool``
    caps the number of examples used, e.g. the 25k/25k CIFAR split takes all 50k)."""
    n = len(bundle.train)
    g = torch.Generator().manual_seed(10_007 * int(seed) + 17)
    perm = torch.randperm(n, generator=g)
    if pool:
        perm = perm[: min(int(pool), n)]
    half = len(perm) // 2
    return bundle.train.subset(perm[:half].numpy()), bundle.train.subset(perm[half:].numpy())


# ------------------------------------------------------------------------------------
# ImageNet-style evaluation (top-1 and top-5)
# ------------------------------------------------------------------------------------
def train_eval_imagenet(genotype, train_loader: Iterable, test_loader: Iterable, epochs: int,
                        C: int = _EVAL.imagenet_C, layers: int = _EVAL.imagenet_layers, num_classes: int = 1000,
                        auxiliary_weight: float = _EVAL.auxiliary, drop_path: float = 0.0,
                        lr: float = _EVAL.imagenet_lr, momentum: float = 0.9,
                        weight_decay: float = 3e-5, label_smoothing: float = 0.1, gamma: float = 0.97,
                        grad_clip: float | None = 5.0, device: str | torch.device = "cpu", seed: int | None = None,
                        log: Callable[[dict], None] | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        checkpoint: Any = None) -> dict[str, float]:
    """DARTS' ImageNet protocol: ``NetworkImageNet(C, layers)`` trained with SGD (lr decayed by
    ``gamma`` every epoch), label smoothing and the auxiliary head; top-1 and top-5 test error.
    ``checkpoint``: see :func:`lfm_nas.search.train_epochs`."""
    from lfm_nas.eval_net import NetworkImageNet
    from lfm_nas.search import train_epochs

    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    model = NetworkImageNet(C, num_classes, layers, auxiliary_weight > 0, genotype, drop_path).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=gamma)
    train_epochs(model, opt, sched, train_loader, epochs, device, drop_path=drop_path,
                 auxiliary_weight=auxiliary_weight, label_smoothing=label_smoothing, grad_clip=grad_clip,
                 log=log, progress=progress, checkpoint=checkpoint)
    model.eval()
    k = min(5, num_classes)
    top1 = topk = n = 0
    with torch.no_grad():
        for batch in test_loader:
            x, y = batch[0].to(device), batch[1].to(device)
            pred = model(x)[0].topk(k, dim=1).indices
            top1 += int((pred[:, 0] == y).sum())
            topk += int((pred == y[:, None]).any(1).sum())
            n += y.numel()
    n = max(1, n)
    return {"top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - topk / n), "test_acc": 100.0 * top1 / n}
