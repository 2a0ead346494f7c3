"""Shape primitives: broadcast_in_dim, reshape, transpose, slice, concatenate (all linear),
with NumPy-style wrappers (broadcast_to, reshape, transpose, expand_dims, squeeze,
concatenate, stack, basic indexing)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import ShardingRuleError, message, shape_error, type_error
from adplugin._primitive import (
    Linear,
    Primitive,
    ShapeDtype,
    Spec,
    batch_size,
    bdim_to_front,
    define_primitive,
    merge_specs,
    moveaxis,
)
from adplugin.primitives._rules import bind, full
from adplugin.primitives._wrapping import (
    canonical_axes,
    canonical_axis,
    check_array_like,
    op,
    promote,
    promote_dtypes,
    shape_of,
)

hlo = jx.hlo


# --- broadcast_in_dim(x, shape, broadcast_dimensions) --------------------------------------------
# Operand dimension i becomes output dimension broadcast_dimensions[i]; size-1 dims stretch.

def _bid_eval(x: Any, *, shape: tuple[int, ...], broadcast_dimensions: tuple[int, ...]) -> Any:
    dims = broadcast_dimensions
    ok = (len(dims) == len(x.shape) and all(0 <= d < len(shape) for d in dims)
          and list(dims) == sorted(set(dims))
          and all(x.shape[i] in (1, shape[d]) for i, d in enumerate(dims)))
    if not ok:
        raise shape_error("broadcast_in_dim", "operand does not fit the target shape",
                          f"operand {list(x.shape)}, shape {list(shape)}, dims {list(dims)}",
                          "one increasing target dim per operand dim, of equal size or size 1",
                          "use ap.broadcast_to for NumPy-style broadcasting")
    return ShapeDtype(tuple(shape), x.dtype, x.weak_type)


def _bid_transpose(ct: Any, x: Linear, *, shape: tuple[int, ...],
                   broadcast_dimensions: tuple[int, ...]) -> list[Any]:
    # the adjoint of copying is summing the copies: over new dims and over stretched size-1 dims
    dims = broadcast_dimensions
    stretched = [d for i, d in enumerate(dims) if x.shape[i] == 1 and shape[d] != 1]
    summed = tuple(sorted(set(range(len(shape))) - set(dims)) + stretched)
    out = ct
    if summed:
        out = bind("reduce_sum", ct, axes=tuple(sorted(summed)))
    if shape_of(out) != x.shape:
        out = reshape_p.bind(out, new_sizes=x.shape)
    return [out]


def _bid_batching(args: Sequence[Any], dims: Sequence[Any], *, shape: tuple[int, ...],
                  broadcast_dimensions: tuple[int, ...]) -> tuple[Any, int]:
    x = moveaxis(args[0], dims[0], 0)
    size = np.shape(x)[0]
    out = broadcast_in_dim_p.bind(x, shape=(size, *shape),
                                  broadcast_dimensions=(0, *(d + 1 for d in broadcast_dimensions)))
    return out, 0


def _bid_sharding(specs: Sequence[Spec], x: Any, *, shape: tuple[int, ...],
                  broadcast_dimensions: tuple[int, ...]) -> Spec:
    out: list[Any] = [None] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        if x.shape[i] == shape[d]:
            out[d] = specs[0][i]
    return tuple(out)


broadcast_in_dim_p: Primitive = define_primitive(
    "broadcast_in_dim", abstract_eval=_bid_eval,
    lowering=lambda ctx, x, *, shape, broadcast_dimensions: hlo.broadcast_in_dim(
        ctx.out_type(), x, jx.dense_int_array(broadcast_dimensions)),
    jvp=(lambda g, out, x, **p: broadcast_in_dim_p.bind(g, **p),),
    transpose=_bid_transpose, batching=_bid_batching, sharding=_bid_sharding)


# --- reshape(x, new_sizes) ---------------------------------------------------------------------

def _reshape_eval(x: Any, *, new_sizes: tuple[int, ...]) -> Any:
    if math.prod(new_sizes) != math.prod(x.shape) or any(d < 0 for d in new_sizes):
        raise shape_error("reshape", "sizes differ", f"{list(x.shape)} to {list(new_sizes)}",
                          f"a shape with {math.prod(x.shape)} elements",
                          "pick a new shape with as many elements (one -1 may be inferred)")
    return ShapeDtype(tuple(new_sizes), x.dtype, x.weak_type)


def _reshape_sharding(specs: Sequence[Spec], x: Any, *, new_sizes: tuple[int, ...]) -> Spec:
    """Dimensions are matched in groups of equal size product (a split, a merge, or a size-1
    dim added or removed); a group keeps the sharding of its major-most dimension."""
    spec = specs[0]
    out: list[Any] = [None] * len(new_sizes)
    for ins, outs in _reshape_groups(x.shape, new_sizes):
        sharded = [i for i in ins if spec[i] is not None]
        if not sharded:
            continue
        major_in = next(i for i in ins if x.shape[i] != 1)
        major_out = next((j for j in outs if new_sizes[j] != 1), None)
        if sharded != [major_in] or major_out is None:
            raise ShardingRuleError(message(
                "reshape", "a sharded dimension would be split into or merged from minor ones",
                f"{list(x.shape)} sharded {spec} to {list(new_sizes)}",
                "sharded dimensions that stay the major part of their group",
                "reshard the operand (jax.sharding.reshard) before reshaping"))
        out[major_out] = spec[major_in]
    return tuple(out)


def _reshape_groups(old: Sequence[int], new: Sequence[int]
                    ) -> list[tuple[list[int], list[int]]]:
    """Consecutive dimension groups of `old` and `new` with equal products (size 1s attached
    to the group before them, or the first group)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(old) or j < len(new):
        ins: list[int] = []
        outs: list[int] = []
        p_in = p_out = 1
        while True:
            if i < len(old) and (p_in < p_out or not ins or (p_in == p_out and old[i] == 1)):
                p_in *= old[i]
                ins.append(i)
                i += 1
            elif j < len(new) and (p_out < p_in or not outs or (p_in == p_out and new[j] == 1)):
                p_out *= new[j]
                outs.append(j)
                j += 1
            else:
                break
        groups.append((ins, outs))
    return groups


