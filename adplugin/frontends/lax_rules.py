"""The conversion table of `ap.trace`: each JAX (lax) primitive's rule as adplugin primitives.

A rule takes the converted operands and the equation's params and returns the output(s), built
with `Primitive.bind` and `ap.*` helpers only, so it works on whatever the operands are: graph
tensors while a function is traced into a graph, JAX arrays or tracers while a region's
derivative rule runs, linear stand-ins while reverse mode transposes. Legalization, as MLIR's
dialect conversion does it. A rule raises `Unsupported` for params it cannot convert; the
reason is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from adplugin._errors import AdpluginError
from adplugin._primitive import get_primitive
from adplugin.primitives._rules import full
from adplugin.primitives.indexing import _fill_value
from adplugin.primitives.ordering import scatter_along_axis, take_along_axis

__all__ = ["CALLS", "ELEMENTWISE", "RULES", "Unsupported"]


class Unsupported(AdpluginError, NotImplementedError):
    """Raised by a rule for operands or params it cannot convert (the reason is reported)."""


_Unsupported = Unsupported
Rule = Callable[[list[Any], dict[str, Any]], Any]  # (operands, params) -> output(s)
RULES: dict[str, Rule] = {}

# Call-like primitives, inlined: the params holding the body (closed or open jaxpr).
CALLS: dict[str, tuple[str, ...]] = {
    "jit": ("jaxpr",), "pjit": ("jaxpr",), "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",), "remat": ("jaxpr",), "checkpoint": ("jaxpr",),
    "custom_vjp_call_jaxpr": ("fun_jaxpr", "call_jaxpr"),
}

# lax elementwise primitives: operands of rank 0 or with size-1 dims are broadcast to the output.
ELEMENTWISE: set[str] = set()


def _bind(name: str, *args: Any, **params: Any) -> Any:
    return get_primitive(name).bind(*args, **params)


def _rule(*names: str, elementwise: bool = False) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
            if elementwise:
                ELEMENTWISE.add(name)
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# Elementwise
# ----------------------------------------------------------------------------------------------

def _convert(x: Any, dtype: Any) -> Any:
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if dtype.kind not in "biuf":
        raise _Unsupported(f"dtype {dtype.name} (adplugin has bool, int and float dtypes)")
    return _bind("convert_element_type", x, new_dtype=dtype, weak_type=False)


def _operands(args: list[Any], params: dict[str, Any]) -> list[Any]:
    """Operands converted to `out_dtype` where lax's `mul(..., out_dtype=)` asks for it."""
    out_dtype = params.get("out_dtype")
    return args if out_dtype is None else [_convert(a, out_dtype) for a in args]


def _same(target: str) -> Rule:
    return lambda args, params: _bind(target, *_operands(args, params))


for _name in ("add", "sub", "mul", "div", "neg", "max", "min", "exp", "log", "log1p", "expm1",
              "sin", "cos", "tanh", "logistic", "sqrt", "abs", "sign", "square", "eq", "ne",
              "lt", "le", "gt", "ge", "is_finite", "stop_gradient", "rem", "floor", "ceil", "tan",
              "erf", "clamp", "rsqrt", "cbrt", "sinh", "cosh", "asin", "acos", "atan",
              "asinh", "acosh", "atanh", "atan2", "erfc", "lt_to", "le_to"):
    _rule(_name, elementwise=True)(_same(_name))
_rule("add_any", elementwise=True)(_same("add"))


def _ones(x: Any) -> Any:
    return full(x.shape, 1, x.dtype)


@_rule("exp2", elementwise=True)
def _exp2(args: list[Any], params: dict[str, Any]) -> Any:
    (x,) = args
    return _bind("exp", _bind("mul", x, full(x.shape, np.log(2.0), x.dtype)))


@_rule("pow", elementwise=True)
def _pow(args: list[Any], params: dict[str, Any]) -> Any:
    x, y = args  # lax allows an integer exponent; the primitive takes one dtype
    return _bind("pow", x, _convert(y, x.dtype))


