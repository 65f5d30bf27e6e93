"""The DARTS-like cell search space: a weight-sharing supernet of MixedOps (Liu et al. 2019).

Each cell has two input nodes (the two previous cells' outputs), ``nodes`` intermediate
nodes, and one MixedOp edge from every earlier node to every intermediate node. α has one
row per edge and one column per candidate op, shared by all normal (resp. reduction) cells.
PC-DARTS' partial channel connections and edge normalisation (β) are options
(:mod:`fednas.spaces.pcdarts`).
"""

from __future__ import annotations

import torch
from torch import nn

from fednas.errors import ConfigError
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.cellnet import CellNetwork, macro_layout, make_preprocess, make_stem
from fednas.spaces.ops import DARTS_OPS, OPS
from fednas.spaces.pcdarts import (
    PartialBypass,
    channel_shuffle,
    check_partial_channels,
    node_offsets,
    node_softmax,
)
from fednas.spaces.registry import register_space


class MixedOp(nn.Module):
    """Softmax(α)-weighted sum of the candidate ops on one edge. ``none`` is never computed.

    With ``partial`` = K > 1 (PC-DARTS) the ops are built for ``c // K`` channels and see
    only the first ``c // K`` input channels; the rest bypass them (:class:`PartialBypass`)
    and the concatenation is channel-shuffled with K groups.
    """

    def __init__(self, c: int, stride: int, op_names: tuple[str, ...], partial: int = 1) -> None:
        super().__init__()
        self.op_names = op_names
        self.partial = partial
        self.ops = nn.ModuleDict({name: OPS[name](c // partial, stride, True)
                                  for name in op_names})
        self.bypass = PartialBypass(stride) if partial > 1 else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                active: list[bool] | None = None) -> torch.Tensor:
        if self.bypass is None:
            return self._mix(x, weights, active)
        part = x.shape[1] // self.partial
        mixed = self._mix(x[:, :part], weights, active)
        return channel_shuffle(torch.cat([mixed, self.bypass(x[:, part:])], dim=1),
                               self.partial)

    def _mix(self, x: torch.Tensor, weights: torch.Tensor,
             active: list[bool] | None) -> torch.Tensor:
        out: torch.Tensor | None = None
        for k, (w, name) in enumerate(zip(weights, self.op_names, strict=True)):
            if name == "none" or (active is not None and not active[k]):
                continue
            y = w * self.ops[name](x)
            out = y if out is None else out + y
        if out is None:  # only "none" is active: the edge contributes zeros
            return self.ops["none"](x)
        return out


class SearchCell(nn.Module):
    """One cell of the supernet: every edge is a :class:`MixedOp` (``partial``: its K)."""

    def __init__(self, nodes: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, op_names: tuple[str, ...], partial: int = 1) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0, self.preprocess1 = make_preprocess(c_pp, c_p, c, reduction_prev)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(c, stride, op_names, partial))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                active: list[list[bool]] | None = None,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: softmax(α) rows; ``edge_weights``: one weight per edge (edge
        normalisation's per-node softmax(β)), None for the plain sum."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            outs = (self.edges[offset + j](h, weights[offset + j],
                                           None if active is None else active[offset + j])
                    for j, h in enumerate(states))
            if edge_weights is None:
                node = sum(outs)
            else:
                node = sum(edge_weights[offset + j] * y for j, y in enumerate(outs))
            offset += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)


