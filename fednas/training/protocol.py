"""The comparison protocol: how long each model of a run's comparison trains, and from what.

A run compares the searched subnet (``retrain``), a random architecture (``random``) and the
hand-designed baseline (``baseline``). With ``retrain.inherit-weights`` the two subnets start
from the supernet's weights, i.e. with the search's rounds of training behind them, while the
baseline starts from scratch. ``retrain.protocol`` says how that is made fair:

``equal-total`` (default)
    Every model gets the same total training: a model that inherits the supernet's weights
    trains ``subnet-rounds`` after the search's rounds, a model that starts fresh trains
    search rounds + ``subnet-rounds`` (epochs in centralised runs).
``scratch``
    DARTS's protocol: every model starts from fresh weights and trains ``subnet-rounds``;
    ``retrain.inherit-weights`` is ignored. The comparison is of architectures alone.
``subnet-only``
    What fednas did before the option existed: every model trains ``subnet-rounds``, the
    subnets inherit, the baseline does not (it trains for fewer rounds in total). Kept to
    reproduce earlier results; not a fair comparison.

The budget is counted in rounds (epochs), the unit of a federated run's cost, not in
samples: a search round capped by ``federation.local-steps`` (a search epoch capped by
``search.steps-per-epoch``) shows the supernet fewer images than a fresh model's full round.

The compression phases (``compress``, ``same-size``, ``pruned``) and the device-tier phases
have round rules of their own (``compression.fine-tune-rounds``) and are not governed here.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = ("equal-total", "scratch", "subnet-only")
LEGACY_PROTOCOL = "subnet-only"  # the behaviour of runs made before retrain.protocol existed
COMPARED_PHASES = ("retrain", "random", "baseline")


@dataclass(frozen=True)
class Budget:
    """One compared model's training: ``units`` rounds (epochs) and where it starts.

    ``inherited``: ``"supernet"`` (all weights from the search), ``"partial"`` (stem and head
    from the search, cell ops fresh: PC-DARTS with K > 1) or ``"none"`` (fresh weights).
    """

    units: int
    inherited: str

    @property
    def inherits(self) -> bool:
        return self.inherited != "none"


def comparison_budget(protocol: str, phase: str, *, search_units: int, train_units: int,
                      inherit_weights: bool, resized: bool = False,
                      partial: bool = False) -> Budget:
    """The training of the model of ``phase`` (one of :data:`COMPARED_PHASES`).

    Parameters
    ----------
    protocol : str
        ``retrain.protocol``, one of :data:`PROTOCOLS`.
    phase : str
        ``retrain``, ``random`` or ``baseline``.
    search_units : int
        Rounds (epochs) the run's search trains the supernet; 0 when the run has no search.
    train_units : int
        ``federation.subnet-rounds`` (``retrain.epochs`` in centralised runs).
    inherit_weights : bool
        ``retrain.inherit-weights``.
    resized : bool
        The subnet is retrained at another width or depth (``retrain.channels/layers``), so
        it cannot inherit.
    partial : bool
        Inheriting leaves the cell ops fresh (``space.cell.partial-channels`` > 1).

    Returns
    -------
    Budget
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"retrain.protocol: {protocol!r} is not one of {PROTOCOLS}")
    if phase not in COMPARED_PHASES:
        raise ValueError(f"comparison_budget: {phase!r} is not a compared phase")
    inherits = (phase != "baseline" and inherit_weights and not resized
                and protocol != "scratch" and search_units > 0)
    inherited = ("partial" if partial else "supernet") if inherits else "none"
    if protocol == "equal-total" and not inherits:
        return Budget(search_units + train_units, inherited)
    return Budget(train_units, inherited)


def protocol_matters(protocol: str, phases: list[str] | tuple[str, ...], *,
                     search_units: int, train_units: int, inherit_weights: bool,
                     resized: bool = False) -> bool:
    """Whether ``protocol`` trains some model of ``phases`` differently from the legacy one
    (so a run record made before ``retrain.protocol`` existed still describes the run when it
    does not)."""
    def plan(p: str) -> list[Budget]:
        return [comparison_budget(p, ph, search_units=search_units, train_units=train_units,
                                  inherit_weights=inherit_weights, resized=resized)
                for ph in phases if ph in COMPARED_PHASES]
    return plan(protocol) != plan(LEGACY_PROTOCOL)
