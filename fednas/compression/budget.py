"""Architectures under a params/FLOPs budget: greedy α-per-cost derivation.

A :class:`Budget` caps params and/or FLOPs, absolutely or as a fraction of a reference
model. :func:`derive_under_budget` turns a supernet into a genotype within the budget:
it starts from the highest-scoring choice of every edge/layer, greedily trades the choices
that lose the least score per unit of cost saved, then repairs (upgrades) while the budget
allows. Scores are softmax(α), or the DARTS-PT importances of
:func:`fednas.compression.perturbation.perturbation_scores`.

Costs are measured with :meth:`SearchSpace.cost` (the real params/FLOPs of built subnets):
the marginal cost of every choice once per space (cached), the result once more.
"""

from __future__ import annotations

import itertools
import math
import numbers
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fednas.errors import ConfigError
from fednas.spaces.base import Genotype, SearchSpace

Cost = tuple[int, int]
Limits = tuple[int | None, int | None]


@dataclass(frozen=True)
class Budget:
    """A params and/or FLOPs cap; ``None`` leaves a dimension free.

    A value ``0 < x <= 1`` is a fraction of a reference model's count, a value ``> 1`` an
    absolute count (FLOPs of one sample, a multiply-add counting two).
    """

    params: float | None = None  # max trainable parameters (or fraction of the reference's)
    flops: float | None = None  # max FLOPs per sample (or fraction of the reference's)

    def resolve(self, reference_params: int | None = None,
                reference_flops: int | None = None) -> Limits:
        """Absolute ``(max_params, max_flops)``; fractions are taken of the reference counts.

        Raises
        ------
        ConfigError
            If a value is not a positive finite number, or is a fraction without a reference.
        """
        return (_resolve("params", self.params, reference_params),
                _resolve("flops", self.flops, reference_flops))


def _resolve(key: str, value: float | None, reference: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"compression.{key}: must be a fraction in (0, 1] or an absolute "
                          "count "
                          f"> 1, got {value!r}")
    if value > 1:
        return int(value)
    if reference is None or reference <= 0:
        raise ConfigError(f"compression.{key}: {value} is a fraction of a reference model, but no "
                          f"positive reference {key} count was given (got {reference!r})")
    return int(value * reference)


@dataclass
class _Units:
    """A space seen as independent units (edges/layers) with additive-cost options."""

    base: Cost  # measured cost of the reference genotype (every unit at marginal cost 0)
    costs: list[list[Cost]]  # marginal cost per unit and option
    scores: Callable[[list[torch.Tensor]], list[list[float]]]  # score per unit and option
    genotype: Callable[[list[int], list[torch.Tensor]], Genotype]  # choices (+score matrices)
    smallest: Cost | None = None  # filled by smallest_cost


_CACHE: weakref.WeakKeyDictionary[SearchSpace, _Units] = weakref.WeakKeyDictionary()


def _marginal(space: SearchSpace, genotype: Genotype, base: Cost) -> Cost:
    params, flops = space.cost(genotype)
    return params - base[0], flops - base[1]


def _width_units(space) -> _Units:
    """Width space: one unit per prunable layer, one option per width choice."""
    choices = space.width_choices
    template = space.max_genotype()

    def make(widths: list[float]) -> Genotype:
        return {**template, "widths": widths}

    low = [choices[0]] * space.num_prunable
    base = space.cost(make(low))
    costs = [[(0, 0) if j == 0 else _marginal(space, make(low[:i] + [w] + low[i + 1:]), base)
              for j, w in enumerate(choices)] for i in range(space.num_prunable)]

    def scores(matrices: list[torch.Tensor]) -> list[list[float]]:
        return [m.tolist() for m in matrices]

    def genotype(choice: list[int], _: list[torch.Tensor]) -> Genotype:
        return make([choices[j] for j in choice])

    return _Units(base, costs, scores, genotype)


