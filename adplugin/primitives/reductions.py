"""Reductions: reduce_sum (linear), reduce_max/min, reduce_prod; NumPy-style sum, mean, max,
min, prod, var, std and logsumexp.

Each primitive reduces its operand over a sorted tuple of `axes` with a StableHLO `reduce`
whose region holds the scalar combiner. The wrappers at the bottom do what `jax.numpy` does:
integer promotion for sums, float16/bfloat16 summed in float32, `keepdims` by a reshape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax import dtypes as jax_dtypes

from adplugin import _jax_adapter as jx
from adplugin._errors import shape_error, type_error
from adplugin._primitive import (
    NOT_LINEAR,
    Linear,
    ShapeDtype,
    Spec,
    define_primitive,
)
from adplugin.primitives._rules import bind, full
from adplugin.primitives._wrapping import (
    canonical_axes,
    check_array_like,
    dtype_of,
    is_weak,
    op,
    shape_of,
)

hlo = jx.hlo

Axis = int | Sequence[int] | None


def _is_float(dtype: Any) -> bool:
    return bool(jax_dtypes.issubdtype(np.dtype(dtype), np.inexact))


def _kept(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i not in axes)


# --- shared rules ------------------------------------------------------------------------------

def _reduce_eval(name: str, kinds: str) -> Callable[..., ShapeDtype]:
    def rule(x: Any, *, axes: tuple[int, ...]) -> ShapeDtype:
        dtype = np.dtype(x.dtype)
        kind = "f" if _is_float(dtype) else jx.kind_of(dtype)
        if kind not in kinds:
            expected = ("a boolean, " if "b" in kinds else "an ") + "integer or float operand"
            raise type_error(name, "unsupported dtype", dtype.name, expected,
                             "convert with ap.astype, or call the NumPy-style wrapper")
        ndim = len(x.shape)
        if list(axes) != sorted(set(axes)) or any(not 0 <= a < ndim for a in axes):
            raise shape_error(name, "axes must be sorted, distinct and in range", list(axes),
                              f"sorted distinct axes in [0, {ndim})",
                              "call ap.sum/ap.max, which normalize axes")
        return ShapeDtype(tuple(x.shape[i] for i in _kept(ndim, axes)), dtype, x.weak_type)

    return rule


def _reduce_lowering(combine: Callable[[Any, Any], Any],
                     init: Callable[[np.dtype], Any]) -> Callable[..., Any]:
    """A StableHLO reduce whose region combines two scalars with `combine`."""

    def rule(ctx: Any, x: Any, *, axes: tuple[int, ...]) -> Any:
        dtype = np.dtype(ctx.avals_in[0].dtype)
        reduce = hlo.ReduceOp([ctx.out_type()], [x], [jx.ir_constant(init(dtype))],
                              jx.dense_int_array(axes))
        scalar = jx.scalar_ir_type(dtype)
        block = reduce.regions[0].blocks.append(scalar, scalar)
        with jx.ir.InsertionPoint(block):
            hlo.return_([combine(*block.arguments)])
        return reduce.result

    return rule


def _reduce_batching(name: str) -> Callable[..., tuple[Any, int]]:
    # the batch dimension stays where it is: shift the reduced axes past it, and the output
    # batch dimension moves left by the number of reduced axes in front of it
    def rule(args: Sequence[Any], dims: Sequence[Any], *,
             axes: tuple[int, ...]) -> tuple[Any, int]:
        (x,), (d,) = args, dims
        moved = tuple(a + (a >= d) for a in axes)
        return bind(name, x, axes=moved), d - len([a for a in axes if a < d])

    return rule


def _reduce_sharding(specs: Sequence[Spec], x: Any, *, axes: tuple[int, ...]) -> Spec:
    # reduced dimensions disappear (XLA all-reduces partial results over their mesh axes)
    return tuple(s for i, s in enumerate(specs[0]) if i not in axes)


def _expand_to(r: Any, x: Any, axes: tuple[int, ...]) -> Any:
    """A reduced value broadcast back along the reduced axes to the operand's shape."""
    shape = tuple(shape_of(x))
    return bind("broadcast_in_dim", r, shape=shape,
                broadcast_dimensions=_kept(len(shape), axes))


# --- reduce_sum(x, axes): linear -------------------------------------------------------------

def _sum_transpose(ct: Any, x: Linear, *, axes: tuple[int, ...]) -> list[Any]:
    # the adjoint of summing is copying: broadcast the cotangent along the reduced axes
    return [_expand_to(ct, x, axes)]


