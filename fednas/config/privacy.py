"""The ``[privacy]`` section (central/local DP, accounting, secure aggregation) and its
cross-section checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednas.config.tools import option
from fednas.errors import ConfigError


@dataclass(frozen=True)
class PrivacyConfig:
    mode: str = option("off", choices=("off", "central", "local"),
                       doc="central: clip each client's update, Gaussian noise on the "
                           "aggregate; local: clients clip and noise their own update "
                           "(Flower's LocalDpMod)")
    local_epsilon: float = option(1.0, gt=0.0, le=1.0, doc="local: ε of each client's "
                                  "release per round (classic Gaussian mechanism, δ = "
                                  "privacy.delta; its bound holds for ε ≤ 1)")
    noise_multiplier: float = option(1.0, ge=0.0, doc="σ: noise std = σ · clip-norm on the "
                                     "per-entry sum of clipped client updates")
    clip_norm: float = option(1.0, gt=0.0, doc="C: L2 bound of each client's update (weights "
                              "and α jointly unless alpha-clip-norm; the initial C with "
                              "adaptive clipping)")
    alpha_clip_norm: float = option(0.0, ge=0.0, doc="C_α: a bound of its own on each "
                                    "client's α update (search phase; clip-norm then bounds "
                                    "the weights alone); 0 = α clipped jointly with the "
                                    "weights")
    alpha_noise_share: float = option(0.5, gt=0.0, lt=1.0, doc="with alpha-clip-norm: the "
                                      "share s of the round's privacy (1/σ²) spent on α; α gets "
                                      "noise multiplier σ/√s and the weights σ/√(1-s), which "
                                      "compose to exactly σ")
    adaptive: bool = option(False, doc="adaptive clipping (Andrew et al. 2021): C tracks the "
                            "target quantile of the update norms (of the weights' with "
                            "alpha-clip-norm)")
    target_quantile: float = option(0.5, ge=0.0, le=1.0)
    clip_lr: float = option(0.2, gt=0.0, doc="adaptive clipping step size")
    count_noise: float = option(0.0, ge=0.0, doc="σ_b, noise on the unclipped count "
                                "(adaptive; 0 = clients per round / 20)")
    delta: float = option(1e-5, gt=0.0, lt=1.0, doc="δ of the reported ε(δ)")
    epsilon_budget: float = option(0.0, ge=0.0, doc="stop before a round that would exceed "
                                   "this ε (0 = no budget)")
    secure_aggregation: bool = option(False, doc="SecAgg (Bonawitz et al. 2017) of every "
                                      "training round: the server learns only the sum of the "
                                      "clients' masked updates (full shards, federated mode)")
    secagg_threshold: float = option(0.66, gt=0.5, le=1.0, doc="Shamir threshold as a "
                                     "fraction of the sampled clients: a round needs "
                                     "ceil(fraction · n), at least 2, of them to the end")
    secagg_clip: float = option(1024.0, gt=0.0, doc="bound on every entry of a client's "
                                "update and on its training metrics (clipped beyond); a larger "
                                "bound only costs fixed-point precision")


def check_alpha_clip(cfg: Any) -> None:
    """``privacy.alpha-clip-norm``'s constraints on the rest of the run config (``cfg``)."""
    key = "privacy.alpha-clip-norm"
    if cfg.privacy.mode == "local":
        raise ConfigError(f"{key}: clips α apart from the weights in central DP (the server "
                          "clips); local DP (LocalDpMod) clips the whole update on the client")
    if cfg.privacy.mode == "central" and "search" not in cfg.phases:
        raise ConfigError(f"{key}: only the search trains α, and phases = {list(cfg.phases)} "
                          "has no 'search'")


def check_secagg(cfg: Any) -> None:
    """Secure aggregation's constraints on the rest of the run config (``cfg``)."""
    f, key = cfg.federation, "privacy.secure-aggregation"
    if cfg.mode != "federated":
        raise ConfigError(f'{key}: masks federated clients\' updates; set mode = "federated"')
    if f.shard_size > 0:
        raise ConfigError(f"{key}: needs full shards (federation.shard-size = 0, got "
                          f"{f.shard_size}): pairwise masks cancel only in a sum over "
                          "the same entries for every client, and per-client shards "
                          "would need per-entry counts")
    if cfg.fedex.enabled:
        raise ConfigError(f"{key}: cannot run with fedex.enabled; FedEx scores each "
                          "client's own hyperparameters by its own replies, which its "
                          "wrapper aggregates in the clear")
    if cfg.privacy.mode != "off":
        raise ConfigError(f"{key}: cannot run with privacy.mode = "
                          f"{cfg.privacy.mode!r}; central DP clips each client's update "
                          "on the server, local DP noises the plain reply, and secure "
                          "aggregation shows the server neither")
    if getattr(getattr(cfg, "compression", None), "feddf", False):
        raise ConfigError(f"{key}: cannot run with compression.feddf; FedDF distils the "
                          "individual client models, which secure aggregation hides")
    if f.cohort_size != 1:
        raise ConfigError(f"{key}: needs federation.cohort-size = 1 (got {f.cohort_size}); "
                          "every client masks its own update with its own pairwise keys")
    n = cfg.partition.num_clients
    if min(n, max(int(n * f.fraction_train), f.min_fit_clients, 1)) < 2:
        raise ConfigError(f"{key}: needs >= 2 clients per round (partition.num-clients, "
                          "federation.fraction-train, federation.min-fit-clients)")