def _cell_units(space) -> _Units:
    """Cell space: one unit per (cell kind, node); options are two inputs and their ops.

    Edge costs are measured against a reference genotype whose nodes take the first kept op
    twice from input 0 (a repeated input is valid for :class:`CellNetwork`); a node's option
    costs the sum of its two edges' marginal costs.
    """
    names = space.op_names
    keep = [k for k, name in enumerate(names) if name != "none"]
    nodes = space.nodes
    offsets = [sum(2 + m for m in range(i)) for i in range(nodes)]
    concat = list(range(2, 2 + nodes))
    ref = [[names[keep[0]], 0] for _ in range(2 * nodes)]

    def make(normal: list[list], reduce: list[list]) -> Genotype:
        return {"space": "cell", "normal": normal, "normal_concat": concat,
                "reduce": reduce, "reduce_concat": concat}

    base = space.cost(make(ref, ref))
    edge_cost: list[dict[tuple[int, int], Cost]] = [{}, {}]
    for t in range(2):
        for i in range(nodes):
            for j, k in itertools.product(range(2 + i), keep):
                gene = [list(p) for p in ref]
                gene[2 * i] = [names[k], j]
                genes = (gene, ref) if t == 0 else (ref, gene)
                edge_cost[t][offsets[i] + j, k] = (
                    (0, 0) if (j, k) == (0, keep[0]) else _marginal(space, make(*genes), base))
    units = [(t, i) for t in range(2) for i in range(nodes)]
    options = {i: [(j1, k1, j2, k2) for j1, j2 in itertools.combinations(range(2 + i), 2)
                   for k1, k2 in itertools.product(keep, keep)] for i in range(nodes)}
    costs = [[tuple(map(sum, zip(edge_cost[t][offsets[i] + j1, k1],
                                 edge_cost[t][offsets[i] + j2, k2], strict=True)))
              for j1, k1, j2, k2 in options[i]] for t, i in units]

    def scores(matrices: list[torch.Tensor]) -> list[list[float]]:
        ms = [m.tolist() for m in matrices]
        return [[ms[t][offsets[i] + j1][k1] + ms[t][offsets[i] + j2][k2]
                 for j1, k1, j2, k2 in options[i]] for t, i in units]

    def genotype(choice: list[int], matrices: list[torch.Tensor]) -> Genotype:
        # Within a node, the stronger edge comes first, as in CellSupernet.genotype().
        ms, genes = [m.tolist() for m in matrices], [[], []]
        for (t, i), c in zip(units, choice, strict=True):
            j1, k1, j2, k2 = options[i][c]
            w = {j: ms[t][offsets[i] + j][k] for j, k in ((j1, k1), (j2, k2))}
            pairs = sorted([(j1, k1), (j2, k2)], key=lambda p, w=w: (-w[p[0]], p[0]))
            genes[t].extend([names[k], j] for j, k in pairs)
        return make(*genes)

    return _Units(base, costs, scores, genotype)


_UNIT_BUILDERS: dict[str, Callable[[SearchSpace], _Units]] = {"cell": _cell_units,
                                                              "width": _width_units}


def _units(space: SearchSpace) -> _Units:
    if space.space_name not in _UNIT_BUILDERS:
        raise ConfigError(f"compression: derivation under a budget supports the spaces "
                          f"{sorted(_UNIT_BUILDERS)}, not {space.space_name!r}")
    if space not in _CACHE:
        _CACHE[space] = _UNIT_BUILDERS[space.space_name](space)
    return _CACHE[space]


def _extreme_cost(space: SearchSpace, pick: Callable) -> Cost:
    """Per dimension, the measured cost of the genotype of the per-unit ``pick`` (min or
    max) choices in that dimension (ties broken by the other dimension)."""
    units = _units(space)
    zeros = [torch.zeros(a.shape) for a in space.alpha_parameters()]
    out = []
    for d in range(2):
        choice = [pick(range(len(opts)), key=lambda k, o=opts: (o[k][d], o[k][1 - d]))
                  for opts in units.costs]
        out.append(space.cost(units.genotype(choice, zeros))[d])
    return out[0], out[1]


def smallest_cost(space: SearchSpace) -> Cost:
    """The fewest params and the fewest FLOPs that any genotype of ``space`` reaches.

    Each count is measured on a built subnet: the genotype of the per-unit cheapest choices
    in that dimension. In the built-in spaces one genotype is cheapest in both.
    """
    units = _units(space)
    if units.smallest is None:
        units.smallest = _extreme_cost(space, min)
    return units.smallest


