"""Data sets, and the DR splits (meta set, imbalance, label noise) built from them.

Every data set yields ``(image: FloatTensor[3, H, W], label: int, index: int)``; ``index``
is the position in that very data-set object, so per-example variables (b_i, r_j) can be
indexed by it. Factories are registered with ``lfm_core.registries.DATASETS``; each takes
``root=None, download=False`` plus its own keyword options and returns a ``DataBundle``.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lfm_core.errors import DataNotFoundError, LFMError, UsageError
from lfm_core.registries import DATASETS, IMBALANCE, NOISE

Transform = Callable[[Tensor], Tensor]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_data_root() -> str:
    """``$LFM_DATA_ROOT`` if set, else ``./data`` (torchvision's habit)."""
    return os.environ.get("LFM_DATA_ROOT", "data")


def _index_array(indices: Any) -> np.ndarray:
    if isinstance(indices, Tensor):
        indices = indices.cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


def _label_tensor(labels: Any, n: int, num_classes: int) -> Tensor:
    t = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels), dtype=torch.long)
    t = t.reshape(-1).clone()
    if len(t) != n:
        raise UsageError(f"got {len(t)} labels for a data set of {n} examples")
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes - 1}], got [{int(t.min())}, {int(t.max())}]")
    return t


class IndexedDataset(Dataset):
    """What the tensor-backed and file-backed data sets share.

    Attributes: ``labels`` (the labels training sees), ``clean_labels`` (the true ones, for
    noise statistics), ``num_classes``, ``transform`` and ``source_indices`` (position of
    each example in the data set this one was first built as, e.g. the training pool).
    """

    labels: Tensor
    clean_labels: Tensor
    num_classes: int
    transform: Transform | None
    source_indices: np.ndarray

    def _init_labels(self, n: int, labels: Any, num_classes: int, clean_labels: Any, transform: Transform | None) -> None:
        self.num_classes = int(num_classes)
        self.labels = _label_tensor(labels, n, self.num_classes)
        self.clean_labels = self.labels.clone() if clean_labels is None else _label_tensor(clean_labels, n, self.num_classes)
        self.transform = transform
        self.source_indices = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, i: int) -> Tensor:
        raise NotImplementedError

    def _select(self, idx: np.ndarray) -> None:
        """Restrict the subclass's own storage to ``idx`` (called on a shallow copy)."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        i = int(i)
        x = self._load(i)
        return (self.transform(x) if self.transform is not None else x), int(self.labels[i]), i

    def subset(self, indices: Any):
        """The examples at ``indices``, re-indexed 0..len-1 (labels and clean labels follow)."""
        idx = _index_array(indices)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for a data set of {len(self)} examples")
        out = copy.copy(self)
        t = torch.from_numpy(idx)
        out.labels, out.clean_labels = self.labels[t].clone(), self.clean_labels[t].clone()
        out.source_indices = self.source_indices[idx]
        out._select(idx)
        return out

    def with_labels(self, labels: Any):
        """The same examples with new (e.g. noisy) labels; ``clean_labels`` are kept."""
        out = copy.copy(self)
        out.labels = _label_tensor(labels, len(self), self.num_classes)
        return out


class WithIndices(Dataset):
    """Any data set of ``(x, y, ...)`` items as ``(x, y, index)``: the form the per-example upper
    variables need. lfm_core's own data sets (``IndexedDataset``) already yield it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i][:2]
        return x, y, i


class IndexedTensorDataset(IndexedDataset):
    """Images held in one tensor ``[N, 3, H, W]`` (already normalised)."""

    def __init__(
        self,
        images: Tensor,
        labels: Any,
        num_classes: int,
        transform: Transform | None = None,
        clean_labels: Any = None,
    ):
        self.images = images
        self._init_labels(len(images), labels, num_classes, clean_labels, transform)

    def _load(self, i: int) -> Tensor:
        return self.images[i]

    def _select(self, idx: np.ndarray) -> None:
        self.images = self.images[torch.from_numpy(idx)]


