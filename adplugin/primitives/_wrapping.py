"""NumPy semantics for the `ap.*` wrappers: dispatch, dtype promotion and broadcasting.

Primitives see operands of equal shape and dtype (like `lax`); the wrappers make them so by
inserting explicit `convert_element_type` and `broadcast_in_dim` primitives (like `jax.numpy`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
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
    graph tensors it runs directly, adding graph nodes. Complex operands are refused with an
    error naming the op (checked while tracing, so the cached dispatch pays nothing).
    """

    def decorate(fn: F) -> F:
        name = fn.__name__.lstrip("_")
        static = frozenset(static_argnames)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            refuse_complex(name, args, kwargs, static)
            return fn(*args, **kwargs)

        jitted = jax.jit(checked, static_argnames=tuple(static_argnames), inline=True)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            operands = (*args, *kwargs.values()) if kwargs else args  # ap.multiply(x=v, y=w)
            found = _symbolic_scan(operands)
            if found is not None or _scope_takes(operands):
                if found is not None and found is not _SYMBOLIC:  # shapes known only when the
                    return found(wrapper, args, kwargs)  # graph runs: record the call
                out = checked(*args, **kwargs)
                if any(out is a for a in operands) and not is_symbolic(out):
                    return _recorded_identity(out)
                return out
            if static and any(isinstance(kwargs.get(k), list) for k in static):
                kwargs = {k: tuple(v) if k in static and isinstance(v, list) else v
                          for k, v in kwargs.items()}  # static arguments must be hashable
            try:
                return jitted(*args, **kwargs)
            except TypeError as e:
                if "as an abstract array" not in str(e):
                    raise
                bad = next((a for a in args if isinstance(a, (str, bytes)) or a is None), None)
                raise type_error(name, "operand is not an array", f"{type(bad).__name__} "
                                 f"{bad!r:.60}", "a JAX/NumPy array, a Python scalar or a graph "
                                 "tensor", "convert it with jnp.asarray or ap.constant") from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _is_complex_operand(a: Any) -> bool:
    if type(a) is complex:
        return True
    dtype = getattr(a, "dtype", None)
    return isinstance(dtype, np.dtype) and not isinstance(a, type) and dtype.kind == "c"


def refuse_complex(name: str, args: Sequence[Any], kwargs: dict[str, Any],
                   static: Collection[str] = ()) -> None:
    """Raise the op's clear error when an operand (or a list operand's element) is complex:
    adplugin's primitives are real-valued, as its dtype set (bool, int, uint, float) is."""
    operands = [*args, *(v for k, v in kwargs.items() if k not in static)]
    flat = [x for a in operands for x in (a if isinstance(a, (list, tuple)) else (a,))]
    if any(_is_complex_operand(a) for a in flat):
        raise complex_error(name, flat)


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


def _recorded_identity(x: Any) -> Any:
    """An op that is an identity here (a reshape to the same shape, a transpose of a scalar)
    returned its plain operand. Where a tape records ops on that array, return a recorded
    value for it instead, as TensorFlow returns a new tensor: a Python operator applied to
    the result then stays on the tape (on the array itself it would be JAX's, unrecorded)."""
    scope = _context.effective()
    if scope is None or scope.recording is None or not _scope_takes([x]):
        return x
    return get_primitive("reshape").bind(x, new_sizes=tuple(np.shape(x)))


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


# Python scalars are weakly typed (they take the other operand's precision); NumPy scalars
# (np.float64(2.0), np.int64(1)) are not, though np.float64 subclasses float: JAX's rule.
PYTHON_SCALARS = (int, float, complex)


def is_python_scalar(x: Any) -> bool:
    """Whether `x` is a Python int, float or complex (not bool, not a NumPy scalar)."""
    return type(x) in PYTHON_SCALARS


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
    dtype, weak = jx.result_type(*(_promotion_stand_in(a) for a in args))
    if jx.kind_of(dtype) == "c":
        raise complex_error(name, args)
    return dtype, weak


def complex_error(name: str, args: Sequence[Any]) -> Exception:
    given = ", ".join(type(a).__name__ if is_python_scalar(a) else
                      dtype_of(a).name if hasattr(a, "dtype") else type(a).__name__
                      for a in args)
    return type_error(name, "complex operands are not supported (adplugin's ops are "
                      "real-valued)", given, "boolean, integer or floating-point operands",
                      "work on the real and imaginary parts as separate real arrays, or use "
                      "jax.numpy for complex arithmetic")


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
    """Whether the operands already share one shape and dtype (nothing to insert; complex
    operands take the slow path, which refuses them clearly)."""
    first = args[0]
    dtype, shape = getattr(first, "dtype", None), getattr(first, "shape", None)
    if dtype is None or shape is None or jx.kind_of(dtype) not in ("f" if to_inexact else "fiub"):
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
        if type(a) is int or type(a) is float:  # weak; NumPy scalars are not (JAX's rule)
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
# Placeholder shapes and dtypes
# ----------------------------------------------------------------------------------------------

PartialShape = tuple[int | None, ...] | None


def placeholder_type(shape: Any, dtype: Any) -> tuple[PartialShape, np.dtype]:
    """A placeholder's shape and dtype, checked. Each dimension is a non-negative int, or None
    for one known only when the graph runs; -1 means None too, as in TensorFlow
    (`tf.placeholder(tf.float32, [-1, 784])`). shape=None: even the rank is unknown."""
    fix = "pass a tuple of non-negative ints, with None (or -1) for a dimension known at run time"
    if shape is None:
        return None, placeholder_dtype(dtype)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise type_error("placeholder", "the shape is not a sequence", repr(shape)[:60],
                         "a tuple such as (None, 3)", fix + f" (e.g. ({shape!r:.20},))")
    dims: list[int | None] = []
    for d in shape:
        if d is None:
            dims.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= -1:
            dims.append(None if d == -1 else int(d))
        else:
            raise type_error("placeholder", "a dimension is not a size",
                             f"shape {tuple(shape)!r:.60} with dimension {d!r:.20}",
                             "non-negative ints, None or -1 (unknown)", fix)
    return tuple(dims), placeholder_dtype(dtype)


def placeholder_dtype(dtype: Any) -> np.dtype:
    try:
        d = jx.canonical_dtype(dtype)
    except TypeError:
        raise type_error("placeholder", "not a dtype", repr(dtype)[:60], "a NumPy/JAX dtype",
                         "pass a dtype such as np.float32 or 'int32'") from None
    if jx.kind_of(d) not in "biuf":
        raise type_error("placeholder", "unsupported dtype", d.name,
                         "a boolean, integer or floating-point dtype",
                         "adplugin's ops are real-valued: pick bool, an int or a float dtype")
    return d


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
