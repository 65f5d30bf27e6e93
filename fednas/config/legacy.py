"""Config keys added after run records were made, and the value those records ran with.

A new key changes every resolved config, so without this module it would change every
sweep's digest (and orphan the kept benchmark records) and look like a changed key to a
resume. :data:`LEGACY` lists each key added since, with the value that reproduces the runs made
before it: the same as its default for most (``search.arch-lr-schedule``), another for those
whose default changed the numbers (``retrain.protocol``). :func:`legacy_values` says which
value a record lacking the key counts as (the legacy one only where the config's present
value would run differently), and :func:`digest_view` leaves a key out of a sweep's digest
where it changes nothing, so earlier records are reused exactly when they still hold. A key
added from now on belongs here too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from fednas.training.protocol import LEGACY_PROTOCOL, protocol_matters

#: dotted key -> the value every run made before the key existed behaved as
LEGACY: dict[str, Any] = {"retrain.protocol": LEGACY_PROTOCOL,
                          "meta.atnas.fitness": "accuracy", "meta.atnas.init": "search",
                          "search.arch-lr-schedule": "constant", "search.arch-lr-min": 0.0}


def _protocol_matters(flat: Mapping[str, Any]) -> bool:
    federated = flat.get("mode", "federated") == "federated"
    search = flat.get("federation.rounds" if federated else "search.epochs", 0)
    train = flat.get("federation.subnet-rounds" if federated else "retrain.epochs", 0)
    phases = list(flat.get("phases", []))
    return protocol_matters(
        flat.get("retrain.protocol", LEGACY_PROTOCOL), phases,
        search_units=search * ("search" in phases), train_units=train,
        inherit_weights=bool(flat.get("retrain.inherit-weights", True)),
        resized=flat.get("space.name", "cell") == "cell" and bool(
            flat.get("retrain.channels") or flat.get("retrain.layers")))


def _atnas_matters(key: str):
    def matters(flat: Mapping[str, Any]) -> bool:
        return ("meta" in list(flat.get("phases", [])) and bool(flat.get("meta.atnas.enabled"))
                and flat.get(key, LEGACY[key]) != LEGACY[key])
    return matters


def _differs(key: str):
    def matters(flat: Mapping[str, Any]) -> bool:  # a key added with its legacy default
        return flat.get(key, LEGACY[key]) != LEGACY[key]
    return matters


#: dotted key -> whether the flat config's value of it runs differently from the legacy one
_MATTERS = {"retrain.protocol": _protocol_matters,
            "meta.atnas.fitness": _atnas_matters("meta.atnas.fitness"),
            "meta.atnas.init": _atnas_matters("meta.atnas.init"),
            "search.arch-lr-schedule": _differs("search.arch-lr-schedule"),
            "search.arch-lr-min": _differs("search.arch-lr-min")}


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