@_rule("integer_pow", elementwise=True)
def _integer_pow(args: list[Any], params: dict[str, Any]) -> Any:
    return _bind("integer_pow", args[0], y=int(params["y"]))


def _require_bool(name: str, args: Sequence[Any]) -> None:
    if any(a.dtype != np.dtype(bool) for a in args):
        raise _Unsupported(f"{name} on {args[0].dtype.name} (only boolean logic is converted)")


def _true(x: Any) -> Any:
    return full(x.shape, True, np.bool_)


def _false(x: Any) -> Any:
    return full(x.shape, False, np.bool_)


@_rule("not", elementwise=True)
def _not(args: list[Any], params: dict[str, Any]) -> Any:
    _require_bool("not", args)
    return _bind("select", args[0], _false(args[0]), _true(args[0]))


@_rule("and", elementwise=True)
def _and(args: list[Any], params: dict[str, Any]) -> Any:
    _require_bool("and", args)
    x, y = args
    return _bind("select", x, y, _false(x))


@_rule("or", elementwise=True)
def _or(args: list[Any], params: dict[str, Any]) -> Any:
    _require_bool("or", args)
    x, y = args
    return _bind("select", x, _true(x), y)


@_rule("xor", elementwise=True)
def _xor(args: list[Any], params: dict[str, Any]) -> Any:
    _require_bool("xor", args)
    return _bind("ne", *args)


@_rule("select_n", elementwise=True)
def _select_n(args: list[Any], params: dict[str, Any]) -> Any:
    # lax.select_n(which, *cases): case k where which == k (False/True for two cases)
    which, *cases = args
    if len(cases) == 1:
        return cases[0]
    if which.dtype == np.dtype(bool):
        return _bind("select", which, cases[1], cases[0])
    out = cases[0]
    for k, case in enumerate(cases[1:], start=1):
        out = _bind("select", _bind("eq", which, full(which.shape, k, which.dtype)), case, out)
    return out


@_rule("convert_element_type")
def _convert_element_type(args: list[Any], params: dict[str, Any]) -> Any:
    return _convert(args[0], params["new_dtype"])


@_rule("copy", "copy_p", "device_put", "optimization_barrier", "sharding_constraint")
def _identity(args: list[Any], params: dict[str, Any]) -> Any:
    return list(args)


# --- reductions --------------------------------------------------------------------------------

def _axes(params: dict[str, Any]) -> tuple[int, ...]:
    return tuple(sorted(int(a) for a in params["axes"]))


@_rule("reduce_sum")
def _reduce_sum(args: list[Any], params: dict[str, Any]) -> Any:
    axes = _axes(params)
    return _bind("reduce_sum", args[0], axes=axes) if axes else args[0]


def _reduction(target: str) -> Rule:
    def rule(args: list[Any], params: dict[str, Any]) -> Any:
        axes = _axes(params)
        return _bind(target, args[0], axes=axes) if axes else args[0]

    return rule


# max/min of booleans are or/and
for _name, _target in (("reduce_max", "reduce_max"), ("reduce_or", "reduce_max"),
                       ("reduce_min", "reduce_min"), ("reduce_and", "reduce_min"),
                       ("reduce_prod", "reduce_prod")):
    _rule(_name)(_reduction(_target))


def _arg(target: str) -> Rule:
    def rule(args: list[Any], params: dict[str, Any]) -> Any:
        return _bind(target, args[0], axes=_ints(params["axes"]),
                     index_dtype=np.dtype(params["index_dtype"]))

    return rule


RULES["argmax"], RULES["argmin"] = _arg("argmax"), _arg("argmin")


def _cumulative(target: str) -> Rule:
    def rule(args: list[Any], params: dict[str, Any]) -> Any:
        return _bind(target, args[0], axis=int(params["axis"]),
                     reverse=bool(params.get("reverse", False)))

    return rule


for _name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"):
    _rule(_name)(_cumulative(_name))


