"""Extend fednas from your own code: a new search space and a new aggregation strategy.

Nothing in fednas is edited. This file registers

* ``kernel``: a search space of small CNNs in which every conv layer chooses its kernel size
  (1, 3 or 5) by a softmax over α, weights shared as in DARTS; its genotype is the list of
  kernel sizes and its subnet the plain CNN with those layers (weights copied);
* ``fednas-uniform``: FedNAS in which every client counts once (example counts dropped), a
  fairness-style rule that only overrides :meth:`strategies.fednas.FedNAS.average`; shards,
  server optimiser, robustness and bookkeeping stay FedNAS's.

``custom_space.toml`` beside it names both (``space.name = "kernel"``,
``federation.strategy = "fednas-uniform"``) and loads this file as a plugin
(``runtime.plugins``), which is how the Ray workers of the simulation learn the new space
too. Run it either way::

    python examples/custom_space.py --out-dir runs/example
    fednas run examples/custom_space.toml
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fednas.federated.aggregation import Contribution, masked_weighted_mean
from fednas.spaces.base import Genotype, SearchSpace
from fednas.spaces.registry import register_space
from strategies.fednas import FedNAS
from strategies.registry import register_strategy

KERNELS = (1, 3, 5)


def conv_bn(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(c_out))


@register_space("kernel")
class KernelSpace(SearchSpace):
    """CNNs of ``layers`` conv-BN-ReLU blocks (``channels`` wide, 2×2 max-pooling between
    them), each choosing its kernel size."""

    def __init__(self, *, input_shape: tuple[int, int, int], num_classes: int,
                 channels: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.input_shape, self.num_classes = input_shape, num_classes
        c_in, self.convs = input_shape[0], nn.ModuleList()
        for _ in range(layers):
            self.convs.append(nn.ModuleList(conv_bn(c_in, channels, k) for k in KERNELS))
            c_in = channels
        self.head = nn.Linear(channels, num_classes)
        self.alphas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(KERNELS))) for _ in range(layers))

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def candidate_names(self) -> list[str]:
        return [f"{k}x{k}" for k in KERNELS]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (weights, convs) in enumerate(zip(self.shard_softmax(), self.convs, strict=True)):
            if i:
                x = F.max_pool2d(x, 2)
            x = F.relu(sum(w * conv(x) for w, conv in zip(weights, convs, strict=True)))
        return self.head(x.mean((2, 3)))

    def genotype(self) -> Genotype:
        return {"space": self.space_name,
                "kernels": [KERNELS[int(a.argmax())] for a in self.alphas]}

    def random_genotype(self, generator: torch.Generator) -> Genotype:
        picks = torch.randint(len(KERNELS), (len(self.alphas),), generator=generator)
        return {"space": self.space_name, "kernels": [KERNELS[int(i)] for i in picks]}

    def subnet(self, genotype: Genotype) -> nn.Module:
        self.check_genotype(genotype)
        return KernelNet([copy.deepcopy(layer[KERNELS.index(k)])
                          for layer, k in zip(self.convs, genotype["kernels"], strict=True)],
                         copy.deepcopy(self.head))


class KernelNet(nn.Module):
    """The discrete CNN of a ``kernel`` genotype (weights copied from the supernet)."""

    def __init__(self, convs: list[nn.Module], head: nn.Linear) -> None:
        super().__init__()
        self.convs, self.head = nn.ModuleList(convs), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            if i:
                x = F.max_pool2d(x, 2)
            x = F.relu(conv(x))
        return self.head(x.mean((2, 3)))


@register_strategy("fednas-uniform")
class FedNASUniform(FedNAS):
    """FedNAS with one vote per client: every entry is the plain mean over the clients that
    trained it. Logs ``uniform_clients`` (how many clients were averaged) every round."""

    def average(self, state: dict[str, torch.Tensor], contributions: list[Contribution]
                ) -> dict[str, torch.Tensor]:
        self.round_stats["uniform_clients"] = len(contributions)
        return masked_weighted_mean(state, [Contribution(c.regions, c.slices, 1.0, c.entry_masks)
                                            for c in contributions])


def main(argv: list[str] | None = None) -> int:
    """Run ``custom_space.toml`` (plus ``--set`` overrides) and print its summary."""
    from fednas.config.loading import load_config
    from fednas.errors import FedNASError
    from simulations.simulation import run_federated

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs", help="parent of the run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, f"runtime.out-dir={json.dumps(args.out_dir)}"]
    try:
        cfg = load_config(Path(__file__).with_suffix(".toml"), overrides)
        run_dir, summary = run_federated(cfg)
    except FedNASError as exc:
        print(f"custom_space: error: {exc}", file=sys.stderr)
        return 2
    for name, entry in summary["models"].items():
        print(f"{name}: test acc {100 * entry['test_acc']:.2f} %, {entry['params']} params")
    print(f"genotype: {summary['genotype']}\nrun dir: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