@register_space("cell")
class CellSupernet(SearchSpace):
    """DARTS supernet: stem, ``layers`` cells (reductions at 1/3 and 2/3 depth), classifier.

    Parameters
    ----------
    input_shape, num_classes
        Input ``(C, H, W)`` and number of classes.
    channels
        Channels ``C`` of the first cell's nodes (doubled at each reduction).
    layers
        Number of cells.
    nodes
        Intermediate nodes per cell.
    ops
        Candidate op names (keys of :data:`fednas.spaces.ops.OPS`).
    stem_stride
        Stride of the stem conv: 2 searches 28×28 inputs at 14×14 (≈6× cheaper).
    partial_channels
        PC-DARTS' K: each MixedOp's ops see ``C/K`` of its ``C`` channels (1 = off). The ops
        are then narrower than a derived subnet's, so :meth:`subnet` initialises its cell ops
        afresh (stem, preprocessing and classifier are still copied).
    edge_normalisation
        PC-DARTS' β (``beta_normal``, ``beta_reduce``: one row per edge, shape
        ``(edges, 1)``): a node weighs its incoming edges by softmax(β) over them, and
        derivation ranks by softmax(α)·softmax(β). β follows α in :meth:`arch_parameters`.
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int,
                 channels: int = 8, layers: int = 4, nodes: int = 4,
                 ops: tuple[str, ...] = DARTS_OPS, stem_stride: int = 1,
                 stem_multiplier: int = 3, partial_channels: int = 1,
                 edge_normalisation: bool = False) -> None:
        super().__init__()
        ops = tuple(ops)
        unknown = [o for o in ops if o not in OPS]
        if unknown or not ops or len(set(ops)) != len(ops):
            raise ConfigError(f"space.cell.ops: unknown or repeated ops {unknown or list(ops)}; "
                              f"allowed: {sorted(OPS)}")
        if not [o for o in ops if o != "none"]:
            raise ConfigError("space.cell.ops: needs at least one op other than 'none'")
        self.input_shape = tuple(input_shape)  # type: ignore[assignment]
        self.num_classes = num_classes
        self.op_names = ops
        self.channels, self.layers, self.nodes = channels, layers, nodes
        self.stem_stride, self.stem_multiplier = stem_stride, stem_multiplier
        layout = list(macro_layout(layers, channels, nodes, stem_multiplier))
        check_partial_channels(partial_channels, [cell[-1] for cell in layout])
        self.partial_channels, self.edge_normalisation = partial_channels, edge_normalisation
        self.stem = make_stem(input_shape[0], stem_multiplier * channels, stem_stride)
        self.cells = nn.ModuleList()
        c = channels
        for reduction, reduction_prev, c_pp, c_p, c in layout:
            self.cells.append(SearchCell(nodes, c_pp, c_p, c, reduction, reduction_prev, ops,
                                         partial_channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(nodes * c, num_classes)
        num_edges = sum(2 + i for i in range(nodes))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(ops)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(ops)))
        if edge_normalisation:  # as PC-DARTS initialises β
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(num_edges, 1))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, 1))

    def arch_parameters(self) -> list[nn.Parameter]:
        """``[α_normal, α_reduce]``, then ``[β_normal, β_reduce]`` with edge normalisation
        (β's rows have one candidate each, so shards always keep them)."""
        return [*self.alpha_parameters(), *self.beta_parameters()]

    def alpha_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def beta_parameters(self) -> list[nn.Parameter]:
        """Edge normalisation's ``[β_normal, β_reduce]``; empty without it."""
        return [self.beta_normal, self.beta_reduce] if self.edge_normalisation else []

    def edge_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What derivation ranks by, for normal and reduction cells, shape ``(edges, ops)``:
        softmax(α), times each edge's node-softmax(β) with edge normalisation."""
        weights = self.alpha_normal.softmax(dim=-1), self.alpha_reduce.softmax(dim=-1)
        if not self.edge_normalisation:
            return weights
        beta = [node_softmax(b, self.nodes)[:, None] for b in self.beta_parameters()]
        return weights[0] * beta[0], weights[1] * beta[1]

    def alpha_weights(self) -> list[torch.Tensor]:
        return list(self.edge_weights())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal, w_reduce = self.shard_softmax()[:2]
        b_normal, b_reduce = ([node_softmax(b, self.nodes) for b in self.beta_parameters()]
                              or (None, None))
        active = (None, None) if self.shard is None else [m.tolist() for m in self.shard]
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, active[1], b_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, active[0], b_normal)
        return self.classifier(self.pool(s1).flatten(1))

    def shard_slices(self, masks: list[torch.Tensor]) -> dict[str, tuple[slice, ...] | None]:
        """Every shared tensor, plus the tensors of each edge's ops inside the shard."""
        slices: dict[str, tuple[slice, ...] | None] = {}
        for key in self.state_dict():
            parts = key.split(".")
            if parts[0] == "cells" and len(parts) > 5 and parts[2] == "edges":
                cell = self.cells[int(parts[1])]
                mask = masks[1 if cell.reduction else 0]
                if not mask[int(parts[3]), self.op_names.index(parts[5])]:
                    continue
            slices[key] = None
        return slices

    def _derive(self, weights: torch.Tensor) -> list[list]:
        """Top-2 incoming edges per node by their best non-``none`` op weight (``weights``:
        :meth:`edge_weights`, so softmax(α)·softmax(β) with edge normalisation)."""
        ops = self.op_names
        keep = [k for k, name in enumerate(ops) if name != "none"]
        gene: list[list] = []
        for offset, n in node_offsets(self.nodes):
            rows = weights[offset: offset + n]
            best = [(float(rows[j, keep].max()), j) for j in range(n)]
            for _, j in sorted(best, key=lambda t: (-t[0], t[1]))[:2]:
                k = keep[int(rows[j, keep].argmax())]
                gene.append([ops[k], j])
        return gene

    def candidate_names(self) -> list[str]:
        return list(self.op_names)

    def genotype(self) -> Genotype:
        w_normal, w_reduce = (w.detach().cpu() for w in self.edge_weights())
        concat = list(range(2, 2 + self.nodes))
        return {"space": "cell", "normal": self._derive(w_normal), "normal_concat": concat,
                "reduce": self._derive(w_reduce), "reduce_concat": concat}

    def random_genotype(self, generator: torch.Generator) -> Genotype:
        keep = [name for name in self.op_names if name != "none"]
        genes = {}
        for kind in ("normal", "reduce"):
            gene = []
            for i in range(self.nodes):
                inputs = torch.randperm(2 + i, generator=generator)[:2].sort().values
                for j in inputs.tolist():
                    op = keep[int(torch.randint(len(keep), (1,), generator=generator))]
                    gene.append([op, j])
            genes[kind] = gene
        concat = list(range(2, 2 + self.nodes))
        return {"space": "cell", "normal": genes["normal"], "normal_concat": concat,
                "reduce": genes["reduce"], "reduce_concat": concat}

    def subnet(self, genotype: Genotype) -> CellNetwork:
        """The genotype's :class:`CellNetwork` with the supernet's weights: the stem, the
        cells' preprocessing and the classifier always, the kept ops' only when
        ``partial_channels`` is 1 (with K > 1 the supernet's ops are ``C/K`` wide and the
        subnet's ``C``: its cell ops keep their fresh initialisation)."""
        self.check_genotype(genotype)
        net = CellNetwork(genotype, input_shape=self.input_shape, num_classes=self.num_classes,
                          channels=self.channels, layers=self.layers,
                          stem_stride=self.stem_stride, stem_multiplier=self.stem_multiplier,
                          allowed_ops=self.op_names)
        for own, sub in self._shared_modules(net):
            sub.load_state_dict(own.state_dict())
        return net

    def load_subnet(self, net: CellNetwork) -> int:
        """The inverse of :meth:`subnet`: copy ``net``'s weights (e.g. a retrained subnet's)
        into the supernet modules they correspond to: stem, preprocessing, classifier, and
        each kept op into its edge's op of the same name (not with ``partial_channels`` > 1).

        ``net`` must have this supernet's macro-structure (channels, layers, nodes);
        raises ValueError naming the first tensor whose shape differs. Returns the number of
        tensors copied. A subnet derived afterwards computes what ``net`` computes.
        """
        self.check_genotype(net.genotype)
        if len(net.cells) != len(self.cells):
            raise ValueError(f"load_subnet: {len(net.cells)} cells, the supernet has "
                             f"{len(self.cells)}")
        pairs = self._shared_modules(net)
        for own, sub in pairs:
            mine = own.state_dict()
            bad = [k for k, v in sub.state_dict().items() if mine[k].shape != v.shape]
            if bad:
                raise ValueError(f"load_subnet: {type(sub).__name__} tensor {bad[0]!r} does "
                                 "not fit the supernet's (another width or layout?)")
        for own, sub in pairs:
            own.load_state_dict(sub.state_dict())
        return sum(len(sub.state_dict()) for _, sub in pairs)

    def _shared_modules(self, net: CellNetwork) -> list[tuple[nn.Module, nn.Module]]:
        """(supernet module, subnet module) pairs that hold the same weights."""
        pairs: list[tuple[nn.Module, nn.Module]] = [(self.stem, net.stem),
                                                     (self.classifier, net.classifier)]
        for own_cell, cell in zip(self.cells, net.cells, strict=True):
            pairs += [(own_cell.preprocess0, cell.preprocess0),
                      (own_cell.preprocess1, cell.preprocess1)]
            if self.partial_channels == 1:
                pairs += [(own_cell.edges[edge].ops[name], op)
                          for op, (name, edge) in zip(cell.ops, cell.edge_ids, strict=True)]
        return pairs