def _reshape_batching(args: Sequence[Any], dims: Sequence[Any], *,
                      new_sizes: tuple[int, ...]) -> tuple[Any, int]:
    x = moveaxis(args[0], dims[0], 0)
    return reshape_p.bind(x, new_sizes=(np.shape(x)[0], *new_sizes)), 0


reshape_p: Primitive = define_primitive(
    "reshape", abstract_eval=_reshape_eval,
    lowering=lambda ctx, x, *, new_sizes: hlo.reshape(ctx.out_type(), x),
    jvp=(lambda g, out, x, **p: reshape_p.bind(g, **p),),
    transpose=lambda ct, x, *, new_sizes: [reshape_p.bind(ct, new_sizes=x.shape)],
    batching=_reshape_batching, sharding=_reshape_sharding)


# --- transpose(x, permutation) -------------------------------------------------------------------

def _transpose_eval(x: Any, *, permutation: tuple[int, ...]) -> Any:
    if sorted(permutation) != list(range(len(x.shape))):
        raise shape_error("transpose", "not a permutation of the axes", list(permutation),
                          f"a permutation of {list(range(len(x.shape)))}",
                          "list every axis exactly once")
    return ShapeDtype(tuple(x.shape[p] for p in permutation), x.dtype, x.weak_type)


def _transpose_batching(args: Sequence[Any], dims: Sequence[Any], *,
                        permutation: tuple[int, ...]) -> tuple[Any, int]:
    x = moveaxis(args[0], dims[0], 0)
    return transpose_p.bind(x, permutation=(0, *(p + 1 for p in permutation))), 0


