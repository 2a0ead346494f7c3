"""Reverse mode on graphs: `gradients` (and `hessians`) by linearize + transpose.

For each node on a path from `xs` to `ys`, in reverse order, and each input on such a path,
the primitive's JVP rule for that input is traced with a linear stand-in for the tangent: the
parts of the rule that do not touch the tangent (say `cos(x)` for `sin`) become ordinary graph
nodes, the parts that do are recorded on a small tape of linear equations, and the tape is
transposed with the primitives' transpose rules, seeded with the node's cotangent. So only
linear primitives need transpose rules, and the result is an ordinary graph: applying
`gradients` to it again gives higher derivatives.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import DerivativeError, message
from adplugin._primitive import (
    NOT_DIFFERENTIABLE,
    ZERO_DERIVATIVE,
    Primitive,
    _as_shape_dtype,
    apply_transpose,
    get_primitive,
    register_symbolic_type,
)
from adplugin.ir.graph import Graph, GraphError, Node, Tensor, no_cyclic_gc
from adplugin.placement.requests import derived_from


class LinearVar:
    """Stands for a tangent while a JVP rule is traced for transposition; ops on it are
    recorded on the tape it belongs to (no global state: the value carries its tape)."""

    __slots__ = ("tape", "shape", "dtype", "weak_type")

    def __init__(self, tape: _Tape, aval: Any):
        self.tape = tape
        self.shape, self.dtype, self.weak_type = tuple(aval.shape), np.dtype(aval.dtype), False

    @property
    def ndim(self) -> int:
        return len(self.shape)


class _Tape:
    """The linear equations recorded while one JVP rule is traced."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.eqns: list[tuple[Primitive, tuple[Any, ...], dict[str, Any], LinearVar]] = []