@_rule("round", elementwise=True)
def _round(args: list[Any], params: dict[str, Any]) -> Any:
    method = params.get("rounding_method", 0)
    return _bind("round", args[0], rounding_method=int(getattr(method, "value", method)))


@_rule("sort")
def _sort(args: list[Any], params: dict[str, Any]) -> Any:
    # one key: the key sorted, the other operands gathered with the key's permutation (the
    # argsort pattern sorts an iota along: its output is the permutation itself)
    if int(params.get("num_keys", 1)) != 1:
        raise _Unsupported("sort with num_keys > 1 (a lexicographic sort)")
    keys, *values = args
    dim, stable = int(params["dimension"]), bool(params["is_stable"])
    outs = [_bind("sort", keys, dimension=dim, is_stable=stable)]
    if values:
        perm = _bind("argsort", keys, dimension=dim, is_stable=stable,
                     index_dtype=np.dtype(np.int32))
        outs += [take_along_axis(v, perm, dim) for v in values]
    return outs


# --- shapes ------------------------------------------------------------------------------------

def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@_rule("broadcast_in_dim")
def _broadcast_in_dim(args: list[Any], params: dict[str, Any]) -> Any:
    if len(args) != 1:
        raise _Unsupported("dynamic shapes")
    return _bind("broadcast_in_dim", args[0], shape=_ints(params["shape"]),
                 broadcast_dimensions=_ints(params["broadcast_dimensions"]))


@_rule("reshape")
def _reshape(args: list[Any], params: dict[str, Any]) -> Any:
    if len(args) != 1:
        raise _Unsupported("dynamic shapes")
    x = args[0]
    if params.get("dimensions") is not None:
        x = _bind("transpose", x, permutation=_ints(params["dimensions"]))
    shape = _ints(params["new_sizes"])
    return x if shape == x.shape else _bind("reshape", x, new_sizes=shape)


@_rule("squeeze")
def _squeeze(args: list[Any], params: dict[str, Any]) -> Any:
    (x,) = args
    dims = {int(d) % x.ndim for d in params["dimensions"]}
    shape = tuple(d for i, d in enumerate(x.shape) if i not in dims)
    return x if shape == x.shape else _bind("reshape", x, new_sizes=shape)


@_rule("expand_dims")
def _expand_dims(args: list[Any], params: dict[str, Any]) -> Any:
    (x,) = args
    shape = list(x.shape)
    for d in sorted(int(d) % (x.ndim + len(params["dimensions"])) for d in params["dimensions"]):
        shape.insert(d, 1)
    return _bind("reshape", x, new_sizes=tuple(shape))


@_rule("transpose")
def _transpose(args: list[Any], params: dict[str, Any]) -> Any:
    perm = _ints(params["permutation"])
    return args[0] if perm == tuple(range(len(perm))) else _bind("transpose", args[0],
                                                                  permutation=perm)


@_rule("dot_general")
def _dot_general(args: list[Any], params: dict[str, Any]) -> Any:
    x, y = args
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    # precision is ignored; a preferred (wider) accumulation type converts the operands first
    preferred = params.get("preferred_element_type")
    dtype = np.dtype(preferred) if preferred is not None else np.promote_types(x.dtype, y.dtype)
    dn = ((_ints(lc), _ints(rc)), (_ints(lb), _ints(rb)))
    return _bind("dot_general", _convert(x, dtype), _convert(y, dtype), dimension_numbers=dn)


@_rule("concatenate")
def _concatenate(args: list[Any], params: dict[str, Any]) -> Any:
    if len(args) == 1:
        return args[0]
    return _bind("concatenate", *args, dimension=int(params["dimension"]))


@_rule("stack")
def _stack(args: list[Any], params: dict[str, Any]) -> Any:
    axis = int(params["axis"])
    shape = (*args[0].shape[:axis], 1, *args[0].shape[axis:])
    parts = [_bind("reshape", a, new_sizes=shape) for a in args]
    return parts[0] if len(parts) == 1 else _bind("concatenate", *parts, dimension=axis)


