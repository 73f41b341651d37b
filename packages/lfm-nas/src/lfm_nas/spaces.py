"""Search-space supernets: DARTS and P-DARTS.

The architecture weights are *not* module parameters: ``forward(x, alphas)`` takes them as a
dict ``{"normal": [14, n_ops], "reduce": [14, n_ops]}`` of raw logits and applies the softmax,
so the LFM solver (or a DARTS architect) owns them as upper-level tensors and one set of
alphas drives several networks (W1 and W2 of LFM).

P-DARTS uses the same :class:`Network` with per-edge candidate lists ("switches") and dropout
on the parameter-free skip connections; :func:`prune_ops` and :func:`limit_skips` implement
its progressive pruning and its skip-connect restriction.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfm_core.registries import SEARCH_SPACES
from lfm_nas.genotypes import CELL_KINDS, Genotype, alpha_of, count_ops, derive_genotype, edge_ops, n_edges, parse_cell
from lfm_nas.operations import PRIMITIVES, FactorizedReduce, ReLUConvBN, SearchBatchNorm2d, make_op, set_composite_bn

Switches = dict[str, list[list[bool]]]


# ------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------
class SkipDropout(nn.Module):
    """P-DARTS' dropout after a parameter-free skip connection; ``p`` is changed during a stage."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p > 0 and self.training:
            return F.dropout(x, self.p, training=True)
        return x


class MixedOp(nn.Module):
    """Softmax-weighted sum of candidate operations on one edge (BN after pooling, as DARTS)."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str], skip_dropout: float = 0.0):
        super().__init__()
        self.primitives = tuple(primitives)
        self._ops = nn.ModuleList()
        for name in self.primitives:
            op = make_op(name, C, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, SearchBatchNorm2d(C, affine=False))
            elif name == "skip_connect" and stride == 1:
                op = nn.Sequential(op, SkipDropout(skip_dropout))
            self._ops.append(op)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        out = None
        for w, op in zip(weights, self._ops):
            y = w * op(x)
            out = y if out is None else out + y
        return out


class SearchCell(nn.Module):
    """Two inputs, ``steps`` intermediate nodes, one MixedOp per (input, node) pair."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 ops_per_edge: Sequence[Sequence[str]], skip_dropout: float = 0.0):
        super().__init__()
        self.reduction = reduction
        self.steps, self.multiplier = steps, multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        e = 0
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(C, stride, ops_per_edge[e], skip_dropout))
                e += 1

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            s = None
            for j, h in enumerate(states):
                y = self._ops[offset + j](h, weights[offset + j])
                s = y if s is None else s + y
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


# ------------------------------------------------------------------------------------
# alphas and switches
# ------------------------------------------------------------------------------------
def init_alphas(n_ops: int, scale: float = 1e-3, steps: int = 4, *, generator: torch.Generator | None = None,
                device=None, dtype=None) -> dict[str, Tensor]:
    """``{"normal", "reduce"}`` of shape ``[n_edges, n_ops]``, ``scale * N(0, 1)`` as DARTS."""
    k = n_edges(steps)
    out = {}
    for kind in CELL_KINDS:
        t = torch.randn(k, n_ops, generator=generator, dtype=dtype or torch.get_default_dtype())
        out[kind] = (scale * t).to(device)
    return out


def full_switches(n_ops: int = len(PRIMITIVES), steps: int = 4) -> Switches:
    return {kind: [[True] * n_ops for _ in range(n_edges(steps))] for kind in CELL_KINDS}


def switches_to_ops(switches: Switches, primitives: Sequence[str] = PRIMITIVES) -> dict[str, list[list[str]]]:
    """Per-edge candidate names ``{"normal": [[...] * 14], "reduce": ...}`` of switches."""
    return {kind: [[p for p, on in zip(primitives, sw) if on] for sw in switches[kind]] for kind in CELL_KINDS}


