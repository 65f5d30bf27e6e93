"""CASD: cooperative architecture search and distillation, on the server between search rounds.

Every ``compression.casd-every`` search rounds, the server derives the student under the
budget from the aggregated supernet, distils the supernet (full α mixture) into it on its
proxy split with DNA's blockwise loss, and measures how well each student block reproduces
the supernet's block output (MSE ÷ variance of the teacher output). That feedback becomes
a cost penalty on α for the next rounds: where the student already matches the teacher
(low block loss), α is pushed towards cheaper candidates — compression there costs little;
where it struggles, the search is left alone::

    α[row, op] -= casd-penalty · (1 − loss_block / max loss) · cost[op] / max cost

Cell space: the blocks are cells and the penalty of normal (reduction) cells goes to
``alpha_normal`` (``alpha_reduce``); width space: one block (and α row) per residual block,
cost ∝ width. Costs are the candidates' parameter counts at the search width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fednas.compression.student import derive_student
from fednas.config.compression import CompressionConfig
from fednas.config.run_config import TrainConfig
from fednas.spaces.base import SearchSpace
from fednas.training.distill import distill
from fednas.training.train import Split, recalibrate_bn


def _blocks(model: nn.Module) -> list[nn.Module]:
    cells = getattr(model, "cells", None)
    if isinstance(cells, nn.ModuleList):
        return list(cells)
    from fednas.models.resnet import resnet_blocks

    return resnet_blocks(model)


def op_costs(space: SearchSpace) -> list[torch.Tensor]:
    """Relative cost (params at the search width, max = 1) of every candidate, α-shaped."""
    if space.space_name == "width":
        w = torch.tensor(space.width_choices, dtype=torch.float32)
        return [w / w.max() for _ in space.alpha_parameters()]
    from fednas.spaces.ops import OPS

    c = space.channels
    params = torch.tensor([float(sum(p.numel() for p in OPS[name](c, 1, True).parameters()))
                           for name in space.op_names])
    params = params / params.max().clamp(min=1.0)
    return [params.expand_as(a).clone() for a in space.alpha_parameters()]


@torch.no_grad()
def block_losses(student: nn.Module, teacher: nn.Module, x: torch.Tensor, *, batch_size: int,
                 device: torch.device) -> list[float]:
    """Per block: MSE(student block output, teacher's) ÷ variance of the teacher's output."""
    s_blocks, t_blocks = _blocks(student), _blocks(teacher)
    feats: dict[str, list[torch.Tensor]] = {"s": [], "t": []}
    hooks = [m.register_forward_hook(lambda _m, _i, out, k=k: feats[k].append(out))
             for k, mods in (("s", s_blocks), ("t", t_blocks)) for m in mods]
    sums = torch.zeros(len(s_blocks))
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    try:
        for i in range(0, len(x), batch_size):
            feats["s"].clear()
            feats["t"].clear()
            xb = x[i: i + batch_size].to(device)
            student(xb)
            teacher(xb)
            for b, (s, t) in enumerate(zip(feats["s"], feats["t"], strict=True)):
                sums[b] += float(((s - t) ** 2).mean() / t.var().clamp(min=1e-8)) * len(xb)
    finally:
        for h in hooks:
            h.remove()
        student.train(modes[0])
        teacher.train(modes[1])
    return (sums / max(len(x), 1)).tolist()


def _penalty_rows(space: SearchSpace, losses: list[float]) -> list[torch.Tensor]:
    """Per α tensor, the feedback weight ``1 − loss / max loss`` of each row (or tensor)."""
    top = max(max(losses), 1e-12)
    weight = [1.0 - v / top for v in losses]
    if space.space_name == "width":
        return [torch.tensor(w) for w in weight]
    kinds = [cell.reduction for cell in space.cells]
    out = []
    for reduction in (False, True):
        ws = [w for w, r in zip(weight, kinds, strict=True) if r == reduction]
        out.append(torch.tensor(sum(ws) / len(ws) if ws else 0.0))
    return out


def casd_step(space: SearchSpace, state: dict[str, torch.Tensor], limits,
              c: CompressionConfig, train: TrainConfig, seed: int, proxy: Split,
              device: torch.device, eval_batch_size: int = 1000) -> dict[str, Any]:
    """One CASD step on the aggregated ``state`` (updated in place: α only), with
    ``[compression]`` (``c``) and ``[retrain]``'s weight decay and clipping (``train``).

    Returns the record logged with the round (student genotype and cost, block losses,
    penalty weights).
    """
    space.load_state_dict(state)
    space.set_shard(None)
    space.to(device)
    genotype, derivation = derive_student(space, limits, c, proxy, device, eval_batch_size)
    student = space.subnet(genotype).to(device)
    x = proxy[0]
    recalibrate_bn(space, x, batch_size=c.batch_size, device=device)
    generator = torch.Generator().manual_seed(seed + 47)
    distill(student, space, x, None, epochs=c.casd_epochs, lr=c.lr, batch_size=c.batch_size,
            temperature=c.temperature, device=device, generator=generator, cosine=True,
            blocks=(_blocks(student), _blocks(space)), dna_weight=max(c.dna_weight, 1.0),
            weight_decay=train.weight_decay, grad_clip=train.grad_clip)
    losses = block_losses(student, space, x, batch_size=c.batch_size, device=device)
    weights = _penalty_rows(space, losses)
    names = {id(p): n for n, p in space.named_parameters()}
    for alpha, cost, w in zip(space.alpha_parameters(), op_costs(space), weights, strict=True):
        key = names[id(alpha)]
        state[key] = (state[key] - c.casd_penalty * w * cost).to(state[key].dtype)
    return {"casd_student_params": derivation["params"], "casd_student_flops":
            derivation["flops"], "casd_block_loss": losses,
            "casd_weight": [float(w.mean()) for w in weights]}
