"""AT-NAS: subnet shards, meta-trained supernet, seeded evolution under a params threshold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fednas.config.loading import load_config
from fednas.data.episodes import Episode, split_classes
from fednas.data.fewshot import load_fewshot
from fednas.errors import ConfigError
from fednas.meta import atnas
from fednas.meta import store as meta_store
from fednas.meta.atnas_phase import initial_weights
from fednas.meta.learners import fixed_tasks
from fednas.meta.models import meta_space
from fednas.meta.setup import meta_setup
from fednas.models.flops import count_params
from fednas.reporting.rundir import RunDir
from fednas.spaces.base import save_genotype
from fednas.spaces.cellnet import CellNetwork, check_cell_genotype
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
    assert result.fitness_measure == "loss" and result.fitness < 0  # minus a cross-entropy
    assert result.fitness == max(h["fitness"] for h in result.history)
    assert 0.0 <= result.query_accuracy <= 1.0
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


# ----------------------------------------------------------------------------- fitness
def test_loss_fitness_ranks_confident_nets_that_accuracy_cannot_tell_apart():
    torch.manual_seed(0)
    x = torch.eye(4).repeat(3, 1) + 0.05 * torch.randn(12, 4)  # 4 classes, 3 shots each
    y = torch.arange(4).repeat(3)
    episode = Episode(x[:8], y[:8], x[8:], y[8:], list(range(4)))
    nets = []
    for scale in (0.5, 6.0):  # both classify every sample right; the second more confidently
        net = nn.Linear(4, 4)
        with torch.no_grad():
            net.weight.copy_(scale * torch.eye(4))
            net.bias.zero_()
        nets.append(net)
    score = dict(algorithm="maml", steps=1, inner_lr=0.01)
    accuracy = [atnas._fitness(n, episode, measure="accuracy", **score) for n in nets]
    loss = [atnas._fitness(n, episode, measure="loss", **score) for n in nets]
    assert accuracy == [1.0, 1.0]  # saturated: no ranking
    assert loss[1] > loss[0] > -torch.log(torch.tensor(4.0)).item()  # better than chance
    for net, fit in zip(nets, loss, strict=True):  # it is minus the adapted query CE
        step = torch.optim.SGD(net.parameters(), lr=0.01)  # the one inner step, by hand
        nn.functional.cross_entropy(net(episode.support_x), episode.support_y).backward()
        step.step()
        with torch.no_grad():
            ce = nn.functional.cross_entropy(net(episode.query_x), episode.query_y)
        assert fit == pytest.approx(-float(ce), rel=1e-6)


@pytest.mark.parametrize("measure", atnas.FITNESS)
def test_search_ranks_by_the_configured_fitness(tasks, monkeypatch, measure):
    space = supernet()

    def scores(net, episode, *, measure="accuracy", **_):  # every candidate 100 % right,
        if measure == "accuracy":  # the larger ones more confident (lower loss)
            return 1.0
        return -1.0 / count_params(net)

    monkeypatch.setattr(atnas, "_fitness", scores)
    cfg = atnas.EvolutionConfig(population=4, generations=1, fitness=measure)
    result = atnas.search_task(space, tasks[0], config=cfg, inner_steps=1,
                               generator=torch.Generator().manual_seed(2))
    sizes = [h["params"] for h in result.history]
    assert len(set(sizes)) > 1 and result.fitness_measure == measure
    # accuracy ties everywhere: fewer params wins; the loss picks the most confident
    assert result.params == (min(sizes) if measure == "accuracy" else max(sizes))
    assert result.fitness == (1.0 if measure == "accuracy" else -1.0 / max(sizes))
    assert atnas.AtnasReport([result], 0.0, 0.0, 0.0).describe()["tasks"][0][
        "fitness_measure"] == measure
    with pytest.raises(ConfigError, match="meta.atnas.fitness"):
        atnas.EvolutionConfig(fitness="f1").validate()


# ----------------------------------------------------------------------------- init and keys
SPACE = ["space.cell.channels=4", "space.cell.layers=3", "space.cell.nodes=2",
         "space.cell.stem-stride=1", 'space.cell.ops=["skip_connect", "max_pool_3x3", '
         '"sep_conv_3x3"]', "meta.ways=3"]


def setup_of(*overrides: str):
    return meta_setup(load_config(None, [*SPACE, *overrides]))


def fake_run(tmp_path, retrained: bool = True):
    """A run dir with the search's supernet.pt and genotype.json, and a perturbed searched.pt
    (its head for 7 classes, as the search data's); returns it and the retrained network."""
    setup = setup_of()
    torch.manual_seed(0)
    search = meta_space(setup, (1, 8, 8), 3)
    run = RunDir(tmp_path, "run")
    run.save_model("supernet", search)
    genotype = search.random_genotype(torch.Generator().manual_seed(4))
    save_genotype(genotype, run.path / "genotype.json")
    net = CellNetwork(genotype, input_shape=(1, 8, 8), num_classes=7, channels=4, layers=3)
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand(value.shape))
    if retrained:
        run.save_model("searched", net)
    return run, search, genotype, net


