"""Cumulative reductions along one axis: cumsum (linear), cumprod, cummax, cummin, cumlogsumexp.

Each primitive takes `axis` and `reverse` (accumulate from the end), as `lax.cumsum` does, and
lowers to a StableHLO `reduce_window` whose window spans the axis. Derivatives follow
jax.grad exactly: cumsum is linear (its transpose is the reverse cumsum); the others are
differentiated, as lax does, through the parallel prefix scan (`associative_scan`) of their
combining op, so ties of cummax/cummin split the derivative as lax.max's JVP does there and
zeros in cumprod need no division.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import ShardingRuleError, message, shape_error, type_error
from adplugin._primitive import (
    NOT_LINEAR,
    Linear,
    Primitive,
    ShapeDtype,
    Spec,
    apply_jvp,
    define_primitive,
)
from adplugin.primitives._rules import bind, full_like, zeros_like
from adplugin.primitives._wrapping import (
    canonical_axis,
    check_array_like,
    dtype_of,
    op,
    promote,
    shape_of,
)
from adplugin.primitives.reductions import _max_identity, _min_identity, _sum_dtype

hlo = jx.hlo

Pair = list[Any]  # [value, tangent] threaded through the scan


# --- shared rules ------------------------------------------------------------------------------

def _cum_eval(name: str, kinds: str) -> Callable[..., ShapeDtype]:
    def rule(x: Any, *, axis: int, reverse: bool) -> ShapeDtype:
        dtype = np.dtype(x.dtype)
        if jx.kind_of(dtype) not in kinds:
            expected = "a floating-point" if kinds == "f" else "an integer or floating-point"
            raise type_error(name, "unsupported dtype", dtype.name, f"{expected} operand",
                             "convert with ap.astype")
        if not 0 <= axis < len(x.shape):
            raise shape_error(name, "axis out of range", f"axis={axis} for shape "
                              f"{list(x.shape)}", f"0 <= axis < {len(x.shape)}",
                              "call the NumPy-style wrapper, which normalizes axes")
        return ShapeDtype(tuple(x.shape), dtype, x.weak_type)

    return rule


def _logaddexp_hlo(a: Any, b: Any) -> Any:
    # as lax's logaddexp: max + log1p(exp(-|a - b|)), a + b where a - b is NaN (equal infs)
    delta = hlo.subtract(a, b)
    isnan = hlo.compare(delta, delta, hlo.ComparisonDirectionAttr.get("NE"),
                        compare_type=hlo.ComparisonTypeAttr.get("FLOAT"))
    smooth = hlo.add(hlo.maximum(a, b),
                     hlo.log_plus_one(hlo.exponential(hlo.negate(hlo.abs(delta)))))
    return hlo.select(isnan, hlo.add(a, b), smooth)


def _cum_lower(combine: Callable[[Any, Any], Any],
               identity: Callable[[np.dtype], Any]) -> Callable[..., Any]:
    """A reduce_window whose window covers the whole axis, padded in front (or behind, in
    reverse) with n - 1 identities, so output i combines inputs 0..i (or i..n-1)."""

    def rule(ctx: Any, x: Any, *, axis: int, reverse: bool) -> Any:
        xa = ctx.avals_in[0]
        dtype, nd, n = np.dtype(xa.dtype), len(xa.shape), xa.shape[axis]
        if n == 0:
            return x
        window, padding = [1] * nd, [(0, 0)] * nd
        window[axis], padding[axis] = n, ((0, n - 1) if reverse else (n - 1, 0))
        ones = jx.dense_int_array([1] * nd)
        rw = hlo.ReduceWindowOp(
            [ctx.out_type()], [x], [jx.ir_constant(identity(dtype))],
            jx.dense_int_array(window), window_strides=ones, base_dilations=ones,
            window_dilations=ones,
            padding=jx.ir.DenseIntElementsAttr.get(  # type: ignore[call-overload]
                np.asarray(padding, np.int64), shape=[nd, 2]))
        scalar = jx.scalar_ir_type(dtype)
        block = rw.regions[0].blocks.append(scalar, scalar)
        with jx.ir.InsertionPoint(block):
            hlo.return_([combine(*block.arguments)])
        return rw.results[0]

    return rule


def _cum_batching(name: str) -> Callable[..., tuple[Any, int]]:
    def rule(args: Sequence[Any], dims: Sequence[Any], *, axis: int,
             reverse: bool) -> tuple[Any, int]:
        (x,), (d,) = args, dims
        return bind(name, x, axis=axis + (axis >= d), reverse=reverse), d

    return rule


def _cum_sharding(name: str) -> Callable[..., Spec]:
    def rule(specs: Sequence[Spec], x: Any, *, axis: int, reverse: bool) -> Spec:
        if specs[0][axis] is not None:  # as lax: the scanned axis must be whole on a device
            raise ShardingRuleError(message(
                name, "the accumulated axis is sharded", f"axis {axis} sharded over "
                f"{specs[0][axis]}", "an unsharded axis to accumulate along",
                "reshard the operand (jax.sharding.reshard) so the axis is replicated"))
        return specs[0]

    return rule


def _define(name: str, kinds: str, combine: Callable[[Any, Any], Any],
            identity: Callable[[np.dtype], Any], jvp: Any,
            transpose: Any = NOT_LINEAR) -> Primitive:
    return define_primitive(
        name, abstract_eval=_cum_eval(name, kinds), lowering=_cum_lower(combine, identity),
        jvp=jvp, transpose=transpose, batching=_cum_batching(name),
        sharding=_cum_sharding(name))


# --- the parallel prefix scan (lax.associative_scan's algorithm, on ap primitives) -------------

def _take_range(x: Any, start: int, stop: int, step: int, axis: int) -> Any:
    """Elements start, start+step, ... < stop along `axis` (a take: linear, transposable)."""
    if step == 1 and (start, stop) == (0, shape_of(x)[axis]):
        return x
    indices = np.arange(start, max(stop, start), step, dtype=np.int32)
    return bind("take", x, indices, axis=axis)


def _interleave(a: Any, b: Any, axis: int) -> Any:
    """a[0], b[0], a[1], b[1], ... along `axis` (a is as long as b or one longer)."""
    na, nb = shape_of(a)[axis], shape_of(b)[axis]
    if na == nb + 1:
        head = _interleave(_take_range(a, 0, nb, 1, axis), b, axis)
        return bind("concatenate", head, _take_range(a, nb, na, 1, axis), dimension=axis)
    shape = shape_of(a)
    pair = (*shape[:axis + 1], 1, *shape[axis + 1:])
    both = bind("concatenate", bind("reshape", a, new_sizes=pair),
                bind("reshape", b, new_sizes=pair), dimension=axis + 1)
    return bind("reshape", both, new_sizes=(*shape[:axis], 2 * na, *shape[axis + 1:]))


def associative_scan(combine: Callable[[Pair, Pair], Pair], elems: Pair, axis: int,
                     reverse: bool = False) -> Pair:
    """Inclusive scan of `elems` (arrays of one length along `axis`) with an associative
    `combine(earlier, later)`, by the recursion lax.associative_scan uses (pairs combined,
    the half scanned, then the even positions filled in), so derivatives through it are
    jax.grad's."""
    if reverse:
        elems = [_reverse(e, axis) for e in elems]
    out = _scan(combine, elems, axis)
    return [_reverse(e, axis) for e in out] if reverse else out


