"""The ``[compression]`` section: budget, derivation, distillation and fine-tuning options.

Used by the phases ``compress`` (derive a model under the budget from the searched supernet,
distil a teacher into it on the server's proxy split, fine-tune it by FedAvg), ``same-size``
(the same architecture trained by FedAvg from scratch) and ``pruned`` (the reference CNN
pruned uniformly to the budget, then fine-tuned).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednas.config.tools import option
from fednas.errors import ConfigError


@dataclass(frozen=True)
class CompressionConfig:
    params: float = option(0.5, ge=0.0, doc="params budget: 0 < x <= 1 a fraction of the "
                           "reference model's, > 1 an absolute count, 0 = no params limit")
    flops: float = option(0.0, ge=0.0, doc="FLOPs budget per sample (a multiply-add counts "
                          "two), same convention as params")
    reference: str = option("baseline", choices=("baseline", "searched"),
                            doc="model whose params/FLOPs a fractional budget refers to: the "
                                "hand-designed baseline of [baseline], or the searched subnet")
    selection: str = option("alpha", choices=("alpha", "perturbation", "dap"),
                            doc="how the student is chosen: by softmax(α), by DARTS-PT "
                                "(accuracy drop of the supernet on the proxy split when a "
                                "candidate is removed), or by DAP (gates over the channels of "
                                "the full-width subnet trained on the proxy split with the "
                                "weights frozen; width space)")
    teacher: str = option("searched", choices=("searched", "supernet", "none"),
                          doc="distillation teacher: the retrained searched subnet (needs the "
                              "retrain phase), the aggregated supernet (full α mixture), or "
                              "none (fine-tune the inherited weights only)")
    proxy_samples: int = option(0, ge=0, doc="server-side proxy images (the dataset's val "
                                "split, which no client holds; 0 = all of it)")
    use_labels: bool = option(False, doc="treat the proxy split as labelled (adds β·CE); "
                              "false = unlabelled public data")
    beta: float = option(0.5, ge=0.0, doc="weight of the CE term when use-labels is on")
    temperature: float = option(4.0, gt=0.0, doc="distillation temperature T")
    epochs: int = option(10, ge=0, doc="distillation passes over the proxy split")
    lr: float = option(0.05, gt=0.0, doc="distillation SGD lr (cosine-annealed)")
    batch_size: int = option(128, ge=1, doc="distillation batch size")
    dna_weight: float = option(0.0, ge=0.0, doc="DNA: weight of the blockwise loss (student "
                               "cells regress the teacher's cell outputs; cell space)")
    feddf: bool = option(False, doc="FedDF: after every fine-tuning round, distil the "
                         "ensemble of the clients' models into the aggregate on the proxy")
    feddf_steps: int = option(50, ge=1, doc="FedDF: distillation steps per round")
    fine_tune_rounds: int = option(0, ge=0, doc="FedAvg rounds of the distilled student and "
                                   "of the same-size/pruned baselines (0 = "
                                   "federation.subnet-rounds)")
    casd_every: int = option(0, ge=0, doc="CASD: every N search rounds, distil the supernet "
                             "into the budget's student and penalise α by the student's "
                             "block losses (0 = off: search, then distil once)")
    casd_epochs: int = option(1, ge=1, doc="CASD: distillation passes per step")
    casd_penalty: float = option(0.5, ge=0.0, doc="CASD: α penalty scale λ")
    dap_steps: int = option(300, ge=1, doc="DAP: Adam steps on the gate logits")
    dap_lr: float = option(0.05, gt=0.0, doc="DAP: gate learning rate")
    dap_penalty_weight: float = option(20.0, ge=0.0, doc="DAP: weight λ of the complexity "
                                       "penalty (20: on a glyph Conv-4, λ = 5 left the gates' "
                                       "mode 33 % over a 50 % target after 300 steps)")
    dap_penalty: str = option("hinge", choices=("hinge", "linear"),
                              doc="DAP: penalise the relative overshoot of the expected cost "
                                  "over the budget (hinge) or the expected cost itself (linear)")
    dap_group_size: int = option(1, ge=1, doc="DAP: channels per gate (contiguous groups)")
    dap_t_start: float = option(1.0, gt=0.0, doc="DAP: probability temperature T at the "
                                "first step (π = σ(θ/T)), annealed geometrically")
    dap_t_end: float = option(0.1, gt=0.0, doc="DAP: probability temperature T at the last step")
    dap_tau_start: float = option(1.0, gt=0.0, doc="DAP: sampling (binary-concrete) "
                                  "temperature τ at the first step")
    dap_tau_end: float = option(0.1, gt=0.0, doc="DAP: sampling temperature τ at the last step")
    dap_rounds: int = option(0, ge=0, doc="DAP: 0 = the server trains the gates on its "
                             "proxy split; > 0 = Flower rounds in which the clients train them "
                             "on their own data (dap-steps each; only the gate logits travel "
                             "up)")
    inherit_weights: bool = option(True, doc="the student starts from the supernet's weights "
                                   "(false: fresh initialisation, then distillation)")

    def check(self) -> None:
        if self.params == 0 and self.flops == 0:
            raise ConfigError("compression.params / compression.flops: set at least one "
                              "budget (a fraction <= 1 of the reference, or an absolute count)")


def check_compression(cfg: Any) -> None:
    """The compression phases' constraints on the rest of the run config (``cfg``)."""
    c, phases = cfg.compression, cfg.phases
    for phase in ("compress", "same-size"):
        if phase in phases and "search" not in phases:
            raise ConfigError(f"phases: {phase!r} needs 'search' (the architecture is "
                              "derived under the budget from the searched supernet)")
    if "compress" in phases and c.teacher == "searched" and "retrain" not in phases:
        raise ConfigError("compression.teacher: 'searched' distils the retrained searched "
                          "subnet; add 'retrain' to phases or pick 'supernet' / 'none'")
    if "pruned" in phases and cfg.baseline.model != "cnn":
        raise ConfigError(f"baseline.model: the 'pruned' phase prunes the hand-designed CNN "
                          f"filter by filter; baseline.model = {cfg.baseline.model!r} has no "
                          "pruning rule (use 'cnn' or drop 'pruned')")
    if c.reference == "searched" and "search" not in phases and (
            {"compress", "same-size", "pruned"} & set(phases)):
        raise ConfigError("compression.reference: 'searched' needs the 'search' phase")
    if c.casd_every and (cfg.mode != "federated" or "search" not in phases
                         or c.reference != "baseline"):
        raise ConfigError("compression.casd-every: CASD runs between federated search "
                          'rounds with a budget relative to the baseline (mode = '
                          '"federated", "search" in phases, compression.reference = '
                          '"baseline")')
    if c.selection == "dap" and cfg.space.name != "width" and (
            {"compress", "same-size"} & set(phases)):
        raise ConfigError(f"compression.selection: 'dap' prunes the channels of width-space "
                          f"subnets; space.name = {cfg.space.name!r} (use 'alpha' or "
                          "'perturbation', or space.name = 'width')")
    if c.selection == "dap" and c.dna_weight:
        raise ConfigError("compression.dna-weight: DNA's blockwise loss matches cells of the "
                          "cell space; compression.selection = 'dap' prunes width subnets")
    if c.dap_rounds and (c.selection != "dap" or cfg.privacy.mode != "off"
                         or cfg.privacy.secure_aggregation):
        raise ConfigError("compression.dap-rounds: federated gate rounds need "
                          "compression.selection = 'dap' and no DP or secure aggregation (the "
                          "gate updates are not clipped or masked yet); set dap-rounds = 0")
    if c.feddf and cfg.privacy.mode != "off":
        raise ConfigError("compression.feddf: FedDF distils the individual client models, "
                          "which differential privacy hides; turn one of them off")
