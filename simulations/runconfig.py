"""Scenario <-> Flower run config (``flwr run .``).

Flower run configs hold only int/float/bool/str values. fednas reads one key ``scenario``
(a TOML path, relative to the app directory or absolute) plus any dotted scenario keys as
overrides, with lists written as TOML strings::

    flwr run . --run-config 'scenario="simulations/federated_fashion.toml" federation.rounds=2'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fednas.config import RunConfig, load_config

APP_DIR = Path(__file__).resolve().parents[1]


def config_from_run_config(run_config: dict[str, Any]) -> RunConfig:
    """The RunConfig named by a Flower run config (see the module docstring)."""
    values = dict(run_config)
    scenario = values.pop("scenario", "simulations/quickstart.toml")
    path = Path(str(scenario))
    if not path.is_absolute():
        path = APP_DIR / path
    overrides = []
    for key, value in sorted(values.items()):
        if isinstance(value, str) and not value.startswith("["):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        overrides.append(f"{key}={value}")
    return load_config(path, overrides + ["mode=federated"])
