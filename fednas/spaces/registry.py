"""The search-space registry: supernet classes by name (``space.name``).

Imports no concrete space: :mod:`fednas.spaces` imports the built-in ones (``cell``,
``width``), and a user registers their own class from anywhere with :func:`register_space`
before loading a scenario that names it (``examples/custom_space.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fednas.registry import Registry

if TYPE_CHECKING:
    from fednas.spaces.base import SearchSpace

SPACES: Registry[type[SearchSpace]] = Registry("search space", "space.name")


def register_space(name: str) -> Callable[[type[SearchSpace]], type[SearchSpace]]:
    """Class decorator adding a :class:`~fednas.spaces.base.SearchSpace` subclass under
    ``name`` (also its ``space_name``, which genotypes of the space carry)."""

    def wrap(cls: type[SearchSpace]) -> type[SearchSpace]:
        SPACES.register(name)(cls)
        cls.space_name = name
        return cls

    return wrap


def build_space(name: str, *, input_shape: tuple[int, int, int], num_classes: int,
                **options: Any) -> SearchSpace:
    """Instantiate the registered search space ``name``.

    Parameters
    ----------
    name
        Registered space name (see :data:`SPACES`).
    input_shape
        ``(C, H, W)`` of one input image.
    num_classes
        Number of output logits.
    **options
        Space-specific options (snake_case), e.g. ``channels=8`` for the cell space.
    """
    return SPACES.get(name)(input_shape=input_shape, num_classes=num_classes, **options)


def available_spaces() -> list[str]:
    """Names of the registered search spaces."""
    return SPACES.names()
