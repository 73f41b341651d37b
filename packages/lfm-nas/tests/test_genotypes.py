"""Genotype derivation on hand-set alphas, serialisation and printing."""

import torch

from lfm_nas.genotypes import (
    DARTS_V2, Genotype, derive_genotype, format_genotype, genotype_from_dict, genotype_to_dict, load_genotype,
    save_genotype,
)
from lfm_nas.operations import PRIMITIVES

IDX = {p: i for i, p in enumerate(PRIMITIVES)}


def _alphas():
    n = torch.zeros(14, 8)
    r = torch.zeros(14, 8)
    # node 2 (edges 0, 1): both kept; edge 0 is dominated by 'none', which must be ignored
    n[0, IDX["none"]] = 9.0
    n[0, IDX["sep_conv_3x3"]] = 1.0
    n[1, IDX["dil_conv_3x3"]] = 2.0
    # node 3 (edges 2, 3, 4): keep edge 4 (skip, 3.0) then edge 2 (max pool, 1.5); edge 3 only 'none'-heavy
    n[2, IDX["max_pool_3x3"]] = 1.5
    n[3, IDX["none"]] = 8.0
    n[3, IDX["avg_pool_3x3"]] = 0.5
    n[4, IDX["skip_connect"]] = 3.0
    # node 4 (edges 5..8): keep edge 8 (sep 5x5) then edge 6 (dil 5x5)
    n[5, IDX["avg_pool_3x3"]] = 0.2
    n[6, IDX["dil_conv_5x5"]] = 1.0
    n[7, IDX["max_pool_3x3"]] = 0.8
    n[8, IDX["sep_conv_5x5"]] = 2.5
    # node 5 (edges 9..13): keep edge 9 (sep 3x3) then edge 13 (skip)
    n[9, IDX["sep_conv_3x3"]] = 4.0
    n[13, IDX["skip_connect"]] = 3.5
    n[11, IDX["none"]] = 10.0
    # reduce: max pool everywhere, strongest on the later edge of each node; avg pool on edge 2
    for e in range(14):
        r[e, IDX["max_pool_3x3"]] = 1.0 + 0.1 * e
    r[2, IDX["avg_pool_3x3"]] = 5.0
    return {"normal": n, "reduce": r}


EXPECTED = Genotype(
    normal=[("dil_conv_3x3", 1), ("sep_conv_3x3", 0),
            ("skip_connect", 2), ("max_pool_3x3", 0),
            ("sep_conv_5x5", 3), ("dil_conv_5x5", 1),
            ("sep_conv_3x3", 0), ("skip_connect", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 1), ("max_pool_3x3", 0),
            ("avg_pool_3x3", 0), ("max_pool_3x3", 2),
            ("max_pool_3x3", 3), ("max_pool_3x3", 2),
            ("max_pool_3x3", 4), ("max_pool_3x3", 3)],
    reduce_concat=[2, 3, 4, 5],
)


def test_derive_genotype_hand_set_alphas():
    g = derive_genotype(_alphas(), PRIMITIVES)
    assert g == EXPECTED


def test_derive_genotype_accepts_upper_keys_and_per_edge_ops():
    a = _alphas()
    g = derive_genotype({"alpha_normal": a["normal"], "alpha_reduce": a["reduce"]})
    assert g == EXPECTED
    # per-edge candidate lists (P-DARTS): only two candidates on each edge
    ops = [["none", "skip_connect"]] * 14
    alphas = {"normal": torch.zeros(14, 2), "reduce": torch.zeros(14, 2)}
    alphas["normal"][:, 0] = 5.0  # 'none' strongest everywhere: still excluded
    g2 = derive_genotype(alphas, {"normal": ops, "reduce": ops})
    assert {op for op, _ in g2.normal} == {"skip_connect"}
    # ties: first edges and first op win, as in DARTS
    assert [i for _, i in g2.normal] == [0, 1, 0, 1, 0, 1, 0, 1]


def test_json_roundtrip_and_file(tmp_path):
    assert genotype_from_dict(genotype_to_dict(EXPECTED)) == EXPECTED
    path = tmp_path / "g.json"
    save_genotype(EXPECTED, path)
    assert load_genotype(path) == EXPECTED
    assert load_genotype("DARTS_V2") == DARTS_V2


def test_pretty_print():
    text = format_genotype(EXPECTED)
    assert "node 5 = sep_conv_3x3(c_{k-2}) + skip_connect(node 4)" in text
    assert text.count("node") >= 8
