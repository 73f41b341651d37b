import pytest
import torch
from torch.func import functional_call, jvp

from lfm_core.errors import UsageError
from lfm_core.registries import MODELS
from lfm_core.solver import frozen_bn_stats
from lfm_dr.models import resnet32, vgg19_bn, wrn28_10


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("kwargs", [{}, {"width": 4, "blocks_per_stage": 1}, {"width": 8, "shortcut": "B"}])
def test_resnet32_shapes(kwargs):
    torch.manual_seed(0)
    m = resnet32(num_classes=7, **kwargs)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_resnet32_parameter_count():
    assert 0.45e6 <= n_params(resnet32(num_classes=10)) <= 0.48e6
    m = resnet32(width=4)
    assert m.linear.in_features == 16


def test_wrn_shapes_and_strides():
    m = wrn28_10(num_classes=5, depth=10, widen_factor=1)
    sizes = []
    for block in (m.block1, m.block2, m.block3):
        block.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert sizes == [32, 16, 8]  # strides 1, 2, 2
    with pytest.raises(UsageError):
        wrn28_10(depth=12)


def test_wrn28_10_full_size_parameter_count():
    assert 36.0e6 <= n_params(wrn28_10()) <= 37.0e6  # the published 36.5 M


@pytest.mark.parametrize("size", [32, 64])
def test_vgg19_bn_shapes(size):
    m = vgg19_bn(num_classes=10, width_mult=0.125, image_size=size)
    assert m(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert m.classifier.in_features == 64 * (size // 32) ** 2
    assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == 16


def test_vgg19_bn_full_width_classifier():
    assert vgg19_bn(image_size=32).classifier.in_features == 512
    assert vgg19_bn(image_size=64).classifier.in_features == 2048
    with pytest.raises(UsageError):
        vgg19_bn(image_size=16)


def test_registry_creates_models():
    assert {"resnet32", "wrn28_10", "vgg19_bn"} <= set(MODELS.names())
    m = MODELS.create("resnet32", num_classes=3, width=4, blocks_per_stage=1)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("train", [False, True])
def test_functional_call_and_jvp_through_resnet32(train):
    torch.manual_seed(0)
    m = resnet32(num_classes=4, width=4, blocks_per_stage=1).double().train(train)
    x = torch.randn(3, 3, 32, 32, dtype=torch.double)
    params = {k: v.detach() for k, v in m.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    before = {k: b.clone() for k, b in m.named_buffers()}

    def f(p):
        return functional_call(m, p, (x,))

    with frozen_bn_stats(m):
        out, tan = jvp(f, (params,), (tangent,))
        h = 1e-6
        plus = f({k: params[k] + h * tangent[k] for k in params})
        minus = f({k: params[k] - h * tangent[k] for k in params})
    assert out.shape == tan.shape == (3, 4)
    torch.testing.assert_close(tan, (plus - minus) / (2 * h), rtol=1e-5, atol=1e-6)
    for k, b in m.named_buffers():
        assert torch.equal(b, before[k]), k
