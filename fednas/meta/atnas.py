"""AT-NAS: meta-learned supernet weights, then a per-task evolutionary architecture search.

1. :func:`meta_train_supernet` meta-trains the cell supernet's shared weights over tasks;
   each outer step samples a subnet (a genotype) and restricts the supernet to it with a
   one-op-per-edge shard (the genotype's op on its edges, ``none`` elsewhere), so the shard
   computes exactly what ``space.subnet(genotype)`` computes. Subnets are drawn uniformly,
   or from an architecture prior: :class:`ArchPrior` draws from softmax(α / T) of a
   supernet whose α was meta-learned first (MetaNAS, :mod:`fednas.meta.metanas`), so the shared
   weights are trained for the region of the space that adapts well.
2. For a new task, :func:`search_task` evolves genotypes (population, tournament selection,
   crossover per node, mutation of ops and inputs; seeded). The initial population is
   random, or the prior's mode and draws from it. A candidate's subnet (weights inherited
   from the meta-trained supernet) is adapted on part of the support set and scored on the
   rest (held-out shots; augmented views of the support for 1-shot tasks): by default minus
   the mean cross-entropy there (``fitness="loss"``), or the accuracy (``"accuracy"``, which
   saturates at 100 % on so few samples). EEEA early exit: a candidate whose derived subnet
   has more than ``max_params`` parameters is rejected before any evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fednas.data.episodes import Episode, FewShotSet, split_support
from fednas.errors import ConfigError
from fednas.meta.genotype_ops import (
    KINDS,
    ArchPrior,
    Sampler,
    check_cell_space,
    crossover,
    genotype_key,
    genotype_masks,
    mutate,
)
from fednas.meta.learners import MetaLearner, TaskSampler, mean_ci95, meta_train
from fednas.models.flops import count_params
from fednas.spaces.base import Genotype, SearchSpace

FITNESS = ("loss", "accuracy")  # what scores a candidate: -cross-entropy or accuracy

__all__ = ["FITNESS", "KINDS", "ArchPrior", "AtnasReport", "EvolutionConfig", "TaskSearch",
           "atnas_evaluate", "augmented_support", "crossover", "genotype_key",
           "genotype_masks", "meta_train_supernet", "mutate", "search_task"]


@dataclass(frozen=True)
class EvolutionConfig:
    """Per-task evolutionary search settings."""

    population: int = 8  # candidates kept per generation
    generations: int = 4  # offspring rounds after the initial population
    tournament: int = 3  # candidates drawn per parent selection
    crossover: float = 0.5  # chance a child mixes two parents (node by node)
    mutation: float = 0.2  # chance per gene of a new op or a new input
    max_params: int | None = None  # EEEA: larger subnets are rejected unevaluated
    holdout: int = 1  # support shots per class held out to score a candidate
    fitness: str = "loss"  # score on the fit episode's query: -mean CE ("loss") or accuracy
    max_tries: int = 50  # draws per wanted candidate before giving up

    def validate(self) -> None:
        """Raise ConfigError naming the bad ``meta.evolution`` key."""
        if self.population < 2 or self.generations < 0 or self.max_tries < 1:
            raise ConfigError("meta.evolution: population >= 2, generations >= 0 and "
                              "max-tries >= 1 required")
        if not 1 <= self.tournament <= self.population:
            raise ConfigError(f"meta.evolution.tournament must be in 1..{self.population}")
        for key in ("crossover", "mutation"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"meta.evolution.{key} must be in [0, 1]")
        if self.fitness not in FITNESS:
            raise ConfigError(f"meta.atnas.fitness: {self.fitness!r}; one of {FITNESS}")
        if self.max_params is not None and self.max_params < 1:
            raise ConfigError("meta.evolution.max-params must be positive (or unset)")


@dataclass
class TaskSearch:
    """Outcome of the search on one task."""

    genotype: Genotype
    params: int
    fitness: float  # the chosen subnet's score (the measure ``fitness_measure`` names)
    query_accuracy: float  # after adapting the chosen subnet on the whole support set
    evaluations: int  # candidates adapted and scored
    rejected: int  # candidates dropped by the params threshold, never evaluated
    search_seconds: float
    adapt_seconds: float  # final adaptation of the chosen subnet
    history: list[dict] = field(default_factory=list)  # evaluated: generation, params, fitness
    fitness_measure: str = "loss"  # "loss": fitness = -mean CE; "accuracy": fitness = accuracy


@dataclass
class AtnasReport:
    """Per-task results over a fixed task list, with mean ± 95 % CI of query accuracy."""

    tasks: list[TaskSearch]
    mean_accuracy: float
    ci95: float
    mean_seconds: float  # search + adaptation per task

    def describe(self) -> dict:
        return {"mean_accuracy": self.mean_accuracy, "ci95": self.ci95,
                "mean_seconds": self.mean_seconds,
                "tasks": [{"genotype": t.genotype, "params": t.params,
                           "query_accuracy": t.query_accuracy, "fitness": t.fitness,
                           "fitness_measure": t.fitness_measure,
                           "evaluations": t.evaluations, "rejected": t.rejected,
                           "seconds": t.search_seconds + t.adapt_seconds} for t in self.tasks]}


# ----------------------------------------------------------------------------- fitness
def augmented_support(episode: Episode, copies: int, generator: torch.Generator) -> Episode:
    """A fitness episode for 1-shot tasks: adapt on the support, score on augmented copies.

    Each support image gets ``copies`` random affine views (rotation ±12°, scale 0.85-1.15,
    shift ±2 px of 28, seeded by ``generator``) as the query; the real query is not touched.
    """
    n = len(episode.support_y)
    x = episode.support_x.repeat_interleave(copies, 0)
    angle = (torch.rand(n * copies, generator=generator) * 2 - 1) * math.radians(12)
    scale = 0.85 + 0.3 * torch.rand(n * copies, generator=generator)
    shift = (torch.rand(n * copies, 2, generator=generator) * 2 - 1) * (4 / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    views = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    return Episode(episode.support_x, episode.support_y, views,
                   episode.support_y.repeat_interleave(copies), episode.classes)


# ----------------------------------------------------------------------------- meta-training
def meta_train_supernet(space: SearchSpace, tasks: FewShotSet | TaskSampler, *,
                        generator: torch.Generator, algorithm: str = "maml",
                        sampler: Sampler | None = None, **kwargs) -> MetaLearner:
    """Meta-train the supernet's weights, a sampled subnet (shard) per outer step.

    ``sampler(generator)`` draws the subnet (default: uniformly, ``space.random_genotype``;
    :meth:`ArchPrior.sample` for an α prior). ``kwargs`` are those of
    :func:`fednas.meta.learners.meta_train` (ways, shots, queries, ...); α is not trained. The shard
    is cleared afterwards.
    """
    check_cell_space(space)
    if algorithm == "metasgd":
        raise ConfigError("meta.algorithm: AT-NAS supports maml and anil (MetaSGD's per-"
                          "parameter lrs do not transfer to subnets)")
    draw = sampler or space.random_genotype

    def sample_subnet(_iteration: int) -> None:
        space.set_shard(genotype_masks(space, draw(generator)))

    try:
        return meta_train(space, tasks, algorithm, generator=generator,
                          before_step=sample_subnet, **kwargs)
    finally:
        space.set_shard(None)


# ----------------------------------------------------------------------------- search
def _fitness(net: nn.Module, episode: Episode, *, algorithm: str, steps: int, inner_lr: float,
             measure: str = "accuracy") -> float:
    """Score on ``episode``'s query after adapting ``net`` on its support (first order).

    ``measure``: ``"accuracy"``, or ``"loss"`` for minus the mean cross-entropy (higher is
    better either way; the loss still ranks nets that classify every query right).
    """
    learner = MetaLearner(net, algorithm, inner_lr=inner_lr, first_order=True).train()
    adapted = learner.adapt(episode.support_x, episode.support_y, steps)
    with torch.no_grad():
        logits = adapted(episode.query_x)
        if measure == "loss":
            return -float(F.cross_entropy(logits, episode.query_y))
        return float((logits.argmax(1) == episode.query_y).float().mean())


class _Search:
    """State of one task's evolution: caches, counters and the EEEA gate."""

    def __init__(self, space: SearchSpace, fit: Episode, cfg: EvolutionConfig, *,
                 algorithm: str, steps: int, inner_lr: float, generator: torch.Generator,
                 device: torch.device, prior: ArchPrior | None = None) -> None:
        self.space, self.fit, self.cfg, self.gen, self.device = space, fit, cfg, generator, device
        self.draw = prior.sample if prior is not None else space.random_genotype
        self.prior_score = prior.log_prob if prior is not None else (lambda _g: 0.0)
        self.scoring = {"algorithm": algorithm, "steps": steps, "inner_lr": inner_lr,
                        "measure": cfg.fitness}
        self.scored: dict[str, tuple[float, int]] = {}  # key -> (fitness, params)
        self.params: dict[str, int] = {}
        self.rejected = 0
        self.history: list[dict] = []

    def admit(self, genotype: Genotype, generation: int) -> bool:
        """Score ``genotype`` unless it is known or over the params threshold (EEEA)."""
        key = genotype_key(genotype)
        if key in self.scored:
            return False
        if key not in self.params:
            self.params[key] = count_params(self.space.subnet(genotype))
        params = self.params[key]
        if self.cfg.max_params is not None and params > self.cfg.max_params:
            self.rejected += 1  # EEEA early exit: never adapted nor scored
            return False
        net = self.space.subnet(genotype).to(self.device)
        fitness = _fitness(net, self.fit, **self.scoring)
        self.scored[key] = (fitness, params)
        self.history.append({"generation": generation, "params": params, "fitness": fitness,
                             "genotype": genotype})
        return True

    def rank(self, genotype: Genotype) -> tuple[float, float, int]:
        fitness, params = self.scored[genotype_key(genotype)]
        # best first: fitness, then what the prior prefers (if any), then fewer parameters
        return -fitness, -self.prior_score(genotype), params

    def tournament(self, population: list[Genotype]) -> Genotype:
        draw = torch.randperm(len(population), generator=self.gen)[: self.cfg.tournament]
        return min((population[i] for i in draw.tolist()), key=self.rank)

    def offspring(self, population: list[Genotype], count: int, generation: int
                  ) -> list[Genotype]:
        """Up to ``count`` new scored candidates (drawn ones when ``population`` is empty)."""
        children: list[Genotype] = []
        for _ in range(count * self.cfg.max_tries):
            if len(children) == count:
                break
            if not population:
                child = self.draw(self.gen)
            else:
                child = self.tournament(population)
                if float(torch.rand((), generator=self.gen)) < self.cfg.crossover:
                    child = crossover(child, self.tournament(population), self.gen)
                child = mutate(child, self.space.op_names, self.cfg.mutation, self.gen)
            if self.admit(child, generation):
                children.append(child)
        return children


