"""Which mesh axes a collective's device groups span.

The device ids in a collective's replica groups are positions in the program's device
assignment (logical id i runs on the i-th device). Placed on a mesh, a group of devices that
differ only along some axes "spans" those axes: on a (2, 4) mesh named ('x', 'y'), the groups
{0,1,2,3},{4,5,6,7} span 'y'. Groups may also span part of an axis, a sub-axis written as XLA
and Shardy write it, `y:(pre)size`: axis y viewed as [pre, size, rest] (major to minor), the
middle factor. Every answer is checked by rebuilding the groups from it; groups that no set of
(sub-)axes rebuilds have no axes (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adplugin.sharding.hlo import Groups, groups_over_axes


@dataclass(frozen=True)
class MeshLayout:
    """A mesh's axis names and sizes, and each logical device id's flat position in it."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    position: tuple[int, ...]

    @property
    def axes(self) -> dict[str, int]:
        return dict(zip(self.names, self.sizes))

    def _coords(self, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        return np.unravel_index(np.asarray(self.position)[ids], self.sizes)

    def axes_of_groups(self, groups: Groups) -> tuple[str, ...] | None:
        """The (sub-)axes the groups span, the major one first; () for groups of one device;
        None when they span no set of axes."""
        if not groups or len({len(g) for g in groups}) != 1:
            return None
        if len(groups[0]) == 1:
            return ()
        ids = np.array(groups)
        if ids.min() < 0 or ids.max() >= len(self.position):
            return None
        coords = self._coords(ids)                  # per axis: (groups, members)
        grouped: list[tuple[int, int | None, int | None]] = []
        first_change: list[int] = []
        for a, c in enumerate(coords):
            if (c == c[:, :1]).all():
                continue                            # constant within every group
            v = np.unique(c[0])
            n = self.sizes[a]
            if len(v) == n:
                grouped.append((a, None, None))
            else:                                   # a sub-axis: members `stride` apart
                stride, k = (int(v[1] - v[0]) if len(v) > 1 else 1), len(v)
                if n % (stride * k):
                    return None
                grouped.append((a, n // (stride * k), k))
            first_change.append(int(np.argmax(c[0] != c[0][0])))
        # the axis that changes first along a group is the minor one
        order = sorted(range(len(grouped)), key=lambda i: -first_change[i])
        grouped = [grouped[i] for i in order]
        flat = np.arange(math.prod(self.sizes)).reshape(self.sizes)
        rebuilt = groups_over_axes(flat, grouped)
        actual = [tuple(int(p) for p in row) for row in np.asarray(self.position)[ids]]
        if {tuple(g) for g in rebuilt} != set(actual) and \
                {frozenset(g) for g in rebuilt} != {frozenset(g) for g in actual}:
            return None                             # same sets of devices, in any order
        return tuple(self.names[a] if pre is None else f"{self.names[a]}:({pre}){size}"
                     for a, pre, size in grouped)

    def axes_of_pairs(self, pairs: tuple[tuple[int, int], ...]) -> tuple[str, ...] | None:
        """The axes along which a collective-permute's sources and targets differ."""
        if not pairs:
            return ()
        ids = np.array(pairs)
        if ids.min() < 0 or ids.max() >= len(self.position):
            return None
        src, dst = self._coords(ids[:, 0]), self._coords(ids[:, 1])
        return tuple(n for n, s, d in zip(self.names, src, dst) if (s != d).any())
