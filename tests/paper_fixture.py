"""Tiny stand-ins for the paper profile's data on disk, in the formats the real files have.

* CIFAR-10 / CIFAR-100: the python-pickle batches (``cifar-10-batches-py/data_batch_1..5``,
  ``test_batch``, ``batches.meta``; ``cifar-100-python/train``, ``test``, ``meta``), dicts with str
  keys and ``data`` as uint8 rows of 3,072 values (R, G, B planes of 32x32), as torchvision reads them;
* ANIMAL-10N: ``training/`` and ``testing/`` of 64x64 JPEGs named ``<label>_<id>.jpg``;
* ImageNet: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (val sorted into class folders);
* a timm ``resnet18`` state dict (random init) saved with ``torch.save``, the layout of the
  torchvision / timm ``tv_in1k`` weights.

Images are seeded noise around a per-class colour, so labels carry some signal. The files differ
from the official releases (checksums included): only the code paths are tested on them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _images(rng: np.random.Generator, labels: np.ndarray, num_classes: int, size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: a class colour plus noise."""
    colours = rng.integers(40, 216, size=(num_classes, 3))
    noise = rng.normal(0.0, 40.0, size=(len(labels), size, size, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _rows(images: np.ndarray) -> np.ndarray:
    """HWC images as CIFAR's rows: [N, 3072], the R plane, then G, then B."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    y = _labels(10, train_per_class, rng)
    x = _rows(_images(rng, y, 10, 32))
    for b, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        _dump(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": y[part].tolist(),
                                           "data": x[part], "filenames": [f"img_{i}.png" for i in part]})
    yt = _labels(10, test_per_class, rng)
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": yt.tolist(),
                                  "data": _rows(_images(rng, yt, 10, 32)),
                                  "filenames": [f"test_{i}.png" for i in range(len(yt))]})
    _dump(folder / "batches.meta", {"num_cases_per_batch": len(y) // 5, "label_names": names, "num_vis": 3072})
    return folder


def write_cifar100(root: Path, train_per_class: int, test_per_class: int, seed: int = 1) -> Path:
    """``root/cifar-100-python`` with train, test and meta (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        y = _labels(100, per_class, rng)
        _dump(folder / split, {"filenames": [f"{split}_{i}.png" for i in range(len(y))], "batch_label": split,
                               "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                               "data": _rows(_images(rng, y, 100, 32))})
    _dump(folder / "meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)],
                            "coarse_label_names": [f"super{i:02d}" for i in range(20)]})
    return folder


def _save_jpegs(folder: Path, names: list[str], images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, images):
        Image.fromarray(img).save(folder / name, quality=90)


def write_animal10n(root: Path, train_per_class: int, test_per_class: int, seed: int = 2) -> Path:
    """``root/training/*.jpg`` and ``root/testing/*.jpg``, 64x64, named ``<label>_<id>.jpg``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, per_class in (("training", train_per_class), ("testing", test_per_class)):
        y = _labels(10, per_class, rng)
        _save_jpegs(root / split, [f"{c}_{i:05d}.jpg" for i, c in enumerate(y)], _images(rng, y, 10, 64))
    return root


def write_imagenet(root: Path, classes: int, train_per_class: int, val_per_class: int, size: int = 48,
                   seed: int = 3) -> Path:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the loaders resize them)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    wnids = [f"n{1440764 + i:08d}" for i in range(classes)]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        y = _labels(classes, per_class, rng)
        imgs = _images(rng, y, classes, size)
        for c, wnid in enumerate(wnids):
            idx = np.flatnonzero(y == c)
            _save_jpegs(root / split / wnid, [f"{wnid}_{split}_{i}.JPEG" for i in idx], imgs[idx])
    return root


def write_resnet18_weights(path: Path) -> Path:
    """A randomly initialised timm ``resnet18`` state dict (with its fc head), ``torch.save``d."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
