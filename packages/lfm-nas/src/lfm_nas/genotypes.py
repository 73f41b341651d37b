"""Genotypes: the discrete cells a search returns, as in DARTS' ``genotypes.py``.

A :class:`Genotype` lists, for each intermediate node of the normal and the reduction cell,
its two incoming edges as ``(operation, input_index)`` pairs (inputs 0 and 1 are the two
cell inputs, 2.. the earlier intermediate nodes), and which nodes are concatenated.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from lfm_nas.operations import PRIMITIVES

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

CELL_KINDS = ("normal", "reduce")

# Published cells (official DARTS and P-DARTS repositories), for evaluation baselines.
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)
PDARTS = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    reduce_concat=[2, 3, 4, 5],
)
KNOWN = {"DARTS_V2": DARTS_V2, "PDARTS": PDARTS}


def n_edges(steps: int = 4) -> int:
    """Mixed edges of a cell with ``steps`` intermediate nodes (14 for 4)."""
    return sum(2 + i for i in range(steps))


def alpha_of(alphas: Mapping[str, Tensor], kind: str) -> Tensor:
    """``alphas[kind]`` accepting both ``"normal"`` and ``"alpha_normal"`` style keys."""
    if kind in alphas:
        return alphas[kind]
    key = f"alpha_{kind}"
    if key in alphas:
        return alphas[key]
    raise KeyError(f"alphas need a {kind!r} (or {key!r}) entry; got {sorted(alphas)}")


def edge_ops(primitives: Any, kind: str, edges: int) -> list[list[str]]:
    """Per-edge candidate operation names.

    ``primitives`` is a flat list of names (every edge has them all), a per-edge list of
    lists (P-DARTS after pruning), or a dict ``{"normal": ..., "reduce": ...}`` of either.
    """
    if isinstance(primitives, Mapping):
        primitives = primitives[kind]
    primitives = list(primitives)
    if primitives and isinstance(primitives[0], str):
        return [list(primitives) for _ in range(edges)]
    if len(primitives) != edges:
        raise ValueError(f"expected {edges} per-edge operation lists, got {len(primitives)}")
    return [list(p) for p in primitives]


def parse_cell(weights: Tensor, ops: Sequence[Sequence[str]], steps: int = 4) -> list[tuple[str, int]]:
    """DARTS' ``_parse``: for each node keep the two incoming edges with the strongest non-'none'
    operation, and on each kept edge its strongest non-'none' operation (first wins on ties)."""
    w = weights.detach().cpu().tolist()
    gene: list[tuple[str, int]] = []
    start, n = 0, 2
    for i in range(steps):
        end = start + n

        def strength(x: int) -> float:
            vals = [w[start + x][k] for k in range(len(w[start + x])) if ops[start + x][k] != "none"]
            return max(vals) if vals else float("-inf")

        edges = sorted(range(i + 2), key=lambda x: -strength(x))[:2]
        for j in edges:
            best = None
            for k in range(len(w[start + j])):
                if ops[start + j][k] != "none" and (best is None or w[start + j][k] > w[start + j][best]):
                    best = k
            if best is None:
                raise ValueError(f"edge {start + j} has no operation other than 'none'")
            gene.append((ops[start + j][best], j))
        start, n = end, n + 1
    return gene


def derive_genotype(
    alphas: Mapping[str, Tensor],
    primitives: Any = PRIMITIVES,
    steps: int = 4,
    multiplier: int = 4,
    softmax: bool = True,
) -> Genotype:
    """The discrete cell of architecture weights ``alphas`` (``{"normal", "reduce"}`` of shape
    ``[14, n_ops]``; raw logits, softmax applied unless ``softmax=False``)."""
    cells = {}
    for kind in CELL_KINDS:
        a = alpha_of(alphas, kind).detach().float()
        weights = torch.softmax(a, dim=-1) if softmax else a
        cells[kind] = parse_cell(weights, edge_ops(primitives, kind, a.shape[0]), steps)
    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=list(concat))


def count_ops(genotype: Genotype, op: str = "skip_connect", kind: str = "normal") -> int:
    return sum(1 for name, _ in getattr(genotype, kind) if name == op)


# ------------------------------------------------------------------------------------
# serialisation
# ------------------------------------------------------------------------------------
def genotype_to_dict(genotype: Genotype) -> dict:
    return {
        "normal": [[op, int(i)] for op, i in genotype.normal],
        "normal_concat": [int(i) for i in genotype.normal_concat],
        "reduce": [[op, int(i)] for op, i in genotype.reduce],
        "reduce_concat": [int(i) for i in genotype.reduce_concat],
    }


def genotype_from_dict(d: Mapping[str, Any]) -> Genotype:
    return Genotype(
        normal=[(str(op), int(i)) for op, i in d["normal"]],
        normal_concat=[int(i) for i in d["normal_concat"]],
        reduce=[(str(op), int(i)) for op, i in d["reduce"]],
        reduce_concat=[int(i) for i in d["reduce_concat"]],
    )


def save_genotype(genotype: Genotype, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(genotype_to_dict(genotype), fh, indent=2)
        fh.write("\n")


def load_genotype(path: str | os.PathLike) -> Genotype:
    """A genotype from a JSON file written by :func:`save_genotype`, or a known name (``DARTS_V2``)."""
    if str(path) in KNOWN:
        return KNOWN[str(path)]
    with open(path, encoding="utf-8") as fh:
        return genotype_from_dict(json.load(fh))


def format_genotype(genotype: Genotype) -> str:
    """Multi-line, human-readable cell description."""
    lines = []
    for kind in CELL_KINDS:
        pairs = getattr(genotype, kind)
        concat = getattr(genotype, f"{kind}_concat")
        lines.append(f"{kind} cell (concat {list(concat)}):")
        for node in range(len(pairs) // 2):
            (op1, i1), (op2, i2) = pairs[2 * node], pairs[2 * node + 1]
            lines.append(f"  node {node + 2} = {op1}({_name(i1)}) + {op2}({_name(i2)})")
    return "\n".join(lines)


def _name(i: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(int(i), f"node {int(i)}")