def _reverse(x: Any, axis: int) -> Any:
    n = shape_of(x)[axis]
    return bind("take", x, np.arange(n - 1, -1, -1, dtype=np.int32), axis=axis) if n > 1 else x


def _scan(combine: Callable[[Pair, Pair], Pair], elems: Pair, axis: int) -> Pair:
    n = shape_of(elems[0])[axis]
    if n < 2:
        return elems
    reduced = combine([_take_range(e, 0, n - 1, 2, axis) for e in elems],
                      [_take_range(e, 1, n, 2, axis) for e in elems])
    odd = _scan(combine, reduced, axis)
    rest = [_take_range(e, 2, n, 2, axis) for e in elems]
    if n % 2 == 0:
        m = shape_of(odd[0])[axis]
        even = combine([_take_range(e, 0, m - 1, 1, axis) for e in odd], rest)
    else:
        even = combine(odd, rest)
    even = [bind("concatenate", _take_range(e, 0, 1, 1, axis), r, dimension=axis)
            for e, r in zip(elems, even)]
    return [_interleave(e, o, axis) for e, o in zip(even, odd)]


def _by_primitive(name: str) -> Callable[[Pair, Pair], Pair]:
    """Combine (value, tangent) pairs with a binary primitive and its JVP rules."""

    def combine(a: Pair, b: Pair) -> Pair:
        out, tangent = apply_jvp(_prim(name), [a[0], b[0]], [a[1], b[1]])
        return [out, tangent if tangent is not None else zeros_like(out)]

    return combine


