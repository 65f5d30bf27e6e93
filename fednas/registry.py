"""Registries by name (timm's pattern): this module imports no concrete entry.

Each kind of extensible thing (search spaces, datasets, strategies, phases) has one
:class:`Registry`. Entries register themselves where they are defined, with the registry's
:meth:`Registry.register` decorator; a package's ``__init__`` imports its built-in entries, and
a user registers their own from outside fednas the same way. Looking up an unknown name
raises :class:`fednas.errors.ConfigError` naming the config key and the registered names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fednas.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → entry, filled by :meth:`register`.

    Parameters
    ----------
    kind
        What the entries are, for messages (``"search space"``).
    key
        The config key that names an entry (``"space.name"``), for messages.
    ordered
        :meth:`names` in registration order instead of sorted (phases run in that order).
    """

    def __init__(self, kind: str, key: str, *, ordered: bool = False) -> None:
        self.kind = kind
        self.key = key
        self.ordered = ordered
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding its argument under ``name``.

        A name registers once; registering the same definition again (the same class or
        function of the same source file, e.g. a script run as ``__main__`` that a scenario
        also loads as a plugin) replaces the entry.
        """
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} names are non-empty strings, not {name!r}")

        def add(entry: T) -> T:
            if name in self._entries and not same_definition(self._entries[name], entry):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and notebooks that re-register an entry)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry ``name``; :class:`ConfigError` naming :attr:`key` when unknown."""
        if name not in self._entries:
            raise ConfigError(f"{self.key}: unknown {self.kind} {name!r}; allowed: "
                              f"{self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        """The registered names, sorted (or in registration order when ``ordered``)."""
        return list(self._entries) if self.ordered else sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def same_definition(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are one definition: equal, or the same qualified name in the
    same source file (one module imported under two names)."""
    if a is b or (isinstance(a, str) and a == b):
        return True
    try:
        return (inspect.getfile(a) == inspect.getfile(b)  # type: ignore[arg-type]
                and a.__qualname__ == b.__qualname__)  # type: ignore[attr-defined]
    except (TypeError, AttributeError, OSError):
        return False