class FileImageDataset(IndexedDataset):
    """Images read from disk on access, resized to ``image_size`` and normalised."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Any,
        num_classes: int,
        image_size: int = 64,
        transform: Transform | None = None,
        clean_labels: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.paths = [str(p) for p in paths]
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._init_labels(len(self.paths), labels, num_classes, clean_labels, transform)

    def _load(self, i: int) -> Tensor:
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (self.image_size, self.image_size):
                    im = im.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                arr = np.array(im, dtype=np.uint8)
        except OSError as e:  # missing, unreadable or not an image
            raise LFMError(f"cannot read image {path}: {e}") from None
        x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std

    def _select(self, idx: np.ndarray) -> None:
        self.paths = [self.paths[i] for i in idx]


@dataclass
class DataBundle:
    name: str
    num_classes: int
    train: IndexedDataset  # the full training pool, clean (as given) labels
    test: IndexedDataset
    classes: list[str] | None = None


@dataclass
class Splits:
    train: IndexedDataset
    meta: IndexedDataset
    test: IndexedDataset
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)


# -- augmentation ------------------------------------------------------------------------
class RandomCropFlip:
    """Random crop after zero padding, then a random horizontal flip, on a [3, H, W] tensor.

    Works on normalised tensors, so the padding is the mean colour rather than black.
    Uses torch's global RNG (seed it with ``torch.manual_seed``; DataLoader workers reseed it).
    """

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding, self.flip = int(padding), bool(flip)

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        p = self.padding
        if p > 0:
            x = F.pad(x, (p, p, p, p))
            i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = x[..., i : i + h, j : j + w]
        if self.flip and torch.rand(()).item() < 0.5:
            x = x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


def cifar_train_transform(padding: int = 4) -> RandomCropFlip:
    """The standard CIFAR training augmentation (crop with padding 4, horizontal flip)."""
    return RandomCropFlip(padding=padding, flip=True)


# -- registered data sets ------------------------------------------------------------------
def _check_size(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{name} {value!r} is invalid; it must be an integer >= {minimum}")
    return int(value)


@DATASETS.register("digits")
def digits(root: str | None = None, download: bool = False, image_size: int = 32) -> DataBundle:
    """scikit-learn's 1,797 8x8 handwritten digits (embedded, offline), as 3 x S x S images.

    The train/test split is fixed (stratified, 30% test, random_state 0): 1,257 / 540.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    s = _check_size("image_size", image_size)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = np.asarray(d.target, dtype=np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    train = IndexedTensorDataset(x[torch.from_numpy(tr)], y[tr], 10)
    test = IndexedTensorDataset(x[torch.from_numpy(te)], y[te], 10)
    return DataBundle("digits", 10, train, test, classes=[str(i) for i in range(10)])


# The ten photos of scikit-image's wheel (skimage/data, shipped in the package, not fetched)
# that make the photo_patches classes: natural scenes, objects and textures, all at least 300 px.
PHOTO_PATCH_SOURCES = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png",
                       "coins.png", "grass.png", "gravel.png", "moon.png", "rocket.jpg")
PHOTO_PATCH_SIDE, PHOTO_PATCHES_PER_CLASS = 24, 180


def _skimage_data_dir() -> Path:
    """scikit-image's bundled data folder, located without importing (or downloading) anything."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError("the photo_patches data set needs scikit-image's bundled photos: "
                                "pip install 'lfm-core[patches]' (or pip install scikit-image)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def photo_patch_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The photo_patches crops before resizing: ``uint8 [1800, 24, 24]`` grey levels and labels.

    Class k is photo ``PHOTO_PATCH_SOURCES[k]``, converted to grey (PIL's ``L``, so colour is no
    cue). Its non-overlapping 24x24 grid (centred, remainder trimmed) is cut; 180 of those cells,
    drawn without replacement by ``numpy.random.default_rng(k)``, kept in grid order, are class k.
    """
    from PIL import Image

    folder = _skimage_data_dir()
    c, crops, labels = PHOTO_PATCH_SIDE, [], []
    for k, name in enumerate(PHOTO_PATCH_SOURCES):
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"scikit-image's bundled photo {path} is missing; reinstall scikit-image")
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"), dtype=np.uint8)
        gh, gw = a.shape[0] // c, a.shape[1] // c
        oy, ox = (a.shape[0] - gh * c) // 2, (a.shape[1] - gw * c) // 2
        grid = a[oy : oy + gh * c, ox : ox + gw * c].reshape(gh, c, gw, c).transpose(0, 2, 1, 3).reshape(-1, c, c)
        keep = np.sort(np.random.default_rng(k).choice(len(grid), PHOTO_PATCHES_PER_CLASS, replace=False))
        crops.append(grid[keep])
        labels.append(np.full(PHOTO_PATCHES_PER_CLASS, k, dtype=np.int64))
    return np.concatenate(crops), np.concatenate(labels)


