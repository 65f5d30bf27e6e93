"""PC-DARTS options of the cell space: partial channel connections and edge normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.models.flops import count_params
from fednas.spaces.cell import MixedOp, SearchCell
from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.ops import DARTS_OPS
from fednas.spaces.pcdarts import channel_shuffle, channel_unshuffle, node_softmax
from fednas.spaces.registry import build_space

OPS3 = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
SMALL = dict(channels=4, layers=3, nodes=2, stem_stride=1, ops=OPS3)


def space(seed: int = 0, shape=(1, 8, 8), **options):
    torch.manual_seed(seed)
    return build_space("cell", input_shape=shape, num_classes=3, **(SMALL | options))


def reference_mix(op: MixedOp, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """DARTS' MixedOp: Σ w·op(x) over the ops other than ``none``."""
    return sum(wk * op.ops[n](x) for wk, n in zip(w, op.op_names, strict=True) if n != "none")


@pytest.mark.parametrize("stride", [1, 2])
def test_k1_mixed_op_is_darts_mixed_op(stride):
    torch.manual_seed(0)
    op = MixedOp(8, stride, DARTS_OPS)
    x, w = torch.randn(2, 8, 7, 7), torch.randn(len(DARTS_OPS)).softmax(0)
    assert op.bypass is None
    assert torch.equal(op(x, w), reference_mix(op, x, w))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [2, 4])
