"""Indexing primitives: `take` (a gather along one axis) and its transpose `scatter_add`.

`take(x, i, axis)[..., j, ...] = x[..., i[j], ...]`: the output's shape is
`x.shape[:axis] + i.shape + x.shape[axis+1:]`. Out-of-range indices clamp to [0, n-1], as a
StableHLO gather does. `scatter_add(u, i, axis, operand_shape)` is its adjoint: zeros of
`operand_shape` with the slices of `u` added at the (equally clamped) indices, repeated indices
accumulating, so <take(x, i), u> = <x, scatter_add(u, i)> for every x, u and i.

Batching with both operands batched merges the batch dimension with `axis` (one axis of size
B*N) and offsets each example's indices by b*N, so one gather/scatter serves the whole batch.
"""

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
    define_primitive,
    moveaxis,
)
from adplugin.primitives._rules import bind, full
from adplugin.primitives._wrapping import (
    canonical_axis,
    check_array_like,
    convert,
    dtype_of,
    op,
    promote,
    shape_of,
)

hlo = jx.hlo


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------

def _out_shape(xshape: Sequence[int], ishape: Sequence[int], axis: int) -> tuple[int, ...]:
    return (*xshape[:axis], *ishape, *xshape[axis + 1:])


def _window_dims(axis: int, rank: int, index_rank: int) -> list[int]:
    """Output (gather) / update (scatter) dims holding the operand dims other than `axis`."""
    return [*range(axis), *range(axis + index_rank, rank + index_rank - 1)]


def _check_indices(name: str, indices: Any) -> None:
    kind = jx.kind_of(indices.dtype)
    if kind not in "iu":
        raise type_error(name, "indices must be integers", np.dtype(indices.dtype).name,
                         "a signed or unsigned integer dtype",
                         "convert the indices with ap.astype(indices, 'int32')")


def _check_axis(name: str, axis: int, rank: int) -> None:
    if not 0 <= axis < rank:
        raise shape_error(name, "axis out of range", f"axis={axis} for rank {rank}",
                          f"0 <= axis < {rank}", "use the ap.take wrapper (it normalizes axes)")


def _zeros(ctx: Any) -> Any:
    dtype = np.dtype(ctx.avals_out[0].dtype)
    return hlo.broadcast_in_dim(ctx.out_type(), jx.ir_constant(np.zeros((), dtype)),
                                jx.dense_int_array(()))


def _clamp_indices(indices: Any, n: int) -> Any:
    """Indices clamped to [0, n-1] in their own dtype (what gather does implicitly)."""
    dtype, shape = dtype_of(indices), shape_of(indices)
    info = np.iinfo(dtype)
    if n - 1 < info.max:
        indices = bind("min", indices, full(shape, max(n - 1, 0), dtype))
    if info.min < 0:
        indices = bind("max", indices, full(shape, 0, dtype))
    return indices


def _merged_indices(indices: Any, bdim: int, batch: int, n: int) -> Any:
    """Example b's index i becomes b*n + clamp(i), an index into the merged (B*n) axis."""
    wide = jx.canonical_dtype(np.int64)  # int32 unless x64 is enabled
    if batch * n > np.iinfo(wide).max:
        raise shape_error("take", "batched axis too long for the index dtype",
                          f"{batch} x {n} elements", f"at most {np.iinfo(wide).max}",
                          "enable x64 (jax.config.update('jax_enable_x64', True))")
    indices = convert(_clamp_indices(indices, n), wide)
    offsets = np.arange(batch, dtype=wide) * n
    offsets = bind("broadcast_in_dim", offsets, shape=shape_of(indices),
                   broadcast_dimensions=(bdim,))
    return bind("add", indices, offsets)


