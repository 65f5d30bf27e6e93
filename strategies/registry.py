"""The strategy registry: server strategies by name (``federation.strategy``).

Imports no strategy: :mod:`strategies.fednas` registers ``fednas`` where it is defined, and
user code (a ``runtime.plugins`` file) registers its own subclass the same way, e.g. one that
overrides :meth:`strategies.fednas.FedNAS.average` (``examples/custom_space.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fednas.registry import Registry

STRATEGIES: Registry[type[Any]] = Registry("strategy", "federation.strategy")


def register_strategy(name: str) -> Callable[[type[Any]], type[Any]]:
    """Class decorator: register a :class:`strategies.fednas.FedNAS` subclass as ``name``."""
    return STRATEGIES.register(name)


def strategy_class(name: str) -> type[Any]:
    """The strategy class registered as ``name``; :class:`fednas.errors.ConfigError` naming
    ``federation.strategy`` when unknown. (``fednas`` is registered once
    :mod:`strategies.fednas` is imported, as every caller does.)"""
    return STRATEGIES.get(name)
