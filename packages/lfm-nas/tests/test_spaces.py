"""Search-space supernets: shapes, external alphas, registry, P-DARTS pruning and skip limit."""

import pytest
import torch

from lfm_core.registries import SEARCH_SPACES
from lfm_nas.genotypes import count_ops, derive_genotype
from lfm_nas.operations import PRIMITIVES
from lfm_nas.spaces import (
    MixedOp, Network, PDartsNetwork, SearchCell, full_switches, init_alphas, limit_skips, ops_per_edge_count,
    pdarts_stages, prune_ops, switches_to_ops,
)


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_shapes_every_primitive(stride):
    op = MixedOp(4, stride, PRIMITIVES)
    x = torch.randn(2, 4, 8, 8)
    out = op(x, torch.softmax(torch.randn(len(PRIMITIVES)), 0))
    assert out.shape == (2, 4, 8 // stride, 8 // stride)
    assert len(op._ops) == 8


@pytest.mark.parametrize("reduction", [False, True])
def test_search_cell_shape(reduction):
    ops = [list(PRIMITIVES)] * 14
    cell = SearchCell(4, 4, 6, 6, 4, reduction, False, ops)
    s0, s1 = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8)
    out = cell(s0, s1, torch.softmax(torch.randn(14, 8), -1))
    side = 4 if reduction else 8
    assert out.shape == (2, 16, side, side)
    assert len(cell._ops) == 14


@pytest.mark.parametrize("space", ["darts", "pdarts"])
def test_supernet_forward_with_external_alphas(space):
    net = SEARCH_SPACES.create(space, C=4, num_classes=5, layers=3)
    assert [c.reduction for c in net.cells] == [False, True, True]
    alphas = {k: v.requires_grad_() for k, v in net.new_alphas(scale=0.1).items()}
    assert alphas["normal"].shape == (14, 8) and alphas["reduce"].shape == (14, 8)
    # alphas are not module parameters
    assert all(p.shape != (14, 8) for p in net.parameters())
    out = net(torch.randn(3, 3, 16, 16), alphas)
    assert out.shape == (3, 5)
    g = torch.autograd.grad(out.sum(), list(alphas.values()))
    assert all(float(t.abs().sum()) > 0 for t in g)
    # upper-level key names are accepted too
    out2 = net(torch.randn(3, 3, 16, 16), {"alpha_normal": alphas["normal"], "alpha_reduce": alphas["reduce"]})
    assert out2.shape == (3, 5)


def test_registry_lists_spaces_and_init_alphas():
    assert {"darts", "pdarts"} <= set(SEARCH_SPACES.names())
    a = init_alphas(5, scale=1e-3)
    assert a["normal"].shape == (14, 5) and float(a["normal"].abs().max()) < 1e-2


def test_pdarts_stages():
    stages = pdarts_stages()
    assert [s.layers for s in stages] == [5, 11, 17]
    assert [s.n_ops for s in stages] == [8, 5, 3]
    assert [s.keep for s in stages] == [5, 3, 1]
    s = stages[0]
    assert s.skip_dropout_at(0) == pytest.approx(0.1 * 24 / 25)
    assert s.skip_dropout_at(10) == pytest.approx(0.1)
    assert s.skip_dropout_at(15) < 0.1


def test_pdarts_pruning_counts_8_5_3():
    switches = full_switches(8)
    counts = []
    for stage in pdarts_stages(layers=(2, 3, 3)):
        net = PDartsNetwork(C=2, num_classes=3, layers=stage.layers, switches=switches, skip_dropout=stage.skip_dropout)
        assert net.n_ops == stage.n_ops
        assert set(ops_per_edge_count(net.switches)["normal"]) == {stage.n_ops}
        alphas = net.new_alphas(scale=1.0)
        assert net(torch.randn(2, 3, 8, 8), alphas).shape == (2, 3)
        counts.append(stage.n_ops)
        last = stage.index == 2
        switches = prune_ops(alphas, switches, stage.keep, exclude_none=last)
        assert set(ops_per_edge_count(switches)["reduce"]) == {stage.keep}
    assert counts == [8, 5, 3]
    # after the last stage one op per edge, never 'none'
    assert all(ops != ["none"] for ops in switches_to_ops(switches)["normal"])


def test_prune_ops_drops_the_weakest():
    switches = full_switches(8)
    alphas = {k: torch.zeros(14, 8) for k in ("normal", "reduce")}
    alphas["normal"][0] = torch.tensor([5.0, 1, 2, 3, 4, 0, -1, 6])
    new = prune_ops(alphas, switches, 5)
    assert switches_to_ops(new)["normal"][0] == ["none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"]
    assert ops_per_edge_count(new)["normal"] == [5] * 14
    # the last pruning removes 'none' first, whatever its weight
    new = prune_ops(alphas, switches, 1, exclude_none=True)
    assert switches_to_ops(new)["normal"][0] == ["dil_conv_5x5"]
    alphas["normal"][0, 7] = -5
    new = prune_ops(alphas, switches, 1, exclude_none=True)
    assert switches_to_ops(new)["normal"][0] == ["sep_conv_3x3"]


def test_skip_limit_keeps_at_most_two_skips():
    # every normal edge prefers skip_connect; the strength of skip grows with the edge index
    # and the second-best op is sep_conv_3x3
    ops = list(PRIMITIVES)
    skip, sep = ops.index("skip_connect"), ops.index("sep_conv_3x3")
    alphas = {k: torch.zeros(14, 8) for k in ("normal", "reduce")}
    for e in range(14):
        alphas["normal"][e, skip] = 2.0 + 0.1 * e
        alphas["normal"][e, sep] = 1.0 + 0.01 * e
    alphas["reduce"][:, ops.index("max_pool_3x3")] = 1.0
    plain = derive_genotype(alphas)
    assert count_ops(plain, "skip_connect") == 8
    limited = limit_skips(alphas, PRIMITIVES, max_skips=2)
    assert count_ops(limited, "skip_connect") == 2
    # the two strongest skips survive: node 5's edges 13 and 12 (inputs 4 and 3)
    assert [pair for pair in limited.normal if pair[0] == "skip_connect"] == [("skip_connect", 4), ("skip_connect", 3)]
    assert limited.reduce == plain.reduce
    for max_skips in (0, 1, 3):
        assert count_ops(limit_skips(alphas, PRIMITIVES, max_skips), "skip_connect") == max_skips


def test_skip_dropout_only_on_parameter_free_skips():
    net = PDartsNetwork(C=2, num_classes=3, layers=3, skip_dropout=0.5)
    from lfm_nas.spaces import SkipDropout

    drops = [m for m in net.modules() if isinstance(m, SkipDropout)]
    assert drops and all(m.p == 0.5 for m in drops)
    net.set_skip_dropout(0.1)
    assert all(m.p == 0.1 for m in drops)
    # stride-2 skips (FactorizedReduce) get none: 8 stride-2 edges in each of the 2 reduction cells
    assert len(drops) == 14 * 3 - 2 * 8


def test_network_shrinks_with_args():
    small = Network(C=2, num_classes=3, layers=3, primitives=("skip_connect", "sep_conv_3x3"))
    assert small.n_ops == 2
    assert small(torch.randn(2, 3, 4, 4), small.new_alphas()).shape == (2, 3)


def test_entry_points_declared():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="lfm.search_spaces")}
    assert eps.get("darts") == "lfm_nas.spaces:darts_space"
    assert eps.get("pdarts") == "lfm_nas.spaces:pdarts_space"
