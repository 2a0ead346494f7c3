"""Neural-network functions as in `jax.nn`: relu, softmax, log_softmax, one_hot.

Each is a composition of primitives that computes what `jax.nn` computes and differentiates
as jax.grad does: relu has derivative 0 at 0 (jax.nn.relu's custom rule); softmax and
log_softmax subtract the maximum (held constant) before exponentiating, so large entries do
not overflow and the derivative is softmax's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import type_error
from adplugin.primitives._rules import bind, full, zeros_like
from adplugin.primitives._wrapping import (
    canonical_axes,
    canonical_axis,
    check_array_like,
    dtype_of,
    op,
    promote,
    promote_inexact,
    shape_of,
)

Axis = int | Sequence[int] | None


@op()
def relu(x: Any) -> Any:
    """max(x, 0), with derivative 1 where x > 0 and 0 elsewhere, 0 included (jax.nn.relu)."""
    (x,) = promote("relu", x)
    # the value is max(x, 0) (NaN stays NaN); only the x > 0 branch carries a derivative
    rest = bind("stop_gradient", bind("max", x, zeros_like(x)))
    return bind("select", bind("gt", x, zeros_like(x)), x, rest)


def _axes(name: str, axis: Axis, ndim: int) -> tuple[int, ...]:
    if axis is not None and not isinstance(axis, (int, np.integer, tuple, list)):
        raise type_error(name, "axis is not an int, a tuple of ints or None", repr(axis)[:40],
                         "an int, a tuple of ints or None", "pass e.g. axis=-1")
    return canonical_axes(name, axis, ndim)


def _shifted(name: str, x: Any, axis: Any) -> tuple[Any, tuple[int, ...]]:
    """x - max(x) over the axes, the maximum held constant (as jax.nn: stop_gradient)."""
    x = promote_inexact(name, x)
    shape = shape_of(x)
    axes = _axes(name, axis, len(shape))
    kept = tuple(i for i in range(len(shape)) if i not in axes)
    amax = bind("stop_gradient", bind("reduce_max", x, axes=axes))
    return bind("sub", x, bind("broadcast_in_dim", amax, shape=shape,
                               broadcast_dimensions=kept)), axes


def _sum_back(v: Any, axes: tuple[int, ...]) -> Any:
    """sum(v) over `axes`, broadcast back to v's shape (keepdims)."""
    shape = shape_of(v)
    kept = tuple(i for i in range(len(shape)) if i not in axes)
    return bind("broadcast_in_dim", bind("reduce_sum", v, axes=axes), shape=shape,
                broadcast_dimensions=kept)


def softmax(x: Any, axis: Axis = -1) -> Any:
    """exp(x) / sum(exp(x)) over `axis`, computed as jax.nn.softmax (max subtracted first)."""
    return _softmax(x, axis=_static(axis))


def log_softmax(x: Any, axis: Axis = -1) -> Any:
    """x - logsumexp(x) over `axis`, computed as jax.nn.log_softmax (max subtracted first)."""
    return _log_softmax(x, axis=_static(axis))


def _static(axis: Axis) -> Any:
    return tuple(axis) if isinstance(axis, list) else axis


@op(static_argnames=("axis",))
def _softmax(x: Any, *, axis: Any) -> Any:
    check_array_like("softmax", x)
    shifted, axes = _shifted("softmax", x, axis)
    unnormalized = bind("exp", shifted)
    return bind("div", unnormalized, _sum_back(unnormalized, axes))


@op(static_argnames=("axis",))
def _log_softmax(x: Any, *, axis: Any) -> Any:
    check_array_like("log_softmax", x)
    shifted, axes = _shifted("log_softmax", x, axis)
    return bind("sub", shifted, bind("log", _sum_back(bind("exp", shifted), axes)))


def one_hot(x: Any, num_classes: int, dtype: Any = None, axis: int = -1) -> Any:
    """1 where the new axis' position equals x's entry, else 0, as jax.nn.one_hot (entries
    outside [0, num_classes) give rows of zeros); dtype: the default float unless given."""
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes,
                                                                  (int, np.integer)) \
            or num_classes < 0:
        raise type_error("one_hot", "num_classes is not a non-negative int",
                         repr(num_classes)[:40], "an int >= 0", "pass the number of classes")
    try:
        out_dtype = jx.canonical_dtype(np.float64 if dtype is None else dtype)
    except TypeError:
        raise type_error("one_hot", "not a dtype", repr(dtype)[:40], "a NumPy dtype",
                         "pass e.g. jnp.float32") from None
    return _one_hot(x, num_classes=int(num_classes), dtype=out_dtype, axis=int(axis))


@op(static_argnames=("num_classes", "dtype", "axis"))
def _one_hot(x: Any, *, num_classes: int, dtype: np.dtype, axis: int) -> Any:
    check_array_like("one_hot", x)
    (x,) = promote("one_hot", x)
    shape = shape_of(x)
    at = canonical_axis("one_hot", axis, len(shape) + 1)
    out_shape = (*shape[:at], num_classes, *shape[at:])
    rest = tuple(i for i in range(len(out_shape)) if i != at)
    xs = bind("broadcast_in_dim", x, shape=out_shape, broadcast_dimensions=rest)
    classes = bind("broadcast_in_dim", np.arange(num_classes, dtype=dtype_of(x)),
                   shape=out_shape, broadcast_dimensions=(at,))
    hit = bind("eq", xs, classes)
    return bind("select", hit, full(out_shape, 1, dtype), full(out_shape, 0, dtype))
