"""The models of the meta phase: which network each ``meta.models`` name means, and its weights.

- ``searched``: the run's genotype rebuilt for the few-shot input shape with a ``ways``-class
  head; with ``init = "searched"`` every tensor whose name and shape match comes from
  ``searched.pt`` (or, without one, from the subnet of ``supernet.pt``). The head is always
  new, since its classes are not the search's.
- ``supernet`` and ``metanas``: the run's supernet for ``ways`` classes, initialised the same
  way (``metanas`` meta-learns its α afterwards: :mod:`fednas.meta.metanas`).
- ``conv4``: the MAML baseline, from scratch (``conv4-hidden = 0``: sized to the searched
  subnet's parameter count).
- ``conv4-pretrained``: Conv-4 of ``baseline.width`` channels with the body of the run's
  ``baseline.pt`` (the ``baseline`` phase with ``baseline.model = "conv4"``: trained on the
  run's data exactly as the searched subnet is retrained), so the searched subnet can be
  compared with a Conv-4 of the same pretraining (architecture, not pretraining).

Every model of a shot count is built under the same seed (:func:`initial_model`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fednas.errors import CheckpointError, ConfigError
from fednas.meta.setup import MetaSetup
from fednas.models.flops import count_params
from fednas.spaces.base import Genotype, SearchSpace, load_genotype
from fednas.spaces.cellnet import CellNetwork
from fednas.spaces.registry import build_space

HEADS = ("classifier.", "head.", "fc.", "linear.")  # head parameters are never inherited


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy the tensors of ``state`` whose name and shape match (heads excluded); count them."""
    own = model.state_dict()
    take = {k: v for k, v in state.items()
            if k in own and own[k].shape == v.shape and not k.startswith(HEADS)}
    own.update(take)
    model.load_state_dict(own)
    return len(take)


def saved_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor] | None:
    path = run_dir / f"{name}.pt"
    return (torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            if path.is_file() else None)


def meta_space(setup: MetaSetup, input_shape: tuple[int, int, int], ways: int, *,
               with_none: bool = False) -> SearchSpace:
    """The run's supernet for ``ways``-class tasks (``with_none``: 'none' among the ops)."""
    options = setup.space.options()
    if setup.meta.stem_stride:
        options["stem_stride"] = setup.meta.stem_stride
    if with_none and "none" not in options.get("ops", ("none",)):
        options["ops"] = ("none", *options["ops"])
    return build_space(setup.space.name, input_shape=input_shape, num_classes=ways, **options)


def conv4_matching(params: int, input_shape: tuple[int, int, int], ways: int) -> int:
    """The Conv-4 width whose parameter count comes closest to ``params``."""
    from fednas.models.conv4 import Conv4

    def size(hidden: int) -> int:
        return count_params(Conv4(input_shape=input_shape, num_classes=ways, hidden=hidden))

    low, high = 1, 512
    while high - low > 1:  # the count grows with the width: smallest width with >= params
        mid = (low + high) // 2
        low, high = (mid, high) if size(mid) < params else (low, mid)
    return min((low, high), key=lambda h: abs(size(h) - params))


def searched_model(setup: MetaSetup, genotype: Genotype, input_shape: tuple[int, int, int],
                   space: SearchSpace | None = None) -> nn.Module:
    """The network of a searched genotype for ``meta.ways`` classes: a cell genotype as the
    retrain phase builds it (``retrain.channels`` / ``layers``), any other as the subnet of
    ``space`` (default: :func:`meta_space`); ``meta.stem-stride`` applies to both."""
    m = setup.meta
    if genotype["space"] == "cell":
        c, r = setup.space.cell, setup.retrain
        return CellNetwork(genotype, input_shape=input_shape, num_classes=m.ways,
                           channels=r.channels or c.channels, layers=r.layers or c.layers,
                           stem_stride=m.stem_stride or c.stem_stride, allowed_ops=c.ops)
    return (space or meta_space(setup, input_shape, m.ways)).subnet(genotype)


def build_meta_model(name: str, setup: MetaSetup, run_dir: Path,
                     input_shape: tuple[int, int, int]) -> tuple[nn.Module, str]:
    """Model ``name`` of ``meta.models`` and where its initial weights came from."""
    m = setup.meta
    if name == "conv4":
        from fednas.models.conv4 import Conv4

        hidden = m.conv4_hidden or conv4_matching(
            count_params(build_meta_model("searched", setup, run_dir, input_shape)[0]),
            input_shape, m.ways)
        return Conv4(input_shape=input_shape, num_classes=m.ways, hidden=hidden), "scratch"
    if name == "conv4-pretrained":
        return pretrained_conv4(setup, run_dir, input_shape), "baseline.pt"
    space = meta_space(setup, input_shape, m.ways)
    supernet = saved_weights(run_dir, "supernet") if m.init == "searched" else None
    if supernet is not None:
        load_matching(space, supernet)
    if name in ("supernet", "metanas"):
        return space, "supernet.pt" if supernet is not None else "scratch"
    genotype = load_genotype(run_dir / "genotype.json")
    model = searched_model(setup, genotype, input_shape, space)
    if m.init == "scratch":
        return model, "scratch"
    searched = saved_weights(run_dir, "searched")
    if searched is not None and load_matching(model, searched):
        return model, "searched.pt"
    if supernet is not None and load_matching(model, space.subnet(genotype).state_dict()):
        return model, "supernet.pt"
    return model, "scratch"


def pretrained_conv4(setup: MetaSetup, run_dir: Path, input_shape: tuple[int, int, int]
                     ) -> nn.Module:
    """Conv-4 for ``meta.ways`` classes whose body is the run's trained ``baseline.pt``."""
    from fednas.models.conv4 import Conv4

    state = saved_weights(run_dir, "baseline")  # baseline.model = conv4: MetaConfig.check_run
    if state is None:
        raise CheckpointError(f"{run_dir / 'baseline.pt'} is missing: run the 'baseline' phase "
                              "(baseline.model = 'conv4') before the meta phase")
    model = Conv4(input_shape=input_shape, num_classes=setup.meta.ways, hidden=setup.baseline.width)
    own = model.state_dict()
    body = [k for k in own if not k.startswith(HEADS)]
    if load_matching(model, state) != len(body):
        missing = [k for k in body if k not in state or state[k].shape != own[k].shape]
        raise CheckpointError(f"{run_dir / 'baseline.pt'}: not a Conv-4 of width "
                              f"{setup.baseline.width} for input {tuple(input_shape)} "
                              f"(mismatched: {missing[:3]})")
    return model


def meta_seed(setup: MetaSetup, salt: int, shots: int) -> int:
    """The seed of one random stream of the meta phase (``salt`` names the stream)."""
    return setup.seed + setup.meta.seed_offset + 1000 * salt + shots


def initial_model(name: str, setup: MetaSetup, run_dir: Path, shots: int,
                  input_shape: tuple[int, int, int]) -> tuple[nn.Module, str]:
    """:func:`build_meta_model` under the seed of ``shots`` (the same for every path)."""
    torch.manual_seed(meta_seed(setup, 2, shots))
    try:
        return build_meta_model(name, setup, run_dir, input_shape)
    except CheckpointError as exc:
        raise ConfigError(f"meta.models: {name!r}: {exc}") from None