def ops_per_edge_count(switches: Switches) -> dict[str, list[int]]:
    return {kind: [sum(map(bool, sw)) for sw in switches[kind]] for kind in CELL_KINDS}


# ------------------------------------------------------------------------------------
# the supernet
# ------------------------------------------------------------------------------------
class Network(nn.Module):
    """DARTS search network: a stem, ``layers`` cells (reduction at 1/3 and 2/3), a classifier.

    ``forward(x, alphas)`` with ``alphas = {"normal": [14, n_ops], "reduce": [14, n_ops]}``
    (raw logits; ``"alpha_normal"``-style keys are accepted too). ``switches`` (P-DARTS) give,
    per cell kind and edge, which of ``primitives`` are candidates; all are by default.
    ``num_classes=None`` builds no classifier (``forward`` returns the pooled features).
    """

    def __init__(self, C: int = 16, num_classes: int | None = 10, layers: int = 8, steps: int = 4,
                 multiplier: int = 4, primitives: Sequence[str] = PRIMITIVES, stem_multiplier: int = 3,
                 switches: Switches | None = None, skip_dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.steps, self.multiplier = steps, multiplier
        self.primitives = tuple(primitives)
        self.switches = copy.deepcopy(switches) if switches is not None else full_switches(len(self.primitives), steps)
        for kind in CELL_KINDS:
            if len(self.switches[kind]) != n_edges(steps) or any(len(s) != len(self.primitives) for s in self.switches[kind]):
                raise ValueError(f"switches[{kind!r}] must be {n_edges(steps)} lists of {len(self.primitives)} booleans")
        self.edge_ops = switches_to_ops(self.switches, self.primitives)
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  SearchBatchNorm2d(C_curr, affine=True))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            kind = "reduce" if reduction else "normal"
            self.cells.append(SearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                         self.edge_ops[kind], skip_dropout))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.feature_dim = C_prev
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes) if num_classes else nn.Identity()

    # -- shapes --------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return n_edges(self.steps)

    @property
    def n_ops(self) -> int:
        """Candidates per edge (uniform across edges, as P-DARTS keeps it)."""
        counts = {c for kind in CELL_KINDS for c in ops_per_edge_count(self.switches)[kind]}
        if len(counts) != 1:
            raise ValueError(f"edges have different numbers of candidate operations: {sorted(counts)}")
        return counts.pop()

    def new_alphas(self, scale: float = 1e-3, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        p = next(self.parameters())
        return init_alphas(self.n_ops, scale, self.steps, generator=generator, device=p.device, dtype=p.dtype)

    def set_composite_bn(self, composite: bool) -> None:
        """Composite batch norm (exact reverse-over-forward, the default) or the fused kernel."""
        set_composite_bn(self, composite)

    def set_skip_dropout(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, SkipDropout):
                m.p = float(p)

    # -- forward -------------------------------------------------------------------------
    def features(self, x: Tensor, alphas: Mapping[str, Tensor]) -> Tensor:
        w_normal = torch.softmax(alpha_of(alphas, "normal"), dim=-1)
        w_reduce = torch.softmax(alpha_of(alphas, "reduce"), dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.global_pooling(s1).flatten(1)

    def forward(self, x: Tensor, alphas: Mapping[str, Tensor]) -> Tensor:
        return self.classifier(self.features(x, alphas))

    def genotype(self, alphas: Mapping[str, Tensor]) -> Genotype:
        return derive_genotype(alphas, self.edge_ops, self.steps, self.multiplier)


class PDartsNetwork(Network):
    """The P-DARTS supernet: :class:`Network` with switches and skip dropout (5 cells by default)."""

    def __init__(self, C: int = 16, num_classes: int | None = 10, layers: int = 5, **kw: Any):
        super().__init__(C=C, num_classes=num_classes, layers=layers, **kw)


class PSNetwork(nn.Module):
    """Parameter sharing (paper Table X): one trunk, two classifier heads.

    Used as both ``w1`` and ``w2`` of the solver: W1 = trunk + ``head1``, W2 = trunk + ``head2``,
    and the encoder V of the weighting is the trunk itself. ``forward(x, alphas, head)`` with
    ``head`` 1 or 2 gives logits, ``head=0`` the trunk's pooled features.
    """

    def __init__(self, trunk: Network, num_classes: int):
        super().__init__()
        if trunk.num_classes:
            raise ValueError("the PS trunk must be built with num_classes=None")
        self.trunk = trunk
        self.head1 = nn.Linear(trunk.feature_dim, num_classes)
        self.head2 = nn.Linear(trunk.feature_dim, num_classes)

    def features(self, x: Tensor, alphas: Mapping[str, Tensor]) -> Tensor:
        return self.trunk.features(x, alphas)

    def forward(self, x: Tensor, alphas: Mapping[str, Tensor], head: int = 1) -> Tensor:
        f = self.trunk.features(x, alphas)
        if head == 0:
            return f
        return (self.head1 if head == 1 else self.head2)(f)

    def learner_parameters(self, which: int) -> dict[str, nn.Parameter]:
        """The parameters learner ``which`` (1 or 2) trains: the trunk and its own head."""
        head = f"head{which}."
        return {k: p for k, p in self.named_parameters() if k.startswith("trunk.") or k.startswith(head)}

    # conveniences delegated to the trunk
    def new_alphas(self, *a, **kw):
        return self.trunk.new_alphas(*a, **kw)

    def genotype(self, alphas):
        return self.trunk.genotype(alphas)

    def set_skip_dropout(self, p: float) -> None:
        self.trunk.set_skip_dropout(p)

    def set_composite_bn(self, composite: bool) -> None:
        set_composite_bn(self, composite)

    @property
    def edge_ops(self):
        return self.trunk.edge_ops

    @property
    def switches(self):
        return self.trunk.switches


# ------------------------------------------------------------------------------------
# registered factories
# ------------------------------------------------------------------------------------
@SEARCH_SPACES.register("darts")
def darts_space(**kw: Any) -> Network:
    """DARTS supernet; keyword arguments of :class:`Network` (C, num_classes, layers, primitives...)."""
    return Network(**kw)


@SEARCH_SPACES.register("pdarts")
def pdarts_space(**kw: Any) -> PDartsNetwork:
    """P-DARTS supernet; keyword arguments of :class:`Network` plus ``switches`` and ``skip_dropout``."""
    return PDartsNetwork(**kw)


# ------------------------------------------------------------------------------------
# P-DARTS: stages, pruning, skip limit
# ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PDartsStage:
    index: int
    layers: int          # cells of the supernet in this stage
    n_ops: int           # candidate operations per edge during the stage
    keep: int            # candidates per edge kept after the stage (1 after the last)
    skip_dropout: float  # initial dropout rate on skip connections
    epochs: int
    arch_start: int      # first epoch with architecture (and LFM) updates

    def skip_dropout_at(self, epoch: int) -> float:
        """P-DARTS schedule: linear decay during the warm-up, exponential decay afterwards."""
        if epoch < self.arch_start:
            return self.skip_dropout * (self.epochs - epoch - 1) / self.epochs
        return self.skip_dropout * math.exp(-(epoch - self.arch_start) * 0.2)


def pdarts_stages(layers: Sequence[int] = (5, 11, 17), n_ops: Sequence[int] = (8, 5, 3),
                  skip_dropout: Sequence[float] = (0.1, 0.4, 0.7), epochs: int = 25,
                  arch_start: int = 10) -> list[PDartsStage]:
    """The three P-DARTS stages: 5 -> 11 -> 17 cells, 8 -> 5 -> 3 candidates per edge.

    The official CIFAR-100 run uses ``skip_dropout=(0.1, 0.3, 0.6)``.
    """
    if not (len(layers) == len(n_ops) == len(skip_dropout)):
        raise ValueError("layers, n_ops and skip_dropout need one entry per stage")
    keeps = list(n_ops[1:]) + [1]
    return [PDartsStage(i, int(n_cells), int(k), int(keep), float(p), int(epochs), int(arch_start))
            for i, (n_cells, k, keep, p) in enumerate(zip(layers, n_ops, keeps, skip_dropout))]


def prune_ops(alphas: Mapping[str, Tensor], switches: Switches, keep: int,
              primitives: Sequence[str] = PRIMITIVES, exclude_none: bool = False) -> Switches:
    """Keep the ``keep`` strongest candidates (softmax of ``alphas``) on every edge.

    ``alphas[kind]`` has one column per candidate that is switched on, in primitive order.
    ``exclude_none`` drops 'none' first whatever its weight (P-DARTS' last pruning).
    """
    out = copy.deepcopy(switches)
    for kind in CELL_KINDS:
        probs = torch.softmax(alpha_of(alphas, kind).detach().float(), dim=-1).tolist()
        for e, sw in enumerate(out[kind]):
            on = [j for j, s in enumerate(sw) if s]
            if len(on) != len(probs[e]):
                raise ValueError(f"{kind} edge {e}: {len(on)} candidates switched on but alphas have {len(probs[e])}")
            if keep > len(on):
                raise ValueError(f"cannot keep {keep} of {len(on)} candidates")
            order = list(range(len(on)))
            if exclude_none:
                rank = lambda i: (primitives[on[i]] != "none", probs[e][i], i)  # noqa: E731
            else:
                rank = lambda i: (probs[e][i], i)  # noqa: E731
            for i in sorted(order, key=rank)[: len(on) - keep]:
                sw[on[i]] = False
    return out


def limit_skips(alphas: Mapping[str, Tensor], primitives: Any = PRIMITIVES, max_skips: int = 2,
                steps: int = 4, multiplier: int = 4) -> Genotype:
    """The genotype of ``alphas`` with at most ``max_skips`` skip connections in the normal cell.

    As P-DARTS: while the derived normal cell has too many skips, the weakest chosen skip
    connection gets weight 0 and the cell is derived again (so another operation, or another
    edge, takes its place). ``primitives``: names or per-edge lists as for
    :func:`~lfm_nas.genotypes.derive_genotype` (e.g. ``model.edge_ops``).
    """
    probs = {kind: torch.softmax(alpha_of(alphas, kind).detach().double(), dim=-1).clone() for kind in CELL_KINDS}
    ops = {kind: edge_ops(primitives, kind, probs[kind].shape[0]) for kind in CELL_KINDS}
    while True:
        geno = derive_genotype(probs, ops, steps, multiplier, softmax=False)
        if count_ops(geno, "skip_connect") <= max_skips:
            return geno
        # the chosen skip edges of the normal cell, with their skip weights
        chosen = []
        start, n = 0, 2
        gene = geno.normal
        for node in range(steps):
            for op, j in gene[2 * node: 2 * node + 2]:
                if op == "skip_connect":
                    e = start + j
                    k = ops["normal"][e].index("skip_connect")
                    if float(probs["normal"][e, k]) > 0:  # 0: already removed, nothing else on the edge
                        chosen.append((float(probs["normal"][e, k]), e, k))
            start, n = start + n, n + 1
        if not chosen:
            return geno
        _, e, k = min(chosen)
        probs["normal"][e, k] = 0.0


__all__ = [
    "PRIMITIVES", "MixedOp", "SearchCell", "Network", "PDartsNetwork", "PSNetwork", "SkipDropout",
    "init_alphas", "full_switches", "switches_to_ops", "darts_space", "pdarts_space", "PDartsStage",
    "pdarts_stages", "prune_ops", "limit_skips", "parse_cell",
]