transpose_p: Primitive = define_primitive(
    "transpose", abstract_eval=_transpose_eval,
    lowering=lambda ctx, x, *, permutation: hlo.transpose(x, jx.dense_int_array(permutation)),
    jvp=(lambda g, out, x, **p: transpose_p.bind(g, **p),),
    transpose=lambda ct, x, *, permutation: [
        transpose_p.bind(ct, permutation=tuple(int(i) for i in np.argsort(permutation)))],
    batching=_transpose_batching,
    sharding=lambda specs, x, *, permutation: tuple(specs[0][p] for p in permutation))


# --- slice(x, start_indices, limit_indices) ---------------------------------------------------

def _slice_eval(x: Any, *, start_indices: tuple[int, ...], limit_indices: tuple[int, ...]) -> Any:
    ok = (len(start_indices) == len(limit_indices) == len(x.shape) and all(
        0 <= s <= e <= n for s, e, n in zip(start_indices, limit_indices, x.shape)))
    if not ok:
        raise shape_error("slice", "bounds outside the operand",
                          f"{list(start_indices)}:{list(limit_indices)} of {list(x.shape)}",
                          "0 <= start <= limit <= size in every dimension",
                          "clip the bounds to the operand's shape")
    return ShapeDtype(tuple(e - s for s, e in zip(start_indices, limit_indices)), x.dtype,
                      x.weak_type)


def _slice_transpose(ct: Any, x: Linear, *, start_indices: tuple[int, ...],
                     limit_indices: tuple[int, ...]) -> list[Any]:
    # the adjoint of cutting out a block is padding it back with zeros on every side
    out = ct
    for dim, (s, e, n) in enumerate(zip(start_indices, limit_indices, x.shape)):
        parts = []
        if s:
            parts.append(full(_with(shape_of(out), dim, s), 0, x.dtype))
        parts.append(out)
        if n - e:
            parts.append(full(_with(shape_of(out), dim, n - e), 0, x.dtype))
        if len(parts) > 1:
            out = concatenate_p.bind(*parts, dimension=dim)
    return [out]


def _with(shape: tuple[int, ...], dim: int, size: int) -> tuple[int, ...]:
    return (*shape[:dim], size, *shape[dim + 1:])


def _slice_batching(args: Sequence[Any], dims: Sequence[Any], *, start_indices: tuple[int, ...],
                    limit_indices: tuple[int, ...]) -> tuple[Any, int]:
    x = moveaxis(args[0], dims[0], 0)
    return slice_p.bind(x, start_indices=(0, *start_indices),
                        limit_indices=(np.shape(x)[0], *limit_indices)), 0


slice_p: Primitive = define_primitive(
    "slice", abstract_eval=_slice_eval,
    lowering=lambda ctx, x, *, start_indices, limit_indices: hlo.slice(
        x, jx.dense_int_array(start_indices), jx.dense_int_array(limit_indices),
        jx.dense_int_array([1] * len(start_indices))),
    jvp=(lambda g, out, x, **p: slice_p.bind(g, **p),),
    transpose=_slice_transpose, batching=_slice_batching,
    sharding=lambda specs, x, **p: specs[0])


# --- concatenate(*xs, dimension) ---------------------------------------------------------------

def _concat_eval(*xs: Any, dimension: int) -> Any:
    first = xs[0]
    rank = len(first.shape)
    ok = 0 <= dimension < rank and all(
        x.dtype == first.dtype and len(x.shape) == rank
        and all(a == b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != dimension)
        for x in xs)
    if not ok:
        raise shape_error("concatenate", "operands differ outside the joined dimension",
                          ", ".join(f"{x.dtype}{list(x.shape)}" for x in xs),
                          f"one dtype and equal sizes except along dimension {dimension}",
                          "reshape or astype the operands to agree")
    size = sum(x.shape[dimension] for x in xs)
    return ShapeDtype(_with(first.shape, dimension, size), first.dtype,
                      all(x.weak_type for x in xs))


def _concat_transpose(ct: Any, *xs: Any, dimension: int) -> list[Any]:
    out, start = [], 0
    for x in xs:
        n = x.shape[dimension]
        if isinstance(x, Linear):
            lo = [0] * len(x.shape)
            lo[dimension] = start
            hi = list(shape_of(ct))
            hi[dimension] = start + n
            out.append(slice_p.bind(ct, start_indices=tuple(lo), limit_indices=tuple(hi)))
        else:
            out.append(None)
        start += n
    return out


