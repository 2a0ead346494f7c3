"""Small helpers that JVP, transpose and batching rules share (all built on primitives)."""

from __future__ import annotations

from typing import Any

import numpy as np

from adplugin._primitive import get_primitive
from adplugin.primitives._wrapping import dtype_of, shape_of


def full(shape: tuple[int, ...], value: Any, dtype: Any) -> Any:
    """A constant array: a scalar constant broadcast with broadcast_in_dim."""
    scalar = np.asarray(value, dtype)
    if not shape:
        return scalar
    return get_primitive("broadcast_in_dim").bind(scalar, shape=tuple(shape),
                                                  broadcast_dimensions=())


def full_like(x: Any, value: Any) -> Any:
    return full(shape_of(x), value, dtype_of(x))


def zeros_like(x: Any) -> Any:
    return full_like(x, 0)


def bind(name: str, *args: Any, **params: Any) -> Any:
    return get_primitive(name).bind(*args, **params)
