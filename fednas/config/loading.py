"""Loading a scenario: TOML file + ``--set`` overrides → a validated :class:`RunConfig`.

``runtime.plugins`` are imported before the checks (:mod:`fednas.plugins`), so names they
register (spaces, datasets, strategies, phases) are valid values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fednas.config.preflight import read_scenario
from fednas.config.run_config import RunConfig
from fednas.config.tools import apply_override, from_dict, parse_override
from fednas.errors import ConfigError
from fednas.plugins import import_plugins
from fednas.plugins import resolve as resolve_plugin


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                ) -> RunConfig:
    """Load a scenario TOML file (or the defaults when ``path`` is None) plus overrides.

    ``runtime.plugins`` are imported first (:mod:`fednas.plugins`): a relative ``.py`` path
    is relative to the scenario file when the file names it, to the working directory when
    an override does.

    Raises
    ------
    ConfigError
        For a missing, unreadable (a directory, not UTF-8) or unparsable file, an unknown
        key, a wrong type or a bad value (NaN, or inf where the key does not allow it).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(read_scenario(path))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        plugins = data.get("runtime", {}).get("plugins") if isinstance(
            data.get("runtime"), dict) else None
        if isinstance(plugins, list):  # a scenario's plugin files: relative to the scenario
            data["runtime"]["plugins"] = [
                str(path.parent / p) if isinstance(p, str) and p.endswith(".py")
                and not Path(p).expanduser().is_absolute() else p for p in plugins]
    for text in overrides:
        key, value = parse_override(text)
        apply_override(data, key, value)
    runtime = data.get("runtime")
    plugins = runtime.get("plugins") if isinstance(runtime, dict) else None
    if plugins is not None:  # imported first: they register names the checks below accept
        if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
            raise ConfigError(f"runtime.plugins: a list of .py files or module names, not "
                              f"{plugins!r}")
        runtime["plugins"] = [resolve_plugin(p) for p in plugins]
        import_plugins(runtime["plugins"])
    return from_dict(RunConfig, data)
