"""The library API on a user's own datasets (items are (x, y) pairs, no index)."""

import torch
from torch.utils.data import TensorDataset

from lfm_dr import fit


def test_fit_on_plain_tensor_datasets(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 3, 16, 16, generator=g)
    y = torch.randint(0, 3, (120,), generator=g)
    x += y.view(-1, 1, 1, 1).float()  # learnable classes
    train, meta, test = TensorDataset(x[:80], y[:80]), TensorDataset(x[80:95], y[80:95]), TensorDataset(x[95:], y[95:])
    result = fit(train, meta, num_classes=3, test=test, epochs=2, batch_size=20, lr=0.05,
                 model_kwargs={"width": 4, "blocks_per_stage": 1}, run_dir=tmp_path / "run")
    assert result.weights.shape == (80,)
    assert (result.weights >= 0).all() and not torch.allclose(result.weights, torch.ones(80))
    assert 0 <= result.metrics["test_acc"] <= 100 and "test_acc_w1" in result.metrics
    with torch.no_grad():
        acc = (result.model.eval()(x[95:]).argmax(1) == y[95:]).float().mean() * 100
    assert abs(float(acc) - result.metrics["test_acc"]) < 1e-4
    assert (tmp_path / "run" / "checkpoint.pt").exists()
