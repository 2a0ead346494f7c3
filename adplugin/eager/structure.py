"""Interned structure prefixes: O(1) cache keys for what a recording has recorded so far.

A recording's structure is the sequence of its entries (each op with its params and inputs'
positions, each leaf's type, each constant's value, each tape event). Equal sequences must map
to one key, and the key of a sequence one entry longer must cost O(1) to find. So sequences
are interned as paths in a trie: `prefix.extend(entry)` returns the child for that entry, the
same object for the same path. A prefix object *is* the key: equal structures share it, and
different structures cannot collide.

The trie holds its children weakly: a prefix lives while a recording or a cached program
refers to it (each prefix keeps its parent), so the trie is bounded by what is in use.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from typing import Any

import numpy as np


class Prefix:
    """One interned structure sequence (a trie node)."""

    __slots__ = ("parent", "depth", "_children", "__weakref__")

    def __init__(self, parent: Prefix | None):
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self._children: weakref.WeakValueDictionary[Any, Prefix] = weakref.WeakValueDictionary()

    def extend(self, entry: Any) -> Prefix:
        """The prefix of this sequence followed by `entry` (hashable)."""
        child = self._children.get(entry)
        if child is None:
            with _lock:
                child = self._children.get(entry)
                if child is None:
                    child = Prefix(self)
                    self._children[entry] = child
        return child

    def __repr__(self) -> str:
        return f"<structure prefix of {self.depth} entries>"


_lock = threading.Lock()
ROOT = Prefix(None)

_SMALL_CONSTANT = 64  # constants up to this many bytes key by their bytes, larger by a digest


def constant_entry(value: np.ndarray, weak: bool) -> Any:
    """The structure entry of a constant: its type and its exact value."""
    data = value.tobytes()
    if len(data) > _SMALL_CONSTANT:
        data = hashlib.blake2b(data, digest_size=20).digest()
    return ("const", value.dtype.str, value.shape, weak, data)


def freeze(value: Any) -> Any:
    """A hashable form of a param value (lists become tuples, arrays their bytes); raises
    TypeError for values that cannot be keyed."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return constant_entry(value, False)
    hash(value)
    return value


class Unkeyable:
    """An entry for params that cannot be keyed: unique, so it never matches another."""

    __slots__ = ()