def test_partial_mixed_op_is_narrow_op_plus_shuffled_bypass(stride, k):
    torch.manual_seed(0)
    op = MixedOp(8, stride, DARTS_OPS, partial=k)
    narrow = MixedOp(8 // k, stride, DARTS_OPS)
    narrow.load_state_dict(op.state_dict())  # same keys: the ops are built for C/K channels
    x, w = torch.randn(2, 8, 7, 7), torch.randn(len(DARTS_OPS)).softmax(0)
    y = op(x, w)
    side = 4 if stride == 2 else 7  # odd sizes halve as the ops do (ceil)
    assert y.shape == (2, 8, side, side)
    rest = x[:, 8 // k:] if stride == 1 else nn.functional.max_pool2d(x[:, 8 // k:], 2, 2,
                                                                        ceil_mode=True)
    parts = channel_unshuffle(y, k)
    assert torch.equal(parts[:, : 8 // k], narrow(x[:, : 8 // k], w))
    assert torch.equal(parts[:, 8 // k:], rest)
    conv = op.ops["sep_conv_3x3"][0][1]
    assert conv.in_channels == conv.out_channels == 8 // k


def test_channel_shuffle_is_the_pc_darts_permutation():
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    y = channel_shuffle(x, 3)  # groups of 4: 0..3, 4..7, 8..11 interleaved
    assert y.flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert sorted(y.flatten().tolist()) == x.flatten().tolist()
    z = torch.randn(2, 12, 3, 3)
    for g in (1, 2, 3, 4, 6, 12):
        assert torch.equal(channel_unshuffle(channel_shuffle(z, g), g), z)
    assert torch.equal(channel_shuffle(z, 1), z)


def test_defaults_build_the_same_supernet():
    plain, explicit = space(), space(partial_channels=1, edge_normalisation=False)
    assert list(plain.state_dict()) == list(explicit.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 explicit.state_dict().values(), strict=True))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(plain(x), explicit(x))
    assert len(plain.arch_parameters()) == 2 and plain.beta_parameters() == []


def test_partial_channels_cut_the_op_parameters():
    def op_params(s):
        return sum(p.numel() for c in s.cells for e in c.edges for p in e.ops.parameters())

    full, quarter = space(), space(partial_channels=4)
    assert op_params(quarter) < op_params(full) / 3  # sep conv params scale ~ (C/K)²
    assert count_params(quarter) == count_params(full) - op_params(full) + op_params(quarter)
    x = torch.randn(2, 1, 8, 8)
    assert quarter(x).shape == full(x).shape == (2, 3)


def test_partial_channels_must_divide_every_cell():
    with pytest.raises(ConfigError, match=r"space.cell.partial-channels = 4 .* 6 channels"):
        space(channels=6, partial_channels=4)
    with pytest.raises(ConfigError, match="partial-channels"):
        space(partial_channels=0)
    with pytest.raises(ConfigError, match=r"space.cell.partial-channels = 4 .* 6 channels"):
        load_config(None, ["space.cell.channels=6", "space.cell.partial-channels=4"])
    cfg = load_config(None, ["space.cell.partial-channels=2", "space.cell.edge-normalisation=true"])
    assert cfg.space.options()["partial_channels"] == 2
    assert cfg.space.options()["edge_normalisation"] is True


def test_uniform_beta_averages_the_edges():
    torch.manual_seed(0)
    cell = SearchCell(1, 4, 4, 4, False, False, OPS3)
    s0, s1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    w = torch.randn(2, len(OPS3)).softmax(-1)
    plain = cell(s0, s1, w)
    normed = cell(s0, s1, w, edge_weights=node_softmax(torch.zeros(2, 1), 1))
    assert torch.equal(normed, plain * 0.5)


def test_node_softmax_is_per_node():
    beta = torch.randn(9, 1)  # 3 nodes: 2 + 3 + 4 incoming edges
    p = node_softmax(beta, 3)
    assert p.shape == (9,)
    assert torch.allclose(torch.stack([p[:2].sum(), p[2:5].sum(), p[5:].sum()]),
                          torch.ones(3))
    assert torch.allclose(p[2:5], beta[2:5, 0].softmax(0))


def test_edge_normalisation_arch_parameters_and_derivation():
    s = space(edge_normalisation=True)
    a_n, a_r, b_n, b_r = s.arch_parameters()
    assert s.alpha_parameters() == [a_n, a_r] and s.beta_parameters() == [b_n, b_r]
    assert b_n.shape == b_r.shape == (5, 1)
    assert {id(p) for p in s.arch_parameters()}.isdisjoint(id(p) for p in s.weights())
    sep, skip = OPS3.index("sep_conv_3x3"), OPS3.index("skip_connect")
    with torch.no_grad():
        a_n.zero_()
        a_n[:, skip] = 1.0
        a_n[2, sep] = a_n[3, sep] = 3.0  # node 1: inputs 0 and 1 are strongest by α
        a_n[4, sep] = 2.0
        b_n.zero_()
    by_alpha = s.genotype()
    assert by_alpha["normal"][2:] == [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]
    with torch.no_grad():  # β moves node 1's mass to its input 2, away from input 1
        b_n[2:5, 0] = torch.tensor([0.0, -5.0, 5.0])
    assert s.genotype()["normal"][2:] == [["sep_conv_3x3", 2], ["sep_conv_3x3", 0]]
    assert s.genotype()["normal"][:2] == by_alpha["normal"][:2]
    w_n, _ = s.edge_weights()
    assert torch.allclose(w_n, a_n.softmax(-1) * node_softmax(b_n, 2)[:, None])


def test_search_step_moves_alpha_beta_and_weights():
    from fednas.training.train import search_steps

    s = space(partial_channels=2, edge_normalisation=True)
    before = {n: p.detach().clone() for n, p in s.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    w_opt = torch.optim.SGD(s.weights(), lr=0.05, momentum=0.9)
    a_opt = torch.optim.Adam(s.arch_parameters(), lr=3e-2)
    stats = search_steps(s, (x[:16], y[:16]), (x[16:], y[16:]), weight_opt=w_opt,
                         arch_opt=a_opt, steps=2, batch_size=8, grad_clip=5.0, generator=g,
                         device=torch.device("cpu"))
    assert stats["train_loss"] > 0
    moved = {n for n, p in s.named_parameters() if not torch.equal(p, before[n])}
    assert {"alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce"} <= moved
    assert any(".ops.sep_conv_3x3." in n for n in moved)


def test_shards_keep_beta_whole():
    from fednas.federated.shards import gumbel_top_s

    s = space(edge_normalisation=True)
    g = torch.Generator().manual_seed(1)
    masks = [gumbel_top_s(a.detach(), 2, g, True) for a in s.arch_parameters()]
    assert masks[2].all() and masks[3].all()
    s.set_shard(masks)
    assert s(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    slices = s.shard_slices(masks)
    assert "beta_normal" in slices and "beta_reduce" in slices


def test_alpha_consumers_ignore_beta():
    from fednas.compression.budget import alpha_scores
    from fednas.compression.casd import op_costs
    from fednas.spaces.stats import alpha_entropy, alpha_snapshot

    plain, normed = space(), space(edge_normalisation=True)
    assert alpha_entropy(normed) == alpha_entropy(plain)  # same seed: same α, β left out
    assert set(alpha_snapshot(normed)) == {"normal", "reduce"}
    assert [c.shape for c in op_costs(normed)] == [a.shape for a in normed.alpha_parameters()]
    scores = alpha_scores(normed)
    assert len(scores) == 2
    assert torch.allclose(scores[0], normed.edge_weights()[0].detach())


def test_perturbation_scores_are_alpha_shaped():
    from fednas.compression.perturbation import perturbation_scores

    s = space(nodes=1, layers=2, edge_normalisation=True)
    data = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    scores = perturbation_scores(s, data, torch.device("cpu"), 16)
    assert [t.shape for t in scores] == [a.shape for a in s.alpha_parameters()]
    assert s.shard is None


def test_atnas_masks_and_prior_with_beta():
    from fednas.meta.genotype_ops import ArchPrior, genotype_key, genotype_masks

    s = space(edge_normalisation=True)
    genotype = s.genotype()
    masks = genotype_masks(s, genotype)
    assert [m.shape for m in masks] == [a.shape for a in s.arch_parameters()]
    s.set_shard(masks)
    s.set_shard(None)
    prior = ArchPrior(s, temperature=1e-6)
    assert prior.mode() == genotype
    assert genotype_key(prior.sample(torch.Generator().manual_seed(0))) == genotype_key(genotype)


def test_partial_subnet_copies_only_matching_weights():
    from fednas.meta.models import load_matching

    s = space(partial_channels=2, edge_normalisation=True)
    genotype = s.genotype()
    torch.manual_seed(5)
    net = s.subnet(genotype)
    torch.manual_seed(5)
    fresh = CellNetwork(genotype, input_shape=(1, 8, 8), num_classes=3, channels=4, layers=3,
                        stem_stride=1, allowed_ops=OPS3)
    own = net.state_dict()
    for key, value in own.items():
        if key.startswith(("stem.", "classifier.")) or ".preprocess" in key:
            assert torch.equal(value, s.state_dict()[key]), key  # inherited
        else:
            assert ".ops." in key and torch.equal(value, fresh.state_dict()[key]), key
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    target = CellNetwork(genotype, input_shape=(1, 8, 8), num_classes=3, channels=4,
                         layers=3, stem_stride=1)
    assert load_matching(target, s.state_dict()) > 0  # supernet ⇒ subnet: shapes differ, no crash


def test_partial_supernet_runs_under_vmap():
    from torch.func import functional_call, stack_module_state, vmap

    from fednas.training.vectorised import ClientJob, VectorisedTrainer

    s = space(partial_channels=2, edge_normalisation=True).eval()
    params, buffers = stack_module_state([s, space(1, partial_channels=2,
                                                   edge_normalisation=True).eval()])
    x = torch.randn(2, 4, 1, 8, 8)
    out = vmap(lambda p, b, xb: functional_call(s, (p, b), (xb,)))(params, buffers, x)
    assert torch.allclose(out[0], s(x[0]), atol=1e-5)
    trainer = VectorisedTrainer(space(partial_channels=2, edge_normalisation=True),
                                grad_clip=5.0, device=torch.device("cpu"))
    data = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    jobs = [ClientJob(data, [torch.arange(4), torch.arange(4, 8)], 0, 0.05, 0.9, 0.0)
            for _ in range(2)]
    results = trainer.run(space(partial_channels=2, edge_normalisation=True).state_dict(), jobs)
    assert all(not r.diverged and r.state for r in results)


@pytest.mark.slow
def test_federated_search_with_pc_darts_options(tiny_overrides, tmp_path, no_plots,
                                                task_identity):
    """Search on shards (one client per message and in cohorts: the search members run one
    by one, so both agree) and a retrain that inherits what fits from the supernet."""
    from conftest import federated_sets, in_process_run

    sets = federated_sets(tiny_overrides) + [
        "runtime.threads=1", 'phases=["search", "retrain"]', "federation.rounds=2",
        "federation.shard-size=2", "space.cell.partial-channels=2",
        "space.cell.edge-normalisation=true"]
    plain, _, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "one"}"'])
    packed, _, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "cohort"}"',
                                          "federation.cohort-size=0"], 2)
    assert [m["phase"] for m in plain] == ["search"] * 2 + ["retrain"] * 2
    for p, c in zip(plain, packed, strict=True):
        assert p["clients_ok"] == c["clients_ok"] == 3 and p["client_errors"] == 0
        assert c["train_loss"] == pytest.approx(p["train_loss"], rel=1e-4, abs=1e-5)
    search = [m for m in plain if m["phase"] == "search"]
    assert search[-1]["genotype"] == [m for m in packed if m["phase"] == "search"][-1]["genotype"]
    assert set(search[-1]["alpha"]) == {"normal", "reduce"}  # β is not an α group


def test_meta_weight_keys_name_the_options_only_when_set():
    """Stored meta-trained weights of earlier runs keep their keys (file names)."""
    from fednas.meta import store
    from fednas.meta.setup import meta_setup

    def key(*sets):
        return store.training_key(meta_setup(load_config(None, list(sets))), "supernet", 1)

    plain = key()
    assert "partial_channels" not in plain["space"]["cell"]
    assert "edge_normalisation" not in plain["space"]["cell"]
    assert key("space.cell.partial-channels=1") == plain
    assert key("space.cell.partial-channels=2")["space"]["cell"]["partial_channels"] == 2
    assert key("space.cell.edge-normalisation=true") != plain
