"""Config keys added with a default that changes what earlier runs computed.

Most keys are added with a default that keeps the earlier behaviour, so a run record or a
checkpoint that lacks them still describes the run. The keys of :data:`LEGACY` are not: their
default changed the numbers. For them, :func:`legacy_values` says which value a record without
the key ran with (only where the config's present value would run differently), and
:func:`digest_view` leaves them out of a sweep's digest where they change nothing, so the
records of earlier sweeps are reused exactly when they still hold.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from fednas.training.protocol import LEGACY_PROTOCOL, protocol_matters

#: dotted key -> the value every run made before the key existed behaved as
LEGACY: dict[str, Any] = {"retrain.protocol": LEGACY_PROTOCOL,
                          "meta.atnas.fitness": "accuracy", "meta.atnas.init": "search"}


def _protocol_matters(flat: Mapping[str, Any]) -> bool:
    federated = flat.get("mode", "federated") == "federated"
    search = flat.get("federation.rounds" if federated else "search.epochs", 0)
    train = flat.get("federation.subnet-rounds" if federated else "retrain.epochs", 0)
    phases = list(flat.get("phases", []))
    return protocol_matters(
        flat.get("retrain.protocol", LEGACY_PROTOCOL), phases,
        search_units=search * ("search" in phases), train_units=train,
        inherit_weights=bool(flat.get("retrain.inherit-weights", True)),
        resized=bool(flat.get("retrain.channels") or flat.get("retrain.layers")))


def _atnas_matters(key: str):
    def matters(flat: Mapping[str, Any]) -> bool:
        return ("meta" in list(flat.get("phases", [])) and bool(flat.get("meta.atnas.enabled"))
                and flat.get(key, LEGACY[key]) != LEGACY[key])
    return matters


#: dotted key -> whether the flat config's value of it runs differently from the legacy one
_MATTERS = {"retrain.protocol": _protocol_matters,
            "meta.atnas.fitness": _atnas_matters("meta.atnas.fitness"),
            "meta.atnas.init": _atnas_matters("meta.atnas.init")}


def legacy_values(flat: Mapping[str, Any]) -> dict[str, Any]:
    """For a flat resolved config (dotted keys), each :data:`LEGACY` key with the value a
    record lacking the key counts as: the legacy value where the config's own value would
    run differently, else the config's own value (the record describes this run)."""
    return {key: old if _MATTERS[key](flat) else flat.get(key, old)
            for key, old in LEGACY.items()}


def digest_view(config: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a nested resolved config) without the :data:`LEGACY` keys whose value runs
    as the legacy one did in this run (``flat``: the same config, dotted keys)."""
    out = copy.deepcopy(dict(config))
    for key in LEGACY:
        if _MATTERS[key](flat):
            continue
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def legacy_overrides(raw: Mapping[str, Any]) -> list[str]:
    """``--set`` overrides that give a run dir's ``config.toml`` (``raw``: parsed TOML),
    written before some :data:`LEGACY` key existed, that key's legacy value, so a resume of
    it computes what it started computing."""
    out = []
    for key, old in LEGACY.items():
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            out.append(f"{key}={json.dumps(old)}")
    return out
