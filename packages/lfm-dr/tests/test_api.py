"""The library API on a user's own datasets (items are (x, y) pairs, no index)."""

import multiprocessing
import tempfile

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from lfm_core.errors import UsageError
from lfm_dr import fit
from lfm_dr.train import TrainConfig, training_order
from lfm_dr.user_data import UserData, labels_of

SMALL = {"width": 4, "blocks_per_stage": 1}


def three_classes(n=120, channels=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, 16, 16, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    x += y.view(-1, 1, 1, 1).float()  # learnable classes
    return x, y


class Items(Dataset):
    """Item by item, no label attribute (like a user's own Dataset)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_fit_on_plain_tensor_datasets(tmp_path):
    x, y = three_classes()
    train, meta, test = TensorDataset(x[:80], y[:80]), TensorDataset(x[80:95], y[80:95]), TensorDataset(x[95:], y[95:])
    result = fit(train, meta, num_classes=3, test=test, epochs=2, batch_size=20, lr=0.05,
                 model_kwargs=SMALL, run_dir=tmp_path / "run", progress=False)
    assert result.weights.shape == (80,)
    assert (result.weights >= 0).all() and not torch.allclose(result.weights, torch.ones(80))
    assert 0 <= result.metrics["test_acc"] <= 100 and "test_acc_w1" in result.metrics
    assert not [k for k in result.metrics if k.startswith("_")]  # no internal bookkeeping
    with torch.no_grad():
        acc = (result.model.eval()(x[95:]).argmax(1) == y[95:]).float().mean() * 100
    assert abs(float(acc) - result.metrics["test_acc"]) < 1e-4
    assert (tmp_path / "run" / "checkpoint.pt").exists() and result.run_dir == tmp_path / "run"


def test_fit_without_test_set_reports_meta_acc_silently_and_leaves_no_temp_folder(tmp_path, monkeypatch, capsys):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    x, y = three_classes()
    result = fit(TensorDataset(x[:80], y[:80]), TensorDataset(x[80:95], y[80:95]), num_classes=3, epochs=1,
                 batch_size=20, lr=0.05, model_kwargs=SMALL, method="ce", progress=False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert list(temp.iterdir()) == [] and result.run_dir is None
    # the meta set trained nothing held out: its accuracy is not called test accuracy
    assert not [k for k in result.metrics if k.startswith("test")]
    with torch.no_grad():
        acc = (result.model.eval()(x[80:95]).argmax(1) == y[80:95]).float().mean() * 100
    assert abs(float(acc) - result.metrics["meta_acc"]) < 1e-4 and "meta_confusion" in result.metrics


def test_fit_shows_progress_on_stderr(capsys):
    x, y = three_classes()
    fit(TensorDataset(x[:80], y[:80]), TensorDataset(x[80:95], y[80:95]), num_classes=3, epochs=1,
        batch_size=20, model_kwargs=SMALL, method="ce")
    err = capsys.readouterr().err
    assert "4/4" in err and "epoch 1" in err and "meta_acc" in err


def test_item_datasets_through_dataloader_workers_train_like_in_memory_tensors(tmp_path):
    x, y = three_classes()
    kw = dict(num_classes=3, epochs=1, batch_size=20, lr=0.05, model_kwargs=SMALL, progress=False)
    a = fit(TensorDataset(x[:80], y[:80]), TensorDataset(x[80:95], y[80:95]), test=TensorDataset(x[95:], y[95:]), **kw)
    b = fit(Items(x[:80], y[:80]), Items(x[80:95], y[80:95]), test=Items(x[95:], y[95:]), num_workers=2, **kw)
    assert torch.equal(a.weights, b.weights) and a.metrics["test_acc"] == b.metrics["test_acc"]
    for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(p, q)
    assert not multiprocessing.active_children()  # the workers were stopped


def bad_fit(**kw):
    x, y = three_classes(40)
    args = dict(train=TensorDataset(x[:30], y[:30]), meta=TensorDataset(x[30:], y[30:]), num_classes=3, epochs=1,
                batch_size=10, model_kwargs=SMALL, progress=False)
    args.update(kw)
    fit(**args)


@pytest.mark.parametrize("kw, words", [
    (dict(encodr="resnet18"), ["unknown option 'encodr' for method 'lfm'", "Did you mean 'encoder'", "lr_b"]),
    (dict(method="focal", gama=1.0), ["'gama'", "Did you mean 'gamma'", "Valid options: gamma"]),
    (dict(method="ce", encoder="smallcnn"), ["'encoder'", "method 'ce' takes no options"]),
    (dict(method="lfmm"), ["unknown method 'lfmm'", "Did you mean 'lfm'"]),
    (dict(model="resnet23"), ["unknown model 'resnet23'", "resnet32"]),
    (dict(num_classes=2), ["label 2", "[0, num_classes=2)", "num_classes=3"]),
    (dict(meta=TensorDataset(torch.randn(5, 3, 16, 16), torch.tensor([0, 1, -1, 0, 1]))), ["meta set has label -1"]),
    (dict(train=TensorDataset(torch.randn(30, 1, 16, 16), torch.arange(30) % 3),
          meta=TensorDataset(torch.randn(6, 1, 16, 16), torch.arange(6) % 3)), ["1 channel", "model 'resnet32' expects 3"]),
    (dict(meta=TensorDataset(torch.randn(6, 1, 16, 16), torch.arange(6) % 3)), ["meta images have 1", "train images have 3"]),
    (dict(meta=TensorDataset(torch.randn(2, 3, 16, 16), torch.tensor([0.0, 1.5]))), ["labels must be class", "1.5"]),
    (dict(meta=TensorDataset(torch.randn(5, 16, 16), torch.zeros(5, dtype=torch.long))), ["image tensor [C, H, W]"]),
    (dict(model_kwargs={"widht": 4}), ["model_kwargs", "widht", "resnet32"]),
    (dict(epochs=0), ["epochs=0", "positive integer"]),
    (dict(num_workers=-1), ["num_workers=-1"]),
    (dict(meta=TensorDataset(torch.randn(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))), ["meta set is empty"]),
])
def test_fit_rejects_bad_input_in_one_line_before_training(kw, words, tmp_path):
    with pytest.raises(UsageError) as info:
        bad_fit(run_dir=tmp_path / "run", **kw)
    text = str(info.value)
    assert "\n" not in text
    for w in words:
        assert w in text, (w, text)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_fit_rejects_imagefolders_whose_classes_differ(tmp_path):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    for split, classes in (("train", "abc"), ("meta", "ac")):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    train, meta = ImageFolder(tmp_path / "train", ToTensor()), ImageFolder(tmp_path / "meta", ToTensor())
    with pytest.raises(UsageError, match=r"meta set's class_to_idx differs .*only in train: \['b'\]"):
        fit(train, meta, num_classes=3, epochs=1, progress=False)


def test_labels_are_read_without_loading_images():
    class Targets(Dataset):  # like torchvision's ImageFolder/CIFAR: labels in .targets
        targets = [0, 2, 1, 2]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise AssertionError("an image was loaded to read a label")

    assert labels_of(Targets()).tolist() == [0, 2, 1, 2]
    assert labels_of(Subset(Targets(), [3, 1])).tolist() == [2, 2]
    assert labels_of(Items(torch.zeros(3, 1), torch.tensor([2, 0, 1]))).tolist() == [2, 0, 1]  # no attribute: one pass


def test_training_order_continues_from_any_batch():
    order = training_order(TrainConfig(batch_size=8), range(43), seed=3)  # 5 full batches per epoch
    expected = [order.batch_indices(e, s) for e in range(3) for s in range(5)]
    rest = list(order.batches_from(order.batch_indices(1, 2), epochs=3))
    assert len(rest) == 8 and all(torch.equal(a, b) for a, b in zip(rest, expected[7:]))
    assert order.batches_from(torch.tensor([0, 1, 2]), epochs=3) is None  # not one of its batches


def test_reader_loads_ahead_on_plan_and_follows_the_trainer_off_it():
    x = torch.arange(43.0).view(43, 1, 1, 1)
    order = training_order(TrainConfig(batch_size=8), range(43), seed=3)
    reader = UserData(Items(x, torch.zeros(43, dtype=torch.long)), num_workers=1,
                      plan=lambda idx: order.batches_from(idx, epochs=3))
    asked = [order.batch_indices(0, s) for s in range(3)]  # on the plan (loaded ahead)
    asked += [order.batch_indices(2, 1), order.batch_indices(2, 2)]  # a jump, as on resume: planned again
    asked += [torch.tensor([5, 1, 7]), torch.arange(43)]  # off any plan: fetched on their own
    try:
        for idx in asked:
            images, labels = reader.fetch(idx)
            assert torch.equal(images.flatten(), idx.float()) and labels.tolist() == [0] * len(idx)
    finally:
        reader.close()
