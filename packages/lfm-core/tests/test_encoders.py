"""Feature encoders V: shapes, local weight files, offline-only pretrained weights."""

import pytest
import torch
from safetensors.torch import save_file

from lfm_core.encoders import SmallCNN, create_encoder
from lfm_core.errors import DataNotFoundError, LFMError, UsageError
from lfm_core.registries import ENCODERS
from lfm_core.registry import UnknownNameError

X = torch.randn(2, 3, 32, 32, dtype=torch.float32)



def test_registered():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "smallcnn"} <= set(ENCODERS.names())
    assert ENCODERS.list("resnet1*") == ["resnet101", "resnet152", "resnet18"]
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_encoder("resnet19")


@pytest.mark.parametrize("name,dim", [("smallcnn", 64), ("resnet18", 512)])
def test_feature_shapes(name, dim):
    enc = create_encoder(name)
    assert enc.num_features == dim
    assert enc(X).shape == (2, dim)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(DataNotFoundError, match=r"nope\.pth"):
        create_encoder("smallcnn", weights=path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_state_dict_round_trip(tmp_path, suffix):
    src = create_encoder("resnet18").eval()
    path = tmp_path / f"enc{suffix}"
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # torchvision files carry a head
    if suffix == ".pth":
        torch.save({"state_dict": sd}, path)
    else:
        save_file(sd, str(path))
    loaded = create_encoder("resnet18", weights=path).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(X), src(X))


def test_mismatched_weights(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(SmallCNN().state_dict(), path)
    with pytest.raises(UsageError, match="does not match encoder 'resnet18'"):
        create_encoder("resnet18", weights=path)
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LFMError, match=r"garbage\.pth"):
        create_encoder("smallcnn", weights=bad)


def test_pretrained_needs_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(DataNotFoundError, match=r"resnet18\.tv_in1k") as e:
        create_encoder("resnet18", pretrained=True)
    assert str(tmp_path) in str(e.value) and "--encoder-weights" in str(e.value)
    with pytest.raises(UsageError, match="smallcnn"):
        create_encoder("smallcnn", pretrained=True)


def test_pretrained_from_local_cache(tmp_path, monkeypatch):
    """A weights file laid out as the HF cache stores it is found and loaded offline."""
    ref = create_encoder("resnet18")
    sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    repo = tmp_path / "hub" / "models--timm--resnet18.tv_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(sd, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    enc = create_encoder("resnet18", pretrained=True)
    assert torch.equal(enc.state_dict()["conv1.weight"], sd["conv1.weight"])
    assert enc(X).shape == (2, 512)


def test_pixels_encoder_is_fixed_normalised_pixel_correlation():
    enc = create_encoder("pixels")
    assert list(enc.parameters()) == []
    f = enc(X)
    assert f.shape == (2, 3 * 32 * 32) and enc.num_features == 3 * 32 * 32
    torch.testing.assert_close(f.norm(dim=1), torch.full((2,), 30.0))
    # a brightness shift or a contrast change of an image does not change its features
    torch.testing.assert_close(enc(2.0 * X + 0.5), f)
    # dot products are 900 times the pixel correlation of the two images
    flat = X.flatten(1)
    corr = torch.corrcoef(flat)[0, 1]
    torch.testing.assert_close((f[0] @ f[1]) / 900.0, corr, rtol=1e-4, atol=1e-5)
    with pytest.raises(UsageError, match="pixels"):
        create_encoder("pixels", pretrained=True)
