"""``compile=True`` (``lfm-bench run --compile``): the same step as the eager networks, to rounding."""

from types import SimpleNamespace

import pytest
import torch

from lfm_core.data import IndexedTensorDataset
from lfm_dr.methods.lfm import DRProblem
from lfm_dr.train import TrainConfig, build_method

K = 3


def _splits():
    g = torch.Generator().manual_seed(0)
    train = IndexedTensorDataset(torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, K, (40,), generator=g), K)
    meta = IndexedTensorDataset(torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, K, (12,), generator=g), K)
    return SimpleNamespace(train=train, meta=meta, test=meta, num_classes=K, info={})


def _first_step(engine: str, compile_: bool):
    cfg = TrainConfig(method="lfm", model="resnet32", model_kwargs={"width": 2, "blocks_per_stage": 1},
                      batch_size=8, meta_batch_size=6, lr=0.1, device="cpu", compile=compile_,
                      options={"encoder": "smallcnn", "pretrained": False, "engine": engine})
    splits = _splits()
    torch.manual_seed(0)
    method, order, _ = build_method(cfg, splits, seed=0, device=torch.device("cpu"))
    x, y = splits.train.images[:8], splits.train.labels[:8]
    xm, ym, jm = method.ctx.next_meta()
    problem = DRProblem(method.w1, method.w2, method.encoder, x, y, torch.arange(8), xm, ym, jm, "dot", "none")
    stats = method.solver.step(problem)
    return stats, [p.detach().clone() for p in method.w2.parameters()], method


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("engine, tol", [("exact", 1e-4), ("forward-difference", 1e-2)])
def test_compiled_networks_give_the_eager_step(engine, tol):
    eager, w2_eager, _ = _first_step(engine, False)
    compiled, w2_compiled, method = _first_step(engine, True)
    # the networks really are compiled in place (checkpoints keep the plain state_dict keys)
    assert method.w1._compiled_call_impl is not None and method.encoder._compiled_call_impl is not None
    assert not any(k.startswith("_orig_mod") for k in method.w1.state_dict())
    assert compiled.finite and eager.finite
    assert abs(compiled.loss3 - eager.loss3) <= 1e-5 * abs(eager.loss3)
    for name in ("b", "r", "V.features.0.weight"):
        assert _rel(compiled.grads[name], eager.grads[name]) < tol, name
    for a, b in zip(w2_compiled, w2_eager):
        assert _rel(a, b) < 1e-5


def test_fit_compile_trains_compiled_networks_with_the_last_layer_approximation():
    from torch.utils.data import TensorDataset

    from lfm_dr import fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 3, 8, 8, generator=g), torch.randint(0, K, (60,), generator=g)
    result = fit(TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:]), num_classes=K, epochs=1,
                 batch_size=12, lr=0.05, model_kwargs={"width": 2, "blocks_per_stage": 1}, encoder="smallcnn",
                 pretrained=False, meta_layers="last", compile=True, progress=False)
    assert result.model._compiled_call_impl is not None  # W2, compiled in place
    assert not any(k.startswith("_orig_mod") for k in result.model.state_dict())
    assert result.metrics["skipped_steps"] == 0 and 0 <= result.metrics["meta_acc"] <= 100
    assert float(result.weights.std()) > 0  # b moved: the hypergradient reached it
