"""`ap.trace(fn, *example_args)`: a JAX function as an adplugin operation graph.

`jax.make_jaxpr` records the function; each jaxpr equation is then legalized into adplugin
primitives through a conversion table (lax primitive name -> rule), as MLIR's dialect
conversion does. Equations that already bind adplugin primitives (a function written with
`ap.*` ops) map one to one; call-like equations (`jit`, `custom_jvp_call`, `custom_vjp_call`,
...) are inlined, custom derivative rules dropped (the graph is differentiated through the
primal computation). A primitive without a rule is an error listing every such primitive.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import AdpluginError, message
from adplugin._primitive import Primitive, get_primitive, list_primitives
from adplugin.ir.graph import FORWARD, Graph, GraphError, Tensor
from adplugin.primitives._rules import full
from adplugin.primitives.indexing import _fill_value

__all__ = ["TraceError", "TracedFunction", "supported_primitives", "trace"]


class TraceError(AdpluginError, NotImplementedError):
    """A traced function uses JAX primitives that have no conversion to adplugin primitives."""


class _Unsupported(Exception):
    """Raised by a rule for operands or params it cannot convert (the reason is reported)."""


Rule = Callable[[list[Tensor], dict[str, Any]], Any]  # (operands, params) -> Tensor(s)/array
RULES: dict[str, Rule] = {}

# Call-like primitives, inlined: the params holding the body (closed or open jaxpr).
CALLS: dict[str, tuple[str, ...]] = {
    "jit": ("jaxpr",), "pjit": ("jaxpr",), "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",), "remat": ("jaxpr",), "checkpoint": ("jaxpr",),
    "custom_jvp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": ("fun_jaxpr", "call_jaxpr"),
}

# lax elementwise primitives: operands of rank 0 or with size-1 dims are broadcast to the output.
ELEMENTWISE: set[str] = set()


def supported_primitives() -> list[str]:
    """Names of the JAX primitives `ap.trace` converts (besides adplugin's own primitives)."""
    return sorted({*RULES, *CALLS})


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
# Conversion table: lax primitive -> adplugin primitives
# ----------------------------------------------------------------------------------------------

def _convert(x: Tensor, dtype: Any) -> Tensor:
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if dtype.kind not in "biuf":
        raise _Unsupported(f"dtype {dtype.name} (adplugin has bool, int and float dtypes)")
    return _bind("convert_element_type", x, new_dtype=dtype, weak_type=False)


def _operands(args: list[Tensor], params: dict[str, Any]) -> list[Tensor]:
    """Operands converted to `out_dtype` where lax's `mul(..., out_dtype=)` asks for it."""
    out_dtype = params.get("out_dtype")
    return args if out_dtype is None else [_convert(a, out_dtype) for a in args]


def _same(target: str) -> Rule:
    return lambda args, params: _bind(target, *_operands(args, params))


for _name in ("add", "sub", "mul", "div", "neg", "max", "min", "exp", "log", "log1p", "expm1",
              "sin", "cos", "tanh", "logistic", "sqrt", "abs", "sign", "square", "eq", "ne",
              "lt", "le", "gt", "ge", "is_finite", "stop_gradient"):
    _rule(_name, elementwise=True)(_same(_name))
_rule("add_any", elementwise=True)(_same("add"))


def _ones(x: Tensor) -> Any:
    return full(x.shape, 1, x.dtype)


@_rule("rsqrt", elementwise=True)
def _rsqrt(args: list[Tensor], params: dict[str, Any]) -> Any:
    (x,) = args
    return _bind("div", _ones(x), _bind("sqrt", x))


@_rule("tan", elementwise=True)
def _tan(args: list[Tensor], params: dict[str, Any]) -> Any:
    (x,) = args
    return _bind("div", _bind("sin", x), _bind("cos", x))


@_rule("exp2", elementwise=True)
def _exp2(args: list[Tensor], params: dict[str, Any]) -> Any:
    (x,) = args
    return _bind("exp", _bind("mul", x, full(x.shape, np.log(2.0), x.dtype)))


@_rule("pow", elementwise=True)
def _pow(args: list[Tensor], params: dict[str, Any]) -> Any:
    x, y = args  # lax allows an integer exponent; the primitive takes one dtype
    return _bind("pow", x, _convert(y, x.dtype))


@_rule("integer_pow", elementwise=True)
def _integer_pow(args: list[Tensor], params: dict[str, Any]) -> Any:
    return _bind("integer_pow", args[0], y=int(params["y"]))


def _require_bool(name: str, args: Sequence[Tensor]) -> None:
    if any(a.dtype != np.dtype(bool) for a in args):
        raise _Unsupported(f"{name} on {args[0].dtype.name} (only boolean logic is converted)")


def _true(x: Tensor) -> Any:
    return full(x.shape, True, np.bool_)


def _false(x: Tensor) -> Any:
    return full(x.shape, False, np.bool_)


@_rule("not", elementwise=True)
def _not(args: list[Tensor], params: dict[str, Any]) -> Any:
    _require_bool("not", args)
    return _bind("select", args[0], _false(args[0]), _true(args[0]))


@_rule("and", elementwise=True)
def _and(args: list[Tensor], params: dict[str, Any]) -> Any:
    _require_bool("and", args)
    x, y = args
    return _bind("select", x, y, _false(x))


@_rule("or", elementwise=True)
def _or(args: list[Tensor], params: dict[str, Any]) -> Any:
    _require_bool("or", args)
    x, y = args
    return _bind("select", x, _true(x), y)


@_rule("xor", elementwise=True)
def _xor(args: list[Tensor], params: dict[str, Any]) -> Any:
    _require_bool("xor", args)
    return _bind("ne", *args)


@_rule("select_n", elementwise=True)
def _select_n(args: list[Tensor], params: dict[str, Any]) -> Any:
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


@_rule("clamp", elementwise=True)
def _clamp(args: list[Tensor], params: dict[str, Any]) -> Any:
    lo, x, hi = args
    return _bind("min", _bind("max", x, lo), hi)


@_rule("convert_element_type")
def _convert_element_type(args: list[Tensor], params: dict[str, Any]) -> Any:
    return _convert(args[0], params["new_dtype"])


@_rule("copy", "copy_p", "device_put", "optimization_barrier", "sharding_constraint")
def _identity(args: list[Tensor], params: dict[str, Any]) -> Any:
    return list(args)


# --- reductions --------------------------------------------------------------------------------

def _axes(params: dict[str, Any]) -> tuple[int, ...]:
    return tuple(sorted(int(a) for a in params["axes"]))


@_rule("reduce_sum")
def _reduce_sum(args: list[Tensor], params: dict[str, Any]) -> Any:
    axes = _axes(params)
    return _bind("reduce_sum", args[0], axes=axes) if axes else args[0]


@_rule("reduce_max", "reduce_or")
def _reduce_max(args: list[Tensor], params: dict[str, Any]) -> Any:
    axes = _axes(params)
    return _bind("reduce_max", args[0], axes=axes) if axes else args[0]


def _order_reversal(x: Any) -> Any:
    """An order-reversing bijection of x's dtype that is its own inverse (no overflow)."""
    kind = np.dtype(x.dtype).kind
    if kind == "f":
        return _bind("neg", x)
    if kind == "i":  # -x - 1 == ~x in two's complement
        return _bind("sub", _bind("neg", x), full(x.shape, 1, x.dtype))
    if kind == "u":
        return _bind("sub", full(x.shape, np.iinfo(x.dtype).max, x.dtype), x)
    return _bind("select", x, _false(x), _true(x))  # bool: not


@_rule("reduce_min", "reduce_and")
def _reduce_min(args: list[Tensor], params: dict[str, Any]) -> Any:
    axes = _axes(params)
    if not axes:
        return args[0]
    return _order_reversal(_bind("reduce_max", _order_reversal(args[0]), axes=axes))


@_rule("cumsum")
def _cumsum(args: list[Tensor], params: dict[str, Any]) -> Any:
    # a running sum is a product with a triangular matrix of ones (O(n^2), linear, exact)
    (x,) = args
    axis, n = int(params["axis"]), x.shape[int(params["axis"])]
    tri = np.tril if not params.get("reverse", False) else np.triu
    ones = tri(np.ones((n, n), x.dtype))  # ones[i, j]: input j counts in output i
    out = _bind("dot_general", x, ones, dimension_numbers=(((axis,), (1,)), ((), ())))
    perm = (*range(axis), x.ndim - 1, *range(axis, x.ndim - 1))
    return out if axis == x.ndim - 1 else _bind("transpose", out, permutation=perm)


# --- shapes ------------------------------------------------------------------------------------

def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@_rule("broadcast_in_dim")
def _broadcast_in_dim(args: list[Tensor], params: dict[str, Any]) -> Any:
    if len(args) != 1:
        raise _Unsupported("dynamic shapes")
    return _bind("broadcast_in_dim", args[0], shape=_ints(params["shape"]),
                 broadcast_dimensions=_ints(params["broadcast_dimensions"]))


@_rule("reshape")
def _reshape(args: list[Tensor], params: dict[str, Any]) -> Any:
    if len(args) != 1:
        raise _Unsupported("dynamic shapes")
    x = args[0]
    if params.get("dimensions") is not None:
        x = _bind("transpose", x, permutation=_ints(params["dimensions"]))
    shape = _ints(params["new_sizes"])
    return x if shape == x.shape else _bind("reshape", x, new_sizes=shape)


@_rule("squeeze")
def _squeeze(args: list[Tensor], params: dict[str, Any]) -> Any:
    (x,) = args
    dims = {int(d) % x.ndim for d in params["dimensions"]}
    shape = tuple(d for i, d in enumerate(x.shape) if i not in dims)
    return x if shape == x.shape else _bind("reshape", x, new_sizes=shape)


@_rule("expand_dims")
def _expand_dims(args: list[Tensor], params: dict[str, Any]) -> Any:
    (x,) = args
    shape = list(x.shape)
    for d in sorted(int(d) % (x.ndim + len(params["dimensions"])) for d in params["dimensions"]):
        shape.insert(d, 1)
    return _bind("reshape", x, new_sizes=tuple(shape))


@_rule("transpose")
def _transpose(args: list[Tensor], params: dict[str, Any]) -> Any:
    perm = _ints(params["permutation"])
    return args[0] if perm == tuple(range(len(perm))) else _bind("transpose", args[0],
                                                                  permutation=perm)


@_rule("dot_general")
def _dot_general(args: list[Tensor], params: dict[str, Any]) -> Any:
    x, y = args
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    # precision is ignored; a preferred (wider) accumulation type converts the operands first
    preferred = params.get("preferred_element_type")
    dtype = np.dtype(preferred) if preferred is not None else np.promote_types(x.dtype, y.dtype)
    dn = ((_ints(lc), _ints(rc)), (_ints(lb), _ints(rb)))
    return _bind("dot_general", _convert(x, dtype), _convert(y, dtype), dimension_numbers=dn)


@_rule("concatenate")
def _concatenate(args: list[Tensor], params: dict[str, Any]) -> Any:
    if len(args) == 1:
        return args[0]
    return _bind("concatenate", *args, dimension=int(params["dimension"]))


@_rule("stack")
def _stack(args: list[Tensor], params: dict[str, Any]) -> Any:
    axis = int(params["axis"])
    shape = (*args[0].shape[:axis], 1, *args[0].shape[axis:])
    parts = [_bind("reshape", a, new_sizes=shape) for a in args]
    return parts[0] if len(parts) == 1 else _bind("concatenate", *parts, dimension=axis)


@_rule("unstack")
def _unstack(args: list[Tensor], params: dict[str, Any]) -> Any:
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
def _slice(args: list[Tensor], params: dict[str, Any]) -> Any:
    (x,) = args
    start, limit = _ints(params["start_indices"]), _ints(params["limit_indices"])
    if start != (0,) * x.ndim or limit != x.shape:
        x = _bind("slice", x, start_indices=start, limit_indices=limit)
    strides = params.get("strides")
    return x if strides is None else _strided(x, _ints(strides))


@_rule("split")
def _split(args: list[Tensor], params: dict[str, Any]) -> Any:
    (x,) = args
    axis, start, outs = int(params["axis"]), 0, []
    for size in _ints(params["sizes"]):
        lo, hi = [0] * x.ndim, list(x.shape)
        lo[axis], hi[axis] = start, start + size
        outs.append(_bind("slice", x, start_indices=tuple(lo), limit_indices=tuple(hi)))
        start += size
    return outs


@_rule("rev")
def _rev(args: list[Tensor], params: dict[str, Any]) -> Any:
    x = args[0]
    for axis in _ints(params["dimensions"]):
        indices = np.arange(x.shape[axis] - 1, -1, -1, dtype=np.int32)
        x = _bind("take", x, indices, axis=axis)
    return x


@_rule("pad")
def _pad(args: list[Tensor], params: dict[str, Any]) -> Any:
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

def _one_axis(x_shape: Sequence[int], indices: Tensor, window: Sequence[int],
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


def _in_bounds(indices: Tensor, n: int) -> Any:
    lo = _bind("ge", indices, full(indices.shape, 0, indices.dtype))
    hi = _bind("lt", indices, full(indices.shape, n, indices.dtype))
    return _bind("select", lo, hi, _false(indices))


@_rule("gather")
def _gather(args: list[Tensor], params: dict[str, Any]) -> Any:
    x, indices = args
    dn = params["dimension_numbers"]
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
def _scatter_add(args: list[Tensor], params: dict[str, Any]) -> Any:
    x, indices, updates = args
    dn = params["dimension_numbers"]
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
def _dynamic_slice(args: list[Tensor], params: dict[str, Any]) -> Any:
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
def _iota(args: list[Tensor], params: dict[str, Any]) -> Any:
    shape, dim = _ints(params["shape"]), int(params["dimension"])
    line = np.arange(shape[dim]).reshape([-1 if i == dim else 1 for i in range(len(shape))])
    return np.broadcast_to(line, shape).astype(np.dtype(params["dtype"]))


# ----------------------------------------------------------------------------------------------
# The converter: walks a jaxpr, inlining calls, collecting what it cannot convert
# ----------------------------------------------------------------------------------------------

_MISSING = object()  # stands for the outputs of an equation that could not be converted


class _Converter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.no_rule: Counter[str] = Counter()
        self.failed: dict[str, str] = {}
        self.adplugin: dict[int, Primitive] = {
            id(p.jax_primitive): p for p in map(get_primitive, list_primitives())}
        self._literals: dict[Any, Tensor] = {}
        self._broadcasts: dict[tuple[int, tuple[int, ...]], Tensor] = {}

    def constant(self, value: Any, dtype: Any = None) -> Tensor:
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._literals:
            self._literals[key] = self.graph.constant(array)
        return self._literals[key]

    def read(self, env: dict[Any, Any], v: Any) -> Any:
        if jx.is_literal(v):
            return self.constant(v.val, v.aval.dtype)
        return env[v]

    def run(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = self.constant(c)
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [self.read(env, v) for v in eqn.invars])
            env.update(zip(eqn.outvars, outs))
        return [self.read(env, v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, args: list[Any]) -> list[Any]:
        name = eqn.primitive.name
        missing = [_MISSING] * len(eqn.outvars)
        prim = self.adplugin.get(id(eqn.primitive))
        body = jx.sub_jaxpr(eqn.params, CALLS[name]) if prim is None and name in CALLS else None
        if body is not None:  # inlined even with missing operands, to find all unsupported ops
            return self.run(*jx.jaxpr_and_consts(body), args)
        if prim is None and name not in RULES:
            self.no_rule[name] += 1
            return missing
        if any(a is _MISSING for a in args):
            return missing
        avals = [v.aval for v in eqn.outvars]
        try:
            if name in ELEMENTWISE or (prim is not None and prim.elementwise):
                args = [self.broadcast(a, avals[0].shape) for a in args]
            if prim is not None:
                out = self.graph.apply(prim, args, dict(eqn.params))
            else:
                out = RULES[name](args, dict(eqn.params))
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            outs = [o if isinstance(o, Tensor) else self.constant(o, a.dtype)
                    for o, a in zip(outs, avals)]
            for o, a in zip(outs, avals, strict=True):
                if o.shape != tuple(a.shape) or o.dtype != np.dtype(a.dtype):
                    raise _Unsupported(f"converted to {o.type_str}, expected {a.str_short()}")
        except (_Unsupported, AdpluginError, TypeError, ValueError) as e:
            self.failed.setdefault(name, str(e))
            return missing
        return outs

    def broadcast(self, x: Tensor, shape: Sequence[int]) -> Tensor:
        """lax's implicit broadcasting: rank-0 operands and size-1 dims stretch to `shape`."""
        shape = tuple(shape)
        if x.shape == shape:
            return x
        key = (x.node.id, shape)
        if key not in self._broadcasts:
            dims = tuple(range(len(shape) - x.ndim, len(shape)))
            self._broadcasts[key] = _bind("broadcast_in_dim", x, shape=shape,
                                          broadcast_dimensions=dims)
        return self._broadcasts[key]


# ----------------------------------------------------------------------------------------------
# trace
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TracedFunction:
    """A traced function: its graph, one placeholder per flattened array argument, and the
    output tensors (flattened; `out_tree` holds the structure). Calling it runs the graph."""

    name: str
    graph: Graph
    inputs: list[Tensor]
    outputs: list[Tensor]
    in_tree: Any
    out_tree: Any

    def unflatten(self, values: Sequence[Any]) -> Any:
        """The output pytree holding `values` (one per output tensor)."""
        return jax.tree.unflatten(self.out_tree, list(values))

    def __call__(self, *args: Any) -> Any:
        flat, tree = jax.tree.flatten(args)
        if tree != self.in_tree:
            raise GraphError(message(
                f"trace({self.name})", "arguments structured unlike the example arguments",
                str(tree), str(self.in_tree), "pass arguments of the traced structure (or "
                "trace the function again with the new structure)"))
        if not self.outputs:
            return self.unflatten([])
        return self.unflatten(self.graph.run(self.outputs, dict(zip(self.inputs, flat))))


def _function_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _argument_names(fn: Callable[..., Any], args: Sequence[Any]) -> list[str]:
    """One name per array leaf, from the parameter names and the paths in the pytrees."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), None)
    names: list[str] = []
    for i, arg in enumerate(args):
        if i < len(positional):
            base = positional[i]
        elif star is not None:
            base = f"{star}[{i - len(positional)}]"
        else:
            base = f"arg{i}"
        leaves, _ = jax.tree_util.tree_flatten_with_path(arg)
        names.extend(base + jax.tree_util.keystr(path) for path, _ in leaves)
    return names


def _trace_error(name: str, conv: _Converter) -> TraceError:
    given = [f"{p} ({n} equation{'s' if n > 1 else ''})" for p, n in sorted(conv.no_rule.items())]
    given += [f"{p} (could not convert: {why})" for p, why in sorted(conv.failed.items())]
    return TraceError(message(
        f"trace({name})", "the function uses JAX primitives that adplugin cannot convert",
        ", ".join(given), "adplugin primitives (ap.* ops) or JAX primitives with a conversion "
        "rule (adplugin.frontends.trace.supported_primitives())",
        "write those parts with ap.* ops, or define an adplugin primitive for them with "
        "ap.define_primitive(...) and bind it (its equations convert one to one)"))


def trace(fn: Callable[..., Any], *example_args: Any) -> TracedFunction:
    """Trace `fn` at `example_args` (pytrees of arrays) into an adplugin operation graph.

    The function may use `jax.numpy`, `jax.nn`, `lax` and `ap.*` ops; its jaxpr is legalized
    into adplugin primitives. Returns a `TracedFunction` with `.graph`, `.inputs` (one
    placeholder per flattened array argument, named like `x` or `params[0]`), `.outputs`
    (flattened; `.unflatten` rebuilds the output pytree) and `__call__`, which runs the graph.
    Differentiate with `ap.gradients(traced.outputs[0], traced.inputs)`.
    """
    name = _function_name(fn)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    jaxpr, consts = jx.jaxpr_and_consts(closed)
    graph = Graph(f"trace_{re.sub(r'[^0-9A-Za-z_]', '_', name)}")
    names = _argument_names(fn, example_args)
    if len(names) != len(jaxpr.invars):
        names = [f"in{i}" for i in range(len(jaxpr.invars))]
    inputs = [graph.placeholder(v.aval.shape, v.aval.dtype, n)
              for v, n in zip(jaxpr.invars, names)]
    conv = _Converter(graph)
    with graph.building(role=FORWARD):
        outputs = conv.run(jaxpr, consts, inputs)
    if conv.no_rule or conv.failed:
        raise _trace_error(name, conv)
    graph.verify()
    return TracedFunction(name, graph, inputs, outputs, jax.tree.structure(example_args),
                          jax.tree.structure(out_shape))