def largest_cost(space: SearchSpace) -> Cost:
    """The most params and the most FLOPs that any genotype of ``space`` reaches, each
    measured on the built subnet of the per-unit dearest choices in that dimension."""
    return _extreme_cost(space, max)


def reachable_candidates(space: SearchSpace, limits: Limits) -> list[torch.Tensor]:
    """Cell space: per α tensor, True where a genotype that uses that (edge, op) can still
    meet ``limits`` (device tiers train only those: :mod:`fednas.federated.tiers`).

    A candidate is reachable when the cheapest completion of a genotype containing it fits:
    the reference cost plus, per unit (cell kind, node), the cheapest option, where the
    candidate's own node must take an option that contains it (marginal costs of
    :func:`derive_under_budget`'s additive model, each dimension at its own minimum). ``none``
    is never derived and costs nothing: always reachable. A row (edge) with no reachable op
    keeps its least over-budget one, since a shard needs a candidate per row.
    """
    if space.space_name != "cell":
        raise ConfigError(f"reachable_candidates: the cell space, not {space.space_name!r}")
    units = _units(space)
    names, nodes = space.op_names, space.nodes
    keep = [k for k, name in enumerate(names) if name != "none"]
    offsets = [sum(2 + m for m in range(i)) for i in range(nodes)]
    options = {i: [(j1, k1, j2, k2) for j1, j2 in itertools.combinations(range(2 + i), 2)
                   for k1, k2 in itertools.product(keep, keep)] for i in range(nodes)}
    cheapest = [tuple(min(c[d] for c in opts) for d in range(2)) for opts in units.costs]
    floor = tuple(units.base[d] + sum(c[d] for c in cheapest) for d in range(2))
    out = [torch.zeros(a.shape, dtype=torch.bool) for a in space.alpha_parameters()]
    least: dict[tuple[int, int], tuple[float, int]] = {}  # per row: its least excess, op
    for u, (t, i) in enumerate((t, i) for t in range(2) for i in range(nodes)):
        for (j1, k1, j2, k2), cost in zip(options[i], units.costs[u], strict=True):
            excess = _excess(tuple(floor[d] - cheapest[u][d] + cost[d] for d in range(2)),
                             limits)
            for j, k in ((j1, k1), (j2, k2)):
                out[t][offsets[i] + j, k] |= excess == 0
                least[t, offsets[i] + j] = min(least.get((t, offsets[i] + j), (math.inf, k)),
                                               (excess, k))
    for t, name in itertools.product(range(2), range(len(names))):
        if names[name] == "none":
            out[t][:, name] = True
    for (t, row), (_, k) in least.items():  # a shard needs one candidate per row
        if not out[t][row].any():
            out[t][row, k] = True
    return out


def _excess(cost: Cost, limits: Limits) -> float:
    """Sum over capped dimensions of the relative overshoot (0 when within budget)."""
    return sum(max(0, c - lim) / lim for c, lim in zip(cost, limits, strict=True)
               if lim is not None)


def _moves(units: _Units, scores: list[list[float]], choice: list[int], total: Cost):
    """Every single change of choice: ``(unit, option, score gain, new total cost)``."""
    for u, (opts, s) in enumerate(zip(units.costs, scores, strict=True)):
        c = choice[u]
        for k, new in enumerate(opts):
            if k != c:
                yield u, k, s[k] - s[c], (total[0] - opts[c][0] + new[0],
                                          total[1] - opts[c][1] + new[1])