reduce_sum_p = define_primitive(
    "reduce_sum", abstract_eval=_reduce_eval("reduce_sum", "fiu"),
    lowering=_reduce_lowering(hlo.add, lambda dtype: np.zeros((), dtype)),
    jvp=(lambda g, out, x, *, axes: bind("reduce_sum", g, axes=axes),),
    transpose=_sum_transpose, sharding=_reduce_sharding,
    batching=_reduce_batching("reduce_sum"))


# --- reduce_max(x, axes) -------------------------------------------------------------------------

def _max_identity(dtype: np.dtype) -> Any:
    if _is_float(dtype):
        neg_inf = np.asarray(-np.inf, dtype)
        return neg_inf if np.isneginf(neg_inf) else np.asarray(jax_dtypes.finfo(dtype).min, dtype)
    if jx.kind_of(dtype) in "iu":
        return np.asarray(np.iinfo(dtype).min, dtype)
    return np.asarray(False)


def _chooser_jvp(arg: str) -> Callable[..., Any]:
    """The JVP of reduce_max (arg="argmax") or reduce_min (arg="argmin")."""

    def jvp(g: Any, out: Any, x: Any, *, axes: tuple[int, ...]) -> Any:
        # as jax.grad: the tangent is the mean of g over the locations that attain the extremum
        dtype = dtype_of(g)
        hits = _attained(x, out, axes, arg)
        weights = bind("convert_element_type", hits, new_dtype=dtype, weak_type=False)
        counts = reduce_sum_p.bind(weights, axes=axes)
        return bind("div", reduce_sum_p.bind(bind("mul", g, weights), axes=axes), counts)

    return jvp


def _attained(x: Any, out: Any, axes: tuple[int, ...], arg: str) -> Any:
    """Where x equals its reduced extremum `out`, bit for bit (ties all count).

    Under jit XLA may recompute x with a fused multiply-add in the fusion that computed `out`
    and without one here (or the reverse); the comparison then misses every location, which
    exact arithmetic never does. Where a row misses (and `out` is not NaN, whose derivative is
    NaN as in jax.grad), its first extremum by `argmax`/`argmin` counts instead: that index is
    chosen inside one reduction, so it needs no comparison across fusions.
    """
    shape = tuple(shape_of(x))
    hits = bind("eq", x, _expand_to(out, x, axes))
    n = math.prod(shape[i] for i in axes)
    if n == 0 or not _is_float(dtype_of(x)):
        return hits
    kept = _kept(len(shape), axes)
    rows = tuple(shape[i] for i in kept)
    flat = bind("reshape", bind("transpose", x, permutation=(*kept, *axes)),
                new_sizes=(*rows, n))
    first = bind(arg, flat, axes=(len(rows),), index_dtype=np.dtype(np.int32))
    positions = bind("broadcast_in_dim", np.arange(n, dtype=np.int32), shape=(*rows, n),
                     broadcast_dimensions=(len(rows),))
    chosen = bind("eq", positions, bind("broadcast_in_dim", first, shape=(*rows, n),
                                        broadcast_dimensions=tuple(range(len(rows)))))
    order = (*kept, *axes)
    chosen = bind("transpose", bind("reshape", chosen,
                                    new_sizes=(*rows, *(shape[i] for i in axes))),
                  permutation=tuple(order.index(i) for i in range(len(shape))))
    counts = reduce_sum_p.bind(bind("convert_element_type", hits, new_dtype=np.dtype(np.int32),
                                    weak_type=False), axes=axes)
    missed = bind("select", bind("eq", counts, full(rows, 0, np.int32)), bind("eq", out, out),
                  full(rows, False, np.bool_))
    return bind("select", _expand_to(missed, x, axes), chosen, hits)


reduce_max_p = define_primitive(
    "reduce_max", abstract_eval=_reduce_eval("reduce_max", "fiub"),
    lowering=_reduce_lowering(hlo.maximum, _max_identity),
    jvp=(_chooser_jvp("argmax"),), transpose=NOT_LINEAR, sharding=_reduce_sharding,
    batching=_reduce_batching("reduce_max"))


# --- reduce_min(x, axes): as reduce_max, ties shared the same way -------------------------------

