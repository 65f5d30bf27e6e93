"""Server-side optimiser on the aggregated update: FedAvgM (Hsu et al. 2019).

FedAvg replaces the global model by the clients' (masked, weighted) average. FedAvgM treats
``Δ = average − global`` as a pseudo-gradient and takes a server SGD step with momentum::

    v ← μ v + Δ
    global ← global + η_s v

With ``η_s = 1`` and ``μ = 0`` this is FedAvg, and :meth:`FedAvgM.step` then returns the
average itself (bit for bit). Only trainable tensors take the step: BN running statistics
(``running_mean``, ``running_var``) and integer buffers are averaged as in FedAvg. Entries no
client trained this round have ``Δ = 0`` but still move by ``η_s μ v`` (the momentum of
earlier rounds), as in FedAvgM with partial participation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def takes_step(key: str, tensor: torch.Tensor) -> bool:
    """Whether ``key`` is a trainable tensor (not a BN statistic or an integer buffer)."""
    return tensor.is_floating_point() and not key.endswith(STAT_SUFFIXES)


class FedAvgM:
    """Server SGD with momentum on the aggregated update (see the module docstring).

    Parameters
    ----------
    lr
        Server learning rate η_s (> 0).
    momentum
        Server momentum μ in [0, 1).
    """

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"server lr must be > 0 (got {lr})")
        if not 0 <= momentum < 1:
            raise ValueError(f"server momentum must be in [0, 1) (got {momentum})")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.velocity: dict[str, torch.Tensor] = {}

    @property
    def is_fedavg(self) -> bool:
        return self.lr == 1.0 and self.momentum == 0.0

    def step(self, old: Mapping[str, torch.Tensor], average: Mapping[str, torch.Tensor]
             ) -> dict[str, torch.Tensor]:
        """The new global state from the previous one and this round's client average."""
        if self.is_fedavg:
            return dict(average)
        out = dict(average)
        for key, avg in average.items():
            if not takes_step(key, avg):
                continue
            prev = old[key].to(torch.float64)
            delta = avg.to(torch.float64) - prev
            v = self.velocity.get(key)
            v = delta if v is None else self.momentum * v + delta
            self.velocity[key] = v
            out[key] = (prev + self.lr * v).to(avg.dtype)
        return out

    def state_dict(self) -> dict[str, object]:
        """Everything a checkpoint needs (the momentum buffers)."""
        return {"lr": self.lr, "momentum": self.momentum,
                "velocity": {k: v.clone() for k, v in self.velocity.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        velocity = state.get("velocity", {})
        assert isinstance(velocity, dict)
        self.velocity = {k: v.clone() for k, v in velocity.items()}
