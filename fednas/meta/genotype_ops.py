"""Genotype operations of AT-NAS: subnet shards, mutation, crossover, an α prior.

A cell genotype lists, per cell kind, two (op, input) genes per node. :func:`genotype_masks`
turns one into one-op-per-edge shard masks of the supernet, so the shard computes what the
genotype's subnet computes; :func:`mutate` and :func:`crossover` keep genotypes valid (two
distinct inputs per node); :class:`ArchPrior` is a distribution over genotypes from a
supernet's α (MetaNAS's meta-learned α in :mod:`fednas.meta.phase`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence

import torch

from fednas.errors import ConfigError
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.pcdarts import node_log_softmax

KINDS = ("normal", "reduce")
Sampler = Callable[[torch.Generator], Genotype]

def check_cell_space(space: SearchSpace) -> None:
    if space.space_name != "cell" or "none" not in space.op_names:
        raise ConfigError("AT-NAS needs the cell space with 'none' among space.cell.ops "
                          "(edges outside a subnet are switched off with it)")


def genotype_masks(space: SearchSpace, genotype: Genotype) -> list[torch.Tensor]:
    """One-op-per-edge shard masks (normal, reduce) that make the supernet ``genotype``,
    then all-True masks for any other arch parameters (edge normalisation's β, which then
    still weighs each node's two edges)."""
    check_cell_space(space)
    space.check_genotype(genotype)
    ops = space.op_names
    masks = []
    for kind, alpha in zip(KINDS, space.alpha_parameters(), strict=True):
        mask = torch.zeros(alpha.shape, dtype=torch.bool)
        mask[:, ops.index("none")] = True
        for k, (op, j) in enumerate(genotype[kind]):
            edge = sum(2 + m for m in range(k // 2)) + j
            if not mask[edge, ops.index("none")]:
                raise ValueError(f"genotype {kind}: node {k // 2} uses input {j} twice")
            mask[edge] = False
            mask[edge, ops.index(op)] = True
        masks.append(mask)
    return masks + [torch.ones(b.shape, dtype=torch.bool) for b in space.beta_parameters()]


def genotype_key(genotype: Genotype) -> str:
    """A string naming the architecture: the same for genotypes that list a node's two genes
    in either order (a derived genotype ranks them by strength, a mutated one by input)."""
    return json.dumps([[gene for i in range(0, len(genotype[k]), 2)
                        for gene in _node_pair(genotype[k][i: i + 2])] for k in KINDS])


def _node_pair(pairs: list[list]) -> list[list]:
    return sorted(pairs, key=lambda p: p[1])


def mutate(genotype: Genotype, ops: Sequence[str], rate: float,
           generator: torch.Generator) -> Genotype:
    """Each gene, with probability ``rate``: a different op, or a different free input."""
    keep = [o for o in ops if o != "none"]
    out = dict(genotype)
    for kind in KINDS:
        gene = [list(p) for p in genotype[kind]]
        for k in range(len(gene)):
            if float(torch.rand((), generator=generator)) >= rate:
                continue
            node, other = k // 2, gene[k ^ 1][1]
            inputs = [j for j in range(2 + node) if j not in (other, gene[k][1])]
            if float(torch.rand((), generator=generator)) < 0.5 and inputs:
                gene[k][1] = inputs[int(torch.randint(len(inputs), (), generator=generator))]
            else:
                choices = [o for o in keep if o != gene[k][0]] or keep
                gene[k][0] = choices[int(torch.randint(len(choices), (), generator=generator))]
        out[kind] = [p for i in range(0, len(gene), 2) for p in _node_pair(gene[i:i + 2])]
    return out


def crossover(a: Genotype, b: Genotype, generator: torch.Generator) -> Genotype:
    """Uniform crossover of whole nodes (a node's two genes come from the same parent)."""
    out = dict(a)
    for kind in KINDS:
        pick = torch.rand(len(a[kind]) // 2, generator=generator) < 0.5
        out[kind] = [list(p) for i, take_b in enumerate(pick.tolist())
                     for p in (b if take_b else a)[kind][2 * i: 2 * i + 2]]
    return out


class ArchPrior:
    """A distribution over genotypes from a cell supernet's α (e.g. MetaNAS's meta-learned α).

    α is copied when the prior is made. Per node, two distinct inputs are drawn without
    replacement with probability ∝ ``w_j ** (1 / temperature)``, ``w_j`` being edge j's
    strongest non-``none`` softmax(α) weight, times its node-softmax(β) under edge
    normalisation (what the supernet's ``genotype()`` ranks edges by); each chosen edge's
    op is drawn from softmax(α / temperature) over its non-``none`` ops. :meth:`mode` is
    the supernet's derived genotype; as ``temperature`` → 0 every draw is the mode.
    :meth:`log_prob` scores a genotype by the same factors (inputs as if drawn
    independently), to break fitness ties in favour of what the prior prefers.
    """

    def __init__(self, space: SearchSpace, temperature: float = 1.0) -> None:
        check_cell_space(space)
        if temperature <= 0:
            raise ValueError(f"ArchPrior: temperature must be > 0 (got {temperature})")
        self.temperature = temperature
        self._mode = space.genotype()
        self._keep = [k for k, name in enumerate(space.op_names) if name != "none"]
        self._ops = list(space.op_names)
        alphas = dict(zip(KINDS, space.alpha_parameters(), strict=True))
        self._logits = {kind: alpha.detach().cpu().double()[:, self._keep] / temperature
                        for kind, alpha in alphas.items()}
        self._edge_logw = {kind: alpha.detach().cpu().double().log_softmax(-1)[:, self._keep]
                           .amax(-1) for kind, alpha in alphas.items()}
        for kind, beta in zip(KINDS, space.beta_parameters(), strict=False):  # edge norm.
            self._edge_logw[kind] = self._edge_logw[kind] + node_log_softmax(
                beta.detach().cpu().double(), space.nodes)
        self._edge_logw = {kind: w / temperature for kind, w in self._edge_logw.items()}

    def mode(self) -> Genotype:
        """The genotype α prefers (a copy)."""
        return copy.deepcopy(self._mode)

    def _rows(self, kind: str) -> Iterator[tuple[int, int]]:
        """(node, first α row of its incoming edges) for each node of ``kind`` cells."""
        offset = 0
        for node in range(len(self._mode[kind]) // 2):
            yield node, offset
            offset += 2 + node

    def sample(self, generator: torch.Generator) -> Genotype:
        """One genotype drawn from the prior (seeded by ``generator``)."""
        out = self.mode()
        for kind in KINDS:
            gene: list[list] = []
            for node, offset in self._rows(kind):
                edge_p = self._edge_logw[kind][offset: offset + 2 + node].softmax(-1)
                for j in sorted(torch.multinomial(edge_p, 2, generator=generator).tolist()):
                    op_p = self._logits[kind][offset + j].softmax(-1)
                    op = self._keep[int(torch.multinomial(op_p, 1, generator=generator))]
                    gene.append([self._ops[op], j])
            out[kind] = gene
        return out

    def log_prob(self, genotype: Genotype) -> float:
        """The prior's score of ``genotype``: Σ log p(input) + log p(op | input) over genes."""
        total = 0.0
        for kind in KINDS:
            for node, offset in self._rows(kind):
                edge = self._edge_logw[kind][offset: offset + 2 + node].log_softmax(-1)
                for op, j in genotype[kind][2 * node: 2 * node + 2]:
                    ops = self._logits[kind][offset + j].log_softmax(-1)
                    total += float(edge[j] + ops[self._keep.index(self._ops.index(op))])
        return total