@DATASETS.register("photo_patches")
def photo_patches(root: str | None = None, download: bool = False, image_size: int = 32) -> DataBundle:
    """1,800 grey 24x24 patches of ten natural photos shipped in scikit-image's wheel (offline),
    labelled by the photo they come from (``photo_patch_arrays``), as 3 x S x S images.

    A stand-in of natural image statistics where pixel-space similarity is a poor classifier
    (unlike digits). Resized to S (bilinear, antialiased), scaled to [-1, 1] like digits; the
    train/test split is digits' (stratified, 30% test, random_state 0): 1,260 / 540.
    """
    from sklearn.model_selection import train_test_split

    s = _check_size("image_size", image_size)
    crops, y = photo_patch_arrays()
    x = torch.from_numpy(crops).float().div_(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    train = IndexedTensorDataset(x[torch.from_numpy(tr)], y[tr], 10)
    test = IndexedTensorDataset(x[torch.from_numpy(te)], y[te], 10)
    names = [n.rsplit(".", 1)[0] for n in PHOTO_PATCH_SOURCES]
    return DataBundle("photo_patches", 10, train, test, classes=names)


@DATASETS.register("synthetic")
def synthetic(
    root: str | None = None,
    download: bool = False,
    num_classes: int = 4,
    n_train: int = 200,
    n_test: int = 100,
    image_size: int = 8,
    seed: int = 0,
) -> DataBundle:
    """Deterministic class-conditional images: a class mean pattern plus unit Gaussian noise."""
    k = _check_size("num_classes", num_classes, 2)
    n_tr, n_te, s = _check_size("n_train", n_train), _check_size("n_test", n_test), _check_size("image_size", image_size)
    g = torch.Generator().manual_seed(int(seed))
    means = torch.randn(k, 3, s, s, generator=g, dtype=torch.float32)

    def make(n: int) -> IndexedTensorDataset:
        y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]  # balanced classes
        x = means[y] + torch.randn(n, 3, s, s, generator=g, dtype=torch.float32)
        return IndexedTensorDataset(x, y, k)

    train, test = make(n_tr), make(n_te)
    return DataBundle("synthetic", k, train, test, classes=[str(i) for i in range(k)])


