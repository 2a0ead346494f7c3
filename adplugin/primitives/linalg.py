"""Linear algebra: the bilinear `dot_general` primitive and NumPy-style matmul/dot.

`dot_general(x, y, ((xc, yc), (xb, yb)))` multiplies and sums over the paired contracting dims
xc/yc, keeps the paired batch dims xb/yb, and lays the output out as: batch dims, x's free dims
in order, y's free dims in order (as `lax.dot_general` and StableHLO do).

Its optional params are `lax.dot_general`'s: `precision` (None or a pair of `lax.Precision`;
None lowers with `jax.default_matmul_precision` in effect, as `jnp.matmul` does) and
`preferred_element_type` (the output dtype, not narrower than the operands'). The wrappers
leave a param out when it is None, so plain products keep one set of params.

`checkpoint_policies` holds `jax.checkpoint_policies` made to recognize adplugin's dot as JAX's
(JAX's own policies compare the primitive by identity with `lax.dot_general_p`).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import ShardingRuleError, message, shape_error, type_error
from adplugin._primitive import Linear, ShapeDtype, Spec, define_primitive
from adplugin.primitives._rules import bind
from adplugin.primitives._wrapping import (
    check_array_like,
    convert,
    dtype_of,
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


# --- precision and preferred_element_type -------------------------------------------------------

_PRECISION_FIX = ("pass None, 'default', 'high', 'highest' (or 'bfloat16', 'tensorfloat32', "
                  "'float32'), a jax.lax.Precision, or a pair of them")


def resolve_precision(name: str, precision: Any) -> tuple[Any, Any] | None:
    """`precision` as the primitive keeps it: None or a pair of `lax.Precision`; None reads
    `jax.default_matmul_precision` (as `jnp.matmul` does when it is called)."""
    try:
        canonical = jx.canonical_precision(precision)
    except (ValueError, TypeError, KeyError):
        raise type_error(name, "not a matmul precision", repr(precision)[:80],
                         "a precision jax.lax.dot_general accepts", _PRECISION_FIX) from None
    if canonical is not None and not _is_precision_pair(canonical):
        where = "jax.default_matmul_precision" if precision is None else "precision="
        raise type_error(name, f"a dot algorithm ({where}) is not supported by adplugin's "
                         "dot_general", repr(canonical)[:80], "a jax.lax.Precision level",
                         _PRECISION_FIX + "; or use jnp.matmul for dot algorithm presets")
    return canonical  # type: ignore[no-any-return]


def _is_precision_pair(p: Any) -> bool:
    return (isinstance(p, tuple) and len(p) == 2
            and all(isinstance(q, jax.lax.Precision) for q in p))


def _preferred(name: str, preferred: Any, dtype: np.dtype) -> np.dtype | None:
    """The output dtype asked for: None, or a dtype of the operands' kind, not narrower."""
    if preferred is None:
        return None
    try:
        out = jx.canonical_dtype(preferred)
    except TypeError:
        raise type_error(name, "preferred_element_type is not a dtype", repr(preferred)[:80],
                         "a dtype such as float32", "pass a NumPy/JAX dtype or None") from None
    kind, out_kind = jx.kind_of(dtype), jx.kind_of(out)
    if kind != out_kind or kind == "b" or out.itemsize < np.dtype(dtype).itemsize:
        raise type_error(name, "preferred_element_type does not fit the operands",
                         f"{np.dtype(dtype).name} operands, preferred_element_type={out.name}",
                         "a dtype of the operands' kind (float, signed or unsigned integer), "
                         "at least as wide", "pass a wider dtype of the same kind, or None")
    return None if out == np.dtype(dtype) else out


def _dot_params(precision: Any, preferred: np.dtype | None) -> dict[str, Any]:
    """The optional params of a bind: only those that are not None (one set for plain dots)."""
    params: dict[str, Any] = {}
    if precision is not None:
        params["precision"] = precision
    if preferred is not None:
        params["preferred_element_type"] = preferred
    return params


# --- abstract evaluation -----------------------------------------------------------------------

def _dot_eval(x: Any, y: Any, *, dimension_numbers: DimensionNumbers, precision: Any = None,
              preferred_element_type: Any = None) -> ShapeDtype:
    (xc, yc), (xb, yb) = dimension_numbers
    if precision is not None and not _is_precision_pair(precision):
        raise type_error("dot_general", "precision is not canonical", repr(precision)[:80],
                         "None or a pair of jax.lax.Precision",
                         "pass precision= to ap.matmul/ap.dot, which canonicalize it")
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
    out = _preferred("dot_general", preferred_element_type, np.dtype(x.dtype))
    if out is not None:
        return ShapeDtype(shape, out, False)
    return ShapeDtype(shape, np.dtype(x.dtype), x.weak_type and y.weak_type)


