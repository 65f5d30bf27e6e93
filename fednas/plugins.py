"""User code that a scenario loads: ``runtime.plugins`` (files or modules).

A plugin registers what fednas should know by name (a search space, a dataset, a strategy, a
phase) when it is imported. :func:`fednas.config.loading.load_config` imports the
scenario's plugins before it checks the scenario (so ``space.name`` may name a space a plugin
registers), and every client imports them again in its own process (Ray workers), so a
plugin must be importable there: a ``.py`` file is imported from its absolute path (made
absolute when the scenario is loaded), a dotted module name through ``sys.path``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from fednas.errors import ConfigError


def resolve(spec: str) -> str:
    """A ``.py`` path made absolute (relative to the working directory); modules unchanged."""
    if spec.endswith(".py"):
        return str(Path(spec).expanduser().resolve())
    return spec


def module_name(path: Path) -> str:
    """The name a plugin file is imported under (stable per absolute path)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"fednas_plugin_{path.stem}_{digest}"


def import_plugins(specs: Iterable[str]) -> None:
    """Import every plugin of ``specs`` once per process; a failure is a
    :class:`ConfigError` naming ``runtime.plugins`` and the plugin."""
    for spec in specs:
        if not spec.endswith(".py"):
            try:
                importlib.import_module(spec)
            except Exception as exc:  # noqa: BLE001 - any failure of user code, named
                raise ConfigError(f"runtime.plugins: cannot import module {spec!r}: "
                                  f"{exc!r}") from exc
            continue
        path = Path(spec)
        name = module_name(path)
        if name in sys.modules:
            continue
        if not path.is_file():
            raise ConfigError(f"runtime.plugins: no such file {spec!r}")
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of user code, named
            del sys.modules[name]
            raise ConfigError(f"runtime.plugins: importing {spec!r} failed: {exc!r}") from exc
