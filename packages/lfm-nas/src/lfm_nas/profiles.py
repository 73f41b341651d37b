"""The NAS profiles as data: every setting of the search and the evaluation, per profile.

* ``paper``: the paper's protocol on CIFAR-10/100 from ``--data-root`` (25k/25k search split of the
  50k training images; DARTS supernet of 8 cells, C=16, 8 primitives, 50 epochs; P-DARTS 3 stages
  of 25 epochs, 5 -> 11 -> 17 cells, 8 -> 5 -> 3 operations, LFM from epoch 10 of each stage;
  evaluation network of 20 cells, C=36, 600 epochs, batch 96, cutout 16, auxiliary 0.4, drop path
  0.2; ImageNet: 14 cells, C=48, 250 epochs) with ImageNet-pretrained ResNet encoders.
* ``cpu``: scikit-learn's embedded digits stand in for CIFAR (16x16), a 5-cell C=8 supernet with 5
  primitives, a few search epochs and a short evaluation; random-init encoders.
* ``smoke``: the same code path in seconds (8x8 digits, 3-cell C=4 supernet, 4 primitives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lfm_core.solver import ENGINES as SOLVER_ENGINES

P4 = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
P5 = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")

PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        image_size=8, search_pool=64, batch_size=16, search_epochs=1, steps_per_epoch=2,
        C=4, layers=3, primitives=P4,
        pdarts_layers=(3, 3, 4), pdarts_ops=(4, 3, 2), pdarts_epochs=1, pdarts_lfm_start=0,
        pdarts_skip_dropout=(0.0, 0.1, 0.2),
        eval_C=4, eval_layers=3, eval_epochs=1, eval_batch=64, eval_lr=0.05, cutout=0, auxiliary=0.4,
        drop_path=0.0,
        imagenet_size=16, imagenet_C=4, imagenet_layers=3, imagenet_epochs=1, imagenet_batch=64,
        imagenet_lr=0.05,
        pretrained=False, search_dataset="digits",
    ),
    "cpu": dict(
        image_size=16, search_pool=None, batch_size=32, search_epochs=3, steps_per_epoch=8,
        C=8, layers=5, primitives=P5,
        pdarts_layers=(3, 5, 6), pdarts_ops=(5, 3, 2), pdarts_epochs=2, pdarts_lfm_start=1,
        pdarts_skip_dropout=(0.0, 0.2, 0.4),
        eval_C=8, eval_layers=6, eval_epochs=8, eval_batch=64, eval_lr=0.05, cutout=4, auxiliary=0.4,
        drop_path=0.1,
        imagenet_size=32, imagenet_C=8, imagenet_layers=5, imagenet_epochs=8, imagenet_batch=64,
        imagenet_lr=0.05,
        pretrained=False, search_dataset="digits",
    ),
    "paper": dict(
        image_size=32, search_pool=None, batch_size=64, search_epochs=50, steps_per_epoch=None,
        C=16, layers=8, primitives=None,  # None: all 8 DARTS primitives
        pdarts_layers=(5, 11, 17), pdarts_ops=(8, 5, 3), pdarts_epochs=25, pdarts_lfm_start=10,
        pdarts_skip_dropout=(0.1, 0.4, 0.7),
        eval_C=36, eval_layers=20, eval_epochs=600, eval_batch=96, eval_lr=0.025, cutout=16, auxiliary=0.4,
        drop_path=0.2,
        imagenet_size=224, imagenet_C=48, imagenet_layers=14, imagenet_epochs=250, imagenet_batch=128,
        imagenet_lr=0.1,
        pretrained=True, search_dataset=None,  # None: the column's CIFAR
    ),
}

ENGINES = ("auto", *SOLVER_ENGINES)


def has_cifar(root: Any, name: str) -> bool:
    if not root:
        return False
    folder = "cifar-100-python" if name == "cifar100" else "cifar-10-batches-py"
    base = Path(root).expanduser()
    return (base / folder).is_dir() or base.name == folder


def imagenet_root(options: dict[str, Any]) -> Path | None:
    if options.get("imagenet_root"):
        return Path(options["imagenet_root"]).expanduser()
    if options.get("data_root"):
        return Path(options["data_root"]).expanduser() / "imagenet"
    return None


def settings(profile: str, options: dict[str, Any]) -> dict[str, Any]:
    """A profile's settings after the command-line overrides (epochs, batch size)."""
    s = dict(PROFILE_SETTINGS[profile])
    if options.get("search_epochs"):
        s["search_epochs"] = s["pdarts_epochs"] = int(options["search_epochs"])
        s["pdarts_lfm_start"] = min(s["pdarts_lfm_start"], s["pdarts_epochs"] - 1)
    if options.get("eval_epochs"):
        s["eval_epochs"] = s["imagenet_epochs"] = int(options["eval_epochs"])
    if options.get("batch_size"):
        s["batch_size"] = int(options["batch_size"])
    return s