def _concat_batching(args: Sequence[Any], dims: Sequence[Any], *,
                     dimension: int) -> tuple[Any, int]:
    size = batch_size(args, dims)
    moved = [bdim_to_front(a, d, size) for a, d in zip(args, dims)]
    return concatenate_p.bind(*moved, dimension=dimension + 1), 0


def _concat_jvp(index: int) -> Any:
    # linear in each operand: the tangent is the concatenation with zeros elsewhere
    def rule(g: Any, out: Any, *xs: Any, dimension: int) -> Any:
        parts = [g if i == index else full(shape_of(x), 0, x.dtype) for i, x in enumerate(xs)]
        return concatenate_p.bind(*parts, dimension=dimension)

    return rule


class _ConcatJvp(tuple):
    """One JVP rule per operand, for any number of operands."""

    def __getitem__(self, i: Any) -> Any:
        return _concat_jvp(i)


def _concat_sharding(specs: Sequence[Spec], *xs: Any, dimension: int) -> Spec:
    merged = list(merge_specs("concatenate", specs))
    merged[dimension] = None
    return tuple(merged)


concatenate_p = define_primitive(
    "concatenate", abstract_eval=_concat_eval,
    lowering=lambda ctx, *xs, dimension: hlo.concatenate(list(xs), dimension),
    jvp=_ConcatJvp(), transpose=_concat_transpose, batching=_concat_batching,
    sharding=_concat_sharding)


# ----------------------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------------------

def broadcast_to(x: Any, shape: Sequence[int]) -> Any:
    """`x` broadcast to `shape` with NumPy's rules."""
    return _broadcast_to(x, shape=tuple(int(d) for d in shape))


@op(static_argnames=("shape",))
def _broadcast_to(x: Any, *, shape: tuple[int, ...]) -> Any:
    check_array_like("broadcast_to", x)
    xshape = shape_of(x)
    ok = len(xshape) <= len(shape) and all(
        a in (1, b) for a, b in zip(xshape[::-1], shape[::-1]))
    if not ok:
        raise shape_error("broadcast_to", "operand does not broadcast to the shape",
                          list(xshape), f"a shape that broadcasts to {list(shape)}",
                          "give a target whose trailing dims match the operand's or are 1")
    (x,) = promote("broadcast_to", x)
    dims = tuple(range(len(shape) - len(xshape), len(shape)))
    if xshape == shape:
        return x
    return broadcast_in_dim_p.bind(x, shape=shape, broadcast_dimensions=dims)


def reshape(x: Any, shape: int | Sequence[int]) -> Any:
    """`x` with a new shape holding the same elements (row-major); one -1 is inferred."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    return _reshape(x, shape=shape)


@op(static_argnames=("shape",))
def _reshape(x: Any, *, shape: tuple[int, ...]) -> Any:
    (x,) = promote("reshape", x)
    size = math.prod(shape_of(x))
    if shape.count(-1) > 1:
        raise shape_error("reshape", "more than one -1", list(shape), "at most one -1",
                          "spell out all but one dimension")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or size % known:
            raise shape_error("reshape", "cannot infer -1", f"{list(shape_of(x))} to {list(shape)}",
                              "a shape whose known dims divide the size",
                              "pick dims that divide the number of elements")
        shape = tuple(size // known if d == -1 else d for d in shape)
    if shape == shape_of(x):
        return x
    return reshape_p.bind(x, new_sizes=shape)


def transpose(x: Any, axes: Sequence[int] | None = None) -> Any:
    """Permute the axes of `x` (reverse them when `axes` is None)."""
    return _transpose(x, axes=None if axes is None else tuple(int(a) for a in axes))


@op(static_argnames=("axes",))
def _transpose(x: Any, *, axes: tuple[int, ...] | None) -> Any:
    (x,) = promote("transpose", x)
    ndim = len(shape_of(x))
    if axes is None:
        perm = tuple(reversed(range(ndim)))
    else:
        if len(axes) != ndim:
            raise shape_error("transpose", "wrong number of axes", list(axes),
                              f"{ndim} axes", "list every axis of the operand once")
        perm = tuple(canonical_axis("transpose", a, ndim) for a in axes)
    if perm == tuple(range(ndim)):
        return x
    return transpose_p.bind(x, permutation=perm)


def expand_dims(x: Any, axis: int | Sequence[int]) -> Any:
    """Insert size-1 axes at the positions `axis` of the result."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return _expand_dims(x, axis=tuple(int(a) for a in axes))