def _flat_axes(entry: Any) -> tuple[Any, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _check_spec(name: str, spec: Spec) -> Spec:
    used = [a for entry in spec for a in _flat_axes(entry)]
    if len(used) != len(set(used)):
        raise ShardingRuleError(message(
            name, "a mesh axis would shard two output dimensions", spec,
            "each mesh axis used by at most one dimension",
            "reshard the operand or the indices (jax.sharding.reshard) before the op"))
    return spec


# --- take(x, indices, axis) ------------------------------------------------------------------

def _take_eval(x: Any, indices: Any, *, axis: int) -> ShapeDtype:
    _check_indices("take", indices)
    _check_axis("take", axis, len(x.shape))
    if x.shape[axis] == 0 and math.prod(indices.shape) != 0:
        raise shape_error("take", "indices into an empty axis", f"axis {axis} of {x.shape}",
                          "an axis with at least one element (or no indices)",
                          "check the operand's shape")
    return ShapeDtype(_out_shape(x.shape, indices.shape, axis), x.dtype, x.weak_type)


def _take_lower(ctx: Any, x: Any, indices: Any, *, axis: int) -> Any:
    xa, ia = ctx.avals_in
    if math.prod(ctx.avals_out[0].shape) == 0:
        return _zeros(ctx)
    k = len(ia.shape)
    dnums = hlo.GatherDimensionNumbers.get(
        offset_dims=_window_dims(axis, len(xa.shape), k), collapsed_slice_dims=[axis],
        operand_batching_dims=[], start_indices_batching_dims=[], start_index_map=[axis],
        index_vector_dim=k)  # index_vector_dim == rank: each index is one scalar
    sizes = [1 if d == axis else s for d, s in enumerate(xa.shape)]
    return hlo.gather(x, indices, dnums, jx.dense_int_array(sizes), indices_are_sorted=False)


def _take_transpose(ct: Any, x: Any, indices: Any, *, axis: int) -> list[Any]:
    # the adjoint of reading rows is adding the cotangent's rows back where they were read
    if isinstance(indices, Linear) or not isinstance(x, Linear):
        raise TypeError("ap.take is linear in its operand only, not in its indices")
    return [scatter_add_p.bind(ct, indices, axis=axis, operand_shape=x.shape), None]


def _take_batching(args: Sequence[Any], dims: Sequence[int | None], *,
                   axis: int) -> tuple[Any, int]:
    x, indices = args
    xdim, idim = dims
    if idim is None:  # only the operand: its batch dim rides along in front
        assert xdim is not None
        return take_p.bind(moveaxis(x, xdim, 0), indices, axis=axis + 1), 0
    if xdim is None:  # only the indices: their batch dim lands among the index dims
        return take_p.bind(x, indices, axis=axis), axis + idim
    # both: x[b, ..., i, ...] = merged[..., b*n + i, ...] with the batch dim merged into axis
    x = moveaxis(x, xdim, axis)
    shape = shape_of(x)
    batch, n = shape[axis], shape[axis + 1]
    x = bind("reshape", x, new_sizes=(*shape[:axis], batch * n, *shape[axis + 2:]))
    merged = _merged_indices(indices, idim, batch, n)
    return take_p.bind(x, merged, axis=axis), axis + idim


def _take_sharding(specs: Sequence[Spec], x: Any, indices: Any, *, axis: int) -> Spec:
    xspec, ispec = specs
    return _check_spec("take", (*xspec[:axis], *ispec, *xspec[axis + 1:]))


take_p: Primitive = define_primitive(
    "take", abstract_eval=_take_eval, lowering=_take_lower,
    jvp=(lambda g, out, x, indices, *, axis: take_p.bind(g, indices, axis=axis), None),
    transpose=_take_transpose, batching=_take_batching, sharding=_take_sharding)


# --- scatter_add(updates, indices, axis, operand_shape) ---------------------------------------

def _scatter_eval(updates: Any, indices: Any, *, axis: int,
                  operand_shape: tuple[int, ...]) -> ShapeDtype:
    _check_indices("scatter_add", indices)
    _check_axis("scatter_add", axis, len(operand_shape))
    expected = _out_shape(operand_shape, indices.shape, axis)
    if tuple(updates.shape) != expected:
        raise shape_error("scatter_add", "updates do not fit the indices and operand shape",
                          f"updates {list(updates.shape)}, indices {list(indices.shape)}",
                          f"updates of shape {list(expected)} for operand_shape "
                          f"{list(operand_shape)}, axis {axis}",
                          "shape updates like ap.take(zeros(operand_shape), indices, axis)")
    return ShapeDtype(tuple(operand_shape), updates.dtype, updates.weak_type)


def _scatter_lower(ctx: Any, updates: Any, indices: Any, *, axis: int,
                   operand_shape: tuple[int, ...]) -> Any:
    ua, ia = ctx.avals_in
    zeros = _zeros(ctx)
    if math.prod(operand_shape) == 0 or math.prod(ua.shape) == 0:
        return zeros
    # clamp like gather (scatter would drop out-of-range updates), so this is take's adjoint
    idtype = np.dtype(ia.dtype)
    hi = min(operand_shape[axis] - 1, np.iinfo(idtype).max)
    itype = ctx.ir_type(ia)
    lo_v, hi_v = (hlo.broadcast_in_dim(itype, jx.ir_constant(np.asarray(v, idtype)),
                                       jx.dense_int_array(())) for v in (0, hi))
    indices = hlo.clamp(lo_v, indices, hi_v)
    k = len(ia.shape)
    dnums = hlo.ScatterDimensionNumbers.get(
        update_window_dims=_window_dims(axis, len(operand_shape), k),
        inserted_window_dims=[axis], input_batching_dims=[], scatter_indices_batching_dims=[],
        scattered_dims_to_operand_dims=[axis], index_vector_dim=k)
    scatter = hlo.ScatterOp([ctx.out_type()], [zeros], indices, [updates], dnums,
                            indices_are_sorted=jx.ir.BoolAttr.get(False),
                            unique_indices=jx.ir.BoolAttr.get(False))
    scalar = jx.scalar_ir_type(ua.dtype)
    region = scatter.update_computation.blocks.append(scalar, scalar)
    with jx.ir.InsertionPoint(region):  # combiner: old + update, so duplicates accumulate
        hlo.return_([hlo.add(region.arguments[0], region.arguments[1])])
    return scatter.results[0]


def _scatter_transpose(ct: Any, updates: Any, indices: Any, *, axis: int,
                       operand_shape: tuple[int, ...]) -> list[Any]:
    if isinstance(indices, Linear) or not isinstance(updates, Linear):
        raise TypeError("ap.scatter_add is linear in its updates only, not in its indices")
    return [take_p.bind(ct, indices, axis=axis), None]


def _scatter_batching(args: Sequence[Any], dims: Sequence[int | None], *, axis: int,
                      operand_shape: tuple[int, ...]) -> tuple[Any, int]:
    updates, indices = args
    udim, idim = dims
    if idim is None:  # only the updates: one more leading operand dim
        assert udim is not None
        updates = moveaxis(updates, udim, 0)
        batch = shape_of(updates)[0]
        return scatter_add_p.bind(updates, indices, axis=axis + 1,
                                  operand_shape=(batch, *operand_shape)), 0
    # batched indices: the updates' batch dim sits where the indices' does, at axis + idim
    batch, n, where = shape_of(indices)[idim], operand_shape[axis], axis + idim
    if udim is None:
        ushape = shape_of(updates)
        new = (*ushape[:where], batch, *ushape[where:])
        updates = bind("broadcast_in_dim", updates, shape=new,
                       broadcast_dimensions=tuple(d for d in range(len(new)) if d != where))
    else:
        updates = moveaxis(updates, udim, where)
    # scatter into the merged (B*n) axis at b*n + i, then split it into (B, n)
    before, after = operand_shape[:axis], operand_shape[axis + 1:]
    out = scatter_add_p.bind(updates, _merged_indices(indices, idim, batch, n), axis=axis,
                             operand_shape=(*before, batch * n, *after))
    return bind("reshape", out, new_sizes=(*before, batch, n, *after)), axis


def _scatter_sharding(specs: Sequence[Spec], updates: Any, indices: Any, *, axis: int,
                      operand_shape: tuple[int, ...]) -> Spec:
    # window dims keep the updates' sharding; the scattered axis is summed into, so replicated
    uspec, k = specs[0], len(indices.shape)
    return _check_spec("scatter_add", (*uspec[:axis], None, *uspec[axis + k:]))


scatter_add_p: Primitive = define_primitive(
    "scatter_add", abstract_eval=_scatter_eval, lowering=_scatter_lower,
    jvp=(lambda g, out, u, indices, **p: scatter_add_p.bind(g, indices, **p), None),
    transpose=_scatter_transpose, batching=_scatter_batching, sharding=_scatter_sharding)


# ----------------------------------------------------------------------------------------------
# Wrapper
# ----------------------------------------------------------------------------------------------

_MODES = ("fill", "clip", "wrap")


def take(a: Any, indices: Any, axis: int | None = None, mode: str | None = None) -> Any:
    """Elements of `a` at `indices` along `axis` (flattened `a` when None), as `jnp.take`.

    `mode`: "fill" (default) counts negative indices from the end and fills indices outside
    [-n, n) with NaN (floats), the dtype's min (signed), max (unsigned) or True (bool); "clip"
    clamps indices to [0, n-1] (negative ones to 0, as NumPy); "wrap" takes them modulo n.
    Differentiable in `a`; the reverse mode adds cotangents of repeated indices together.
    """
    if isinstance(indices, (list, tuple)):
        indices = np.asarray(indices)
    if mode is None:
        mode = "fill"
    if mode not in _MODES:
        raise ValueError(message("take", "unsupported mode", repr(mode),
                                 " or ".join(repr(m) for m in (None, *_MODES)),
                                 "pass mode='fill' (default), 'clip' or 'wrap'"))
    check_array_like("take", a, indices)
    kind = jx.kind_of(dtype_of(indices))
    if kind not in "iub":
        raise type_error("take", "indices must be integers", f"{dtype_of(indices).name} indices",
                         "an integer (or boolean) array of indices",
                         "round and convert them first, e.g. ap.astype(indices, 'int32')")
    return _take(a, indices, axis=None if axis is None else int(axis), mode=mode)


@op(static_argnames=("axis", "mode"))
def _take(a: Any, indices: Any, *, axis: int | None, mode: str) -> Any:
    (a,) = promote("take", a)
    (indices,) = promote("take", indices)
    if axis is None:
        a = bind("reshape", a, new_sizes=(math.prod(shape_of(a)),))
        axis = 0
    axis = canonical_axis("take", axis, len(shape_of(a)))
    n = shape_of(a)[axis]
    if n == 0 and math.prod(shape_of(indices)) != 0:
        raise shape_error("take", "non-empty take from an empty axis",
                          f"{list(shape_of(indices))} indices into axis {axis} of "
                          f"{list(shape_of(a))}", "an axis with at least one element",
                          "check the operand's shape")
    indices = _widen(indices, n)
    if mode == "clip" or n == 0:  # the primitive clamps
        return take_p.bind(a, indices, axis=axis)
    if mode == "wrap":
        return take_p.bind(a, _floor_mod(indices, n), axis=axis)
    # fill: count negatives from the end, then replace what is still out of range
    indices = _from_end(indices, n)
    out = take_p.bind(a, indices, axis=axis)
    valid = _in_range(indices, n)
    if valid is None:
        return out
    out_shape, dtype = shape_of(out), dtype_of(out)
    valid = bind("broadcast_in_dim", valid, shape=out_shape,
                 broadcast_dimensions=tuple(range(axis, axis + len(shape_of(indices)))))
    return bind("select", valid, out, full(out_shape, _fill_value(dtype), dtype))


def _widen(indices: Any, n: int) -> Any:
    """Booleans become int32; signed indices too narrow to hold n (for i + n) become int32."""
    dtype = dtype_of(indices)
    if jx.kind_of(dtype) == "b" or (jx.kind_of(dtype) == "i" and np.iinfo(dtype).max < n):
        return convert(indices, np.dtype(np.int32) if n < 2**31 else jx.canonical_dtype(np.int64))
    return indices


def _const(indices: Any, value: int) -> Any:
    return full(shape_of(indices), value, dtype_of(indices))


def _from_end(indices: Any, n: int) -> Any:
    if jx.kind_of(dtype_of(indices)) == "u":
        return indices
    negative = bind("lt", indices, _const(indices, 0))
    return bind("select", negative, bind("add", indices, _const(indices, n)), indices)


def _in_range(indices: Any, n: int) -> Any | None:
    """0 <= i < n as a boolean array (None when every index of the dtype is in range)."""
    info = np.iinfo(dtype_of(indices))
    below = bind("lt", indices, _const(indices, n)) if n <= info.max else None
    if info.min >= 0:
        return below
    above = bind("ge", indices, _const(indices, 0))
    if below is None:
        return above
    return bind("select", above, below, full(shape_of(indices), False, np.bool_))


def _floor_mod(indices: Any, n: int) -> Any:
    """i mod n with the sign of n (Python's %), from truncating integer division."""
    if np.iinfo(dtype_of(indices)).max < n:  # unsigned and narrower than n: already in range
        return indices
    nn = _const(indices, n)
    rem = bind("sub", indices, bind("mul", bind("div", indices, nn), nn))
    if jx.kind_of(dtype_of(indices)) == "u":
        return rem
    return bind("select", bind("lt", rem, _const(indices, 0)), bind("add", rem, nn), rem)


def _fill_value(dtype: np.dtype) -> Any:
    if jx.kind_of(dtype) == "f":
        return np.nan
    if jx.kind_of(dtype) == "b":
        return True
    info = np.iinfo(dtype)
    return info.min if jx.kind_of(dtype) == "i" else info.max
