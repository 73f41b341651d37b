"""Step cost of LFM-DARTS against DARTS second order (paper Table X), one process, side by side.

:func:`nas_step_costs` times one search step of each method on the same DARTS supernet and
batch and measures its peak memory:

* ``darts``: one DARTS second-order step (the architecture step through the unrolled
  ``w' = w - lr grad_w L_train``, then the real W step), as :func:`lfm_nas.search.search` runs it;
* ``lfm``: one LFM-DARTS step with two supernets W1, W2 and a ResNet-18 encoder V
  (W1 step, W2 step on the LFM weights, hypergradient for B, V and r);
* ``ps``: the same with parameter sharing (one trunk, two heads, V = W1's trunk).

``benchmarks/step_cost.py`` calls it with its own timing and memory functions.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lfm_nas.darts import DartsArchitect
from lfm_nas.operations import PRIMITIVES
from lfm_nas.problem import ArchitectSettings, LFMArchitect
from lfm_nas.spaces import Network, PSNetwork


def nas_ratios(out: dict[str, Any]) -> dict[str, float]:
    """Time and memory ratios against the DARTS step, for the fields present."""
    ratios = {}
    for name, key, unit in (("ratio", "lfm", "step_s"), ("ps_ratio", "ps", "step_s"),
                            ("mem_ratio", "lfm", "mem_mb"), ("ps_mem_ratio", "ps", "mem_mb")):
        if f"{key}_{unit}" in out and out.get(f"darts_{unit}"):
            ratios[name] = out[f"{key}_{unit}"] / out[f"darts_{unit}"]
    return ratios


def nas_step_costs(device: torch.device | str, batch: int, warmup: int, repeat: int,
                   time_fn: Callable[..., float] | None, mem_fn: Callable[..., float] | None, *,
                   engine: str = "exact", encoder: str = "resnet18", C: int | None = None,
                   layers: int | None = None, image_size: int | None = None,
                   recompute_weights: bool = True) -> dict[str, Any]:
    """Median step time (``time_fn(fn, device, warmup, repeat)``) and peak memory of one DARTS
    second-order step, one LFM-DARTS step (two networks) and one LFM-DARTS step with PS.
    ``time_fn=None`` or ``mem_fn=None`` skips that measurement.

    GPU: the paper's supernet (C=16, 8 cells, 8 primitives, 32x32 images); CPU: C=8, 5 cells,
    16x16 images (about 1-2 minutes). Memory: ``mem_fn(fn, device)`` of one step (the
    benchmark's measures one step's own peak, e.g. ``PeakMemory(strict=True)`` on CPU, since a
    process-wide peak would let the first, largest step hide the others). Every step is timed
    before any memory is measured (a strict allocator setting slows allocation down).
    ``recompute_weights``: LFMArchitect's graph-free first pass of the weights a (default).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    C = C or (16 if cuda else 8)
    layers = layers or (8 if cuda else 5)
    size = image_size or (32 if cuda else 16)
    k = 10
    g = torch.Generator().manual_seed(0)
    x_tr = torch.randn(batch, 3, size, size, generator=g).to(device)
    y_tr = torch.randint(0, k, (batch,), generator=g).to(device)
    x_val = torch.randn(batch, 3, size, size, generator=g).to(device)
    y_val = torch.randint(0, k, (batch,), generator=g).to(device)
    idx = torch.arange(batch, device=device)
    n_val, lr = 25_000, 0.025
    torch.manual_seed(0)

    def space(num_classes: int | None = k) -> Network:
        return Network(C=C, num_classes=num_classes, layers=layers, primitives=PRIMITIVES)

    def darts_step_fn():
        """DARTS second order: architecture step, then the real W step (as lfm_nas.search runs it)."""
        model = space().to(device)
        w_opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
        arch = DartsArchitect(model, order="second", engine="finite-difference" if engine == "finite-difference"
                              else "exact", w_optimizer=w_opt)

        def step():
            arch.step(x_tr, y_tr, x_val, y_val, lr)
            w_opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_tr, arch.alphas), y_tr).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            w_opt.step()

        return step

    def lfm_arch(variant: str) -> LFMArchitect:
        if variant == "ps":
            w1, w2, enc = PSNetwork(space(None), k).to(device), None, None
        else:
            from lfm_core.registries import ENCODERS

            w1, w2 = space().to(device), space().to(device)
            enc = ENCODERS.create(encoder, pretrained=False).to(device)
        settings = ArchitectSettings(variant=variant, engine=engine, w_lr=lr, recompute_weights=recompute_weights)
        return LFMArchitect(w1, w2, enc, n_val=n_val, settings=settings)

    def memory(fn, key: str) -> float:
        value = float(mem_fn(fn, device))
        if cuda:  # also the whole footprint (models, optimiser state, data), as nvidia-smi shows
            out[f"{key}_mem_total_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return value

    out: dict[str, Any] = {}
    steps = {"darts": darts_step_fn()}
    for key, variant in (("lfm", "two"), ("ps", "ps")):
        a = lfm_arch(variant)
        for m in (a.w1, a.w2):
            m.train()
        steps[key] = lambda a=a: a.step((x_tr, y_tr), (x_val, y_val, idx))
    for key, step in steps.items() if time_fn is not None else ():
        out[f"{key}_step_s"] = time_fn(step, device, warmup, repeat)
    for key, step in steps.items() if mem_fn is not None else ():
        out[f"{key}_mem_mb"] = memory(step, key)
        if cuda:
            torch.cuda.empty_cache()
    out.update(nas_ratios(out))
    mem_what = ("peak CUDA memory of one step above what was allocated before it (*_mem_total_mb: all of it)"
                if cuda else "growth of peak RSS during one step, freed tensors returned to the OS")
    out["setup"] = (f"DARTS supernet C={C}, {layers} cells, {len(PRIMITIVES)} primitives, {size}x{size}, batch {batch}; "
                    f"{engine} hypergradients; LFM: two supernets + {encoder} encoder (random init); PS: shared "
                    f"trunk, two heads, V = W1's trunk; recompute_weights={recompute_weights}; memory: {mem_what}; "
                    f"threads {torch.get_num_threads()}")
    return out


__all__ = ["nas_step_costs", "nas_ratios"]
