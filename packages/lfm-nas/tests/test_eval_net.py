"""Evaluation networks, auxiliary head, drop path, cutout."""

import torch

from lfm_nas.eval_net import NetworkCIFAR, NetworkImageNet, cutout, drop_path, eval_loss
from lfm_nas.genotypes import DARTS_V2, PDARTS


def test_network_cifar_shapes_with_auxiliary():
    net = NetworkCIFAR(C=4, num_classes=7, layers=5, auxiliary=True, genotype=DARTS_V2, drop_path_prob=0.2)
    x = torch.randn(3, 3, 16, 16)
    net.train()
    logits, aux = net(x)
    assert logits.shape == (3, 7) and aux.shape == (3, 7)
    loss = eval_loss(logits, aux, torch.tensor([0, 1, 2]), 0.4)
    loss.backward()
    assert net.auxiliary_head.classifier.weight.grad is not None
    net.eval()
    logits, aux = net(x)
    assert logits.shape == (3, 7) and aux is None


def test_network_cifar_canonical_aux_input_is_8x8():
    net = NetworkCIFAR(C=2, num_classes=10, layers=8, auxiliary=True, genotype=PDARTS)
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)


def test_network_cifar_no_auxiliary():
    net = NetworkCIFAR(C=2, num_classes=4, layers=3, auxiliary=False, genotype=DARTS_V2)
    logits, aux = net(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 4) and aux is None and net.auxiliary_head is None


def test_network_imagenet_shapes():
    net = NetworkImageNet(C=8, num_classes=5, layers=5, auxiliary=True, genotype=DARTS_V2)
    logits, aux = net(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5) and aux.shape == (2, 5)


def test_drop_path_zeroes_whole_examples():
    torch.manual_seed(0)
    x = torch.ones(1000, 2, 3, 3)
    y = drop_path(x, 0.3)
    per_example = y.flatten(1)
    kept = (per_example != 0).all(1)
    assert ((per_example == 0).all(1) | kept).all()
    assert 0.6 < float(kept.float().mean()) < 0.8
    torch.testing.assert_close(per_example[kept], torch.full_like(per_example[kept], 1 / 0.7))
    assert drop_path(x, 0.0) is x


def test_cutout_square():
    img = torch.ones(3, 32, 32)
    out = cutout(img, 16)
    zeros = (out[0] == 0)
    assert zeros.sum() > 0 and zeros.sum() <= 256
    assert torch.equal(out[0] == 0, out[2] == 0)  # same square on every channel
    rows, cols = zeros.any(1).nonzero(), zeros.any(0).nonzero()
    assert int(zeros.sum()) == len(rows) * len(cols)  # a rectangle (clipped square)
    batch = cutout(torch.ones(8, 3, 32, 32), 16)
    assert batch.shape == (8, 3, 32, 32) and (batch == 0).any()
    assert torch.equal(img, torch.ones(3, 32, 32))  # input untouched
