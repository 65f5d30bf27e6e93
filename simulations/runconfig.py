"""Scenario <-> Flower run config (``flwr run .``).

Flower run configs hold only int/float/bool/str values, and ``flwr run`` accepts only the
keys declared in ``[tool.flwr.app.config]`` of ``pyproject.toml``. fednas declares one key
``scenario`` (a TOML path) plus every dotted scenario key, each defaulting to ``""``,
which means "keep the scenario file's value". Lists are written as TOML strings::

    flwr run . --run-config 'scenario="simulations/federated_fashion.toml" federation.rounds=2'
    flwr run . --run-config "phases=\"['search', 'retrain']\""

Under ``flwr run`` this module is imported from the installed copy of the app (the FAB,
unpacked under ``$FLWR_HOME/apps/fednas.fednas.<version>.<hash>/``), not from the
checkout. The FAB holds every non-ignored ``*.toml`` of the checkout, so a relative
``scenario`` is looked up in the app directory first, then in the working directory of the
process (which, for ``flwr run``, is the directory the local SuperLink was started from).
Relative ``runtime.out-dir`` (default ``runs``) likewise resolves against that working
directory; pass an absolute path to pin the run directory. See ``docs/flwr_run.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fednas.config.loading import load_config
from fednas.config.run_config import RunConfig
from fednas.errors import ConfigError

APP_DIR = Path(__file__).resolve().parents[1]

#: Run-config value meaning "not set: keep the scenario's value" (pyproject defaults).
UNSET = ""


def resolve_scenario(scenario: str) -> Path:
    """The scenario file named by the run config's ``scenario`` value.

    Relative paths are tried against :data:`APP_DIR` (the checkout, or the installed FAB
    under ``flwr run``) and then the current working directory.
    """
    path = Path(scenario).expanduser()
    if path.is_absolute():
        return path
    candidates = [APP_DIR / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"scenario file not found: {scenario!r} (looked in "
                      + ", ".join(str(c.parent) for c in candidates)
                      + "); under `flwr run` a relative path must name a *.toml file inside "
                        "the app (not git-ignored), otherwise pass an absolute path")


def config_from_run_config(run_config: dict[str, Any]) -> RunConfig:
    """The RunConfig named by a Flower run config (see the module docstring)."""
    values = dict(run_config)
    scenario = values.pop("scenario", UNSET) or "simulations/federated_fashion.toml"
    path = resolve_scenario(str(scenario))
    overrides = []
    for key, value in sorted(values.items()):
        if isinstance(value, str) and value == UNSET:
            continue  # declared in pyproject.toml but not overridden
        if isinstance(value, str) and not value.startswith("["):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        overrides.append(f"{key}={value}")
    return load_config(path, overrides + ["mode=federated"])