def _linear_bind(prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> LinearVar:
    tape = next(a.tape for a in args if type(a) is LinearVar)
    args = tuple(a if isinstance(a, (LinearVar, Tensor)) else tape.graph._as_tensor(a, prim.name)
                 for a in args)
    out = LinearVar(tape, _as_shape_dtype(prim.abstract_eval(*args, **params)))
    tape.eqns.append((prim, args, params, out))
    return out


register_symbolic_type(LinearVar, _linear_bind, priority=1)


def _add(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else get_primitive("add").bind(a, b)


def _transpose_tape(tape: _Tape, t_in: LinearVar, result: Any, ct: Tensor) -> Tensor | None:
    """The cotangent of `t_in` given the cotangent `ct` of the linear function's `result`."""
    if result is t_in:
        return ct
    if not isinstance(result, LinearVar):
        return None  # the rule's output does not depend on the tangent
    cts: dict[int, Tensor] = {id(result): ct}
    for prim, args, params, out in reversed(tape.eqns):
        c = cts.pop(id(out), None)
        if c is None:
            continue
        linear = [isinstance(a, LinearVar) for a in args]
        for a, lin, r in zip(args, linear, apply_transpose(prim, c, linear, *args, **params)):
            if lin and r is not None:
                cts[id(a)] = _add(cts.get(id(a)), r)
    return cts.get(id(t_in))


def _input_vjp(node: Node, i: int, ct: Tensor) -> Tensor | None:
    """Cotangent contribution of `node`'s output cotangent `ct` to its input i."""
    prim = node.op
    assert isinstance(prim, Primitive)
    if prim.jvp is NOT_DIFFERENTIABLE:
        raise DerivativeError(message(
            prim.name, "the op is not differentiable", f"a gradient through {node.output!r}",
            "no gradient paths through this op",
            "wrap its inputs in ap.stop_gradient, or give the primitive a jvp rule"))
    rule = prim.jvp[i]  # type: ignore[index]
    if rule is None:
        return None
    tape = _Tape(node.output.graph)
    t = LinearVar(tape, node.inputs[i])
    result = rule(t, node.output, *node.inputs, **node.params)
    return _transpose_tape(tape, t, result, ct)


def _is_float(t: Any) -> bool:
    return jx.kind_of(t.dtype) == "f"


def active_nodes(graph: Graph, xs: Sequence[Tensor],
                 only: Collection[int] | None = None,
                 stops: Collection[int] = ()) -> set[int]:
    """Ids of nodes whose value depends differentiably on some x (the xs included), counting
    only nodes in `only` when given (a tape's recorded nodes). Nodes in `stops` are constants
    to derivation: they pass nothing on (though they may be sources themselves)."""
    active = {x.node.id for x in xs}
    start = min(active)
    for node in graph.nodes[start:]:
        if node.id in active or isinstance(node.op, str) or node.id in stops:
            continue
        if only is not None and node.id not in only:
            continue
        if node.op.jvp is ZERO_DERIVATIVE or not _is_float(node.output):
            continue
        if any(i.node.id in active for i in node.inputs):
            active.add(node.id)
    return active


def _as_list(v: Any) -> tuple[list[Any], bool]:
    return (list(v), True) if isinstance(v, (list, tuple)) else ([v], False)


def _check_tensors(what: str, ts: Sequence[Any], graph: Graph | None) -> Graph:
    for t in ts:
        if not isinstance(t, Tensor):
            raise GraphError(message("gradients", f"{what} must be graph tensors", repr(t)[:80],
                                     "tensors of one graph", "pass the tensors ops returned"))
        if graph is not None and t.graph is not graph:
            raise GraphError(message("gradients", f"{what} belong to another graph",
                                     f"{t!r} of {t.graph.name}", f"tensors of {graph.name}",
                                     "differentiate within one graph"))
        graph = t.graph
    assert graph is not None
    return graph


def filled_like(t: Tensor, value: float) -> Tensor:
    """A tensor of t's graph, shape and dtype holding `value` everywhere."""
    scalar = t.graph.constant(np.asarray(value, t.dtype))
    if not t.shape:
        return scalar
    return get_primitive("broadcast_in_dim").bind(scalar, shape=t.shape,
                                                  broadcast_dimensions=())


class UnconnectedGradients(enum.Enum):
    """What a gradient is for a source the target does not depend on (TensorFlow's enum)."""

    NONE = "none"
    ZERO = "zero"


def unconnected_mode(value: Any, op: str = "gradients") -> str:
    """'none' or 'zero', from a string or an `ap.UnconnectedGradients` member (any enum whose
    value is one of the two); anything else is an error (for graphs and tapes alike)."""
    raw = value.value if isinstance(value, enum.Enum) else value
    if isinstance(raw, str) and raw in ("none", "zero"):
        return raw
    raise ValueError(message(op, f"Unknown value for unconnected_gradients: {value!r}",
                             f"an unknown value for unconnected_gradients, {value!r}",
                             "'none', 'zero' or ap.UnconnectedGradients.NONE/ZERO",
                             "pass one of them"))


def _as_graph_tensors(vs: list[Any], graph: Graph | None) -> list[Any]:
    """Variables stand for their read node in the graph (TensorFlow 1's `gradients(y, var)`)."""
    from adplugin.eager.variable import Variable
    from adplugin.ir.variables import read_node

    if graph is None or not any(isinstance(v, Variable) for v in vs):
        return vs
    with graph.building():
        return [read_node(graph, v) if isinstance(v, Variable) else v for v in vs]


def _check_sources(xs: Sequence[Tensor]) -> None:
    for x in xs:
        if not _is_float(x):
            raise DerivativeError(message(
                "gradients", f"differentiating with respect to a non-floating tensor {x.name}",
                f"{x!r}", "floating-point xs (integer sources are refused, where TensorFlow "
                "gives None)", f"cast it with ap.astype({x.name}, float32) before the ops "
                "that use it"))


def _seeds(graph: Graph, ys: Sequence[Tensor], grad_ys: Any) -> list[Tensor | None]:
    """One weight per y: the given grad_ys (as the y's shape and dtype), or None for ones."""
    if grad_ys is None:
        return [None] * len(ys)
    gys, _ = _as_list(grad_ys)
    if len(gys) != len(ys):
        raise ValueError(message("gradients", "grad_ys does not match ys", f"{len(gys)} grad_ys",
                                 f"{len(ys)}, one per y", "give one weight tensor per y"))
    return [None if gy is None else conformed(graph, gy, y, "gradients", "grad_ys")
            for y, gy in zip(ys, gys)]


def conformed(graph: Graph, value: Any, like: Tensor, op: str, what: str) -> Tensor:
    """`value` as a tensor of `graph` with `like`'s dtype; its shape must be `like`'s (a
    weight for a y, a tangent for an x). A value of another dtype is converted when NumPy
    casts it "same_kind" (int or float64 to float32, as `Graph.run` converts feeds); one that
    would lose its kind (complex or float to int, a float weight for an integer y) is refused."""
    if not isinstance(value, Tensor):
        value = _concrete_value(value, like, op, what)
    t = graph._as_tensor(value, op)
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(message(op, f"{what} for {like.name} has another shape",
                                 list(t.shape), list(like.shape),
                                 f"give each {what} the shape of its tensor"))
    if t.dtype != like.dtype:
        if not np.can_cast(t.dtype, like.dtype, "same_kind"):
            raise TypeError(message(op, f"{what} for {like.name} has a dtype that does not "
                                    f"convert to {like.dtype.name}", t.dtype.name,
                                    f"{like.dtype.name} (or a dtype that casts to it "
                                    "'same_kind')", f"convert the {what} to "
                                    f"{like.dtype.name} explicitly (ap.astype, or np.real "
                                    "first for a complex value) if that is what you mean"))
        t = get_primitive("convert_element_type").bind(t, new_dtype=like.dtype, weak_type=False)
    return t


def _concrete_value(value: Any, like: Tensor, op: str, what: str) -> Any:
    """A concrete weight or tangent: a Python int or float takes a floating `like`'s dtype (it
    is weakly typed); anything that is not a numeric array is refused clearly."""
    if type(value) in (int, float) and jx.kind_of(like.dtype) == "f":
        return np.asarray(value, like.dtype)
    try:
        kind = np.asarray(value).dtype.kind
    except Exception:
        kind = "O"
    if kind not in "biufc" and not hasattr(value, "dtype"):
        raise TypeError(message(op, f"the {what} for {like.name} is not an array",
                                f"{type(value).__name__} {value!r:.60}",
                                f"an array of shape {list(like.shape)} and dtype "
                                f"{like.dtype.name}", "pass a NumPy/JAX array or a tensor"))
    return value


def _backward(graph: Graph, cts: dict[int, Tensor], active: set[int], first: int, last: int,
              keep: Collection[int], stops: Collection[int]) -> None:
    """Pushes the cotangents in `cts` back through the active nodes first..last; the entries
    of `keep` (the sources) stay in `cts` once complete."""
    for node in reversed(graph.nodes[first:last + 1]):
        if node.kind != "op" or node.id not in active:
            continue
        ct = cts.get(node.id) if node.id in keep else cts.pop(node.id, None)
        if ct is None or node.id in stops or node.op.jvp is ZERO_DERIVATIVE:  # type: ignore[union-attr]
            continue  # a constant to derivation (a source cut by stop_gradient, say)
        if node.device is None and node.colocate is None:
            _push_back(node, ct, cts, active)
        else:
            with derived_from(node):  # derivative nodes colocated with their forward node
                _push_back(node, ct, cts, active)


def _push_back(node: Node, ct: Tensor, cts: dict[int, Tensor], active: set[int]) -> None:
    """Adds node's input cotangents (its VJP applied to `ct`) into `cts`."""
    for i, inp in enumerate(node.inputs):
        if inp.node.id not in active:
            continue
        contribution = _input_vjp(node, i, ct)
        if contribution is not None:
            cts[inp.node.id] = _add(cts.get(inp.node.id), contribution)


def gradients(ys: Any, xs: Any, grad_ys: Any = None,
              unconnected_gradients: Any = "none", stop_gradients: Any = None,
              only: Collection[int] | None = None) -> list[Tensor | None]:
    """Symbolic derivatives of sum(ys) with respect to each of `xs` (TensorFlow's semantics).

    `xs` may be placeholders, any intermediate tensor (a y too: dy/dy is ones) or
    `ap.Variable`s read in the graph. `grad_ys` weights each y (ones by default). A gradient
    with no path from x to ys is None, or zeros with `unconnected_gradients="zero"` (or
    `ap.UnconnectedGradients.ZERO`). `stop_gradients` are tensors held constant: nothing flows
    through them (partial derivatives). The gradient nodes are added to the ys' graph.
    `only` restricts the paths to the nodes it holds (what a gradient tape recorded).
    """
    mode = unconnected_mode(unconnected_gradients)
    from adplugin.ir.deferred import any_deferred
    from adplugin.ir.deferred import gradients as deferred_gradients

    if any_deferred(ys, xs, grad_ys):  # shapes known at run time: derived per fed shape
        if stop_gradients is not None or only is not None:
            raise GraphError(message("gradients", "stop_gradients with tensors of unknown "
                                     "shape", "a placeholder with None dimensions",
                                     "tensors of known shapes", "give the placeholders "
                                     "their shapes, or use ap.stop_gradient in the graph"))
        return deferred_gradients(ys, xs, grad_ys, mode)
    ys_list, _ = _as_list(ys)
    if not ys_list or not _as_list(xs)[0]:  # nothing to differentiate, or nothing to vary
        return _without_paths(ys_list, _as_list(xs)[0], grad_ys, mode)
    graph = _check_tensors("ys", ys_list, None)
    xs_list = _as_graph_tensors(_as_list(xs)[0], graph)
    stop_list = _as_graph_tensors(_as_list(stop_gradients)[0]
                                  if stop_gradients is not None else [], graph)
    _check_tensors("xs", xs_list, graph)
    _check_tensors("stop_gradients", stop_list, graph)
    _check_sources(xs_list)
    stops = {t.node.id for t in stop_list}
    x_ids = {x.node.id for x in xs_list}
    active = active_nodes(graph, xs_list, only, stops)
    cts: dict[int, Tensor] = {}
    with graph.building(), no_cyclic_gc():
        for y, gy in zip(ys_list, _seeds(graph, ys_list, grad_ys)):
            if y.node.id in active:
                seed = filled_like(y, 1) if gy is None else gy
                cts[y.node.id] = _add(cts.get(y.node.id), seed)
        last = max((y.node.id for y in ys_list), default=-1)
        _backward(graph, cts, active, min(x_ids), last, x_ids, stops)
        results: list[Tensor | None] = []
        for x in xs_list:
            g = cts.get(x.node.id)
            if g is None and mode == "zero":
                g = filled_like(x, 0)
            if g is not None and x.node.sharding is not None:
                g = _sharded_like(g, x.node.sharding)
            results.append(g)
    return results


def _sharded_like(g: Tensor, sharding: Any) -> Tensor:
    """The gradient of a sharded input (a placeholder or variable given a sharding) takes the
    input's sharding: a sharding constraint, so the partitioner returns it split the same."""
    from adplugin.primitives.annotation import shard_p

    return shard_p.bind(g, sharding=sharding)  # type: ignore[no-any-return]


def _without_paths(ys: list[Any], xs: list[Any], grad_ys: Any, mode: str
                   ) -> list[Tensor | None]:
    """TensorFlow's answers when ys or xs is empty: no xs gives []; no ys gives, per x, None
    (unconnected NONE) or zeros of x's shape and dtype (ZERO): sum([]) is the constant 0."""
    if grad_ys is not None and len(_as_list(grad_ys)[0]) != len(ys):
        raise ValueError(message("gradients", "grad_ys does not match ys",
                                 f"{len(_as_list(grad_ys)[0])} grad_ys", f"{len(ys)}, one per y",
                                 "give one weight tensor per y"))
    if not xs:
        if ys:
            _check_tensors("ys", ys, None)
        return []
    from adplugin._context import current

    scope = current()
    graph = next((x.graph for x in xs if isinstance(x, Tensor)),
                 scope.graph if scope is not None else None)
    xs = _as_graph_tensors(xs, graph)
    _check_tensors("xs", xs, graph)
    _check_sources(xs)
    if mode == "none":
        return [None] * len(xs)
    with xs[0].graph.building():
        return [filled_like(x, 0) for x in xs]


def hessians(ys: Any, xs: Any) -> list[Tensor]:
    """d²(sum ys)/dx² for each x, shaped x.shape + x.shape (one reverse pass per element)."""
    from adplugin.primitives.shape import concatenate, reshape

    xs_list, _ = _as_list(xs)
    out = []
    for x, g in zip(xs_list, gradients(ys, xs_list, unconnected_gradients="zero")):
        assert g is not None
        flat = reshape(g, (x.size,))
        rows = []
        for k in range(x.size):
            gk = _element(flat, k)
            (row,) = gradients(gk, [x], unconnected_gradients="zero")
            rows.append(reshape(row, (1, x.size)))
        matrix = concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
        out.append(reshape(matrix, x.shape + x.shape))
    return out


def _element(flat: Tensor, k: int) -> Tensor:
    piece = get_primitive("slice").bind(flat, start_indices=(k,), limit_indices=(k + 1,))
    return get_primitive("reshape").bind(piece, new_sizes=())