def _dot_lower(ctx: Any, x: Any, y: Any, *, dimension_numbers: DimensionNumbers,
               precision: Any = None, preferred_element_type: Any = None) -> Any:
    (xc, yc), (xb, yb) = dimension_numbers
    dnums = hlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=list(xb), rhs_batching_dimensions=list(yb),
        lhs_contracting_dimensions=list(xc), rhs_contracting_dimensions=list(yc))
    if precision is None:  # the precision in effect where the program is traced and lowered
        precision = resolve_precision("dot_general", None)
    levels = ("DEFAULT", "DEFAULT") if precision is None else tuple(p.name for p in precision)
    config = jx.ir.ArrayAttr.get([hlo.PrecisionAttr.get(level) for level in levels])
    # the result type is the output aval's: preferred_element_type when given
    return hlo.dot_general(ctx.out_type(), x, y, dnums, precision_config=config)


# --- transpose: the adjoint with respect to one operand is a dot_general with the other -------

def _transpose_operand(ct: Any, x: Linear, y: Any, dimension_numbers: DimensionNumbers,
                       x_is_lhs: bool, params: dict[str, Any]) -> Any:
    """Cotangent of operand x (a linear stand-in) from ct and the other operand y.

    ct's dims are: batch, then x's free dims and y's free dims (in the order lhs, rhs).
    Contract ct's y-free dims with y's free dims and batch over the batch dims; the result
    holds x's batch dims, x's free dims, then x's contracting dims ordered like y's, which a
    transpose puts back into x's order. With preferred_element_type, ct is wider than y: y is
    widened to ct's dtype for the product, and the result narrowed back to x's dtype.
    """
    (xc, yc), (xb, yb) = dimension_numbers
    x_ndim = x.ndim
    x_free, y_free = _free(x_ndim, xc, xb), _free(len(shape_of(y)), yc, yb)
    nb = len(xb)
    start = nb + (len(x_free) if x_is_lhs else 0)
    ct_y = tuple(range(start, start + len(y_free)))
    dims = ((ct_y, y_free), (tuple(range(nb)), yb))
    if dtype_of(y) != dtype_of(ct):
        y = convert(y, dtype_of(ct))
    out = bind("dot_general", ct, y, dimension_numbers=dims,
               **_dot_params(params.get("precision"), None))
    xc_by_y = [xc[k] for k in np.argsort(yc, kind="stable")]
    perm = tuple(int(i) for i in np.argsort([*xb, *x_free, *xc_by_y]))
    if perm != tuple(range(x_ndim)):
        out = bind("transpose", out, permutation=perm)
    if dtype_of(out) != x.dtype:
        out = convert(out, x.dtype)
    return out


def _swap(dimension_numbers: DimensionNumbers) -> DimensionNumbers:
    (xc, yc), (xb, yb) = dimension_numbers
    return (yc, xc), (yb, xb)


def _dot_transpose(ct: Any, x: Any, y: Any, *, dimension_numbers: DimensionNumbers,
                   **params: Any) -> list[Any]:
    if isinstance(x, Linear) and isinstance(y, Linear):
        raise TypeError("ap.dot_general: both operands linear; a product is bilinear, "
                        "transpose it with respect to one operand at a time")
    if isinstance(x, Linear):
        return [_transpose_operand(ct, x, y, dimension_numbers, True, params), None]
    return [None, _transpose_operand(ct, y, x, _swap(dimension_numbers), False, params)]


# --- batching: the vmapped dim becomes a batch dim (both batched) or a free dim (one) ----------

def _dot_batching(args: Sequence[Any], dims: Sequence[Any], *,
                  dimension_numbers: DimensionNumbers, **params: Any) -> tuple[Any, int]:
    (xc, yc), (xb, yb) = dimension_numbers
    (x, y), (dx, dy) = args, dims

    def shift(ds: Sequence[int], d: int) -> Dims:  # unbatched dim numbers -> batched ones
        return tuple(i + (i >= d) for i in ds)

    if dx is not None and dy is not None:
        dn = ((shift(xc, dx), shift(yc, dy)), ((dx, *shift(xb, dx)), (dy, *shift(yb, dy))))
        return bind("dot_general", x, y, dimension_numbers=dn, **params), 0
    if dx is not None:
        x_free = _free(len(shape_of(x)) - 1, xc, xb)
        dn = ((shift(xc, dx), yc), (shift(xb, dx), yb))
        out_dim = len(xb) + len([i for i in x_free if i < dx])
    else:
        x_free = _free(len(shape_of(x)), xc, xb)
        y_free = _free(len(shape_of(y)) - 1, yc, yb)
        dn = ((xc, shift(yc, dy)), (xb, shift(yb, dy)))
        out_dim = len(xb) + len(x_free) + len([i for i in y_free if i < dy])
    return bind("dot_general", x, y, dimension_numbers=dn, **params), out_dim


def _mesh_axes(entry: Any) -> tuple[Any, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _dot_sharding(specs: Sequence[Spec], x: Any, y: Any, *,
                  dimension_numbers: DimensionNumbers, **params: Any) -> Spec:
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
    jvp=(lambda g, out, x, y, **params: bind(  # bilinear: d(xy) = dx y + x dy
             "dot_general", g, y, **params),
         lambda g, out, x, y, **params: bind("dot_general", x, g, **params)),
    transpose=_dot_transpose, batching=_dot_batching, sharding=_dot_sharding)


