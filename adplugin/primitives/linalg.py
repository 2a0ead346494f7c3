"""Linear algebra: the bilinear `dot_general` primitive and NumPy-style matmul/dot.

`dot_general(x, y, ((xc, yc), (xb, yb)))` multiplies and sums over the paired contracting dims
xc/yc, keeps the paired batch dims xb/yb, and lays the output out as: batch dims, x's free dims
in order, y's free dims in order (as `lax.dot_general` and StableHLO do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import ShardingRuleError, message, shape_error, type_error
from adplugin._primitive import Linear, ShapeDtype, Spec, define_primitive
from adplugin.primitives._rules import bind
from adplugin.primitives._wrapping import (
    check_array_like,
    op,
    promote,
    promote_dtypes,
    shape_of,
)

hlo = jx.hlo

Dims = tuple[int, ...]
DimensionNumbers = tuple[tuple[Dims, Dims], tuple[Dims, Dims]]


def _free(ndim: int, contracting: Sequence[int], batch: Sequence[int]) -> Dims:
    """The dimensions that are neither contracted nor batched, in order."""
    return tuple(i for i in range(ndim) if i not in contracting and i not in batch)


# --- abstract evaluation -----------------------------------------------------------------------

def _dot_eval(x: Any, y: Any, *, dimension_numbers: DimensionNumbers) -> ShapeDtype:
    (xc, yc), (xb, yb) = dimension_numbers
    if np.dtype(x.dtype) != np.dtype(y.dtype):
        raise type_error("dot_general", "operands of different dtypes",
                         f"{np.dtype(x.dtype).name} and {np.dtype(y.dtype).name}",
                         "operands of one dtype", "call ap.matmul/ap.dot, which promote")

    def valid(dims: Sequence[int], ndim: int) -> bool:
        return len(set(dims)) == len(dims) and all(0 <= d < ndim for d in dims)

    ok = (len(xc) == len(yc) and len(xb) == len(yb)
          and valid((*xc, *xb), len(x.shape)) and valid((*yc, *yb), len(y.shape))
          and all(x.shape[i] == y.shape[j] for i, j in zip((*xc, *xb), (*yc, *yb), strict=True)))
    if not ok:
        raise shape_error(
            "dot_general", "dimension numbers do not fit the operands",
            f"shapes {list(x.shape)} and {list(y.shape)}, contracting {list(xc)} x {list(yc)}, "
            f"batch {list(xb)} x {list(yb)}",
            "paired, distinct, in-range dims of equal size on both sides",
            "pair each contracting/batch dim of x with one of y of the same size "
            "(or call ap.matmul/ap.dot)")
    shape = (*(x.shape[i] for i in xb), *(x.shape[i] for i in _free(len(x.shape), xc, xb)),
             *(y.shape[i] for i in _free(len(y.shape), yc, yb)))
    return ShapeDtype(shape, np.dtype(x.dtype), x.weak_type and y.weak_type)


def _dot_lower(ctx: Any, x: Any, y: Any, *, dimension_numbers: DimensionNumbers) -> Any:
    (xc, yc), (xb, yb) = dimension_numbers
    dnums = hlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=list(xb), rhs_batching_dimensions=list(yb),
        lhs_contracting_dimensions=list(xc), rhs_contracting_dimensions=list(yc))
    precision = jx.ir.ArrayAttr.get([hlo.PrecisionAttr.get("DEFAULT")] * 2)
    return hlo.dot_general(ctx.out_type(), x, y, dnums, precision_config=precision)


# --- transpose: the adjoint with respect to one operand is a dot_general with the other -------

def _transpose_operand(ct: Any, x_ndim: int, y: Any, dimension_numbers: DimensionNumbers,
                       x_is_lhs: bool) -> Any:
    """Cotangent of operand x (of rank x_ndim) from ct and the other operand y.

    ct's dims are: batch, then x's free dims and y's free dims (in the order lhs, rhs).
    Contract ct's y-free dims with y's free dims and batch over the batch dims; the result
    holds x's batch dims, x's free dims, then x's contracting dims ordered like y's, which a
    transpose puts back into x's order.
    """
    (xc, yc), (xb, yb) = dimension_numbers
    x_free, y_free = _free(x_ndim, xc, xb), _free(len(shape_of(y)), yc, yb)
    nb = len(xb)
    start = nb + (len(x_free) if x_is_lhs else 0)
    ct_y = tuple(range(start, start + len(y_free)))
    dims = ((ct_y, y_free), (tuple(range(nb)), yb))
    out = bind("dot_general", ct, y, dimension_numbers=dims)
    xc_by_y = [xc[k] for k in np.argsort(yc, kind="stable")]
    perm = tuple(int(i) for i in np.argsort([*xb, *x_free, *xc_by_y]))
    if perm != tuple(range(x_ndim)):
        out = bind("transpose", out, permutation=perm)
    return out


def _swap(dimension_numbers: DimensionNumbers) -> DimensionNumbers:
    (xc, yc), (xb, yb) = dimension_numbers
    return (yc, xc), (yb, xb)


def _dot_transpose(ct: Any, x: Any, y: Any, *,
                   dimension_numbers: DimensionNumbers) -> list[Any]:
    if isinstance(x, Linear) and isinstance(y, Linear):
        raise TypeError("ap.dot_general: both operands linear; a product is bilinear, "
                        "transpose it with respect to one operand at a time")
    if isinstance(x, Linear):
        return [_transpose_operand(ct, x.ndim, y, dimension_numbers, True), None]
    return [None, _transpose_operand(ct, y.ndim, x, _swap(dimension_numbers), False)]


# --- batching: the vmapped dim becomes a batch dim (both batched) or a free dim (one) ----------

def _dot_batching(args: Sequence[Any], dims: Sequence[Any], *,
                  dimension_numbers: DimensionNumbers) -> tuple[Any, int]:
    (xc, yc), (xb, yb) = dimension_numbers
    (x, y), (dx, dy) = args, dims

    def shift(ds: Sequence[int], d: int) -> Dims:  # unbatched dim numbers -> batched ones
        return tuple(i + (i >= d) for i in ds)

    if dx is not None and dy is not None:
        dn = ((shift(xc, dx), shift(yc, dy)), ((dx, *shift(xb, dx)), (dy, *shift(yb, dy))))
        return bind("dot_general", x, y, dimension_numbers=dn), 0
    if dx is not None:
        x_free = _free(len(shape_of(x)) - 1, xc, xb)
        dn = ((shift(xc, dx), yc), (shift(xb, dx), yb))
        out_dim = len(xb) + len([i for i in x_free if i < dx])
    else:
        x_free = _free(len(shape_of(x)), xc, xb)
        y_free = _free(len(shape_of(y)) - 1, yc, yb)
        dn = ((xc, shift(yc, dy)), (xb, shift(yb, dy)))
        out_dim = len(xb) + len(x_free) + len([i for i in y_free if i < dy])
    return bind("dot_general", x, y, dimension_numbers=dn), out_dim


def _mesh_axes(entry: Any) -> tuple[Any, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _dot_sharding(specs: Sequence[Spec], x: Any, y: Any, *,
                  dimension_numbers: DimensionNumbers) -> Spec:
    # batch dims keep their sharding, free dims keep theirs; contracted dims disappear
    (xc, yc), (xb, yb) = dimension_numbers
    xs, ys = specs
    batch = [xs[i] if xs[i] is not None else ys[j] for i, j in zip(xb, yb, strict=True)]
    out = (*batch, *(xs[i] for i in _free(len(x.shape), xc, xb)),
           *(ys[i] for i in _free(len(y.shape), yc, yb)))
    used = [a for entry in out for a in _mesh_axes(entry)]
    if len(used) != len(set(used)):
        raise ShardingRuleError(message(
            "dot_general", "one mesh axis would shard two output dimensions",
            f"operand specs {tuple(xs)} and {tuple(ys)}", "distinct mesh axes on output dims",
            "reshard one operand (jax.sharding.reshard) before the product"))
    return out


dot_general_p = define_primitive(
    "dot_general", abstract_eval=_dot_eval, lowering=_dot_lower,
    jvp=(lambda g, out, x, y, *, dimension_numbers: bind(  # bilinear: d(xy) = dx y + x dy
             "dot_general", g, y, dimension_numbers=dimension_numbers),
         lambda g, out, x, y, *, dimension_numbers: bind(
             "dot_general", x, g, dimension_numbers=dimension_numbers)),
    transpose=_dot_transpose, batching=_dot_batching, sharding=_dot_sharding)


# ----------------------------------------------------------------------------------------------
# NumPy-style wrappers
# ----------------------------------------------------------------------------------------------

def _contraction_error(name: str, a: Sequence[int], b: Sequence[int], ka: int, kb: int,
                       which: str) -> Exception:
    return shape_error(name, "contracted dimensions differ in size",
                       f"shapes {list(a)} and {list(b)} ({ka} vs {kb})",
                       f"a's last dimension equal to b's {which}",
                       "transpose or reshape an operand so the inner dimensions agree")


def _squeeze(x: Any, axes: Sequence[int]) -> Any:
    if not axes:
        return x
    shape = tuple(d for i, d in enumerate(shape_of(x)) if i not in axes)
    return bind("reshape", x, new_sizes=shape)


@op()
def matmul(a: Any, b: Any) -> Any:
    """Matrix product with NumPy's semantics: 1-D operands act as vectors, and leading
    (batch) dimensions broadcast without being materialized."""
    check_array_like("matmul", a, b)
    a_shape, b_shape = shape_of(a), shape_of(b)
    for i, s in enumerate((a_shape, b_shape)):
        if not s:
            raise shape_error("matmul", f"operand {i} is a scalar", "a 0-d array",
                              "arrays with at least one dimension",
                              "use ap.multiply (or ap.dot) to scale by a scalar")
    a, b = promote_dtypes("matmul", [a, b])
    a_mat, b_mat = len(a_shape) > 1, len(b_shape) > 1
    ka, kb = a_shape[-1], b_shape[-2 if b_mat else 0]
    if ka != kb:
        raise _contraction_error("matmul", a_shape, b_shape, ka, kb,
                                 "second-to-last dimension" if b_mat else "only dimension")
    # Leading dims, right-aligned. As jnp does: a dim present on one side only, or of size 1
    # on one side, becomes a free dim of the other operand (no broadcast is materialized);
    # equal dims become batch dims; size 1 on both sides is squeezed and put back after.
    a_lead, b_lead = a_shape[:-2] if a_mat else (), b_shape[:-2] if b_mat else ()
    n = len(a_lead) if len(a_lead) > len(b_lead) else len(b_lead)
    a_pad = (None,) * (n - len(a_lead)) + tuple(a_lead)
    b_pad = (None,) * (n - len(b_lead)) + tuple(b_lead)
    a_sq: list[int] = []
    b_sq: list[int] = []
    both_sq: list[int] = []
    a_batch: list[int] = []
    b_batch: list[int] = []
    out_batch: list[int] = []
    out_a: list[int] = []
    out_b: list[int] = []
    for i, (da, db) in enumerate(zip(a_pad, b_pad, strict=True)):
        if da is None:
            out_b.append(i)
        elif db is None:
            out_a.append(i)
        elif da == 1 and db == 1:
            a_sq.append(len(out_batch) + len(out_a) + len(a_sq))
            b_sq.append(len(out_batch) + len(out_b) + len(b_sq))
            both_sq.append(i)
        elif da == 1:
            out_b.append(i)
            a_sq.append(len(out_batch) + len(out_a) + len(a_sq))
        elif db == 1:
            out_a.append(i)
            b_sq.append(len(out_batch) + len(out_b) + len(b_sq))
        elif da == db:
            a_batch.append(len(out_batch) + len(out_a))
            b_batch.append(len(out_batch) + len(out_b))
            out_batch.append(i)
        else:
            raise shape_error("matmul", "batch dimensions do not broadcast",
                              f"shapes {list(a_shape)} and {list(b_shape)}",
                              "leading dimensions equal or 1, aligned from the right",
                              "reshape or expand_dims an operand so the batch dims line up")
    if a_mat:
        out_a.append(n)
    if b_mat:
        out_b.append(n + a_mat)
    a, b = _squeeze(a, a_sq), _squeeze(b, b_sq)
    dn = (((len(shape_of(a)) - 1,), (len(shape_of(b)) - 1 - b_mat,)),
          (tuple(a_batch), tuple(b_batch)))
    out = dot_general_p.bind(a, b, dimension_numbers=dn)
    perm = tuple(int(i) for i in np.argsort([*out_batch, *out_a, *out_b]))
    if perm != tuple(range(len(perm))):
        out = bind("transpose", out, permutation=perm)
    if both_sq:
        shape = list(shape_of(out))
        for i in both_sq:
            shape.insert(i, 1)
        out = bind("reshape", out, new_sizes=tuple(shape))
    return out


@op()
def dot(a: Any, b: Any) -> Any:
    """np.dot: a scalar operand multiplies; otherwise contract a's last axis with b's
    second-to-last (or only) axis, stacking the remaining dims of a, then of b."""
    check_array_like("dot", a, b)
    a_shape, b_shape = shape_of(a), shape_of(b)
    if not a_shape or not b_shape:
        return bind("mul", *promote("dot", a, b))
    a, b = promote_dtypes("dot", [a, b])
    bk = 0 if len(b_shape) == 1 else len(b_shape) - 2
    if a_shape[-1] != b_shape[bk]:
        which = "only dimension" if len(b_shape) == 1 else "second-to-last dimension"
        raise _contraction_error("dot", a_shape, b_shape, a_shape[-1], b_shape[bk], which)
    dn = (((len(a_shape) - 1,), (bk,)), ((), ()))
    return dot_general_p.bind(a, b, dimension_numbers=dn)