@_rule("unstack")
def _unstack(args: list[Any], params: dict[str, Any]) -> Any:
    (x,) = args
    axis = int(params["axis"])
    shape = (*x.shape[:axis], *x.shape[axis + 1:])
    outs = []
    for i in range(x.shape[axis]):
        lo, hi = [0] * x.ndim, list(x.shape)
        lo[axis], hi[axis] = i, i + 1
        piece = _bind("slice", x, start_indices=tuple(lo), limit_indices=tuple(hi))
        outs.append(_bind("reshape", piece, new_sizes=shape))
    return outs


def _strided(x: Any, strides: Sequence[int]) -> Any:
    """Every `s`-th element along each axis, as a take of constant indices."""
    for axis, s in enumerate(strides):
        if s != 1:
            indices = np.arange(0, x.shape[axis], s, dtype=np.int32)
            x = _bind("take", x, indices, axis=axis)
    return x


@_rule("slice")
def _slice(args: list[Any], params: dict[str, Any]) -> Any:
    (x,) = args
    start, limit = _ints(params["start_indices"]), _ints(params["limit_indices"])
    if start != (0,) * x.ndim or limit != x.shape:
        x = _bind("slice", x, start_indices=start, limit_indices=limit)
    strides = params.get("strides")
    return x if strides is None else _strided(x, _ints(strides))


@_rule("split")
def _split(args: list[Any], params: dict[str, Any]) -> Any:
    (x,) = args
    axis, start, outs = int(params["axis"]), 0, []
    for size in _ints(params["sizes"]):
        lo, hi = [0] * x.ndim, list(x.shape)
        lo[axis], hi[axis] = start, start + size
        outs.append(_bind("slice", x, start_indices=tuple(lo), limit_indices=tuple(hi)))
        start += size
    return outs


@_rule("rev")
def _rev(args: list[Any], params: dict[str, Any]) -> Any:
    x = args[0]
    for axis in _ints(params["dimensions"]):
        indices = np.arange(x.shape[axis] - 1, -1, -1, dtype=np.int32)
        x = _bind("take", x, indices, axis=axis)
    return x


@_rule("pad")
def _pad(args: list[Any], params: dict[str, Any]) -> Any:
    x, value = args
    config = [_ints(c) for c in params["padding_config"]]
    if any(interior for _, _, interior in config):
        raise _Unsupported("interior padding")
    # negative edges crop, positive ones concatenate copies of the padding value
    start = tuple(-lo if lo < 0 else 0 for lo, _, _ in config)
    limit = tuple(n + hi if hi < 0 else n for n, (_, hi, _) in zip(x.shape, config))
    if start != (0,) * x.ndim or limit != x.shape:
        x = _bind("slice", x, start_indices=start, limit_indices=limit)
    for axis, (lo, hi, _) in enumerate(config):
        parts = []
        for size in (lo, hi):
            shape = (*x.shape[:axis], max(size, 0), *x.shape[axis + 1:])
            parts.append(_bind("broadcast_in_dim", value, shape=shape, broadcast_dimensions=())
                         if size > 0 else None)
        joined = [p for p in (parts[0], x, parts[1]) if p is not None]
        if len(joined) > 1:
            x = _bind("concatenate", *joined, dimension=axis)
    return x


# --- indexing: the one-axis gathers and scatters of `x[i]`, `jnp.take`, `x.at[i].add` ----------