@pytest.mark.parametrize("option", ['meta.atnas.init="auto"', 'meta.atnas.init="retrained"'])
def test_retrained_init_puts_the_retrained_subnet_into_the_supernet(tmp_path, option):
    run, search, genotype, net = fake_run(tmp_path)
    setup = setup_of(option)
    space = meta_space(setup, (1, 8, 8), 3, with_none=True)
    head = space.classifier.weight.clone()
    record = initial_weights(setup, run, space)
    assert record["init"] == "retrained" and record["init_source"] == "searched.pt over supernet.pt"
    body = {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}
    assert record["retrained_tensors"] == len(body)
    sub = space.subnet(genotype).state_dict()
    assert all(torch.equal(sub[k], v) for k, v in body.items())  # the retrained body
    assert torch.equal(space.classifier.weight, head)  # the head stays AT-NAS's own
    own = set(space.state_dict())
    on_genotype = {k for k in own if k.startswith(tuple(
        f"cells.{i}.edges.{edge}.ops.{name}." for i, cell in enumerate(space.subnet(genotype)
                                                                      .cells)
        for name, edge in cell.edge_ids))}
    rest = [k for k in search.state_dict() if ".edges." in k and k not in on_genotype]
    assert rest and all(torch.equal(space.state_dict()[k], search.state_dict()[k]) for k in rest)
    search_only = meta_space(setup_of('meta.atnas.init="search"'), (1, 8, 8), 3, with_none=True)
    assert initial_weights(setup_of('meta.atnas.init="search"'), run, search_only) == {
        "init": "search", "init_source": "supernet.pt"}
    assert torch.equal(search_only.stem[0].weight, search.stem[0].weight)


def test_retrained_init_without_a_retrained_subnet(tmp_path):
    run, *_ = fake_run(tmp_path, retrained=False)
    space = meta_space(setup_of(), (1, 8, 8), 3, with_none=True)
    assert initial_weights(setup_of(), run, space)["init"] == "search"  # auto: recorded
    with pytest.raises(ConfigError, match='meta.atnas.init: "retrained" needs .*searched.pt'):
        initial_weights(setup_of('meta.atnas.init="retrained"'), run, space)
    with pytest.raises(ConfigError, match='meta.atnas.init: "retrained" needs meta.init'):
        initial_weights(setup_of('meta.atnas.init="retrained"', 'meta.init="scratch"'), run,
                        space)
    assert initial_weights(setup_of('meta.init="scratch"'), run, space)["init"] == "scratch"


@pytest.mark.parametrize("override, needle", [
    ('meta.atnas.fitness="f1"', "meta.atnas.fitness: 'f1' is not allowed"),
    ('meta.atnas.init="best"', "meta.atnas.init: 'best' is not allowed")])
def test_new_atnas_keys_are_validated(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)
    cfg = load_config(None, ['meta.atnas.fitness="accuracy"', 'meta.atnas.init="search"'])
    assert (cfg.meta.atnas.fitness, cfg.meta.atnas.init) == ("accuracy", "search")
    assert load_config(None).meta.atnas.evolution_options()["fitness"] == "loss"


def test_training_key_follows_the_init_not_the_fitness(tmp_path):
    run, *_ = fake_run(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()

    def key(run_dir, what="atnas-supernet", *overrides):
        return meta_store.training_key(setup_of(*overrides), what, 1, run_dir)

    for what in ("atnas-supernet", "atnas-prior"):
        retrained, search = key(run.path, what), key(run.path, what, 'meta.atnas.init="search"')
        assert retrained["init"] == "retrained" and "init" not in search
        assert meta_store.digest(retrained) != meta_store.digest(search)
        assert key(run.path, what, 'meta.atnas.init="retrained"') == retrained
        assert key(bare, what) == key(bare, what, 'meta.atnas.init="search"')  # auto: search
    wider = key(run.path, "atnas-supernet", "retrain.channels=8")  # resized: auto = search
    assert "init" not in wider
    assert key(run.path, "searched") == key(run.path, "searched", 'meta.atnas.init="search"')
    assert key(run.path) == key(run.path, "atnas-supernet", 'meta.atnas.fitness="accuracy"')