def _prim(name: str) -> Primitive:
    from adplugin._primitive import get_primitive

    return get_primitive(name)


def _no_inf(x: Any) -> Any:
    return bind("select", bind("eq", x, full_like(x, np.inf)), zeros_like(x), x)


def _logaddexp_pair(a: Pair, b: Pair) -> Pair:
    # lax's logaddexp and its custom JVP: t_a exp(a - out) + t_b exp(b - out), +inf -> 0
    x, y = a[0], b[0]
    delta = bind("sub", x, y)
    smooth = bind("add", bind("max", x, y),
                  bind("log1p", bind("exp", bind("neg", bind("abs", delta)))))
    out = bind("select", bind("ne", delta, delta), bind("add", x, y), smooth)
    weight = [bind("exp", bind("sub", _no_inf(v), _no_inf(out))) for v in (x, y)]
    return [out, bind("add", bind("mul", a[1], weight[0]), bind("mul", b[1], weight[1]))]


def _scan_jvp(combine: Callable[[Pair, Pair], Pair]) -> Any:
    def rule(g: Any, out: Any, x: Any, *, axis: int, reverse: bool) -> Any:
        return associative_scan(combine, [x, g], axis, reverse)[1]

    return rule


# --- the primitives ----------------------------------------------------------------------------

def _cumsum_transpose(ct: Any, x: Linear, *, axis: int, reverse: bool) -> list[Any]:
    # the adjoint of a running sum is the running sum taken from the other end
    return [cumsum_p.bind(ct, axis=axis, reverse=not reverse)]


cumsum_p: Primitive = _define(
    "cumsum", "fiu", hlo.add, lambda dtype: np.zeros((), dtype),
    (lambda g, out, x, **p: cumsum_p.bind(g, **p),), transpose=_cumsum_transpose)
cumprod_p = _define("cumprod", "fiu", hlo.multiply, lambda dtype: np.ones((), dtype),
                    (_scan_jvp(_by_primitive("mul")),))
cummax_p = _define("cummax", "fiu", hlo.maximum, _max_identity,
                   (_scan_jvp(_by_primitive("max")),))
cummin_p = _define("cummin", "fiu", hlo.minimum, _min_identity,
                   (_scan_jvp(_by_primitive("min")),))
cumlogsumexp_p = _define("cumlogsumexp", "f", _logaddexp_hlo,
                         lambda dtype: np.asarray(-np.inf, dtype), (_scan_jvp(_logaddexp_pair),))


# ----------------------------------------------------------------------------------------------
# NumPy-style wrappers
# ----------------------------------------------------------------------------------------------

def cumsum(a: Any, axis: int | None = None) -> Any:
    """Running sum along `axis` (of the flattened array when None), as jnp.cumsum: bools sum
    as the default int, other dtypes are kept."""
    return _cumulative(a, axis=_as_axis("cumsum", axis), name="cumsum")


def cumprod(a: Any, axis: int | None = None) -> Any:
    """Running product along `axis`, as jnp.cumprod (zeros differentiate as in jax.grad)."""
    return _cumulative(a, axis=_as_axis("cumprod", axis), name="cumprod")


def _as_axis(name: str, axis: Any) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise type_error(name, "axis is not an integer", repr(axis)[:40], "an int or None",
                         "pass one axis (None accumulates over the flattened array)")
    return int(axis)


@op(static_argnames=("axis", "name"))
def _cumulative(a: Any, *, axis: int | None, name: str) -> Any:
    check_array_like(name, a)
    (x,) = promote(name, a)
    if axis is None or not shape_of(x):
        x = bind("reshape", x, new_sizes=(int(np.prod(shape_of(x))),))
    ax = canonical_axis(name, 0 if axis is None else axis, len(shape_of(x)))
    dtype = dtype_of(x)
    if jx.kind_of(dtype) == "b":  # as jnp: booleans accumulate as the default int
        x = bind("convert_element_type", x, new_dtype=_sum_dtype(dtype), weak_type=False)
    return bind(name, x, axis=ax, reverse=False)
