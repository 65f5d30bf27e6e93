"""AT-NAS: subnet shards, meta-trained supernet, seeded evolution under a params threshold."""

from __future__ import annotations

import pytest
import torch

from fednas.data.episodes import split_classes
from fednas.data.fewshot import load_fewshot
from fednas.errors import ConfigError
from fednas.meta import atnas
from fednas.meta.learners import fixed_tasks
from fednas.models.flops import count_params
from fednas.spaces.cellnet import check_cell_genotype
from fednas.spaces.registry import build_space

OPS = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    data = load_fewshot("digits", tmp_path_factory.mktemp("digits"))
    split = split_classes(data, (0.6, 0.0, 0.4), seed=0)
    return data.subset(split.train), data.subset(split.test)


@pytest.fixture(scope="module")
def tasks(pools):
    return fixed_tasks(pools[1], ways=4, shots=3, queries=4, num_tasks=2, seed=0)


def supernet(ops=OPS):
    torch.manual_seed(0)
    return build_space("cell", input_shape=(1, 8, 8), num_classes=4, channels=4, layers=2,
                       nodes=2, ops=ops)


def test_shard_of_a_genotype_is_its_subnet():
    space = supernet()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8)
    for _ in range(3):
        genotype = space.random_genotype(gen)
        masks = atnas.genotype_masks(space, genotype)
        assert all(int(m.sum()) == m.shape[0] for m in masks)  # one op per edge
        space.set_shard(masks)
        assert torch.allclose(space(x), space.subnet(genotype)(x), atol=1e-6)
    space.set_shard(None)


def test_mutation_and_crossover_keep_genotypes_valid():
    space = supernet()
    gen = torch.Generator().manual_seed(1)
    a, b = space.random_genotype(gen), space.random_genotype(gen)
    for _ in range(30):
        child = atnas.mutate(atnas.crossover(a, b, gen), OPS, 0.5, gen)
        assert check_cell_genotype(child, OPS) == 2
        for kind in atnas.KINDS:
            for node in range(2):
                pair = child[kind][2 * node: 2 * node + 2]
                assert pair[0][1] != pair[1][1]  # two distinct inputs per node
        atnas.genotype_masks(space, child)
        a = child
    assert atnas.mutate(a, OPS, 0.0, gen) == a
    swapped = {**a, "normal": [a["normal"][1], a["normal"][0], *a["normal"][2:]]}
    assert atnas.genotype_key(swapped) == atnas.genotype_key(a)  # same architecture
    assert atnas.genotype_key(atnas.mutate(a, OPS, 1.0, gen)) != atnas.genotype_key(a)


def test_meta_training_moves_shared_weights_not_alpha(pools):
    space = supernet()
    alpha = [a.detach().clone() for a in space.arch_parameters()]
    stem = space.stem[0].weight.detach().clone()
    learner = atnas.meta_train_supernet(space, pools[0], generator=torch.Generator().manual_seed(0),
                                        ways=4, shots=2, queries=2, meta_batch=2, iterations=3,
                                        inner_lr=0.3, outer_lr=0.01, first_order=True)
    assert len(learner.history) == 3 and space.shard is None
    assert not torch.equal(space.stem[0].weight, stem)
    assert all(torch.equal(a, b) for a, b in zip(alpha, space.arch_parameters(), strict=True))


