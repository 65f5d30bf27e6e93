"""The ``[meta.dap]`` section: the meta phase's ``dap`` model (issue 32).

DAP (Colombo & Gao 2021) prunes a trained network where data is plentiful and retrains the
extracted structure on tasks with very few examples. In the meta phase, the ``dap`` model is
``source`` (a run's trained network with a ``meta.ways``-class head) pruned on the meta-train
classes, then meta-trained and scored like every other model of ``meta.models``
(:mod:`fednas.meta.dap_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fednas.config.tools import option
from fednas.errors import ConfigError

DAP_SOURCES = ("conv4-pretrained", "searched")


@dataclass(frozen=True)
class DapMetaConfig:
    source: str = option("conv4-pretrained", choices=DAP_SOURCES,
                         doc="network DAP prunes: the run's trained Conv-4 baseline "
                             "(conv4-pretrained), or the searched subnet (width space; the "
                             "cell space has no prunable units yet)")
    params: float = option(0.5, ge=0.0, doc="params budget: 0 < x <= 1 a fraction of the "
                           "source's, > 1 an absolute count, 0 = no params limit")
    flops: float = option(0.0, ge=0.0, doc="FLOPs budget per sample, same convention")
    probe_steps: int = option(300, ge=1, doc="Adam steps of the linear probe: a head over "
                              "all meta-train classes fitted on the frozen body, which gives "
                              "the gates their task loss")
    probe_lr: float = option(0.01, gt=0.0, doc="linear probe learning rate")
    steps: int = option(300, ge=1, doc="Adam steps on the gate logits (weights frozen)")
    lr: float = option(0.05, gt=0.0, doc="gate learning rate")
    penalty_weight: float = option(20.0, ge=0.0, doc="weight λ of the complexity penalty "
                                   "(hinge on the expected cost's relative overshoot of the "
                                   "budget; 20 as measured by bench/transfer.py)")
    group_size: int = option(1, ge=1, doc="channels per gate (contiguous groups)")
    batch_size: int = option(128, ge=1, doc="batch size of the probe and the gates")

    def check(self) -> None:
        if self.params == 0 and self.flops == 0:
            raise ConfigError("meta.dap.params / meta.dap.flops: set at least one budget "
                              "(a fraction <= 1 of the source network, or an absolute count)")
