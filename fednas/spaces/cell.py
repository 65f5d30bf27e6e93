"""The DARTS-like cell search space: a weight-sharing supernet of MixedOps (Liu et al. 2019).

Each cell has two input nodes (the two previous cells' outputs), ``nodes`` intermediate
nodes, and one MixedOp edge from every earlier node to every intermediate node. α has one
row per edge and one column per candidate op, shared by all normal (resp. reduction) cells.
"""

from __future__ import annotations

import torch
from torch import nn

from fednas.errors import ConfigError
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.cellnet import CellNetwork, macro_layout, make_preprocess, make_stem
from fednas.spaces.ops import DARTS_OPS, OPS
from fednas.spaces.registry import register_space


class MixedOp(nn.Module):
    """Softmax(α)-weighted sum of the candidate ops on one edge. ``none`` is never computed."""

    def __init__(self, c: int, stride: int, op_names: tuple[str, ...]) -> None:
        super().__init__()
        self.op_names = op_names
        self.ops = nn.ModuleDict({name: OPS[name](c, stride, True) for name in op_names})

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                active: list[bool] | None = None) -> torch.Tensor:
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
    """One cell of the supernet: every edge is a :class:`MixedOp`."""

    def __init__(self, nodes: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, op_names: tuple[str, ...]) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0, self.preprocess1 = make_preprocess(c_pp, c_p, c, reduction_prev)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(c, stride, op_names))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                active: list[list[bool]] | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            node = sum(
                self.edges[offset + j](h, weights[offset + j],
                                       None if active is None else active[offset + j])
                for j, h in enumerate(states)
            )
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
    """

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int,
                 channels: int = 8, layers: int = 4, nodes: int = 4,
                 ops: tuple[str, ...] = DARTS_OPS, stem_stride: int = 1,
                 stem_multiplier: int = 3) -> None:
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
        self.stem = make_stem(input_shape[0], stem_multiplier * channels, stem_stride)
        self.cells = nn.ModuleList()
        c = channels
        for reduction, reduction_prev, c_pp, c_p, c in macro_layout(layers, channels, nodes,
                                                                    stem_multiplier):
            self.cells.append(SearchCell(nodes, c_pp, c_p, c, reduction, reduction_prev, ops))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(nodes * c, num_classes)
        num_edges = sum(2 + i for i in range(nodes))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(ops)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(ops)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def edge_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax(α) for normal and reduction cells, shape ``(edges, ops)`` each.

        Under a shard, the softmax is renormalised over each edge's active candidates.
        """
        return self.alpha_normal.softmax(dim=-1), self.alpha_reduce.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal, w_reduce = self.shard_softmax()
        active = (None, None) if self.shard is None else [m.tolist() for m in self.shard]
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, active[1])
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, active[0])
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
        """Top-2 incoming edges per node by their best non-``none`` op weight."""
        ops = self.op_names
        keep = [k for k, name in enumerate(ops) if name != "none"]
        gene: list[list] = []
        offset = 0
        for i in range(self.nodes):
            rows = weights[offset: offset + 2 + i]
            best = [(float(rows[j, keep].max()), j) for j in range(2 + i)]
            for _, j in sorted(best, key=lambda t: (-t[0], t[1]))[:2]:
                k = keep[int(rows[j, keep].argmax())]
                gene.append([ops[k], j])
            offset += 2 + i
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
        self.check_genotype(genotype)
        net = CellNetwork(genotype, input_shape=self.input_shape, num_classes=self.num_classes,
                          channels=self.channels, layers=self.layers,
                          stem_stride=self.stem_stride, stem_multiplier=self.stem_multiplier,
                          allowed_ops=self.op_names)
        net.stem.load_state_dict(self.stem.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        for super_cell, cell in zip(self.cells, net.cells, strict=True):
            cell.preprocess0.load_state_dict(super_cell.preprocess0.state_dict())
            cell.preprocess1.load_state_dict(super_cell.preprocess1.state_dict())
            for op, (name, edge) in zip(cell.ops, cell.edge_ids, strict=True):
                op.load_state_dict(super_cell.edges[edge].ops[name].state_dict())
        return net
