"""LFM-DR+ (ours, beyond the paper): LFM data reweighting with the changes our cpu-scale
ablation supports (see the README and ``lfm_dr.ablation``).

* a learned offset c inside the sigmoid, ``a_i = sigmoid(sum_j x_ij z_ij u_j r_j + c)``: with
  x, z, u, r >= 0 the paper's eq. 5 keeps every a_i >= 0.5, so a corrupted example the
  weighting recognises still gets half a clean example's weight; c (an upper variable like r,
  descending the same meta loss) lets a fall towards 0;
* Adam learning rate 0.1 (not 0.01) for b, r and c, so the weighting can move within a short
  schedule;
* on the cpu/smoke profiles, the label-free ``pixels`` encoder instead of a random CNN (the
  experiments choose it; the paper profile keeps the ImageNet ResNet-18).

With ``offset=False``, the paper's encoder and learning rates it is exactly LFM-DR.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lfm_core.registries import METHODS
from lfm_dr.methods.lfm import DEFAULTS, LFMReweighting

PLUS_DEFAULTS = {
    **DEFAULTS,
    "encoder": "pixels",
    "pretrained": False,
    "lr_b": 0.1,
    "lr_r": 0.1,
    "lr_c": 0.1,
    "offset": True,
    "normalize_a": False,
}


@METHODS.register("lfm_plus")
class LFMPlus(LFMReweighting):
    name = "lfm_plus"
    DEFAULTS = PLUS_DEFAULTS

    def extra_upper(self) -> dict[str, tuple[Tensor, float]]:
        self.c: Tensor | None = None
        if not self.opt["offset"]:
            return {}
        self.c = torch.zeros(1, device=self.ctx.device, requires_grad=True)
        return {"c": (self.c, float(self.opt["lr_c"]))}

    def extra_state(self):
        state = super().extra_state()
        if self.c is not None:
            state["c"] = self.c.detach().clone()
        return state

    def load_extra_state(self, state):
        super().load_extra_state(state)
        if self.c is not None:
            with torch.no_grad():
                self.c.copy_(state["c"])

    def epoch_diagnostics(self, clean_mask):
        out = super().epoch_diagnostics(clean_mask)
        if self.c is not None:
            out["c"] = float(self.c.detach())
        return out