def _min_identity(dtype: np.dtype) -> Any:
    if _is_float(dtype):
        inf = np.asarray(np.inf, dtype)
        return inf if np.isposinf(inf) else np.asarray(jax_dtypes.finfo(dtype).max, dtype)
    if jx.kind_of(dtype) in "iu":
        return np.asarray(np.iinfo(dtype).max, dtype)
    return np.asarray(True)


reduce_min_p = define_primitive(
    "reduce_min", abstract_eval=_reduce_eval("reduce_min", "fiub"),
    lowering=_reduce_lowering(hlo.minimum, _min_identity),
    jvp=(_chooser_jvp("argmin"),), transpose=NOT_LINEAR, sharding=_reduce_sharding,
    batching=_reduce_batching("reduce_min"))


# --- reduce_prod(x, axes) ----------------------------------------------------------------------

def _prod_jvp(g: Any, out: Any, x: Any, *, axes: tuple[int, ...]) -> Any:
    """As jax.grad: the product taken as a balanced tree of pairwise products (the reduced
    axes flattened into one, halves multiplied until one row is left), each product
    differentiated by the product rule, so zeros in x need no division."""
    shape = shape_of(x)
    kept = _kept(len(shape), axes)
    n = math.prod(shape[i] for i in axes)
    flat = (n, *(shape[i] for i in kept))
    xs, ts = (bind("reshape", bind("transpose", v, permutation=(*axes, *kept)), new_sizes=flat)
              for v in (x, g))
    if n == 0:
        return full(flat[1:], 0, dtype_of(g))
    while n > 1:
        n1 = (n + 1) // 2
        x1, x2, t1, t2 = (_rows(v, lo, hi) for v, lo, hi in
                          ((xs, 0, n1), (xs, n1, n), (ts, 0, n1), (ts, n1, n)))
        if n - n1 != n1:  # pad the second half with the identity row (x: 1, tangent: 0)
            x2 = bind("concatenate", x2, full((1, *flat[1:]), 1, dtype_of(x)), dimension=0)
            t2 = bind("concatenate", t2, full((1, *flat[1:]), 0, dtype_of(g)), dimension=0)
        xs, ts = bind("mul", x1, x2), bind("add", bind("mul", t1, x2), bind("mul", x1, t2))
        n = n1
    return bind("reshape", ts, new_sizes=flat[1:])


def _rows(v: Any, lo: int, hi: int) -> Any:
    shape = shape_of(v)
    return bind("slice", v, start_indices=(lo, *(0,) * (len(shape) - 1)),
                limit_indices=(hi, *shape[1:]))


reduce_prod_p = define_primitive(
    "reduce_prod", abstract_eval=_reduce_eval("reduce_prod", "fiu"),
    lowering=_reduce_lowering(hlo.multiply, lambda dtype: np.ones((), dtype)),
    jvp=(_prod_jvp,), transpose=NOT_LINEAR, sharding=_reduce_sharding,
    batching=_reduce_batching("reduce_prod"))


# ----------------------------------------------------------------------------------------------
# NumPy-style wrappers
# ----------------------------------------------------------------------------------------------

def _normalize_axis(axis: Axis) -> tuple[int, ...] | int | None:
    """A hashable axis for the jitted wrappers (range checks come later, with the rank)."""
    if axis is None or isinstance(axis, (int, np.integer)):
        return None if axis is None else int(axis)
    if not isinstance(axis, (tuple, list, np.ndarray)):
        return (axis,)  # type: ignore[return-value]  # not an axis: canonical_axes reports it
    return tuple(int(a) if isinstance(a, (int, np.integer)) else a for a in axis)


def _as_dtype(x: Any, dtype: np.dtype) -> Any:
    """`x` as a strongly typed array of `dtype` (reductions never return weak types)."""
    if dtype_of(x) == dtype and not is_weak(x):
        return x
    return bind("convert_element_type", x, new_dtype=np.dtype(dtype), weak_type=False)


def _prepare(name: str, x: Any, axis: Any) -> tuple[Any, tuple[int, ...]]:
    check_array_like(name, x)
    if not hasattr(x, "dtype"):
        x = np.asarray(x, jx.result_type(x)[0])
    return x, canonical_axes(name, axis, len(shape_of(x)))