_CIFAR = {
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR-100", "cifar-100-python", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# the embedded data sets a stand-in profile (cpu, smoke) runs on (``--standin``), with their names
# in labels and titles: digits (the DR experiments' default, and NAS's on the smoke profile) and
# grey patches of ten scikit-image photos (NAS's default on the cpu profile)
STANDIN_TITLES = {"digits": "digits", "photo_patches": "photo patches"}
STANDINS = tuple(STANDIN_TITLES)
CIFAR_FOLDERS = {name: spec[1] for name, spec in _CIFAR.items()}  # the python-pickle folders under a data root
CIFAR_TITLES = {name: spec[0] for name, spec in _CIFAR.items()}  # cifar10 -> CIFAR-10
# the python-pickle release: (training files, test files, meta file, label key, class-name key)
CIFAR_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def read_cifar(folder: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The python-pickle CIFAR-10/100 files of ``folder`` (``cifar-10-batches-py`` or
    ``cifar-100-python``): train images uint8 [N, 3, 32, 32], train labels, test images, test
    labels, class names. Reads what torchvision reads (dicts with ``data`` rows of 3,072 bytes and
    ``labels`` / ``fine_labels``), without torchvision's md5 check of the official files, so a
    re-packed or subset copy loads too; a missing, truncated or malformed file is a
    DataNotFoundError naming it."""
    import pickle

    train_files, test_files, meta_file, label_key, names_key = CIFAR_FILES[name]
    k = _CIFAR[name][2]
    folder = Path(folder)

    def read(file: str) -> dict[str, Any]:
        path = folder / file
        try:
            with open(path, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
        except FileNotFoundError:
            raise DataNotFoundError(f"{path} is missing") from None
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, ImportError, IndexError) as e:
            raise DataNotFoundError(f"{path} is not a CIFAR python-pickle file ({type(e).__name__}: {e})") from None
        if not isinstance(entry, dict):
            raise DataNotFoundError(f"{path} is not a CIFAR python-pickle file (holds a {type(entry).__name__})")
        return entry

    def batches(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for file in files:
            entry = read(file)
            data, labels = entry.get("data"), entry.get(label_key)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataNotFoundError(f"{folder / file}: 'data' is not uint8 rows of 3072 values (3x32x32 images)")
            if labels is None or len(labels) != len(data):
                raise DataNotFoundError(f"{folder / file}: {label_key!r} is missing or does not match the {len(data)} images")
            xs.append(data)
            ys.extend(labels)
        y = np.asarray(ys, dtype=np.int64)
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise DataNotFoundError(f"labels in {folder} lie in [{y.min()}, {y.max()}], not in [0, {k - 1}]")
        return np.vstack(xs).reshape(-1, 3, 32, 32), y

    (x_tr, y_tr), (x_te, y_te) = batches(train_files), batches(test_files)
    names = read(meta_file).get(names_key)
    if not isinstance(names, list) or len(names) != k:
        raise DataNotFoundError(f"{folder / meta_file}: {names_key!r} is not a list of {k} class names")
    return x_tr, y_tr, x_te, y_te, [str(c) for c in names]


def _cifar(name: str, root: str | None, download: bool, augment: bool) -> DataBundle:
    title, folder, k, mean, std = _CIFAR[name]
    base = Path(root if root is not None else default_data_root()).expanduser()
    if base.name == folder:  # the user pointed at the batches folder itself
        base = base.parent
    hint = f"pass --data-root DIR pointing at a folder that contains {folder}, or add --download to fetch it"
    if download:  # torchvision fetches the official archive (checking its md5) unless its files are there
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(root=str(base), train=True, download=True)
        except (RuntimeError, OSError) as e:
            raise DataNotFoundError(f"could not download {title} into {base}: {e}") from None
    if not (base / folder).is_dir():
        raise DataNotFoundError(f"{title} not found: looked for {base / folder}; {hint}")
    try:
        x_tr, y_tr, x_te, y_te, classes = read_cifar(base / folder, name)
    except DataNotFoundError as e:
        raise DataNotFoundError(f"{title} in {base / folder} is missing or corrupt ({e}); {hint}") from None
    m, sd = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (mean, std))
    sets = []
    for i, (data, targets) in enumerate(((x_tr, y_tr), (x_te, y_te))):
        x = torch.from_numpy(data).float()
        x.div_(255.0).sub_(m).div_(sd)
        transform = cifar_train_transform() if augment and i == 0 else None
        sets.append(IndexedTensorDataset(x, targets, k, transform=transform))
    return DataBundle(name, k, sets[0], sets[1], classes=classes)


@DATASETS.register("cifar10")
def cifar10(root: str | None = None, download: bool = False, augment: bool = False) -> DataBundle:
    """CIFAR-10 from ``root`` (default ``$LFM_DATA_ROOT`` or ``./data``); ``augment`` sets the
    crop+flip transform on the training pool (subsets inherit it)."""
    return _cifar("cifar10", root, download, augment)


@DATASETS.register("cifar100")
def cifar100(root: str | None = None, download: bool = False, augment: bool = False) -> DataBundle:
    """CIFAR-100 from ``root``; see ``cifar10``."""
    return _cifar("cifar100", root, download, augment)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _flat_label(path: Path) -> int:
    head = path.name.split("_", 1)[0]
    if "_" not in path.name or not head.isdigit():
        raise UsageError(
            f"cannot read a label from file name {path}: ANIMAL-10N style names start with the "
            f"integer label and an underscore, e.g. 3_01234.jpg"
        )
    return int(head)


@DATASETS.register("imagefolder")
def imagefolder(
    root: str | None = None, download: bool = False, image_size: int = 64, num_classes: int | None = None
) -> DataBundle:
    """Images from a user folder, read lazily. Two layouts:

    * class folders: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val``);
    * ANIMAL-10N: ``root/training/*.jpg`` and ``root/testing/*.jpg``, the label being the
      integer before the first ``_`` of the file name.
    Nothing can be downloaded; ``download`` is ignored.
    """
    s = _check_size("image_size", image_size)
    layouts = "root/train/<class>/*.png with root/test/<class>/* (or root/val), or root/training/*.jpg with root/testing/*.jpg"
    if root is None:
        raise DataNotFoundError(f"the imagefolder data set needs --data-root DIR laid out as {layouts}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataNotFoundError(f"image folder {base} does not exist; expected {layouts}")

    def split_dir(*names: str) -> Path:
        for n in names:
            if (base / n).is_dir():
                return base / n
        raise DataNotFoundError(f"no {' or '.join(names)} folder in {base}; expected {layouts}")

    if (base / "train").is_dir():
        train_dir, test_dir = base / "train", split_dir("test", "val")
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        lookup = {c: i for i, c in enumerate(classes)}

        def scan(folder: Path) -> tuple[list[Path], list[int]]:
            paths, labels = [], []
            for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
                if sub.name not in lookup:
                    raise UsageError(f"class folder {sub} has no counterpart in {train_dir}; valid classes: {', '.join(classes)}")
                found = _images_in(sub)
                paths += found
                labels += [lookup[sub.name]] * len(found)
            return paths, labels

        k, names = len(classes), classes
    elif (base / "training").is_dir():
        train_dir, test_dir = base / "training", split_dir("testing")

        def scan(folder: Path) -> tuple[list[Path], list[int]]:
            paths = _images_in(folder)
            return paths, [_flat_label(p) for p in paths]

        k, names = 0, []
    else:
        raise DataNotFoundError(f"{base} has neither a train/ nor a training/ folder; expected {layouts}")

    (tr_paths, tr_labels), (te_paths, te_labels) = scan(train_dir), scan(test_dir)
    for folder, paths in ((train_dir, tr_paths), (test_dir, te_paths)):
        if not paths:
            raise DataNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    inferred = max(tr_labels + te_labels) + 1
    k = max(k, inferred)
    if num_classes is not None:
        if _check_size("num_classes", num_classes, 2) < inferred:
            raise UsageError(f"num_classes {num_classes} is too small: the files carry labels up to {inferred - 1}")
        k = int(num_classes)
    if k < 2:
        raise UsageError(f"the images under {base} carry a single class; at least 2 are needed")
    names = (names + [str(i) for i in range(len(names), k)])[:k]
    train = FileImageDataset(tr_paths, tr_labels, k, image_size=s)
    test = FileImageDataset(te_paths, te_labels, k, image_size=s)
    return DataBundle("imagefolder", k, train, test, classes=names)


def load_dataset(name: str, root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """``DATASETS.create(name, root=root, download=download, **kw)``, with unknown options reported."""
    factory = DATASETS.get(name)
    try:
        inspect.signature(factory).bind(root=root, download=download, **kw)
    except TypeError:
        valid = [p for p in inspect.signature(factory).parameters if p not in ("root", "download")]
        bad = [o for o in kw if o not in valid]
        raise UsageError(
            f"data set {name!r} does not take option(s) {', '.join(map(repr, bad))}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        ) from None
    return factory(root=root, download=download, **kw)


# -- DR splits ------------------------------------------------------------------------------
def _counts(labels: Any, k: int) -> list[int]:
    y = labels.numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    return [int(c) for c in np.bincount(y.astype(np.int64), minlength=k)[:k]]


def stratified_cap(labels: np.ndarray, cap: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``cap`` examples keeping the class proportions (largest
    remainder), with at least one per non-empty class when ``cap`` allows."""
    n = len(labels)
    if cap >= n:
        return np.arange(n, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    exact = cap * counts / n
    quota = np.floor(exact).astype(np.int64)
    if cap >= (counts > 0).sum():
        quota[(counts > 0) & (quota == 0)] = 1
    while quota.sum() < cap:  # hand out the rest by largest remainder
        room = np.where(quota < counts, exact - quota, -np.inf)
        quota[int(np.argmax(room))] += 1
    while quota.sum() > cap:  # only after the at-least-one rule: take from the largest
        quota[int(np.argmax(quota))] -= 1
    rng = np.random.default_rng(seed)
    kept = [rng.choice(np.flatnonzero(labels == c), int(q), replace=False) for c, q in enumerate(quota) if q > 0]
    return np.sort(np.concatenate(kept)).astype(np.int64)


def _none(value: str | None) -> str | None:
    return None if value is None or str(value).lower() == "none" else str(value)


def make_splits(
    bundle: DataBundle,
    meta_per_class: int,
    seed: int = 0,
    noise: str | None = None,
    noise_rate: float = 0.0,
    imbalance: str | None = None,
    imbalance_factor: float = 1.0,
    max_train: int | None = None,
) -> Splits:
    """Meta set, then imbalance, then noise, then an optional cap, from ``bundle.train``.

    1. ``meta_per_class`` examples per class (seeded) leave the pool as the clean meta set;
    2. the imbalance generator runs on the rest (n_max = smallest remaining class count);
    3. the noise generator corrupts the remaining training labels (meta and test stay clean);
    4. ``max_train`` keeps a stratified (by clean label) random subset of the training set.
    ``noise`` / ``imbalance`` may be None or "none". Seeds of each step derive from ``seed``.
    """
    noise, imbalance = _none(noise), _none(imbalance)
    pool, k = bundle.train, bundle.num_classes
    s_meta, s_imb, s_noise, s_cap = (int(v) for v in np.random.SeedSequence(int(seed)).generate_state(4))
    y = pool.labels.numpy()
    per_class = _counts(y, k)
    smallest = min(per_class)
    is_int = isinstance(meta_per_class, (int, np.integer)) and not isinstance(meta_per_class, bool)
    if smallest == 0:  # no valid meta_per_class at all: name the class instead of an empty range
        c = per_class.index(smallest)
        name = bundle.classes[c] if bundle.classes and c < len(bundle.classes) else f"number {c}"
        raise UsageError(
            f"class {name!r} of {bundle.name} has no training examples (an empty class folder?); every class "
            f"needs more than meta_per_class ({meta_per_class}) images: add images or remove the class"
        )
    if not is_int or not 0 <= meta_per_class < smallest:
        raise UsageError(
            f"meta_per_class {meta_per_class!r} is invalid for {bundle.name}: its smallest class has "
            f"{smallest} training examples, so use an integer in [0, {smallest - 1}]"
        )
    if noise is None and float(noise_rate) != 0.0:
        raise UsageError(f"noise rate {noise_rate} given without a noise type; valid types: {', '.join(NOISE.names())}")
    if imbalance is None and float(imbalance_factor) != 1.0:
        raise UsageError(
            f"imbalance factor {imbalance_factor} given without an imbalance type; valid types: {', '.join(IMBALANCE.names())}"
        )
    if max_train is not None:
        max_train = _check_size("max_train", max_train)

    # 1. meta set: clean, balanced, removed from the pool
    rng = np.random.default_rng(s_meta)
    meta_idx = np.sort(np.concatenate(
        [rng.choice(np.flatnonzero(y == c), int(meta_per_class), replace=False) for c in range(k)]
    )).astype(np.int64)
    rest = np.setdiff1d(np.arange(len(y)), meta_idx)

    # 2. imbalance
    imb_info: dict[str, Any] = {"imbalance": imbalance, "imbalance_factor": float(imbalance_factor), "imbalance_counts": None}
    if imbalance is not None:
        res = IMBALANCE.create(imbalance, labels=y[rest], num_classes=k, factor=imbalance_factor, seed=s_imb)
        rest = rest[res.indices]
        imb_info["imbalance_counts"] = [int(c) for c in res.counts]

    # 3. noise on the training labels only
    train_labels = y[rest]
    transition = None
    if noise is not None:
        nres = NOISE.create(noise, labels=train_labels, num_classes=k, rate=noise_rate, seed=s_noise)
        train_labels, transition = nres.labels, nres.transition

    # 4. cap (after the noise, so an example's noisy label does not depend on the cap)
    if max_train is not None:
        keep = stratified_cap(pool.clean_labels.numpy()[rest], max_train, k, seed=s_cap)
        rest, train_labels = rest[keep], train_labels[keep]

    train = pool.subset(rest).with_labels(train_labels)
    meta = pool.subset(meta_idx)
    corrupted = train.labels != train.clean_labels
    info: dict[str, Any] = {
        "dataset": bundle.name,
        "num_classes": int(k),
        "seed": int(seed),
        "meta_per_class": int(meta_per_class),
        "n_train": len(train),
        "n_meta": len(meta),
        "n_test": len(bundle.test),
        "train_class_counts": _counts(train.clean_labels, k),
        "train_label_counts": _counts(train.labels, k),
        "meta_class_counts": _counts(meta.labels, k),
        "noise": noise,
        "noise_rate": float(noise_rate),
        "noise_transition": None if transition is None else [[float(v) for v in row] for row in transition],
        "actual_noise_rate": float(corrupted.float().mean()) if len(train) else 0.0,
        **imb_info,
        "max_train": max_train,
    }
    return Splits(train=train, meta=meta, test=bundle.test, num_classes=k, info=info)