# ----------------------------------------------------------------------------------------------
# Checkpoint (remat) policies that recognize adplugin's dot_general
# ----------------------------------------------------------------------------------------------

Policy = Callable[..., Any]


def recognizing_adplugin_dots(policy: Policy) -> Policy:
    """A `jax.checkpoint` policy that sees adplugin's dot_general as `lax.dot_general_p`.

    JAX's dot policies test `prim is lax.dot_general_p`; adplugin's dot has the same params
    (dimension_numbers, ...), so `policy` is asked about it as if it were lax's. Every other
    primitive goes to `policy` unchanged.
    """

    def adapted(prim: Any, *args: Any, **params: Any) -> Any:
        if prim is dot_general_p.jax_primitive:
            return policy(jax.lax.dot_general_p, *args, **params)
        return policy(prim, *args, **params)

    adapted.__name__ = getattr(policy, "__name__", type(policy).__name__)
    adapted.__doc__ = policy.__doc__
    return adapted


def _checkpoint_policies() -> types.SimpleNamespace:
    """`jax.checkpoint_policies`, with the dot-based ones recognizing adplugin's dot too (the
    name-based ones and save_from_both_policies are JAX's own: they never look at dots)."""
    jcp = jax.checkpoint_policies
    entries: dict[str, Any] = {
        name: getattr(jcp, name) for name in dir(jcp) if not name.startswith("_")}
    for name in ("dots_saveable", "checkpoint_dots", "dots_with_no_batch_dims_saveable",
                 "checkpoint_dots_with_no_batch_dims"):
        if name in entries:
            entries[name] = recognizing_adplugin_dots(entries[name])
    offload = entries.get("offload_dot_with_no_batch_dims")
    if offload is not None:
        def offload_dot_with_no_batch_dims(offload_src: Any, offload_dst: Any) -> Policy:
            return recognizing_adplugin_dots(offload(offload_src, offload_dst))

        offload_dot_with_no_batch_dims.__doc__ = offload.__doc__
        entries["offload_dot_with_no_batch_dims"] = offload_dot_with_no_batch_dims
    entries["recognizing_adplugin_dots"] = recognizing_adplugin_dots
    return types.SimpleNamespace(**entries)


checkpoint_policies = _checkpoint_policies()


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


_STATIC = ("precision", "preferred_element_type")


@op(static_argnames=_STATIC)
def matmul(a: Any, b: Any, *, precision: Any = None, preferred_element_type: Any = None) -> Any:
    """Matrix product with NumPy's semantics: 1-D operands act as vectors, and leading
    (batch) dimensions broadcast without being materialized.

    `precision` and `preferred_element_type` are `jnp.matmul`'s: precision None takes
    `jax.default_matmul_precision` in effect at the call."""
    check_array_like("matmul", a, b)
    precision = resolve_precision("matmul", precision)
    a_shape, b_shape = shape_of(a), shape_of(b)
    for i, s in enumerate((a_shape, b_shape)):
        if not s:
            raise shape_error("matmul", f"operand {i} is a scalar", "a 0-d array",
                              "arrays with at least one dimension",
                              "use ap.multiply (or ap.dot) to scale by a scalar")
    a, b = promote_dtypes("matmul", [a, b])
    params = _dot_params(precision, _preferred("matmul", preferred_element_type, dtype_of(a)))
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
    out = dot_general_p.bind(a, b, dimension_numbers=dn, **params)
    perm = tuple(int(i) for i in np.argsort([*out_batch, *out_a, *out_b]))
    if perm != tuple(range(len(perm))):
        out = bind("transpose", out, permutation=perm)
    if both_sq:
        shape = list(shape_of(out))
        for i in both_sq:
            shape.insert(i, 1)
        out = bind("reshape", out, new_sizes=tuple(shape))
    return out


@op(static_argnames=_STATIC)
def dot(a: Any, b: Any, *, precision: Any = None, preferred_element_type: Any = None) -> Any:
    """np.dot: a scalar operand multiplies; otherwise contract a's last axis with b's
    second-to-last (or only) axis, stacking the remaining dims of a, then of b.
    `precision` and `preferred_element_type` as `ap.matmul`'s."""
    check_array_like("dot", a, b)
    precision = resolve_precision("dot", precision)
    a_shape, b_shape = shape_of(a), shape_of(b)
    if not a_shape or not b_shape:
        a, b = promote("dot", a, b)
        out = bind("mul", a, b)
        preferred = _preferred("dot", preferred_element_type, dtype_of(out))
        return out if preferred is None else convert(out, preferred)
    a, b = promote_dtypes("dot", [a, b])
    params = _dot_params(precision, _preferred("dot", preferred_element_type, dtype_of(a)))
    bk = 0 if len(b_shape) == 1 else len(b_shape) - 2
    if a_shape[-1] != b_shape[bk]:
        which = "only dimension" if len(b_shape) == 1 else "second-to-last dimension"
        raise _contraction_error("dot", a_shape, b_shape, a_shape[-1], b_shape[bk], which)
    dn = (((len(a_shape) - 1,), (bk,)), ((), ()))
    return dot_general_p.bind(a, b, dimension_numbers=dn, **params)