def _one_axis(x_shape: Sequence[int], indices: Any, window: Sequence[int],
              collapsed: Sequence[int], index_map: Sequence[int], batching: Sequence[int],
              slice_sizes: Sequence[int] | None) -> tuple[int, tuple[int, ...]]:
    """(axis, permutation from take's layout to the gather's) of a gather/scatter along one axis.

    take's layout is x.shape[:axis] + batch + x.shape[axis+1:]; the gather puts x's remaining
    dims at the `window` positions and the batch (index) dims, in order, at the others.
    """
    if (len(index_map) != 1 or tuple(collapsed) != tuple(index_map) or batching
            or not indices.shape or indices.shape[-1] != 1):
        raise _Unsupported("only gathers/scatters along one axis, as x[i] or jnp.take do")
    axis, rank = int(index_map[0]), len(x_shape)
    if slice_sizes is not None and any(
            s != (1 if d == axis else x_shape[d]) for d, s in enumerate(slice_sizes)):
        raise _Unsupported("only whole slices along the non-indexed dims")
    nb = indices.ndim - 1
    take_order = [("x", d) for d in range(axis)] + [("b", j) for j in range(nb)] + [
        ("x", d) for d in range(axis + 1, rank)]
    x_dims = iter(d for d in range(rank) if d != axis)
    b_dims = iter(range(nb))
    window_set = set(int(w) for w in window)
    order = [("x", next(x_dims)) if k in window_set else ("b", next(b_dims))
             for k in range(rank - 1 + nb)]
    return axis, tuple(take_order.index(item) for item in order)


def _mode(params: dict[str, Any]) -> str:
    mode = params.get("mode")
    return str(getattr(mode, "name", mode))


def _in_bounds(indices: Any, n: int) -> Any:
    lo = _bind("ge", indices, full(indices.shape, 0, indices.dtype))
    hi = _bind("lt", indices, full(indices.shape, n, indices.dtype))
    return _bind("select", lo, hi, _false(indices))


def _along_axis(rank: int, indices: Any, collapsed: Sequence[int], index_map: Sequence[int],
                operand_batching: Sequence[int], index_batching: Sequence[int],
                window: Sequence[int]) -> int | None:
    """The axis of a take_along_axis-style gather/scatter (every other operand dim a batching
    dim, matched by position with the index dims), else None."""
    if (len(index_map) != 1 or tuple(collapsed) != tuple(index_map) or tuple(window)
            or not indices.shape or indices.shape[-1] != 1 or indices.ndim != rank + 1):
        return None
    axis = int(index_map[0])
    others = tuple(d for d in range(rank) if d != axis)
    if tuple(int(d) for d in operand_batching) != others or \
            tuple(int(d) for d in index_batching) != others:
        return None
    return axis


@_rule("gather")
def _gather(args: list[Any], params: dict[str, Any]) -> Any:
    x, indices = args
    dn = params["dimension_numbers"]
    along = _along_axis(x.ndim, indices, dn.collapsed_slice_dims, dn.start_index_map,
                        dn.operand_batching_dims, dn.start_indices_batching_dims, dn.offset_dims)
    if along is not None and all(int(s) == 1 for s in params["slice_sizes"]):
        flat = _bind("reshape", indices, new_sizes=indices.shape[:-1])
        out = take_along_axis(x, flat, along)  # clamps, as CLIP and PROMISE_IN_BOUNDS
        if _mode(params) == "FILL_OR_DROP":
            fill = params.get("fill_value")
            valid = _in_bounds(flat, x.shape[along])
            out = _bind("select", valid, out, full(out.shape, _fill_value(x.dtype)
                                                   if fill is None else fill, x.dtype))
        return out
    axis, perm = _one_axis(x.shape, indices, dn.offset_dims, dn.collapsed_slice_dims,
                           dn.start_index_map, dn.operand_batching_dims, params["slice_sizes"])
    flat = _bind("reshape", indices, new_sizes=indices.shape[:-1])
    out = _bind("take", x, flat, axis=axis)  # clamps, as the CLIP and PROMISE_IN_BOUNDS modes
    if _mode(params) == "FILL_OR_DROP":
        fill = params.get("fill_value")
        fill = _fill_value(x.dtype) if fill is None else fill
        valid = _bind("broadcast_in_dim", _in_bounds(flat, x.shape[axis]), shape=out.shape,
                      broadcast_dimensions=tuple(range(axis, axis + flat.ndim)))
        out = _bind("select", valid, out, full(out.shape, fill, x.dtype))
    if perm != tuple(range(len(perm))):
        out = _bind("transpose", out, permutation=tuple(int(i) for i in np.argsort(perm)))
    return out


