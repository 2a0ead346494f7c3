"""NumPy semantics for the `ap.*` wrappers: dispatch, dtype promotion and broadcasting.

Primitives see operands of equal shape and dtype (like `lax`); the wrappers make them so by
inserting explicit `convert_element_type` and `broadcast_in_dim` primitives (like `jax.numpy`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._errors import axis_error, shape_error, type_error
from adplugin._primitive import get_primitive, is_symbolic, scope_taker

F = TypeVar("F", bound=Callable[..., Any])


def op(*, static_argnames: Sequence[str] = ()) -> Callable[[F], F]:
    """Turn a wrapper into a public op.

    On JAX values the wrapper runs as one inlined `jax.jit` (so eager use costs a single
    cached dispatch, as `jax.numpy` does, and traced use inlines the primitives). On symbolic
    graph tensors it runs directly, adding graph nodes.
    """

    def decorate(fn: F) -> F:
        jitted = jax.jit(fn, static_argnames=tuple(static_argnames), inline=True)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            operands = (*args, *kwargs.values()) if kwargs else args  # ap.multiply(x=v, y=w)
            found = _symbolic_scan(operands)
            if found is not None or _scope_takes(operands):
                if found is not None and found is not _SYMBOLIC:  # shapes known only when the
                    return found(wrapper, args, kwargs)  # graph runs: record the call
                return fn(*args, **kwargs)
            try:
                return jitted(*args, **kwargs)
            except TypeError as e:
                if "as an abstract array" not in str(e):
                    raise
                name = fn.__name__.lstrip("_")
                bad = next((a for a in args if isinstance(a, (str, bytes)) or a is None), None)
                raise type_error(name, "operand is not an array", f"{type(bad).__name__} "
                                 f"{bad!r:.60}", "a JAX/NumPy array, a Python scalar or a graph "
                                 "tensor", "convert it with jnp.asarray or ap.constant") from None

        return wrapper  # type: ignore[return-value]

    return decorate


# Wrapper-level handlers of deferred types (values whose shapes are known only when a graph
# runs, so promotion and broadcasting wait): filled once at import, type -> handler(wrapper,
# args, kwargs). Nothing on the dispatch path mutates it.
DeferredHandler = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
_deferred_types: dict[type, DeferredHandler] = {}


def register_deferred_type(cls: type, handler: Callable[..., Any]) -> None:
    """Make the `ap.*` wrappers call `handler(wrapper, args, kwargs)` when an argument (or an
    element of a list argument) is a `cls`, instead of promoting and binding primitives."""
    _deferred_types[cls] = handler


_SYMBOLIC = object()  # _symbolic_scan's answer for symbolic operands without deferred ones


def _symbolic_scan(args: Sequence[Any]) -> Any:
    """One pass over the operands (and list operands' elements): the deferred-type handler if
    one is there, else `_SYMBOLIC` if a symbolic value is, else None."""
    found = None
    for a in args:
        if isinstance(a, (list, tuple)):
            inner = _symbolic_scan(a)
            if inner is not None and inner is not _SYMBOLIC:
                return inner
            found = found or inner
            continue
        h = _deferred_types.get(type(a))
        if h is not None:
            return h
        if found is None and is_symbolic(a):
            found = _SYMBOLIC
    return found


def _scope_takes(args: Sequence[Any]) -> bool:
    """Whether the dispatch context takes ops on these plain arguments (a graph being built,
    a recording watching one of them): then the wrapper runs op by op, not as one jit."""
    scope = _context.effective()
    if scope is None:
        return False
    flat = [x for a in args for x in (a if isinstance(a, (list, tuple)) else (a,))]
    return scope_taker(scope, flat) is not None


# ----------------------------------------------------------------------------------------------
# Types of operands
# ----------------------------------------------------------------------------------------------

def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def dtype_of(x: Any) -> np.dtype:
    if hasattr(x, "dtype"):
        return np.dtype(x.dtype)
    return jx.result_type(x)[0]


def is_weak(x: Any) -> bool:
    if is_symbolic(x):
        return bool(x.weak_type)
    return jx.is_weakly_typed(x)


def _promotion_stand_in(x: Any) -> Any:
    """What JAX's promotion sees for `x` (symbolic tensors become scalars of their kind)."""
    if not is_symbolic(x):
        return x
    if x.weak_type:
        kind = jx.kind_of(x.dtype)
        return {"b": False, "i": 0, "u": 0, "f": 0.0, "c": 0j}[kind]
    return np.zeros((), x.dtype)


def check_array_like(name: str, *args: Any) -> None:
    for a in args:
        if isinstance(a, (str, bytes)) or a is None or (
                not hasattr(a, "dtype") and not isinstance(a, (bool, int, float, complex))):
            raise type_error(name, "operand is not an array", f"{type(a).__name__} {a!r:.60}",
                             "a JAX/NumPy array, a Python scalar or a graph tensor",
                             "convert it with jnp.asarray or ap.constant")


def result_dtype(name: str, *args: Any) -> tuple[np.dtype, bool]:
    check_array_like(name, *args)
    return jx.result_type(*(_promotion_stand_in(a) for a in args))


def convert(x: Any, dtype: np.dtype, weak_type: bool = False) -> Any:
    """`x` as `dtype` (a Python scalar becomes a NumPy scalar, a constant wherever it goes;
    arrays get a convert primitive)."""
    if isinstance(x, (bool, int, float, complex)):
        return np.asarray(x, dtype)[()]
    if dtype_of(x) == dtype:
        return x
    return get_primitive("convert_element_type").bind(x, new_dtype=np.dtype(dtype),
                                                      weak_type=weak_type)


def broadcast_to_shape(x: Any, shape: tuple[int, ...]) -> Any:
    """NumPy broadcasting of `x` to `shape` (rank-extended on the left) with broadcast_in_dim."""
    xshape = shape_of(x)
    if xshape == shape:
        return x
    dims = tuple(range(len(shape) - len(xshape), len(shape)))
    return get_primitive("broadcast_in_dim").bind(x, shape=shape, broadcast_dimensions=dims)


def broadcast_shapes(name: str, *args: Any) -> tuple[int, ...]:
    shapes = [shape_of(a) for a in args]
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise shape_error(name, "operand shapes do not broadcast", " and ".join(map(str, shapes)),
                          "shapes equal or 1 in each dimension, aligned from the right",
                          "reshape or expand_dims an operand so the shapes line up") from None


def promote(name: str, *args: Any, to_inexact: bool = False) -> list[Any]:
    """Operands converted to their common dtype and broadcast to their common shape."""
    if _uniform(args, to_inexact):
        return list(args)
    dtype, weak = _quick_dtype(args, to_inexact) or result_dtype(name, *args)
    if to_inexact and jx.kind_of(dtype) not in "fc":
        dtype, weak = jx.to_inexact(dtype), weak and jx.kind_of(dtype) != "b"
    shape = broadcast_shapes(name, *args)
    return [broadcast_to_shape(convert(a, dtype, weak), shape) for a in args]


def _uniform(args: Sequence[Any], to_inexact: bool) -> bool:
    """Whether the operands already share one shape and dtype (nothing to insert)."""
    first = args[0]
    dtype, shape = getattr(first, "dtype", None), getattr(first, "shape", None)
    if dtype is None or shape is None or (to_inexact and jx.kind_of(dtype) not in "fc"):
        return False
    for a in args[1:]:
        if getattr(a, "dtype", None) != dtype or getattr(a, "shape", None) != shape:
            return False
    return True


def _quick_dtype(args: Sequence[Any], to_inexact: bool) -> tuple[np.dtype, bool] | None:
    """The result dtype without JAX's promotion lattice in the common cases: operands of one
    floating dtype, possibly with Python int/float scalars (which are weak)."""
    dtype = None
    for a in args:
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            continue
        d = getattr(a, "dtype", None)
        if d is None or getattr(a, "weak_type", False) or (dtype is not None and d != dtype):
            return None
        dtype = d
    if dtype is None or jx.kind_of(dtype) != "f":
        return None
    return np.dtype(dtype), False


def promote_dtypes(name: str, arrays: Sequence[Any]) -> list[Any]:
    """Operands converted to their common dtype (shapes left alone)."""
    dtype, weak = result_dtype(name, *arrays)
    return [convert(a, dtype, weak) for a in arrays]


def promote_inexact(name: str, x: Any) -> Any:
    return promote(name, x, to_inexact=True)[0]


# ----------------------------------------------------------------------------------------------
# Axes
# ----------------------------------------------------------------------------------------------

def canonical_axes(name: str, axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Normalized, sorted axes; None means all."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise axis_error(name, axis, ndim)
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise axis_error(name, axis, ndim)
    return tuple(sorted(out))


def canonical_axis(name: str, axis: int, ndim: int) -> int:
    (a,) = canonical_axes(name, axis, ndim) if isinstance(axis, (int, np.integer)) else (None,)
    if a is None:
        raise axis_error(name, axis, ndim)
    return a
