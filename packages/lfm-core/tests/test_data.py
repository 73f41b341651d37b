"""Data sets and the DR splits (meta set, imbalance, noise, cap)."""

import hashlib
import json

import numpy as np
import pytest
import torch

from lfm_core.data import (
    IndexedTensorDataset,
    WithIndices,
    cifar_train_transform,
    load_dataset,
    make_splits,
)
from lfm_core.errors import DataNotFoundError, UsageError
from lfm_core.imbalance import longtail_counts
from lfm_core.registry import UnknownNameError



@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def hashes(ds):
    return {hashlib.sha1(ds[i][0].numpy().tobytes()).hexdigest() for i in range(len(ds))}


def test_digits_bundle(digits):
    assert (digits.name, digits.num_classes, len(digits.train), len(digits.test)) == ("digits", 10, 1257, 540)
    x, y, i = digits.train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int) and i == 5
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    again = load_dataset("digits")  # fixed split: every run sees the same test set
    assert torch.equal(again.test.images, digits.test.images) and torch.equal(again.test.labels, digits.test.labels)
    assert load_dataset("digits", image_size=16).train[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_items_carry_their_index(name):
    b = load_dataset(name)
    sub = b.train.subset([7, 3, 11])
    for ds in (b.train, b.test, sub):
        for pos in (0, len(ds) - 1, len(ds) // 2):
            _, y, idx = ds[pos]
            assert idx == pos and y == int(ds.labels[pos])
    assert torch.equal(sub[1][0], b.train[3][0]) and list(sub.source_indices) == [7, 3, 11]


def test_tensor_dataset_subset_and_labels():
    ds = IndexedTensorDataset(torch.arange(12.0).view(4, 3, 1, 1), [0, 1, 2, 0], 3, transform=lambda x: x * 2)
    assert ds[1][0].flatten().tolist() == [6.0, 8.0, 10.0]
    noisy = ds.with_labels(np.array([1, 1, 2, 2]))
    assert noisy.labels.tolist() == [1, 1, 2, 2] and noisy.clean_labels.tolist() == [0, 1, 2, 0]
    assert ds.labels.tolist() == [0, 1, 2, 0]  # the original is untouched
    sub = noisy.subset(np.array([3, 0]))
    assert sub.labels.tolist() == [2, 1] and sub.clean_labels.tolist() == [0, 0] and sub[0][2] == 0
    assert sub.transform is ds.transform
    with pytest.raises(UsageError):
        ds.with_labels([0, 1, 5, 0])
    with pytest.raises(UsageError):
        ds.with_labels([0, 1])


def test_with_indices_adds_the_index_to_any_data_set():
    plain = torch.utils.data.TensorDataset(torch.arange(6.0).view(3, 2), torch.tensor([2, 0, 1]))
    ds = WithIndices(plain)
    assert len(ds) == 3 and [(int(y), i) for _, y, i in ds] == [(2, 0), (0, 1), (1, 2)]
    assert ds[1][0].tolist() == [2.0, 3.0]


def test_synthetic_is_deterministic_and_learnable():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(a.train.images, b.train.images) and a.train.images.shape == (200, 3, 8, 8)
    assert not torch.equal(a.train.images, load_dataset("synthetic", seed=1).train.images)
    assert a.train.labels.bincount().tolist() == [50] * 4
    means = torch.stack([a.train.images[a.train.labels == c].mean(0).flatten() for c in range(4)])
    pred = torch.cdist(a.test.images.flatten(1), means).argmin(1)
    assert (pred == a.test.labels).float().mean() > 0.9


def test_make_splits_digits(digits):
    s = make_splits(digits, 10, seed=0, noise="flip", noise_rate=0.4)
    assert s.num_classes == 10 and s.test is digits.test
    assert s.meta.labels.bincount(minlength=10).tolist() == [10] * 10
    assert len(s.train) + len(s.meta) == len(digits.train)
    # disjoint, by pool index and by content
    assert not set(s.meta.source_indices) & set(s.train.source_indices)
    assert not hashes(s.meta) & hashes(s.train)
    assert torch.equal(s.train.clean_labels, digits.train.labels[torch.from_numpy(s.train.source_indices)])
    # noise only on train
    assert torch.equal(s.meta.labels, s.meta.clean_labels)
    assert torch.equal(s.meta.labels, digits.train.labels[torch.from_numpy(s.meta.source_indices)])
    rate = (s.train.labels != s.train.clean_labels).float().mean().item()
    assert 0.3 < rate < 0.5 and s.info["actual_noise_rate"] == pytest.approx(rate)
    assert torch.equal(digits.test.labels, load_dataset("digits").test.labels)
    # reproducible, seed-dependent, JSON-serialisable
    again = make_splits(digits, 10, seed=0, noise="flip", noise_rate=0.4)
    assert np.array_equal(again.meta.source_indices, s.meta.source_indices)
    assert torch.equal(again.train.labels, s.train.labels)
    other = make_splits(digits, 10, seed=1, noise="flip", noise_rate=0.4)
    assert not np.array_equal(other.meta.source_indices, s.meta.source_indices)
    info = json.loads(json.dumps(s.info))
    assert info["n_train"] == len(s.train) and info["n_meta"] == 100 and info["noise"] == "flip"
    assert np.allclose(np.array(info["noise_transition"]).sum(1), 1.0)
    assert sum(info["train_class_counts"]) == len(s.train)


def test_make_splits_imbalance_and_cap(digits):
    s = make_splits(digits, 5, seed=2, imbalance="longtail", imbalance_factor=10)
    remaining = min(digits.train.labels.bincount().tolist()) - 5
    assert s.info["imbalance_counts"] == longtail_counts(remaining, 10, 10)
    assert s.train.labels.bincount(minlength=10).tolist() == s.info["imbalance_counts"]
    assert s.info["noise_transition"] is None and s.info["actual_noise_rate"] == 0.0
    capped = make_splits(digits, 10, seed=0, noise="uniform", noise_rate=0.2, max_train=200)
    counts = capped.train.clean_labels.bincount(minlength=10).tolist()
    assert len(capped.train) == 200 and max(counts) - min(counts) <= 2
    full = make_splits(digits, 10, seed=0, noise="uniform", noise_rate=0.2)
    # the cap keeps each example's noisy label
    lookup = dict(zip(full.train.source_indices.tolist(), full.train.labels.tolist(), strict=True))
    assert all(lookup[i] == y for i, y in zip(capped.train.source_indices.tolist(), capped.train.labels.tolist(), strict=True))
    plain = make_splits(digits, 10, noise="none", imbalance="none")
    assert plain.info["noise"] is None and torch.equal(plain.train.labels, plain.train.clean_labels)


def test_make_splits_errors(digits):
    with pytest.raises(UsageError, match=r"meta_per_class 500 .* \[0, \d+\]"):
        make_splits(digits, 500)
    with pytest.raises(UsageError, match="without a noise type"):
        make_splits(digits, 10, noise_rate=0.2)
    with pytest.raises(UsageError, match=r"noise rate 1\.5"):
        make_splits(digits, 10, noise="flip", noise_rate=1.5)
    with pytest.raises(UnknownNameError, match="Valid choices"):
        make_splits(digits, 10, noise="gaussian", noise_rate=0.2)
    with pytest.raises(UsageError, match="imbalance factor"):
        make_splits(digits, 10, imbalance="longtail", imbalance_factor=0.5)
    with pytest.raises(UsageError, match="max_train"):
        make_splits(digits, 10, max_train=0)


def test_load_dataset_errors():
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("digit")
    with pytest.raises(UsageError, match="n_train"):
        load_dataset("digits", n_train=5)


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing(tmp_path, monkeypatch, name, folder):
    with pytest.raises(DataNotFoundError, match="--download") as e:
        load_dataset(name, root=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere" / folder) in str(e.value) and "--data-root" in str(e.value)
    monkeypatch.setenv("LFM_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=str(tmp_path / folder)):
        load_dataset(name)


def test_cifar_corrupt_folder(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataNotFoundError, match="missing or corrupt"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar_loads_batches(tmp_path):
    """A fake CIFAR-10 folder (not the official files: no md5 check) goes through the real conversion."""
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    b = load_dataset("cifar10", root=str(folder), augment=True)  # the batches folder itself works too
    assert (len(b.train), len(b.test), b.num_classes, b.classes[9]) == (20, 4, 10, "c9")
    x, y, i = b.train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and (y, i) == (9, 3)
    raw = pickle.loads((folder / "test_batch").read_bytes())["data"][0].reshape(3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float32)
    std = torch.tensor([0.2470, 0.2435, 0.2616], dtype=torch.float32)
    expect = (torch.from_numpy(raw).float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.allclose(b.test[0][0], expect, atol=1e-5)
    assert b.train.transform is not None and b.test.transform is None


def test_cifar_transform():
    t = cifar_train_transform()
    x = torch.randn(3, 32, 32)
    outs = [t(x) for _ in range(20)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(o, x) for o in outs)


def write_png(path, color, size=(10, 12)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagefolder_animal10n(tmp_path):
    for i, lab in enumerate([0, 3, 1, 3]):
        write_png(tmp_path / "training" / f"{lab}_{i:05d}.png", (lab * 60, 0, 0))
    write_png(tmp_path / "testing" / "2_00009.png", (120, 0, 0))
    b = load_dataset("imagefolder", root=str(tmp_path), image_size=16)
    assert b.num_classes == 4 and len(b.train) == 4 and len(b.test) == 1
    assert sorted(b.train.labels.tolist()) == [0, 1, 3, 3]
    x, y, i = b.train[2]
    assert x.shape == (3, 16, 16) and i == 2 and y == int(b.train.labels[2])
    sub = b.train.subset([3, 1])
    assert sub[0][1] == int(b.train.labels[3]) and sub[1][2] == 1
    write_png(tmp_path / "training" / "cat_00010.png", (0, 0, 0))
    with pytest.raises(UsageError, match=r"cat_00010\.png"):
        load_dataset("imagefolder", root=str(tmp_path))


def test_imagefolder_class_tree(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("bird", "cat"):
            for k in range(n):
                write_png(tmp_path / split / cls / f"{k}.png", (k, 1, 2))
    b = load_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert b.classes == ["bird", "cat"] and b.num_classes == 2
    assert b.train.labels.tolist() == [0, 0, 1, 1] and b.test.labels.tolist() == [0, 1]
    assert b.test[1][0].shape == (3, 8, 8)


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match="nowhere"):
        load_dataset("imagefolder", root=str(tmp_path / "nowhere"))
    (tmp_path / "training").mkdir()
    with pytest.raises(DataNotFoundError, match="testing"):
        load_dataset("imagefolder", root=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="data-root"):
        load_dataset("imagefolder")


# -- photo_patches: the natural-image stand-in (photos shipped inside scikit-image's wheel) ----------
@pytest.fixture(scope="module")
def patches():
    pytest.importorskip("skimage", reason="the photo_patches stand-in needs scikit-image (lfm-core[patches])")
    return load_dataset("photo_patches", image_size=16)


def test_photo_patches_bundle(patches):
    from lfm_core.data import PHOTO_PATCH_SOURCES, photo_patch_arrays

    assert (patches.name, patches.num_classes, len(patches.train), len(patches.test)) == ("photo_patches", 10, 1260, 540)
    assert patches.classes == [n.rsplit(".", 1)[0] for n in PHOTO_PATCH_SOURCES]
    assert patches.train.labels.bincount().tolist() == [126] * 10 and patches.test.labels.bincount().tolist() == [54] * 10
    x, y, i = patches.train[3]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and i == 3 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey: colour is no cue
    again = load_dataset("photo_patches", image_size=16)  # fixed split, the same crops every time
    assert torch.equal(again.test.images, patches.test.images) and torch.equal(again.train.labels, patches.train.labels)
    crops, labels = photo_patch_arrays()
    assert crops.shape == (1800, 24, 24) and crops.dtype == np.uint8
    assert np.bincount(labels).tolist() == [180] * 10
    # its definition: class k's crops are cells of photo k's centred 24-pixel grid, no two alike
    from PIL import Image

    from lfm_core.data import _skimage_data_dir

    with Image.open(_skimage_data_dir() / PHOTO_PATCH_SOURCES[3]) as im:
        grey = np.asarray(im.convert("L"))
    oy, ox = (grey.shape[0] % 24) // 2, (grey.shape[1] % 24) // 2
    cells = {grey[oy + r * 24: oy + r * 24 + 24, ox + c * 24: ox + c * 24 + 24].tobytes()
             for r in range(grey.shape[0] // 24) for c in range(grey.shape[1] // 24)}
    mine = [c.tobytes() for c in crops[labels == 3]]
    assert set(mine) <= cells and len(set(mine)) == 180
    # the test set shares no crop with the training pool
    assert not hashes(patches.train) & hashes(patches.test)


def test_photo_patches_noise_statistics(patches):
    from lfm_core.noise import transition_matrix

    s = make_splits(patches, 10, seed=0, noise="uniform", noise_rate=0.4)
    assert (len(s.train), len(s.meta), s.info["meta_class_counts"]) == (1160, 100, [10] * 10)
    assert s.info["dataset"] == "photo_patches" and s.test is patches.test
    np.testing.assert_allclose(s.info["noise_transition"], transition_matrix("uniform", 10, 0.4))
    assert abs(s.info["actual_noise_rate"] - 0.4 * 9 / 10) < 0.04  # uniform noise may keep the true label
    flip = make_splits(patches, 10, seed=0, noise="flip", noise_rate=0.4)
    assert abs(flip.info["actual_noise_rate"] - 0.4) < 0.04
    assert torch.equal(flip.meta.labels, flip.meta.clean_labels)  # meta stays clean
    lt = make_splits(patches, 10, seed=0, imbalance="longtail", imbalance_factor=20)
    counts = lt.info["train_class_counts"]
    assert counts == longtail_counts(116, 10, 20)  # n_max: 126 per class less 10 meta


def test_photo_patches_without_scikit_image(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(DataNotFoundError, match=r"pip install 'lfm-core\[patches\]'"):
        load_dataset("photo_patches")
