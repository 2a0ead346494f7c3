"""Order-based primitives: argmax/argmin (a variadic reduce), sort and argsort (StableHLO sort).

`argmax(x, axes=(axis,), index_dtype)` is the index of the first maximum along `axis` (a NaN
counts as the maximum, as `jnp.argmax`); argmin likewise. `sort(x, dimension, is_stable)`
sorts one operand in the total order of `lax.sort` (-0.0 equal to 0.0, NaN last); its JVP
gathers the tangent with the sorting permutation, `argsort`, as jax.grad does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import shape_error, type_error
from adplugin._primitive import ZERO_DERIVATIVE, ShapeDtype, Spec, define_primitive
from adplugin.primitives._rules import bind
from adplugin.primitives._wrapping import (
    canonical_axis,
    check_array_like,
    dtype_of,
    op,
    promote,
    shape_of,
)
from adplugin.primitives.reductions import _max_identity, _min_identity, _reduce_sharding

hlo = jx.hlo


def _compare_type(dtype: np.dtype) -> str:
    return {"f": "FLOAT", "i": "SIGNED", "u": "UNSIGNED", "b": "UNSIGNED"}[jx.kind_of(dtype)]


def _compare(x: Any, y: Any, direction: str, dtype: np.dtype, kind: str | None = None) -> Any:
    return hlo.compare(x, y, hlo.ComparisonDirectionAttr.get(direction),
                       compare_type=hlo.ComparisonTypeAttr.get(kind or _compare_type(dtype)))


def _i64(value: int) -> Any:
    return jx.ir.IntegerAttr.get(jx.ir.IntegerType.get_signless(64), int(value))


def _iota(ctx: Any, shape: Sequence[int], dtype: np.dtype, dimension: int) -> Any:
    return hlo.iota(ctx.ir_type(jx.shaped_array(shape, dtype)), _i64(dimension))


def _check_operand(name: str, x: Any) -> np.dtype:
    dtype = np.dtype(x.dtype)
    if jx.kind_of(dtype) not in "fiub":
        raise type_error(name, "unsupported dtype", dtype.name,
                         "a boolean, integer or floating-point operand",
                         "convert with ap.astype")
    return dtype


def _check_index_dtype(name: str, index_dtype: Any) -> np.dtype:
    dtype = np.dtype(index_dtype)
    if jx.kind_of(dtype) not in "iu":
        raise type_error(name, "index_dtype is not an integer dtype", dtype.name,
                         "an integer dtype such as int32", "pass index_dtype=np.int32")
    return dtype


# --- argmax(x, axes, index_dtype), argmin -------------------------------------------------------

def _arg_eval(name: str) -> Any:
    def rule(x: Any, *, axes: tuple[int, ...], index_dtype: Any) -> ShapeDtype:
        _check_operand(name, x)
        ndim = len(x.shape)
        if len(axes) != 1 or not 0 <= axes[0] < ndim:
            raise shape_error(name, "needs exactly one axis in range", f"axes={axes}",
                              f"one axis in [0, {ndim})", f"call ap.{name}, which normalizes")
        if x.shape[axes[0]] == 0:
            raise shape_error(name, "attempt to get the index of an empty sequence",
                              f"axis {axes[0]} of shape {list(x.shape)}", "a non-empty axis",
                              "reduce over an axis with at least one element")
        out = tuple(d for i, d in enumerate(x.shape) if i != axes[0])
        return ShapeDtype(out, _check_index_dtype(name, index_dtype))

    return rule


def _arg_lower(direction: str, identity: Any) -> Any:
    """As lax: a variadic reduce over (value, index) pairs keeping the value that compares
    `direction` (or is NaN) and, among equal values, the lower index."""

    def rule(ctx: Any, x: Any, *, axes: tuple[int, ...], index_dtype: Any) -> Any:
        xa = ctx.avals_in[0]
        dtype, idtype = np.dtype(xa.dtype), np.dtype(index_dtype)
        out_shape = ctx.avals_out[0].shape
        reduce = hlo.ReduceOp(
            [ctx.ir_type(jx.shaped_array(out_shape, dtype)), ctx.out_type()],
            [x, _iota(ctx, xa.shape, idtype, axes[0])],
            [jx.ir_constant(identity(dtype)), jx.ir_constant(np.zeros((), idtype))],
            jx.dense_int_array(axes))
        sv, si = jx.scalar_ir_type(dtype), jx.scalar_ir_type(idtype)
        block = reduce.regions[0].blocks.append(sv, si, sv, si)
        with jx.ir.InsertionPoint(block):
            op_v, op_i, acc_v, acc_i = block.arguments
            pick_value = hlo.or_(_compare(op_v, acc_v, direction, dtype),
                                 _compare(op_v, op_v, "NE", dtype))
            pick_index = hlo.or_(pick_value, hlo.and_(_compare(op_v, acc_v, "EQ", dtype),
                                                      _compare(op_i, acc_i, "LT", idtype)))
            hlo.return_([hlo.select(pick_value, op_v, acc_v),
                         hlo.select(pick_index, op_i, acc_i)])
        return reduce.results[1]

    return rule


def _arg_batching(name: str) -> Any:
    def rule(args: Sequence[Any], dims: Sequence[Any], *, axes: tuple[int, ...],
             index_dtype: Any) -> tuple[Any, int]:
        (x,), (d,) = args, dims
        axis = axes[0] + (axes[0] >= d)
        return bind(name, x, axes=(axis,), index_dtype=index_dtype), d - (axes[0] < d)

    return rule


def _arg_sharding(specs: Sequence[Spec], x: Any, *, axes: tuple[int, ...],
                  index_dtype: Any) -> Spec:
    return _reduce_sharding(specs, x, axes=axes)  # the reduced dimension disappears


argmax_p = define_primitive(
    "argmax", abstract_eval=_arg_eval("argmax"), lowering=_arg_lower("GT", _max_identity),
    jvp=ZERO_DERIVATIVE, batching=_arg_batching("argmax"), sharding=_arg_sharding)
argmin_p = define_primitive(
    "argmin", abstract_eval=_arg_eval("argmin"), lowering=_arg_lower("LT", _min_identity),
    jvp=ZERO_DERIVATIVE, batching=_arg_batching("argmin"), sharding=_arg_sharding)


# --- sort(x, dimension, is_stable), argsort(x, dimension, is_stable, index_dtype) ----------------

def _less_than(a: Any, b: Any, dtype: np.dtype) -> Any:
    """lax.sort's comparator: for floats a total order after mapping -0.0 to 0.0 and every
    NaN to one NaN (so -0.0 and 0.0 tie, and NaNs sort last, all equal)."""
    if jx.kind_of(dtype) != "f":
        return _compare(a, b, "LT", dtype)
    zero, nan = jx.ir_constant(np.zeros((), dtype)), jx.ir_constant(np.asarray(np.nan, dtype))

    def canonical(v: Any) -> Any:
        v = hlo.select(_compare(v, zero, "EQ", dtype), zero, v)
        return hlo.select(_compare(v, v, "NE", dtype), nan, v)

    return _compare(canonical(a), canonical(b), "LT", dtype, "TOTALORDER")


def _sort_op(ctx: Any, operands: list[Any], types: list[Any], dimension: int,
             is_stable: bool) -> Any:
    dtype = np.dtype(ctx.avals_in[0].dtype)
    sort = hlo.SortOp(types, operands, dimension=_i64(dimension),
                      is_stable=jx.ir.BoolAttr.get(bool(is_stable)))
    scalars = [jx.scalar_ir_type(np.dtype(t)) for t in
               [dtype] + [ctx.avals_out[0].dtype] * (len(operands) - 1)]
    block = sort.comparator.blocks.append(*[s for s in scalars for _ in range(2)])
    with jx.ir.InsertionPoint(block):
        hlo.return_([_less_than(block.arguments[0], block.arguments[1], dtype)])
    return sort


def _sort_eval(name: str) -> Any:
    def rule(x: Any, *, dimension: int, is_stable: bool, **index: Any) -> ShapeDtype:
        dtype = _check_operand(name, x)
        if not 0 <= dimension < len(x.shape):
            raise shape_error(name, "dimension out of range", f"dimension={dimension}",
                              f"0 <= dimension < {len(x.shape)}",
                              f"call ap.{name}, which normalizes axes")
        if index:
            return ShapeDtype(tuple(x.shape), _check_index_dtype(name, index["index_dtype"]))
        return ShapeDtype(tuple(x.shape), dtype, x.weak_type)

    return rule


def _sort_lower(ctx: Any, x: Any, *, dimension: int, is_stable: bool) -> Any:
    return _sort_op(ctx, [x], [ctx.out_type()], dimension, is_stable).results[0]


def _argsort_lower(ctx: Any, x: Any, *, dimension: int, is_stable: bool,
                   index_dtype: Any) -> Any:
    xa = ctx.avals_in[0]
    iota = _iota(ctx, xa.shape, np.dtype(index_dtype), dimension)
    sort = _sort_op(ctx, [x, iota], [ctx.ir_type(xa), ctx.out_type()], dimension, is_stable)
    return sort.results[1]


def _sort_batching(name: str) -> Any:
    def rule(args: Sequence[Any], dims: Sequence[Any], *, dimension: int,
             **params: Any) -> tuple[Any, int]:
        (x,), (d,) = args, dims
        return bind(name, x, dimension=dimension + (d <= dimension), **params), d

    return rule


def take_along_axis(x: Any, indices: Any, axis: int) -> Any:
    """`x[..., indices[..., j, ...], ...]` along `axis` (indices shaped like x except along
    axis), as one take on the flattened operand: linear in x, so it transposes."""
    shape, ishape, nd = shape_of(x), shape_of(indices), len(shape_of(x))
    n, k = shape[axis], ishape[axis]
    perm = (*(i for i in range(nd) if i != axis), axis)  # the axis last
    if axis != nd - 1:
        x, indices = (bind("transpose", v, permutation=perm) for v in (x, indices))
    rows = math.prod(shape_of(x)[:-1])
    idtype = dtype_of(indices)
    offsets = np.broadcast_to((np.arange(rows, dtype=idtype) * n)[:, None], (rows, k))
    flat_i = bind("add", bind("reshape", indices, new_sizes=(rows, k)), np.asarray(offsets))
    out = bind("take", bind("reshape", x, new_sizes=(rows * n,)),
               bind("reshape", flat_i, new_sizes=(rows * k,)), axis=0)
    out = bind("reshape", out, new_sizes=shape_of(indices))
    if axis != nd - 1:
        out = bind("transpose", out, permutation=tuple(int(i) for i in np.argsort(perm)))
    return out


def scatter_along_axis(updates: Any, indices: Any, axis: int,
                       operand_shape: Sequence[int]) -> Any:
    """The transpose of `take_along_axis`: zeros of `operand_shape` with each update added at
    its index along `axis` (repeated indices accumulate)."""
    nd = len(operand_shape)
    ishape = shape_of(indices)
    n, k = operand_shape[axis], ishape[axis]
    perm = (*(i for i in range(nd) if i != axis), axis)
    if axis != nd - 1:
        updates, indices = (bind("transpose", v, permutation=perm) for v in (updates, indices))
    rows = math.prod(shape_of(indices)[:-1])
    idtype = dtype_of(indices)
    offsets = np.broadcast_to((np.arange(rows, dtype=idtype) * n)[:, None], (rows, k))
    flat_i = bind("add", bind("reshape", indices, new_sizes=(rows, k)), np.asarray(offsets))
    out = bind("scatter_add", bind("reshape", updates, new_sizes=(rows * k,)),
               bind("reshape", flat_i, new_sizes=(rows * k,)), axis=0,
               operand_shape=(rows * n,))
    moved = tuple(operand_shape[i] for i in perm)
    out = bind("reshape", out, new_sizes=moved)
    if axis != nd - 1:
        out = bind("transpose", out, permutation=tuple(int(i) for i in np.argsort(perm)))
    return out


def _sort_jvp(g: Any, out: Any, x: Any, *, dimension: int, is_stable: bool) -> Any:
    # the sorted tangent is the tangent permuted like x: gathered with argsort(x)
    perm = argsort_p.bind(x, dimension=dimension, is_stable=is_stable,
                          index_dtype=np.dtype(np.int32))
    return take_along_axis(g, perm, dimension)


sort_p = define_primitive(
    "sort", abstract_eval=_sort_eval("sort"), lowering=_sort_lower, jvp=(_sort_jvp,),
    batching=_sort_batching("sort"), sharding=lambda specs, x, **p: specs[0])
argsort_p = define_primitive(
    "argsort", abstract_eval=_sort_eval("argsort"), lowering=_argsort_lower,
    jvp=ZERO_DERIVATIVE, batching=_sort_batching("argsort"),
    sharding=lambda specs, x, **p: specs[0])


# ----------------------------------------------------------------------------------------------
# NumPy-style wrappers
# ----------------------------------------------------------------------------------------------

def _index_dtype() -> np.dtype:
    return jx.canonical_dtype(np.int64)  # jnp's default int: int32 unless x64 is enabled


def argmax(a: Any, axis: int | None = None, keepdims: bool = False) -> Any:
    """Index of the maximum along `axis` (of the flattened array when None), as jnp.argmax:
    the first one at ties, a NaN counts as the maximum; the default int dtype."""
    return _argminmax(a, axis=_axis(axis), keepdims=bool(keepdims), name="argmax")


def argmin(a: Any, axis: int | None = None, keepdims: bool = False) -> Any:
    """Index of the minimum along `axis`, as jnp.argmin (first at ties, NaN first)."""
    return _argminmax(a, axis=_axis(axis), keepdims=bool(keepdims), name="argmin")


def _axis(axis: Any) -> Any:
    return int(axis) if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) \
        else axis


@op(static_argnames=("axis", "keepdims", "name"))
def _argminmax(a: Any, *, axis: Any, keepdims: bool, name: str) -> Any:
    check_array_like(name, a)
    (x,) = promote(name, a)
    shape = shape_of(x)
    if axis is None:
        x = bind("reshape", x, new_sizes=(math.prod(shape),))
    elif not isinstance(axis, int):
        raise type_error(name, "axis is not an integer", repr(axis)[:40],
                         "an int or None", "pass one axis (argmax reduces over one)")
    ax = 0 if axis is None else canonical_axis(name, axis, len(shape))
    if shape_of(x)[ax] == 0:
        raise shape_error(name, f"attempt to get {name} of an empty sequence",
                          f"shape {list(shape)}", "a non-empty axis",
                          "check the operand's shape")
    out = bind(name, x, axes=(ax,), index_dtype=_index_dtype())
    if keepdims:
        kept = tuple(1 if axis is None or i == ax else d for i, d in enumerate(shape))
        out = bind("reshape", out, new_sizes=kept)
    return out


def sort(a: Any, axis: int | None = -1) -> Any:
    """`a` sorted along `axis` (flattened when None), stable, NaNs last, as jnp.sort; the
    derivative follows the sorting permutation."""
    return _sorted(a, axis=_axis(axis), name="sort")


def argsort(a: Any, axis: int | None = -1) -> Any:
    """Indices that sort `a` along `axis` (stable), as jnp.argsort."""
    return _sorted(a, axis=_axis(axis), name="argsort")


@op(static_argnames=("axis", "name"))
def _sorted(a: Any, *, axis: Any, name: str) -> Any:
    check_array_like(name, a)
    (x,) = promote(name, a)
    if axis is None:
        x = bind("reshape", x, new_sizes=(math.prod(shape_of(x)),))
        axis = 0
    if not shape_of(x):
        raise shape_error(name, "a scalar has no axis to sort along", "a rank-0 operand",
                          "an array of rank >= 1", "reshape it, or pass axis=None")
    dim = canonical_axis(name, axis, len(shape_of(x)))
    if name == "argsort":
        return argsort_p.bind(x, dimension=dim, is_stable=True, index_dtype=_index_dtype())
    return sort_p.bind(x, dimension=dim, is_stable=True)
