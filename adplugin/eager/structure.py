"""Interned structure prefixes: O(1) cache keys for what a recording has recorded so far.

A recording's structure is the sequence of its entries (each op with its params and inputs'
positions, each leaf's type, each constant's value, each tape event). Equal sequences must map
to one key, and the key of a sequence one entry longer must cost O(1) to find. So sequences
are interned as paths in a trie: `prefix.extend(entry)` returns the child for that entry, the
same object for the same path. A prefix object *is* the key: equal structures share it, and
different structures cannot collide.

The trie is one bounded table of edges (see `_TRIE`), so it never grows without limit.
"""

from __future__ import annotations

import threading
from typing import Any


class Prefix:
    """One interned structure sequence (a trie node)."""

    __slots__ = ("parent", "depth")

    def __init__(self, parent: Prefix | None):
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1

    def extend(self, entry: Any) -> Prefix:
        """The prefix of this sequence followed by `entry` (hashable)."""
        key = (self, entry)
        child = _TRIE.get(key)
        if child is None:
            with _lock:
                child = _TRIE.get(key)
                if child is None:
                    if len(_TRIE) >= _MAX_PREFIXES:
                        _TRIE.clear()  # see below: keys stay exact, old ones merely miss
                    child = _TRIE[key] = Prefix(self)
        return child

    def __repr__(self) -> str:
        return f"<structure prefix of {self.depth} entries>"


# The trie's edges, (parent, entry) -> child, in one bounded table. When it is full it is
# emptied: a prefix made afterwards for a path seen before is a new object, so programs cached
# under the old one miss (never hit wrongly: one object still always means one sequence).
# One table and no weak references: a recorded op allocates one small object here.
_TRIE: dict[tuple[Prefix, Any], Prefix] = {}
_MAX_PREFIXES = 1_000_000
_lock = threading.Lock()
ROOT = Prefix(None)


class Unkeyable:
    """An entry for params that cannot be keyed: unique, so it never matches another."""

    __slots__ = ()