def search_task(space: SearchSpace, episode: Episode, *, config: EvolutionConfig | None = None,
                algorithm: str = "maml", inner_steps: int = 5, inner_lr: float = 0.4,
                generator: torch.Generator, device: torch.device | str = "cpu",
                fit: Episode | None = None, prior: ArchPrior | None = None) -> TaskSearch:
    """Evolve a subnet for ``episode`` and adapt the winner on its whole support set.

    ``fit`` is the episode that scores candidates (default: the support set split by
    ``config.holdout``; 1-shot tasks use :func:`augmented_support`), by ``config.fitness``
    (the result's ``fitness`` is that score). Without a ``prior`` the
    initial population is drawn uniformly; with one it is the prior's mode (subject to the
    params threshold like any candidate) and draws from the prior, and fitness ties go to
    the genotype the prior scores higher. The real query is only used to report the
    winner's accuracy. Raises ValueError when no candidate fits ``config.max_params``.
    """
    cfg = config or EvolutionConfig()
    cfg.validate()
    check_cell_space(space)
    device = torch.device(device)
    space.set_shard(None)
    start = time.perf_counter()
    fit = (split_support(episode, cfg.holdout) if fit is None else fit).to(device)
    search = _Search(space, fit, cfg, algorithm=algorithm, steps=inner_steps,
                     inner_lr=inner_lr, generator=generator, device=device, prior=prior)
    population = [g for g in ([prior.mode()] if prior else []) if search.admit(g, 0)]
    population += search.offspring([], cfg.population - len(population), 0)
    if not population:
        raise ValueError(f"AT-NAS: none of {cfg.population * cfg.max_tries} sampled subnets "
                         f"has <= {cfg.max_params} parameters; raise meta.evolution.max-params")
    for generation in range(1, cfg.generations + 1):
        children = search.offspring(population, cfg.population, generation)
        population = sorted(population + children, key=search.rank)[: cfg.population]
    best = population[0]
    fitness, params = search.scored[genotype_key(best)]
    searched = time.perf_counter()
    ep = episode.to(device)
    net = space.subnet(best).to(device)
    query_acc = _fitness(net, ep, algorithm=algorithm, steps=inner_steps, inner_lr=inner_lr)
    return TaskSearch(best, params, fitness, query_acc, len(search.history), search.rejected,
                      searched - start, time.perf_counter() - searched, search.history,
                      cfg.fitness)


def atnas_evaluate(space: SearchSpace, tasks: Sequence[Episode], *,
                   config: EvolutionConfig | None = None, algorithm: str = "maml",
                   inner_steps: int = 5, inner_lr: float = 0.4, generator: torch.Generator,
                   device: torch.device | str = "cpu", prior: ArchPrior | None = None
                   ) -> AtnasReport:
    """:func:`search_task` on each of ``tasks`` (e.g. :func:`fednas.meta.learners.fixed_tasks`)."""
    results = [search_task(space, tasks[i], config=config, algorithm=algorithm,
                           inner_steps=inner_steps, inner_lr=inner_lr, generator=generator,
                           device=device, prior=prior) for i in range(len(tasks))]
    mean, ci = mean_ci95([r.query_accuracy for r in results])
    seconds = sum(r.search_seconds + r.adapt_seconds for r in results) / len(results)
    return AtnasReport(results, mean, ci, seconds)
