"""Exponential moving average of the global model over rounds (Polyak–Ruppert averaging).

The server keeps ``ē ← d ē + (1 − d) w_t`` of the global weights ``w_t`` after every round and
reports (evaluates, exports) ``ē`` instead of the last iterate; the clients keep training
``w_t``, so training itself is unchanged. Averaging the iterates cancels much of the
round-to-round noise of the last iterate: in DP training, where the server adds Gaussian
noise to every aggregate, it is a standard and privacy-free gain (a post-processing of the
released iterates; De et al. 2022, "Unlocking high-accuracy differentially private image
classification through scale", §3.2). It helps plain FedAvg with client sampling too.

``ē`` starts at the first round's global model (no bias towards the initialisation, so no
bias correction is needed). Floating-point tensors are averaged, BN running statistics
included; integer buffers (``num_batches_tracked``) take the latest value.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class ModelEMA:
    """Exponential moving average of a model's state over federated rounds.

    Parameters
    ----------
    decay
        ``d`` in ``ē ← d ē + (1 − d) w``: 0 keeps the last iterate, 0.9 averages over roughly
        the last 10 rounds. Must be in [0, 1).
    """

    def __init__(self, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1) (got {decay})")
        self.decay = float(decay)
        self.state: dict[str, torch.Tensor] = {}
        self.updates = 0

    def update(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fold this round's global ``state`` into the average; returns the average."""
        if self.state and set(self.state) != set(state):
            raise ValueError("EMA: the model's state keys changed between rounds "
                             f"({sorted(set(self.state) ^ set(state))[:4]} ...)")
        if not self.state:
            self.state = {k: v.detach().cpu().clone() for k, v in state.items()}
        else:
            d = self.decay
            for key, value in state.items():
                value = value.detach().cpu()
                if value.is_floating_point():
                    self.state[key] = d * self.state[key] + (1 - d) * value
                else:
                    self.state[key] = value.clone()
        self.updates += 1
        return self.state

    def state_dict(self) -> dict:
        """For checkpoints: the average and the number of rounds folded in."""
        return {"decay": self.decay, "state": self.state, "updates": self.updates}

    def load_state_dict(self, payload: Mapping) -> None:
        """Restore from :meth:`state_dict` (the decay must match this run's)."""
        if float(payload["decay"]) != self.decay:
            raise ValueError(f"checkpoint's EMA decay {payload['decay']} differs from the "
                             f"scenario's federation.ema-decay {self.decay}")
        self.state = {k: v.clone() for k, v in payload["state"].items()}
        self.updates = int(payload["updates"])
