"""The LFM weighting of stage II (paper eqs. 2-5).

``a_i = sigmoid( sum_j x_ij z_ij u_j r_j )`` with
``x_ij = softmax_j sim(V(d_i), V(d_j))`` (attention over the validation batch),
``z_ij = 1[y_i == y_j]`` and ``u_j`` the cross-entropy of W1' on validation example j.
The ablations of Fig. 4 replace x, u or z by ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lfm_core.errors import check_choice
from lfm_core.registries import SIMILARITIES


@SIMILARITIES.register("dot")
def dot_similarity(f_tr: Tensor, f_val: Tensor) -> Tensor:
    """Dot-product attention scores (the paper's default)."""
    return f_tr @ f_val.T


@SIMILARITIES.register("cosine")
def cosine_similarity(f_tr: Tensor, f_val: Tensor) -> Tensor:
    return F.normalize(f_tr, dim=1) @ F.normalize(f_val, dim=1).T


@SIMILARITIES.register("l2")
def negative_l2_similarity(f_tr: Tensor, f_val: Tensor) -> Tensor:
    """Negative Euclidean distance (written out so its gradient is finite at zero distance)."""
    sq = (f_tr.pow(2).sum(1, keepdim=True) + f_val.pow(2).sum(1)[None, :] - 2 * f_tr @ f_val.T)
    return -torch.sqrt(sq.clamp_min(1e-12))


ABLATIONS = ("none", "x", "u", "z")


def lfm_weights(
    f_tr: Tensor,
    f_val: Tensor,
    y_tr: Tensor,
    y_val: Tensor,
    u: Tensor,
    r: Tensor,
    similarity: str = "dot",
    drop: str = "none",
    offset: Tensor | float = 0.0,
) -> Tensor:
    """Per-example weights ``a`` (shape ``[n_tr]``) for a training batch.

    ``f_tr``/``f_val`` are encoder features, ``u`` the per-example validation losses of W1',
    ``r`` the coefficients of the validation examples in the batch, ``drop`` one of
    ``none``, ``x``, ``u``, ``z`` (the ablation: that term becomes ones). ``offset`` is added
    inside the sigmoid (0 in the paper; LFM-DR+ learns it, so that a can fall below 0.5).
    """
    check_choice("ablation", drop, ABLATIONS)
    n_tr, n_val = f_tr.shape[0], f_val.shape[0]
    if drop == "x":
        x = f_tr.new_ones(n_tr, n_val)
    else:
        x = torch.softmax(SIMILARITIES.get(similarity)(f_tr, f_val), dim=1)
    z = (y_tr[:, None] == y_val[None, :]).to(x.dtype) if drop != "z" else x.new_ones(n_tr, n_val)
    uu = u.to(x.dtype) if drop != "u" else x.new_ones(n_val)
    return torch.sigmoid((x * z * uu[None, :]) @ r.to(x.dtype) + offset)