@op(static_argnames=("axis",))
def _expand_dims(x: Any, *, axis: tuple[int, ...]) -> Any:
    (x,) = promote("expand_dims", x)
    shape = list(shape_of(x))
    out_ndim = len(shape) + len(axis)
    for a in canonical_axes("expand_dims", axis, out_ndim):
        shape.insert(a, 1)
    return reshape_p.bind(x, new_sizes=tuple(shape))


def squeeze(x: Any, axis: int | Sequence[int] | None = None) -> Any:
    """Remove size-1 axes (all of them when `axis` is None)."""
    if axis is not None:
        axis = (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)
    return _squeeze(x, axis=axis)


@op(static_argnames=("axis",))
def _squeeze(x: Any, *, axis: tuple[int, ...] | None) -> Any:
    (x,) = promote("squeeze", x)
    shape = shape_of(x)
    if axis is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    else:
        axes = canonical_axes("squeeze", axis, len(shape))
        bad = [a for a in axes if shape[a] != 1]
        if bad:
            raise shape_error("squeeze", "axis is not of size 1", f"axes {bad} of {list(shape)}",
                              "axes of size 1", "squeeze only size-1 axes (or reshape)")
    if not axes:
        return x
    return reshape_p.bind(x, new_sizes=tuple(d for i, d in enumerate(shape) if i not in axes))


def concatenate(arrays: Sequence[Any], axis: int = 0) -> Any:
    """Join arrays along an existing axis (dtypes are promoted)."""
    if not isinstance(arrays, (list, tuple)) or not arrays:
        raise type_error("concatenate", "needs a non-empty sequence of arrays",
                         type(arrays).__name__, "a list or tuple of arrays",
                         "pass [a, b, ...]")
    return _concatenate(list(arrays), axis=int(axis))


@op(static_argnames=("axis",))
def _concatenate(arrays: list[Any], *, axis: int) -> Any:
    ranks = {len(shape_of(a)) for a in arrays}
    if len(ranks) != 1 or 0 in ranks:
        raise shape_error("concatenate", "operands of different or zero rank",
                          [list(shape_of(a)) for a in arrays], "arrays of one rank >= 1",
                          "expand_dims or reshape the operands to one rank")
    dim = canonical_axis("concatenate", axis, ranks.pop())
    dtype_args = promote_dtypes("concatenate", arrays)
    if len(dtype_args) == 1:
        return dtype_args[0]
    return concatenate_p.bind(*dtype_args, dimension=dim)


def stack(arrays: Sequence[Any], axis: int = 0) -> Any:
    """Join arrays of one shape along a new axis `axis` (dtypes are promoted), as jnp.stack."""
    if not isinstance(arrays, (list, tuple)) or not arrays:
        raise type_error("stack", "needs a non-empty sequence of arrays",
                         type(arrays).__name__, "a list or tuple of arrays", "pass [a, b, ...]")
    return _stack(list(arrays), axis=int(axis))


@op(static_argnames=("axis",))
def _stack(arrays: list[Any], *, axis: int) -> Any:
    check_array_like("stack", *arrays)
    shapes = [shape_of(a) for a in arrays]
    if len(set(shapes)) != 1:
        raise shape_error("stack", "all input arrays must have the same shape",
                          ", ".join(str(list(s)) for s in shapes), "arrays of one shape",
                          "reshape or broadcast_to the arrays to one shape first")
    shape = shapes[0]
    dim = canonical_axis("stack", axis, len(shape) + 1)
    parts = [reshape_p.bind(a, new_sizes=(*shape[:dim], 1, *shape[dim:]))
             for a in promote_dtypes("stack", arrays)]
    return parts[0] if len(parts) == 1 else concatenate_p.bind(*parts, dimension=dim)


