"""MetaNAS: α meta-learned with the supernet's weights on few-shot tasks (sklearn digits)."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

from fednas.config.loading import load_config
from fednas.data.episodes import split_classes
from fednas.data.fewshot import load_fewshot
from fednas.errors import ConfigError
from fednas.meta.learners import fixed_tasks, meta_train, task_accuracies
from fednas.meta.metanas import changed_edges, metanas_search
from fednas.spaces.registry import build_space

SCENARIO = REPO / "simulations" / "fewshot_glyphs.toml"
TASKS = {"ways": 4, "shots": 2, "queries": 3, "meta_batch": 2, "inner_steps": 1,
         "inner_lr": 0.1, "outer_lr": 3e-3, "first_order": True}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data = load_fewshot("digits", tmp_path_factory.mktemp("digits"))
    split = split_classes(data, (0.6, 0.0, 0.4), seed=0)
    return data.subset(split.train), data.subset(split.test)


def supernet(seed: int = 0):
    torch.manual_seed(seed)
    return build_space("cell", input_shape=(1, 8, 8), num_classes=4, channels=4, layers=2,
                       nodes=2, ops=("max_pool_3x3", "skip_connect", "conv_3x3"))


def alphas(space) -> list[torch.Tensor]:
    return [a.detach().clone() for a in space.arch_parameters()]


def test_alpha_is_meta_learned_only_with_an_arch_lr(digits):
    frozen, learned = supernet(), supernet()
    before = alphas(frozen)
    for space, lr in ((frozen, 0.0), (learned, 0.05)):
        meta_train(space, digits[0], "maml", iterations=4, arch_lr=lr,
                   generator=torch.Generator().manual_seed(1), **TASKS)
    assert all(torch.equal(a, b) for a, b in zip(alphas(frozen), before, strict=True))
    moved = [float((a - b).abs().max()) for a, b in zip(alphas(learned), before, strict=True)]
    assert min(moved) > 1e-3  # Adam at lr 0.05 moves every α entry the loss reaches
    # the weights are meta-trained the same way either way (α only changes the mix)
    assert not torch.equal(frozen.stem[0].weight, supernet().stem[0].weight)


def test_metanas_derives_the_subnet_of_the_meta_learned_alpha(digits):
    space = supernet()
    initial = space.genotype()
    result = metanas_search(space, digits[0], algorithm="maml", arch_lr=0.05,
                            device=torch.device("cpu"),
                            generator=torch.Generator().manual_seed(2),
                            **TASKS, iterations=6)
    assert result.initial_genotype == initial
    assert result.genotype == space.genotype() == result.subnet.genotype
    assert result.changed_edges == changed_edges(initial, result.genotype)
    assert result.seconds > 0
    # the subnet inherits the meta-trained weights (stem and head) and classifies the tasks
    assert torch.equal(result.subnet.stem[0].weight, space.stem[0].weight.detach().cpu())
    assert torch.equal(result.subnet.classifier.weight, space.classifier.weight.detach())
    tasks = fixed_tasks(digits[1], ways=4, shots=2, queries=3, num_tasks=4, seed=0)
    accs = task_accuracies(result.subnet, tasks, steps=1, inner_lr=0.1)
    assert accs.shape == (4,) and ((0 <= accs) & (accs <= 1)).all()


def test_metanas_is_deterministic_and_rejects_bad_arguments(digits):
    runs = [metanas_search(supernet(), digits[0], algorithm="maml", arch_lr=0.05,
                           device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(3), **TASKS, iterations=3)
            for _ in range(2)]
    assert runs[0].genotype == runs[1].genotype
    a, b = runs[0].subnet.state_dict(), runs[1].subnet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="arch_lr must be > 0"):
        metanas_search(supernet(), digits[0], algorithm="maml", arch_lr=0.0,
                       device=torch.device("cpu"), generator=torch.Generator(), **TASKS,
                       iterations=1)


def test_changed_edges_counts_differing_genes():
    g = {"space": "cell", "normal": [["conv_3x3", 0], ["skip_connect", 1]],
         "reduce": [["max_pool_3x3", 0], ["conv_3x3", 1]], "normal_concat": [2]}
    h = {**g, "normal": [["conv_3x3", 0], ["conv_3x3", 1]],
         "reduce": [["max_pool_3x3", 1], ["conv_3x3", 1]]}
    assert changed_edges(g, g) == 0 and changed_edges(g, h) == 2


@pytest.mark.parametrize("overrides, needle", [
    (["meta.metanas.arch-lr=0"], "meta.metanas.arch-lr: must be > 0"),
    (["meta.metanas.iteratons=3"], "unknown config key 'meta.metanas.iteratons'"),
    (['meta.models=["metanas"]', "meta.clients=2"], "drop 'supernet' and 'metanas'"),
    (['meta.models=["metanas"]', 'phases=["meta"]', "meta.atnas.params-ratio=0"],
     "meta.models: ['metanas'] need the 'search' phase"),
])
def test_bad_metanas_config_names_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(SCENARIO, overrides)
    assert needle in str(err.value)
