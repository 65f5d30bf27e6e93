"""Discrete networks of the cell space: the standalone model a cell genotype describes."""

from __future__ import annotations

import torch
from torch import nn

from fednas.errors import CheckpointError
from fednas.spaces.base import Genotype
from fednas.spaces.ops import OPS, FactorizedReduce, ReLUConvBN


def reduction_layers(layers: int) -> set[int]:
    """Indices of the reduction cells: at 1/3 and 2/3 of the depth (DARTS)."""
    return {layers // 3, 2 * layers // 3} if layers >= 3 else {layers - 1} if layers == 2 else set()


def macro_layout(layers: int, channels: int, nodes: int, stem_multiplier: int):
    """Yield ``(reduction, reduction_prev, c_pp, c_p, c)`` for each cell of the network."""
    c_pp = c_p = stem_multiplier * channels
    c = channels
    reductions = reduction_layers(layers)
    reduction_prev = False
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c *= 2
        yield reduction, reduction_prev, c_pp, c_p, c
        reduction_prev = reduction
        c_pp, c_p = c_p, nodes * c


def make_stem(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """3×3 conv + BN stem."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out))


def make_preprocess(c_pp: int, c_p: int, c: int, reduction_prev: bool) -> tuple[nn.Module, ...]:
    """The two input-node adapters of a cell (previous-previous and previous outputs)."""
    pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
    return pre0, ReLUConvBN(c_p, c, 1, 1, 0)


def check_cell_genotype(genotype: Genotype, allowed_ops: tuple[str, ...] | None = None) -> int:
    """Validate a cell genotype and return its number of intermediate nodes."""
    if genotype.get("space") != "cell":
        raise CheckpointError(f"genotype is for space {genotype.get('space')!r}, not 'cell'")
    nodes = None
    for kind in ("normal", "reduce"):
        gene = genotype.get(kind)
        if not isinstance(gene, list) or not gene or len(gene) % 2:
            raise CheckpointError(f"cell genotype: {kind!r} must be a non-empty list of "
                                  "[op, input] pairs, two per node")
        if nodes is not None and len(gene) // 2 != nodes:
            raise CheckpointError("cell genotype: normal and reduce cells differ in node count")
        nodes = len(gene) // 2
        for k, pair in enumerate(gene):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise CheckpointError(f"cell genotype: {kind}[{k}] is not an [op, input] pair")
            op, j = pair
            if op not in OPS or op == "none" or (allowed_ops and op not in allowed_ops):
                raise CheckpointError(f"cell genotype: {kind}[{k}] has op {op!r}, not a "
                                      f"candidate of this space ({list(allowed_ops or OPS)})")
            if not isinstance(j, int) or not 0 <= j < 2 + k // 2:
                raise CheckpointError(f"cell genotype: {kind}[{k}] input {j!r} out of range")
        concat = genotype.get(f"{kind}_concat", list(range(2, 2 + nodes)))
        if sorted(concat) != list(range(2, 2 + nodes)):
            raise CheckpointError(f"cell genotype: {kind}_concat must list nodes 2..{1 + nodes}")
    assert nodes is not None
    return nodes


class DiscreteCell(nn.Module):
    """A cell with one op per kept edge (two inputs per node)."""

    def __init__(self, gene: list[list], c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = len(gene) // 2
        self.preprocess0, self.preprocess1 = make_preprocess(c_pp, c_p, c, reduction_prev)
        self.ops = nn.ModuleList()
        self.inputs: list[int] = []
        self.edge_ids: list[tuple[str, int]] = []  # (op name, supernet edge index)
        for k, (name, j) in enumerate(gene):
            node = k // 2
            stride = 2 if reduction and j < 2 else 1
            self.ops.append(OPS[name](c, stride, True))
            self.inputs.append(j)
            self.edge_ids.append((name, sum(2 + m for m in range(node)) + j))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.nodes):
            a, b = 2 * i, 2 * i + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat(states[2:], dim=1)


class CellNetwork(nn.Module):
    """The standalone model of a cell genotype (same macro-structure as the supernet).

    Parameters
    ----------
    genotype
        A ``{"space": "cell", ...}`` genotype.
    input_shape, num_classes
        Input ``(C, H, W)`` and number of classes.
    channels, layers, stem_stride, stem_multiplier
        Macro-architecture; may differ from the search (e.g. a wider network to retrain).
    allowed_ops
        Restrict the genotype to these op names (a supernet's candidates).
    """

    def __init__(self, genotype: Genotype, *, input_shape: tuple[int, int, int],
                 num_classes: int, channels: int, layers: int, stem_stride: int = 1,
                 stem_multiplier: int = 3, allowed_ops: tuple[str, ...] | None = None) -> None:
        super().__init__()
        nodes = check_cell_genotype(genotype, allowed_ops)
        self.genotype = genotype
        self.stem = make_stem(input_shape[0], stem_multiplier * channels, stem_stride)
        self.cells = nn.ModuleList()
        c = channels
        for reduction, reduction_prev, c_pp, c_p, c in macro_layout(layers, channels, nodes,
                                                                    stem_multiplier):
            gene = genotype["reduce" if reduction else "normal"]
            self.cells.append(DiscreteCell(gene, c_pp, c_p, c, reduction, reduction_prev))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(nodes * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))