def test_search_never_evaluates_a_subnet_over_the_params_threshold(tasks, monkeypatch):
    space = supernet()
    gen = torch.Generator().manual_seed(0)
    sizes = sorted(count_params(space.subnet(space.random_genotype(gen))) for _ in range(40))
    limit = sizes[len(sizes) // 2]
    scored: list[int] = []
    real = atnas._fitness

    def counting(net, episode, **kw):
        scored.append(count_params(net))
        return real(net, episode, **kw)

    monkeypatch.setattr(atnas, "_fitness", counting)
    cfg = atnas.EvolutionConfig(population=4, generations=2, max_params=limit)
    result = atnas.search_task(space, tasks[0], config=cfg, inner_steps=2,
                               generator=torch.Generator().manual_seed(3))
    assert result.rejected > 0
    assert result.evaluations == len(result.history) == len(scored) - 1  # + the final adapt
    assert max(scored) <= limit and all(h["params"] <= limit for h in result.history)
    assert result.params <= limit and result.params == count_params(space.subnet(result.genotype))
    assert 0.0 <= result.fitness <= 1.0 and 0.0 <= result.query_accuracy <= 1.0
    assert result.search_seconds > 0 and result.adapt_seconds > 0
    with pytest.raises(ValueError, match="raise meta.evolution.max-params"):
        atnas.search_task(space, tasks[0], config=atnas.EvolutionConfig(max_params=10,
                                                                        max_tries=2),
                          generator=torch.Generator().manual_seed(0))


def test_search_is_deterministic_under_a_seed(tasks):
    space = supernet()
    state = {k: v.clone() for k, v in space.state_dict().items()}
    cfg = atnas.EvolutionConfig(population=3, generations=1, tournament=2)
    runs = []
    for _ in range(2):
        report = atnas.atnas_evaluate(space, tasks, config=cfg, inner_steps=1,
                                      generator=torch.Generator().manual_seed(9))
        runs.append([(t.genotype, t.params, t.fitness, t.query_accuracy, t.evaluations,
                      t.rejected, t.history) for t in report.tasks])
    assert runs[0] == runs[1] and len(runs[0]) == 2
    assert all(torch.equal(v, space.state_dict()[k]) for k, v in state.items())


def test_atnas_needs_none_and_rejects_metasgd(pools, tasks):
    with pytest.raises(ConfigError, match="'none'"):
        atnas.search_task(supernet(OPS[1:]), tasks[0], generator=torch.Generator())
    with pytest.raises(ConfigError, match="maml and anil"):
        atnas.meta_train_supernet(supernet(), pools[0], generator=torch.Generator(),
                                  algorithm="metasgd", ways=4, shots=1, queries=1)
    with pytest.raises(ConfigError, match="tournament"):
        atnas.EvolutionConfig(population=2, tournament=3).validate()


def peaked(space, scale=8.0):
    """Give ``space`` an α whose mode is a known genotype; return that genotype."""
    target = space.random_genotype(torch.Generator().manual_seed(5))
    with torch.no_grad():
        for alpha, mask in zip(space.arch_parameters(), atnas.genotype_masks(space, target),
                               strict=True):
            alpha.copy_(torch.where(mask, scale, 0.0))
            alpha[:, OPS.index("none")] = 0.0  # 'none' never wins; unused edges stay flat
    return target


def test_prior_samples_follow_alpha_and_its_mode():
    space = supernet()
    target = peaked(space)
    assert atnas.genotype_key(space.genotype()) == atnas.genotype_key(target)
    gen = torch.Generator().manual_seed(0)
    prior = atnas.ArchPrior(space, temperature=1.0)
    cold = [atnas.ArchPrior(space, temperature=0.05).sample(gen) for _ in range(20)]
    warm = [prior.sample(gen) for _ in range(200)]
    flat_space = supernet()
    with torch.no_grad():
        for alpha in flat_space.arch_parameters():
            alpha.zero_()
    flat = atnas.ArchPrior(flat_space)  # α = 0: every op and input pair equally likely
    uniform = [flat.sample(gen) for _ in range(200)]
    for g in cold + warm:
        assert check_cell_genotype(g, OPS) == 2
        atnas.genotype_masks(space, g)  # distinct inputs per node, valid ops
    assert all(atnas.genotype_key(g) == atnas.genotype_key(target) for g in cold)

    def share(genotypes):
        return sum(p == q for g in genotypes for kind in atnas.KINDS
                   for p, q in zip(g[kind], target[kind], strict=True)) / (8 * len(genotypes))

    assert share(warm) > 0.6 > 0.3 > share(uniform)  # α pulls the draws towards its mode
    assert prior.mode() == space.genotype()
    assert prior.log_prob(target) == max(prior.log_prob(g) for g in warm + uniform)
    assert len({round(flat.log_prob(g), 9) for g in uniform}) == 1  # flat: all alike
    with torch.no_grad():  # the prior keeps the α it was made from
        space.arch_parameters()[0].zero_()
    assert prior.mode() != space.genotype() or prior.log_prob(target) > flat.log_prob(target)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        atnas.ArchPrior(space, temperature=0.0)


def test_prior_seeds_meta_training_and_the_initial_population(pools, tasks, monkeypatch):
    space = supernet()
    target = peaked(space, scale=50.0)
    drawn: list[str] = []
    real = atnas.genotype_masks

    def recording(space_, genotype):
        drawn.append(atnas.genotype_key(genotype))
        return real(space_, genotype)

    monkeypatch.setattr(atnas, "genotype_masks", recording)
    atnas.meta_train_supernet(space, pools[0], generator=torch.Generator().manual_seed(0),
                              sampler=atnas.ArchPrior(space, 0.01).sample,
                              ways=4, shots=2, queries=2, meta_batch=2, iterations=3,
                              inner_lr=0.3, outer_lr=0.01, first_order=True)
    assert drawn == [atnas.genotype_key(target)] * 3
    monkeypatch.setattr(atnas, "genotype_masks", real)
    prior = atnas.ArchPrior(space, 1.0)
    monkeypatch.setattr(atnas, "_fitness", lambda *a, **k: 0.5)  # every candidate ties
    result = atnas.search_task(space, tasks[0], config=atnas.EvolutionConfig(
        population=3, generations=1), inner_steps=1, generator=torch.Generator().manual_seed(0),
        prior=prior)
    assert result.history[0]["genotype"] == prior.mode() == space.genotype()
    assert result.evaluations >= 4 and result.genotype == prior.mode()  # ties: the prior's pick
