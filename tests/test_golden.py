"""Golden numbers that must hold on any machine: short float64 trainings through the public API.

float64 keeps the rounding differences between CPUs (vector widths, BLAS kernels) near 1e-13 after
these few steps, so a relative tolerance of 1e-8 catches any change of the computation (a reordered
sum, a changed default, a different engine) while holding across machines. The values are in
``golden_values.json``; rewrite them only for a deliberate change of the numbers:
``python tests/test_golden.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from lfm_core.runtime import default_dtype

VALUES = Path(__file__).with_name("golden_values.json")
RTOL = 1e-8
# name -> (fit method, options): every DR engine family and the meta baselines
DR_CASES = {
    "ce": ("ce", {}),
    "lfm_exact": ("lfm", {"engine": "exact"}),
    "lfm_exact_reverse": ("lfm", {"engine": "exact-reverse"}),
    "lfm_finite_difference": ("lfm", {"engine": "finite-difference"}),
    "lfm_plus": ("lfm_plus", {}),
    "l2rw": ("l2rw", {}),
    "mwn": ("mwn", {}),
}
# name -> the LFM-DARTS architect's engine
NAS_CASES = {"nas_exact": "exact", "nas_finite_difference": "finite-difference"}
CASES = (*DR_CASES, *NAS_CASES)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    means = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    x = means[y] + 0.8 * torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    flip = torch.rand(n, generator=g) < 0.3
    return TensorDataset(x, torch.where(flip, (y + 1) % 4, y))


def _numbers(name: str) -> dict[str, float]:
    if name in NAS_CASES:
        return _nas_numbers(NAS_CASES[name])
    from lfm_dr import fit

    method, options = DR_CASES[name]
    with default_dtype(torch.float64):
        res = fit(_data(64, 1), TensorDataset(*_data(16, 2).tensors[:1], torch.arange(16) % 4), num_classes=4,
                  test=_data(32, 3), model="resnet32", model_kwargs={"width": 4, "blocks_per_stage": 1}, method=method, epochs=2,
                  batch_size=16, lr=0.05, seed=0, progress=False, **options)
    params = torch.cat([p.detach().reshape(-1) for p in res.model.parameters()])
    out = {"param_sum": float(params.sum()), "param_sq": float(params.pow(2).sum())}
    if res.weights is not None:
        out["weights_sum"] = float(res.weights.double().sum())
    out.update({k: res.metrics[k] for k in ("b_mean", "r_mean") if k in res.metrics})
    return out


def _nas_numbers(engine: str) -> dict[str, float]:
    """Three Algorithm-1 steps of LFM-DARTS through the public ``LFMArchitect`` API."""
    from lfm_core.encoders import create_encoder
    from lfm_nas import LFMArchitect

    x, y = _data(16, 4).tensors
    xv, yv = _data(16, 5).tensors
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        arch = LFMArchitect.from_space("darts", dict(C=4, layers=2, num_classes=4), variant="two",
                                       encoder=create_encoder("smallcnn"), n_val=16, engine=engine)
        for _ in range(3):
            arch.set_w_lr(0.05)
            arch.step((x, y), (xv, yv, torch.arange(16)))
    alphas = torch.cat([arch.alphas[k].reshape(-1) for k in sorted(arch.alphas)])
    return {"alpha_sum": float(alphas.sum()), "alpha_sq": float(alphas.pow(2).sum()), "r_sum": float(arch.r.sum())}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    expected = json.loads(VALUES.read_text())[name]
    got = _numbers(name)
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        assert got[key] == pytest.approx(want, rel=RTOL, abs=1e-12), f"{name}: {key}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    VALUES.write_text(json.dumps({n: _numbers(n) for n in sorted(CASES)}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {VALUES}")