def _keepdims(r: Any, x: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
    if not keepdims or not axes:
        return r
    shape = tuple(1 if i in axes else d for i, d in enumerate(shape_of(x)))
    return bind("reshape", r, new_sizes=shape)


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    """jnp.sum's result dtype: bool and narrow integers promote to the default (u)int."""
    if jx.kind_of(dtype) == "b":
        return jx.canonical_dtype(np.int64)
    if jx.kind_of(dtype) in "iu":
        default = jx.canonical_dtype(np.uint64 if jx.kind_of(dtype) == "u" else np.int64)
        return default if dtype.itemsize < default.itemsize else dtype
    return dtype


def _inexact_dtype(dtype: np.dtype) -> np.dtype:
    """jnp's float for an integer dtype: float32 up to 32 bits, float64 for 64-bit integers."""
    if _is_float(dtype):
        return dtype
    return jx.canonical_dtype(np.float64 if dtype.itemsize >= 8 else np.float32)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    # float16 and bfloat16 are accumulated in float32, as jnp does
    return np.dtype(np.float32) if _is_float(dtype) and dtype.itemsize < 4 else dtype


def _sum_as(x: Any, axes: tuple[int, ...], dtype: np.dtype) -> Any:
    """Sum of `x` over `axes` accumulated in (the upcast of) `dtype`, returned as `dtype`."""
    total = reduce_sum_p.bind(_as_dtype(x, _compute_dtype(dtype)), axes=axes)
    return _as_dtype(total, dtype)


def sum(a: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Sum over `axis` (all axes when None); bool and small integers sum as the default int."""
    return _sum(a, axis=_normalize_axis(axis), keepdims=bool(keepdims))


@op(static_argnames=("axis", "keepdims"))
def _sum(a: Any, *, axis: Any, keepdims: bool) -> Any:
    x, axes = _prepare("sum", a, axis)
    return _keepdims(_sum_as(x, axes, _sum_dtype(dtype_of(x))), x, axes, keepdims)


def mean(a: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Arithmetic mean over `axis`; integers and bools give the default float dtype."""
    return _mean(a, axis=_normalize_axis(axis), keepdims=bool(keepdims))


@op(static_argnames=("axis", "keepdims"))
def _mean(a: Any, *, axis: Any, keepdims: bool) -> Any:
    x, axes = _prepare("mean", a, axis)
    dtype = dtype_of(x)
    out_dtype = _inexact_dtype(dtype)
    compute = _compute_dtype(out_dtype)
    total = reduce_sum_p.bind(_as_dtype(x, compute), axes=axes)
    count = math.prod(shape_of(x)[i] for i in axes)
    # divide by the element count (a constant broadcast to the result's shape), as jnp does
    out = bind("div", total, full(shape_of(total), count, compute))
    return _keepdims(_as_dtype(out, out_dtype), x, axes, keepdims)


def max(a: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Maximum over `axis`; ties share the derivative equally (as in jax.grad)."""
    return _max(a, axis=_normalize_axis(axis), keepdims=bool(keepdims))


@op(static_argnames=("axis", "keepdims"))
def _max(a: Any, *, axis: Any, keepdims: bool) -> Any:
    x, axes = _prepare("max", a, axis)
    _check_nonempty("max", "maximum", x, axes)
    return _keepdims(reduce_max_p.bind(_as_dtype(x, dtype_of(x)), axes=axes), x, axes, keepdims)


def _check_nonempty(name: str, what: str, x: Any, axes: tuple[int, ...]) -> None:
    shape = shape_of(x)
    if any(shape[i] == 0 for i in axes):
        raise shape_error(name, f"zero-size reduction: the {what} has no identity",
                          f"axes {list(axes)} of an array of shape {list(shape)}",
                          "reduced axes of size >= 1",
                          "reduce over non-empty axes (ap.logsumexp of an empty axis is -inf)")


def min(a: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Minimum over `axis`; ties share the derivative equally (as in jax.grad)."""
    return _min(a, axis=_normalize_axis(axis), keepdims=bool(keepdims))


@op(static_argnames=("axis", "keepdims"))
def _min(a: Any, *, axis: Any, keepdims: bool) -> Any:
    x, axes = _prepare("min", a, axis)
    _check_nonempty("min", "minimum", x, axes)
    return _keepdims(reduce_min_p.bind(_as_dtype(x, dtype_of(x)), axes=axes), x, axes, keepdims)


def prod(a: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """Product over `axis` (1 for an empty axis); bool and small integers multiply as the
    default int, float16 in float32 (as jnp.prod). Zeros differentiate exactly, as in jax.grad."""
    return _prod(a, axis=_normalize_axis(axis), keepdims=bool(keepdims))


@op(static_argnames=("axis", "keepdims"))
def _prod(a: Any, *, axis: Any, keepdims: bool) -> Any:
    x, axes = _prepare("prod", a, axis)
    dtype = _sum_dtype(dtype_of(x))
    out = reduce_prod_p.bind(_as_dtype(x, _compute_dtype(dtype)), axes=axes)
    return _keepdims(_as_dtype(out, dtype), x, axes, keepdims)


def var(a: Any, axis: Axis = None, ddof: int | float = 0, keepdims: bool = False) -> Any:
    """Variance over `axis`: sum((a - mean)^2) / (N - ddof), as jnp.var (NaN where
    N - ddof <= 0; integers give the default float; float16 computed in float32)."""
    return _var(a, axis=_normalize_axis(axis), ddof=_check_ddof("var", ddof),
                keepdims=bool(keepdims))


def std(a: Any, axis: Axis = None, ddof: int | float = 0, keepdims: bool = False) -> Any:
    """Standard deviation over `axis`: sqrt(ap.var(...)), as jnp.std (its derivative is
    infinite where the variance is 0, as in jax.grad)."""
    return _std(a, axis=_normalize_axis(axis), ddof=_check_ddof("std", ddof),
                keepdims=bool(keepdims))


def _check_ddof(name: str, ddof: Any) -> int | float:
    if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, (int, float, np.integer,
                                                                     np.floating)):
        raise type_error(name, "ddof is not a number", repr(ddof)[:60],
                         "an int or float (the divisor is N - ddof)", "pass e.g. ddof=1")
    return ddof.item() if isinstance(ddof, (np.integer, np.floating)) else ddof


@op(static_argnames=("axis", "ddof", "keepdims"))
def _var(a: Any, *, axis: Any, ddof: int | float, keepdims: bool) -> Any:
    return _variance("var", a, axis, ddof, keepdims)


@op(static_argnames=("axis", "ddof", "keepdims"))
def _std(a: Any, *, axis: Any, ddof: int | float, keepdims: bool) -> Any:
    out = _variance("std", a, axis, ddof, keepdims)
    return bind("sqrt", out)


def _variance(name: str, a: Any, axis: Any, ddof: int | float, keepdims: bool) -> Any:
    x, axes = _prepare(name, a, axis)
    dtype = _inexact_dtype(dtype_of(x))
    compute = _compute_dtype(dtype)
    x = _as_dtype(x, compute)
    count = math.prod(shape_of(x)[i] for i in axes)
    total = reduce_sum_p.bind(x, axes=axes)
    mean = bind("div", total, full(shape_of(total), count, compute))
    centered = bind("square", bind("sub", x, _expand_to(mean, x, axes)))
    normalizer = count - ddof
    sq = reduce_sum_p.bind(centered, axes=axes)
    out = _as_dtype(bind("div", sq, full(shape_of(sq), normalizer, compute)), dtype)
    # N - ddof <= 0 gives NaN, as jnp.var (a select keeps the value's graph connected)
    out = bind("select", full(shape_of(out), normalizer > 0, np.bool_), out,
               full(shape_of(out), np.nan, dtype))
    return _keepdims(out, x, axes, keepdims)


def logsumexp(a: Any, axis: Axis = None, keepdims: bool = False) -> Any:
    """log(sum(exp(a))) over `axis`, stable for large entries; all -inf entries give -inf."""
    return _logsumexp(a, axis=_normalize_axis(axis), keepdims=bool(keepdims))


@op(static_argnames=("axis", "keepdims"))
def _logsumexp(a: Any, *, axis: Any, keepdims: bool) -> Any:
    x, axes = _prepare("logsumexp", a, axis)
    dtype = _inexact_dtype(dtype_of(x))
    x = _as_dtype(x, dtype)
    # lse(x) = log(sum(exp(x - c))) + c for any c; c = max(x) (0 where not finite) keeps
    # exp from overflowing. c is a constant for derivatives, so they equal softmax.
    amax = reduce_max_p.bind(x, axes=axes)
    amax = bind("select", bind("is_finite", amax), amax, full(shape_of(amax), 0, dtype))
    amax = bind("stop_gradient", amax)
    shifted = bind("exp", bind("sub", x, _expand_to(amax, x, axes)))
    out = bind("add", bind("log", _sum_as(shifted, axes, dtype)), amax)
    return _keepdims(out, x, axes, keepdims)
