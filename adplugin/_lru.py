"""A small thread-safe LRU cache: every cache adplugin keeps is bounded and keyed by all that
its value depends on."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """At most `maxsize` entries; the least recently used one goes first."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def get_or_build(self, key: Hashable, build: Callable[[], V]) -> V:
        """The cached value, or `build()`'s (built outside the lock; a racing build of the
        same key keeps the first value stored)."""
        hit = self.get(key)
        if hit is not None:
            return hit
        value = build()
        with self._lock:
            stored = self._data.setdefault(key, value)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
            return stored

    def values(self) -> list[V]:
        """The cached values, least recently used first."""
        with self._lock:
            return list(self._data.values())

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first (a copy: safe while others insert)."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