def _greedy(units: _Units, scores: list[list[float]], limits: Limits) -> list[int] | None:
    """Highest-score choices, reduced by least score lost per overshoot removed, repaired.

    Works on the additive cost model of ``units``; returns None when no single change
    lowers the overshoot any more (stuck above the budget).
    """
    choice = [max(range(len(s)), key=s.__getitem__) for s in scores]
    total = units.base
    for opts, c in zip(units.costs, choice, strict=True):
        total = (total[0] + opts[c][0], total[1] + opts[c][1])
    while (excess := _excess(total, limits)) > 0:
        cuts = [(-gain / saved, u, k, cost) for u, k, gain, cost in
                _moves(units, scores, choice, total)
                if (saved := excess - _excess(cost, limits)) > 0]
        if not cuts:
            return None
        _, u, k, total = min(cuts, key=lambda m: m[0])
        choice[u] = k
    # Repair: upgrade while the budget allows, highest score gain per relative cost first.
    while True:
        ups = []
        for u, k, gain, cost in _moves(units, scores, choice, total):
            if gain > 0 and _excess(cost, limits) == 0:
                extra = sum((c - t) / lim for c, t, lim in zip(cost, total, limits, strict=True)
                            if lim is not None)
                ups.append((gain / extra if extra > 0 else math.inf, gain, u, k, cost))
        if not ups:
            return choice
        _, _, u, k, total = max(ups, key=lambda m: m[:2])
        choice[u] = k


def alpha_scores(space: SearchSpace) -> list[torch.Tensor]:
    """softmax(α) of every α tensor (on the CPU): the default importance of each candidate
    (:meth:`SearchSpace.alpha_weights`: times softmax(β) under the cell space's edge
    normalisation)."""
    return [w.detach().float().cpu() for w in space.alpha_weights()]


def derive_under_budget(space: SearchSpace, budget_abs: Limits, mode: str = "alpha",
                        scores: list[torch.Tensor] | None = None) -> Genotype:
    """The best-scoring genotype of ``space`` whose measured params/FLOPs fit ``budget_abs``.

    Parameters
    ----------
    space
        A ``"cell"`` or ``"width"`` supernet.
    budget_abs
        ``(max_params, max_flops)`` absolute counts, as :meth:`Budget.resolve` returns;
        ``None`` leaves a dimension free (both None gives ``space.genotype()``).
    mode
        ``"alpha"``: importance is softmax(α). ``"perturbation"``: importance is ``scores``,
        e.g. :func:`fednas.compression.perturbation.perturbation_scores` (DARTS-PT).
    scores
        One tensor per α tensor, same shapes; required for ``"perturbation"``.

    Returns
    -------
    Genotype
        Within budget as measured by ``space.cost`` on the built subnet.

    Raises
    ------
    ConfigError
        If a limit is below the smallest reachable model of the space (the message gives
        its params and FLOPs), or ``mode``/``scores`` are invalid.
    """
    if mode == "alpha":
        matrices = alpha_scores(space)
    elif mode == "perturbation":
        shapes = [tuple(a.shape) for a in space.alpha_parameters()]
        if scores is None or [tuple(s.shape) for s in scores] != shapes:
            raise ConfigError(f"compression.selection: 'perturbation' needs scores of shapes "
                              f"{shapes} (see perturbation_scores)")
        matrices = [s.detach().float().cpu() for s in scores]
    else:
        raise ConfigError(f"compression.selection: {mode!r} is not allowed; allowed values: "
                          "['alpha', 'perturbation']")
    max_params, max_flops = budget_abs
    limits = (None if max_params is None else int(max_params),
              None if max_flops is None else int(max_flops))
    units = _units(space)
    small = smallest_cost(space)
    for key, lim, low in zip(("params", "flops"), limits, small, strict=True):
        if lim is not None and lim < low:
            raise ConfigError(f"compression.{key}: {lim} is below the smallest reachable model of "
                              f"this space ({small[0]} params, {small[1]} FLOPs)")
    per_unit = units.scores(matrices)
    target = limits
    for _ in range(4):  # shrink the target if the additive model underestimated a cost
        choice = _greedy(units, per_unit, target)
        if choice is None:
            break
        genotype = units.genotype(choice, matrices)
        measured = space.cost(genotype)
        if _excess(measured, limits) == 0:
            return genotype
        target = tuple(None if t is None else t - max(0, m - lim)
                       for t, m, lim in zip(target, measured, limits, strict=True))
    raise ConfigError(f"compression: no architecture of this space was found within "
                      f"{limits[0]} params and {limits[1]} FLOPs (the smallest reachable "
                      f"model has {small[0]} params, {small[1]} FLOPs)")
