"""LFM-DR+ (ours, beyond the paper): LFM data reweighting with the changes our cpu-scale
ablation supports (see the README and ``lfm_dr.ablation``).

* a learned offset c inside the sigmoid, ``a_i = sigmoid(sum_j x_ij z_ij u_j r_j + c)``: with
  x, z, u, r >= 0 the paper's eq. 5 keeps every a_i >= 0.5, so a corrupted example the
  weighting recognises still gets half a clean example's weight; c (an upper variable like r,
  descending the same meta loss) lets a fall towards 0;
* Adam learning rate 0.1 (not 0.01) for b, r and c, so the weighting can move within a short
  schedule;
* on the cpu/smoke profiles, the label-free ``pixels`` encoder instead of a random CNN (the
  experiments choose it). ``encoder="auto"`` (the paper profile's) chooses between ``pixels``
  and the profile's own encoder from the meta set alone (``choose_encoder``): the one whose
  attention best tells synthetically mislabelled meta examples from correctly labelled ones.

With ``offset=False``, the paper's encoder and learning rates it is exactly LFM-DR.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lfm_core.encoders import create_encoder
from lfm_core.errors import UsageError
from lfm_core.registries import METHODS, SIMILARITIES
from lfm_dr.methods.lfm import DEFAULTS, LFMReweighting

AUTO_ENCODER = "auto"

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

    def __init__(self, ctx):
        if ctx.options.get("encoder") == AUTO_ENCODER:
            raise UsageError("encoder='auto' is chosen from the meta set before training (lfm_dr.methods.lfm_plus."
                             "choose_encoder, which the lfm-bench experiments call); pass a concrete encoder here")
        super().__init__(ctx)

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


@torch.no_grad()
def encoder_auroc(encoder: torch.nn.Module, x: Tensor, y: Tensor, num_classes: int, similarity: str = "dot",
                  seed: int = 0) -> float:
    """How well an encoder's attention flags wrong labels on a clean set ``(x, y)``: every example is
    asked twice, with its label and with a uniformly drawn wrong one; its suspicion is the
    attention mass (eq. 2, softmax over the other examples) on examples of other labels. AUROC of
    the suspicion for "the label asked with is wrong"; only ``(x, y)`` are read."""
    from lfm_dr.label_issues import auroc

    f = encoder(x)
    sim = SIMILARITIES.get(similarity)(f, f)
    sim.fill_diagonal_(float("-inf"))  # leave each example out of its own vote
    votes = torch.softmax(sim, dim=1) @ torch.nn.functional.one_hot(y, num_classes).to(f.dtype)
    g = torch.Generator().manual_seed(int(seed))
    wrong = (y + torch.randint(1, num_classes, y.shape, generator=g)) % num_classes
    suspicion = torch.cat([1 - votes.gather(1, y[:, None]), 1 - votes.gather(1, wrong[:, None])]).squeeze(1)
    return auroc(suspicion.cpu(), torch.cat([torch.zeros(len(y)), torch.ones(len(y))]).bool())


def choose_encoder(candidates: list[tuple[str, bool]], x: Tensor, y: Tensor, num_classes: int, similarity: str = "dot",
                   seed: int = 0, weights: str | None = None) -> tuple[tuple[str, bool], dict[str, float]]:
    """The (encoder, pretrained) of ``candidates`` with the best ``encoder_auroc`` on the meta set
    ``(x, y)``, ties to the first; a random encoder is built under a forked RNG, so choosing draws
    nothing from the training's random stream. Returns the choice and every candidate's AUROC."""
    scores: dict[str, float] = {}
    for name, pretrained in candidates:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            enc = create_encoder(name, pretrained=pretrained, weights=weights if pretrained else None).to(x.device)
            enc.train(not pretrained)  # as LFM-DR runs it: a random encoder normalises by batch
            scores[name] = encoder_auroc(enc, x, y, num_classes, similarity, seed)
    best = max(range(len(candidates)), key=lambda i: (scores[candidates[i][0]], -i))
    return candidates[best], scores
