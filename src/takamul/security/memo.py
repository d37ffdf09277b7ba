"""Values derived from an object, kept by the object's identity.

For objects a process keeps while they are in use (a verified token, the access context made
from it), so that what every request derives from them is made once: hashing the object
itself would cost about as much as deriving the value again. The object is held beside its
value, so its ``id`` is not reused while the entry lives; past ``kept`` entries all are
dropped and made again as they are asked for. The objects must not change once made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ByIdentity"]

K = TypeVar("K")
V = TypeVar("V")


class ByIdentity(Generic[K, V]):
    def __init__(self, make: Callable[[K], V], kept: int = 10_000) -> None:
        self._make = make
        self._kept = kept
        self._values: dict[int, tuple[K, V]] = {}

    def __call__(self, key: K) -> V:
        found = self._values.get(id(key))
        if found is not None and found[0] is key:
            return found[1]
        value = self._make(key)
        if len(self._values) >= self._kept:
            self._values.clear()
        self._values[id(key)] = (key, value)
        return value