def basic_index(x: Any, key: Any) -> Any:
    """`x[key]` for integers, unit-step slices, `...` and `None` (NumPy's basic indexing).
    Out-of-range integers raise IndexError.

    Symbolic and traced operands use the static slice primitive (a clean graph). Concrete
    eager values (variables, eager tensors) gather with the index values as runtime operands
    (`take` with int32 NumPy indices), so `v[i]` compiles once for all i, and a tape records
    the indices as leaves (one structure for all i)."""
    items, out_shape = _index_items(shape_of(x), key)
    if _indices_as_operands(x):
        return _gathered(x, items, out_shape)
    starts = tuple(start for start, _, _ in items)
    limits = tuple(stop for _, stop, _ in items)
    out = x
    if starts != (0,) * len(items) or limits != shape_of(x):
        out = slice_p.bind(out, start_indices=starts, limit_indices=limits)
    if out_shape != shape_of(out):
        out = reshape_p.bind(out, new_sizes=out_shape)
    return out


Item = tuple[int, int, bool]  # per operand dim: start, stop, and whether an integer dropped it


def _index_items(shape: tuple[int, ...], key: Any) -> tuple[list[Item], tuple[int, ...]]:
    """Per operand dim (start, stop, is_int), and the result's shape."""
    keys = list(key) if isinstance(key, tuple) else [key]
    if sum(k is Ellipsis for k in keys) > 1:
        raise IndexError("ap indexing: at most one Ellipsis (...) per index")
    consumed = sum(1 for k in keys if k is not None and k is not Ellipsis)
    if consumed > len(shape):
        raise IndexError(f"ap indexing: {consumed} indices for an array of rank {len(shape)}")
    fill = [slice(None)] * (len(shape) - consumed)
    at = next((j for j, k in enumerate(keys) if k is Ellipsis), None)  # identity: no `in`
    if at is not None:
        keys[at:at + 1] = fill
    else:
        keys += fill
    items: list[Item] = []
    out_shape: list[int] = []
    for k in keys:
        if k is None:
            out_shape.append(1)
            continue
        n = shape[len(items)]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError("ap indexing: only unit-step slices; use ap.take for others")
            stop = max(stop, start)
            items.append((start, stop, False))
            out_shape.append(stop - start)
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"ap indexing: index {int(k)} out of range for size {n}")
            items.append((i, i + 1, True))
        else:
            raise IndexError(f"ap indexing: unsupported index {k!r}; use ap.take (gather) for "
                             "array indices")
    return items, tuple(out_shape)


def _indices_as_operands(x: Any) -> bool:
    """Whether `x` is a concrete eager value (a variable or eager tensor, evaluated now or
    recorded by a tape), not a graph tensor, a JAX tracer or a value traced by ap.function."""
    from adplugin import _context
    from adplugin._operator_types import ConcreteValueMethods

    if not isinstance(x, ConcreteValueMethods) or not jx.at_top_level():
        return False
    scope = _context.effective()
    return scope is None or (scope.graph is None and scope.frame is None)


def _gathered(x: Any, items: list[Item], out_shape: tuple[int, ...]) -> Any:
    """Basic indexing as gathers whose indices are operands: an integer takes a scalar index
    (dropping its dim), a partial slice takes a range; the last dims go first, so the axes
    still to index keep their positions."""
    from adplugin.primitives.indexing import take_p

    shape = shape_of(x)
    out = x
    for axis in reversed(range(len(items))):
        start, stop, is_int = items[axis]
        if is_int:
            out = take_p.bind(out, np.asarray(start, np.int32), axis=axis)
        elif (start, stop) != (0, shape[axis]):
            out = take_p.bind(out, np.arange(start, stop, dtype=np.int32), axis=axis)
    if out_shape != shape_of(out):
        out = reshape_p.bind(out, new_sizes=out_shape)
    return out
