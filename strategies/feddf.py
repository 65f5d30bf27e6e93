"""FedDF (Lin et al., NeurIPS 2020): ensemble distillation on the server after FedAvg.

Every round, the wrapped strategy aggregates the clients' models as usual; then the
aggregate (the student) is distilled from the ensemble of this round's client models (their
averaged logits) on the server's unlabelled proxy split, and the distilled model becomes the
new global model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from torch import nn

from fednas.training.distill import distill
from strategies.base import StrategyWrapper
from strategies.fednas import FedNAS


class FedDF(StrategyWrapper):
    """Wrap a fixed-model :class:`FedNAS` strategy with FedDF's server-side distillation.

    Parameters
    ----------
    base
        The FedAvg strategy (it must not use DP: FedDF needs the individual client models).
    make_model
        Builds a fresh model of the trained architecture (client models and student).
    proxy_x
        Unlabelled server-side proxy inputs.
    steps, lr, batch_size, temperature
        Distillation settings per round (Adam in FedDF; SGD with cosine decay here, to match
        the rest of fednas' server-side training).
    device
        Where the server distils.
    seed
        Seeds the batch order (per round: ``seed + round``).
    """

    def __init__(self, base: FedNAS, make_model: Callable[[], nn.Module], proxy_x: torch.Tensor,
                 *, steps: int, lr: float, batch_size: int, temperature: float,
                 device: torch.device, seed: int) -> None:
        super().__init__(base)
        base.keep_client_states = True
        self.make_model = make_model
        self.proxy_x = proxy_x
        self.steps, self.lr, self.batch_size = steps, lr, batch_size
        self.temperature = temperature
        self.device = device
        self.seed = seed

    def get_state(self) -> dict[str, Any]:  # nothing of its own: seeded per round
        return self.base.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.base.set_state(state)

    def _model(self, state: dict[str, torch.Tensor]) -> nn.Module:
        model = self.make_model()
        model.load_state_dict(state)
        return model.to(self.device)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.base.aggregate_train(server_round, replies)
        states, self.base.client_states = self.base.client_states, []
        if arrays is None or not states:
            return arrays, metrics
        student = self._model(arrays.to_torch_state_dict())
        teachers = [self._model(s) for s in states]
        generator = torch.Generator().manual_seed(self.seed + server_round)
        epochs = -(-self.steps * self.batch_size // max(len(self.proxy_x), 1))
        stats = distill(student, teachers, self.proxy_x, None, epochs=max(epochs, 1),
                        max_steps=self.steps, lr=self.lr, batch_size=self.batch_size,
                        temperature=self.temperature, device=self.device,
                        generator=generator, cosine=True)
        self.base.round_stats["feddf_loss"] = stats["loss"][-1] if stats["loss"] else 0.0
        self.base.round_stats["feddf_teachers"] = len(teachers)
        state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
        return ArrayRecord(state), metrics