@_rule("scatter-add", "scatter_add")
def _scatter_add(args: list[Any], params: dict[str, Any]) -> Any:
    x, indices, updates = args
    dn = params["dimension_numbers"]
    along = _along_axis(x.ndim, indices, dn.inserted_window_dims,
                        dn.scatter_dims_to_operand_dims, dn.operand_batching_dims,
                        dn.scatter_indices_batching_dims, dn.update_window_dims)
    if along is not None:  # the transpose of take_along_axis
        flat = _bind("reshape", indices, new_sizes=indices.shape[:-1])
        if _mode(params) != "CLIP":  # out-of-bounds updates are dropped
            updates = _bind("select", _in_bounds(flat, x.shape[along]), updates,
                            full(updates.shape, 0, updates.dtype))
        added = scatter_along_axis(updates, flat, along, tuple(x.shape))
        return _bind("add", x, added)
    axis, perm = _one_axis(x.shape, indices, dn.update_window_dims, dn.inserted_window_dims,
                           dn.scatter_dims_to_operand_dims, dn.operand_batching_dims, None)
    flat = _bind("reshape", indices, new_sizes=indices.shape[:-1])
    if perm != tuple(range(len(perm))):  # updates into take's layout
        updates = _bind("transpose", updates, permutation=perm)
    if _mode(params) != "CLIP":  # out-of-bounds updates are dropped (the primitive clamps)
        valid = _bind("broadcast_in_dim", _in_bounds(flat, x.shape[axis]), shape=updates.shape,
                      broadcast_dimensions=tuple(range(axis, axis + flat.ndim)))
        updates = _bind("select", valid, updates, full(updates.shape, 0, updates.dtype))
    added = _bind("scatter_add", updates, flat, axis=axis, operand_shape=tuple(x.shape))
    return _bind("add", x, added)


@_rule("dynamic_slice")
def _dynamic_slice(args: list[Any], params: dict[str, Any]) -> Any:
    # each start is clamped so the slice fits, then the slice is a take of start + arange(size)
    x, *starts = args
    for axis, (start, size) in enumerate(zip(starts, _ints(params["slice_sizes"]))):
        n = x.shape[axis]
        if size == n:
            continue
        start = _bind("max", _bind("min", start, full((), n - size, start.dtype)),
                      full((), 0, start.dtype))
        window = _bind("broadcast_in_dim", start, shape=(size,), broadcast_dimensions=())
        indices = _bind("add", window, np.arange(size, dtype=start.dtype))
        x = _bind("take", x, indices, axis=axis)
    return x


@_rule("iota")
def _iota(args: list[Any], params: dict[str, Any]) -> Any:
    shape, dim = _ints(params["shape"]), int(params["dimension"])
    line = np.arange(shape[dim]).reshape([-1 if i == dim else 1 for i in range(len(shape))])
    return np.broadcast_to(line, shape).astype(np.dtype(params["dtype"]))




@_rule("empty", "empty2")
def _empty(args: list[Any], params: dict[str, Any]) -> Any:
    # an array of unspecified contents (the residuals a linearized branch does not compute)
    return np.zeros(_ints(params.get("shape", ())), np.dtype(params["dtype"]))


@_rule("tile")
def _tile(args: list[Any], params: dict[str, Any]) -> Any:
    # each dim d of size n repeated r times: broadcast to (..., r, n, ...), merge the pair
    (x,) = args
    reps = _ints(params["reps"])
    reps = (1,) * (x.ndim - len(reps)) + reps
    shape = (1,) * (len(reps) - x.ndim) + tuple(x.shape)
    if len(shape) != x.ndim:
        x = _bind("reshape", x, new_sizes=shape)
    pairs = tuple(d for r, n in zip(reps, shape) for d in (r, n))
    wide = _bind("broadcast_in_dim", x, shape=pairs,
                 broadcast_dimensions=tuple(range(1, 2 * len(shape), 2)))
    return _bind("reshape", wide, new_sizes=tuple(r * n for r, n in zip(reps, shape)))
