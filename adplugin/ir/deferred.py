"""Deferred tensors: graph values whose shapes are known only when the graph runs.

A placeholder with an unknown dimension (`None` in its shape) or an unknown rank (`shape=None`,
TensorFlow 1's `tf.placeholder("float")`) cannot be broadcast or promoted while the graph is
built: the `ap.*` wrappers need shapes for that. So such a placeholder is a `DeferredTensor`,
and every op on it records the call (the wrapper or primitive, its arguments, its static
keyword arguments) instead of adding nodes. `gradients` and variable assignments on deferred
tensors are recorded calls too.

When the graph runs, the shapes fed to the deferred placeholders form a signature; the calls
the fetches need are replayed, in order, into a concrete `Graph` for that signature (a
`Specialization`): deferred placeholders become placeholders of the fed shapes, plain tensors of
the source graph are copied in, and each call runs the very same `ap.*` code on the concrete
tensors. Specializations are cached per source graph in a bounded LRU, each with its own
compiled programs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._errors import message
from adplugin._lru import LRU
from adplugin._operator_types import OperatorMethods
from adplugin._primitive import Primitive, ShapeDtype, register_symbolic_type
from adplugin.eager.variable import Variable
from adplugin.ir.graph import FORWARD, Graph, GraphError, SymbolicValue, Tensor, needed_nodes
from adplugin.ir.operators import install_operators
from adplugin.ir.variables import VARIABLE
from adplugin.primitives._wrapping import register_deferred_type

SPECIALIZATIONS_PER_GRAPH = 16  # fed-shape signatures kept per graph (least recently used out)
PartialShape = tuple[int | None, ...] | None  # None: unknown rank; a None entry: unknown dim


class _Call:
    """One recorded call: `fn(graph, *args, **kwargs)` replayed in a specialization's graph,
    giving `n_out` tensors (a placeholder's call has no `fn`)."""

    __slots__ = ("fn", "args", "kwargs", "n_out", "ordinal")

    def __init__(self, fn: Callable[..., Any] | None, args: tuple[Any, ...],
                 kwargs: dict[str, Any], n_out: int = 1, ordinal: int = -1):
        self.fn, self.args, self.kwargs, self.n_out = fn, args, kwargs, n_out
        self.ordinal = ordinal  # a placeholder's position among its graph's placeholders

    def inputs(self) -> Iterator[Any]:
        return _tensors_in((*self.args, *self.kwargs.values()))


def _tensors_in(args: Sequence[Any]) -> Iterator[Any]:
    """The deferred and plain graph tensors among `args` (lists and tuples searched)."""
    for a in _flat(args):
        if isinstance(a, (DeferredTensor, Tensor)):
            yield a


def _flat(args: Sequence[Any]) -> Iterator[Any]:
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


class DeferredTensor(SymbolicValue, OperatorMethods):
    """A graph value whose shape is known only when the graph runs (a placeholder with an
    unknown dimension or rank, or a value computed from one).

    Works with the `ap.*` ops, Python operators and `gradients`, which record calls replayed
    per fed shape when the graph runs. `shape` is the partial shape (None entries unknown; None
    for an unknown rank); `dtype` is known for placeholders and found for other values by a
    trial specialization with every unknown dimension 1 (None if that fails).
    """

    __slots__ = ("graph", "call", "index", "_shape", "_dtype", "name", "__weakref__")
    __array_priority__ = 1000

    def __init__(self, graph: Graph, call: _Call, index: int = 0, shape: PartialShape = None,
                 dtype: np.dtype | None = None, name: str | None = None):
        self.graph, self.call, self.index = graph, call, index
        self._shape, self._dtype, self.name = shape, dtype, name

    @property
    def is_placeholder(self) -> bool:
        return self.call.fn is None

    @property
    def shape(self) -> PartialShape:
        return self._shape

    @property
    def ndim(self) -> int | None:
        return None if self._shape is None else len(self._shape)

    @property
    def dtype(self) -> np.dtype | None:
        if self._dtype is None:
            self._dtype = _probe_dtype(self)
        return self._dtype

    @property
    def weak_type(self) -> bool:
        return False

    def get_shape(self) -> PartialShape:
        return self._shape

    def __repr__(self) -> str:
        shape = "?" if self._shape is None else \
            "[" + ",".join("?" if d is None else str(d) for d in self._shape) + "]"
        what = "placeholder" if self.is_placeholder else getattr(self.call.fn, "name", "op")
        dtype = self._dtype.name if self._dtype is not None else "?"
        return f"<DeferredTensor {self.name or ''}: {dtype}{shape} = {what}>"


class _InScope:
    """Replays an `ap.*` wrapper or a primitive's bind with `graph` being built."""

    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[..., Any], name: str):
        self.fn, self.name = fn, name

    def __call__(self, graph: Graph, *args: Any, **kwargs: Any) -> Any:
        with graph.building(role=FORWARD):
            return self.fn(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Building: placeholders and recorded calls
# ----------------------------------------------------------------------------------------------

def deferred_placeholder(graph: Graph, shape: Sequence[int | None] | None, dtype: Any,
                         name: str | None) -> DeferredTensor:
    """A placeholder of `graph` with unknown dimensions (None entries) or rank (shape None)."""
    partial = None if shape is None else tuple(None if d is None else int(d) for d in shape)
    state = _state(graph)
    with state.lock:
        call = _Call(None, (), {}, ordinal=len(state.placeholders))
        t = DeferredTensor(graph, call, 0, partial, jx.canonical_dtype(dtype),
                           name or "placeholder")
        state.placeholders.append(t)
    return t


def _graph_of(op: str, args: Sequence[Any]) -> Graph:
    """The one graph of the deferred and plain graph tensors among `args`."""
    graph: Graph | None = None
    for t in _tensors_in(args):
        if graph is not None and t.graph is not graph:
            raise GraphError(message(op, "tensors of two graphs meet", f"{t!r} of "
                                     f"{t.graph.name} and a tensor of {graph.name}",
                                     "tensors of one graph", "build all the tensors of one "
                                     "computation in one graph"))
        graph = t.graph
    assert graph is not None
    return graph


def _record(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            name: str | None = None) -> DeferredTensor:
    op = name or getattr(fn, "__name__", "op").lstrip("_")
    graph = _graph_of(op, (*args, *kwargs.values()))
    call = _Call(_InScope(fn, op), args, dict(kwargs))
    return DeferredTensor(graph, call)


def _wrapper_call(wrapper: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> DeferredTensor:
    return _record(wrapper, args, kwargs)


def _bind(prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> DeferredTensor:
    return _record(prim.bind, tuple(args), params, prim.name)


def record_graph_call(fn: Callable[..., Any], args: tuple[Any, ...], n_out: int,
                      name: str) -> list[DeferredTensor]:
    """Record `fn(graph, *args)` (replayed with the specialization's graph), giving `n_out`
    deferred values (gradients, assignments)."""
    graph = _graph_of(name, args)
    call = _Call(fn, args, {}, n_out)
    return [DeferredTensor(graph, call, i) for i in range(n_out)]


def is_deferred(x: Any) -> bool:
    return type(x) is DeferredTensor


def any_deferred(*values: Any) -> bool:
    """Whether a deferred tensor is among `values` (lists and tuples searched)."""
    stack = list(values)
    while stack:
        v = stack.pop()
        if type(v) is DeferredTensor:
            return True
        if isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


# ----------------------------------------------------------------------------------------------
# Gradients on deferred values
# ----------------------------------------------------------------------------------------------

def gradients(ys: Any, xs: Any, grad_ys: Any, unconnected_gradients: str) -> list[Any]:
    """What `ap.gradients` gives when deferred tensors are among ys, xs or grad_ys: a deferred
    gradient per x connected to ys, None for the others (zeros with `unconnected_gradients`
    "zero", already checked by `ap.gradients`)."""
    from adplugin.transforms.reverse import gradients as graph_gradients

    ys_l = list(ys) if isinstance(ys, (list, tuple)) else [ys]
    xs_l = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    if any(isinstance(x, Variable) for x in xs_l):  # a variable stands for its read node
        from adplugin.ir.variables import read_node

        graph = _graph_of("gradients", ys_l)
        with graph.building(role=FORWARD):
            xs_l = [read_node(graph, x) if isinstance(x, Variable) else x for x in xs_l]
    for t in [*ys_l, *xs_l]:
        if not isinstance(t, (Tensor, DeferredTensor)):
            raise GraphError(message("gradients", "ys and xs must be graph tensors",
                                     repr(t)[:80], "tensors of one graph",
                                     "pass the tensors ops returned"))
    gys = None if grad_ys is None else \
        list(grad_ys) if isinstance(grad_ys, (list, tuple)) else [grad_ys]
    reach = Reach(ys_l)
    keep = [i for i, x in enumerate(xs_l)
            if unconnected_gradients == "zero" or reach.reaches(x)]
    results: list[Any] = [None] * len(xs_l)
    if not keep:
        return results
    kept = [xs_l[i] for i in keep]

    def replay(graph: Graph, ys_c: list[Tensor], xs_c: list[Tensor], gys_c: Any) -> list[Any]:
        return graph_gradients(ys_c, xs_c, gys_c, unconnected_gradients)

    outs = record_graph_call(replay, (ys_l, kept, gys), len(kept), "gradients")
    for i, out in zip(keep, outs):
        out._shape = getattr(xs_l[i], "shape", None)
        out._dtype = xs_l[i].dtype
        results[i] = out
    return results


def forward_gradients(ys: Any, xs: Any, tangents: Any) -> list[Any]:
    """What `ap.forward_gradients` gives when deferred tensors are among ys, xs or tangents: a
    deferred directional derivative per y, derived once the fed shapes are known."""
    from adplugin.transforms.forward import forward_gradients as graph_forward

    ys_l = list(ys) if isinstance(ys, (list, tuple)) else [ys]
    xs_l = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    ts_l = list(tangents) if isinstance(tangents, (list, tuple)) else [tangents]
    for t in [*ys_l, *xs_l]:
        if not isinstance(t, (Tensor, DeferredTensor)):
            raise GraphError(message("forward_gradients", "ys and xs must be graph tensors",
                                     repr(t)[:80], "tensors of one graph",
                                     "pass the tensors ops returned"))

    def replay(graph: Graph, ys_c: list[Tensor], xs_c: list[Tensor], ts_c: list[Any]
               ) -> list[Any]:
        return graph_forward(ys_c, xs_c, ts_c)

    outs = record_graph_call(replay, (ys_l, xs_l, ts_l), len(ys_l), "forward_gradients")
    for y, out in zip(ys_l, outs):
        out._shape = getattr(y, "shape", None)
        out._dtype = y.dtype
    return outs


class Reach:
    """What `ys` depend on: recorded calls, source-graph nodes and variables read."""

    def __init__(self, ys: Sequence[Any]):
        self.calls: set[int] = set()  # ids of calls, alive meanwhile: the ys hold them
        self.nodes: set[int] = set()
        self.variables: dict[int, Variable] = {}  # id -> variable, in the order met
        stack = list(ys)
        plain: list[Tensor] = []
        while stack:
            t = stack.pop()
            if isinstance(t, Tensor):
                plain.append(t)
            elif type(t) is DeferredTensor and id(t.call) not in self.calls:
                self.calls.add(id(t.call))
                stack.extend(t.call.inputs())
                for a in _flat((*t.call.args, *t.call.kwargs.values())):
                    if isinstance(a, Variable):
                        self.variables.setdefault(id(a), a)
        if plain:
            for node in needed_nodes(plain[0].graph, plain):
                self.nodes.add(node.id)
                if node.op == VARIABLE:
                    self.variables.setdefault(id(node.value), node.value)

    def reaches(self, x: Any) -> bool:
        if type(x) is DeferredTensor:
            return id(x.call) in self.calls
        if x.node.op == VARIABLE and id(x.node.value) in self.variables:
            return True
        return x.node.id in self.nodes


# ----------------------------------------------------------------------------------------------
# Specialization: replaying the calls for fed shapes
# ----------------------------------------------------------------------------------------------

class _State:
    """A source graph's deferred placeholders and its specializations."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.placeholders: list[DeferredTensor] = []
        self.specializations: LRU[Specialization] = LRU(SPECIALIZATIONS_PER_GRAPH)
        self.probe: Specialization | None = None
        self.lock = threading.Lock()


def _state(graph: Graph) -> _State:
    state = graph._deferred
    if state is None:
        with graph._lock:
            if graph._deferred is None:
                graph._deferred = _State(graph)
            state = graph._deferred
    assert isinstance(state, _State)
    return state


def specializations(graph: Graph) -> LRU[Specialization]:
    """The cached specializations of `graph` (bounded LRU, keyed by fed-shape signature)."""
    return _state(graph).specializations


class Specialization:
    """The concrete graph of one fed-shape signature: calls replayed on demand."""

    def __init__(self, source: Graph, shape_of: Callable[[DeferredTensor], tuple[int, ...]],
                 label: str):
        self.source = source
        self.graph = Graph(f"{source.name}[{label}]")
        self._shape_of = shape_of
        self._built: dict[_Call, list[Any]] = {}
        self._copied: dict[int, Tensor] = {}  # source node id -> its copy
        self._lock = threading.RLock()

    def concrete(self, t: Any) -> Any:
        """The concrete counterpart of a deferred or source tensor (None: a gradient found
        unconnected once shapes were known)."""
        with self._lock:
            if isinstance(t, Tensor):
                return self._copy(t)
            for call in _calls_needed(t, self._built):
                self._built[call] = self._replay(call)
            return self._built[t.call][t.index]

    def _copy(self, t: Tensor) -> Tensor:
        from adplugin.ir.variables import VARIABLE, read_node
        from adplugin.transforms.simplify import carry_request

        if t.graph is not self.source:
            raise GraphError(message("Graph.run", "a tensor of another graph", f"{t!r} of "
                                     f"{t.graph.name}", f"tensors of {self.source.name}",
                                     "build all the tensors of one computation in one graph"))
        for node in needed_nodes(self.source, [t]):
            if node.id in self._copied:
                continue
            if node.op == VARIABLE:
                copy = read_node(self.graph, node.value)
            else:
                out = node.output
                copy = self.graph._add(node.op, tuple(self._copied[i.node.id]
                                                      for i in node.inputs),
                                       node.params, ShapeDtype(out.shape, out.dtype,
                                                               out.weak_type),
                                       node.name, node.value, node.role)
            self._copied[node.id] = copy
            if node.device is not None or node.colocate is not None:
                carry_request(node, copy.node, self._copied)
        return self._copied[t.node.id]

    def _arg(self, a: Any) -> Any:
        if isinstance(a, (list, tuple)):
            return type(a)(self._arg(x) for x in a)
        if type(a) is DeferredTensor:
            out = self._built[a.call][a.index]
            if out is None:
                raise _unconnected(a)
            return out
        if isinstance(a, Tensor):
            return self._copy(a)
        return a

    def _replay(self, call: _Call) -> list[Any]:
        if call.fn is None:  # a placeholder
            t = _state(self.source).placeholders[call.ordinal]
            shape = self._shape_of(t)
            return [self.graph.placeholder(shape, t._dtype, t.name)]
        kwargs = {k: self._arg(v) for k, v in call.kwargs.items()}
        out = call.fn(self.graph, *[self._arg(a) for a in call.args], **kwargs)
        outs = list(out) if call.n_out > 1 or isinstance(out, list) else [out]
        return [o if o is None or isinstance(o, Tensor) or not _is_value(o)
                else self.graph.constant(o) for o in outs]


def _is_value(x: Any) -> bool:
    return hasattr(x, "dtype") or isinstance(x, (bool, int, float, complex))


def _unconnected(t: DeferredTensor) -> GraphError:
    return GraphError(message(
        "Graph.run", "a gradient found unconnected once the shapes were known", repr(t),
        "a gradient with a differentiable path to the target",
        "ask gradients(..., unconnected_gradients='zero') for zeros instead"))


def _calls_needed(t: DeferredTensor, built: dict[_Call, Any]) -> list[_Call]:
    """The calls `t` needs that are not built yet, each after the calls it uses."""
    order: list[_Call] = []
    seen: set[int] = set()
    stack: list[tuple[_Call, bool]] = [(t.call, False)]
    while stack:
        call, expanded = stack.pop()
        if expanded:
            order.append(call)
            continue
        if id(call) in seen or call in built:
            continue
        seen.add(id(call))
        stack.append((call, True))
        for a in call.inputs():
            if type(a) is DeferredTensor and id(a.call) not in seen and a.call not in built:
                stack.append((a.call, False))
    return order


def _check_fed_shape(t: DeferredTensor, shape: tuple[int, ...]) -> None:
    want = t.shape
    if want is None:
        return
    if len(want) != len(shape) or any(w is not None and w != s for w, s in zip(want, shape)):
        expected = [("None" if w is None else w) for w in want]
        raise GraphError(message("Graph.run", f"wrong shape fed for {t.name}",
                                 f"shape {list(shape)}", f"shape {expected}",
                                 f"feed {t.name} an array of a shape that fits {expected}"))


def specialize(graph: Graph, fetches: Sequence[Any], feed_dict: dict[Any, Any]
               ) -> tuple[Graph, list[Any], dict[Tensor, Any]]:
    """The concrete graph for the shapes fed, the fetches and feeds mapped into it."""
    from adplugin.ir.variables import GraphOp

    state = _state(graph)
    fed: list[tuple[int, tuple[int, ...]]] = []
    shapes: dict[int, tuple[int, ...]] = {}
    for key, value in feed_dict.items():
        if type(key) is DeferredTensor:
            if not key.is_placeholder or key.graph is not graph:
                raise GraphError(message("Graph.run", "a feed_dict key is not a placeholder "
                                         "of this graph", repr(key)[:80],
                                         f"placeholders of {graph.name}",
                                         "key the feed_dict by the placeholders themselves"))
            shape = tuple(np.shape(value))
            _check_fed_shape(key, shape)
            ordinal = key.call.ordinal
            fed.append((ordinal, shape))
            shapes[ordinal] = shape
    signature = tuple(sorted(fed))

    def shape_of(t: DeferredTensor) -> tuple[int, ...]:
        ordinal = t.call.ordinal
        if ordinal not in shapes:
            raise GraphError(message(
                "Graph.run", "a placeholder the fetches depend on was not fed",
                f"no value for {t!r}", "a feed_dict entry for every placeholder used",
                f"pass feed_dict={{{t.name}: value}}"))
        return shapes[ordinal]

    label = ",".join(str(list(s)) for _, s in signature)
    spec = state.specializations.get_or_build(
        signature, lambda: Specialization(graph, shape_of, label))

    def mapped(f: Any) -> Any:
        if isinstance(f, GraphOp):
            return f.mapped(spec.graph, lambda t: _fetched(spec, t))
        if isinstance(f, (Tensor, DeferredTensor)):
            return _fetched(spec, f)
        return f

    feeds = {spec.concrete(k): v for k, v in feed_dict.items()
             if isinstance(k, (Tensor, DeferredTensor))}
    return spec.graph, [mapped(f) for f in fetches], feeds


def _fetched(spec: Specialization, t: Any) -> Tensor:
    out = spec.concrete(t)
    if out is None:
        raise _unconnected(t)
    assert isinstance(out, Tensor)
    return out


def _probe_dtype(t: DeferredTensor) -> np.dtype | None:
    """The dtype `t` has when every unknown dimension is 1 (unknown rank: a scalar)."""
    state = _state(t.graph)
    with state.lock:
        if state.probe is None:
            state.probe = Specialization(
                t.graph, lambda p: () if p.shape is None else
                tuple(1 if d is None else d for d in p.shape), "probe")
        probe = state.probe
    try:
        out = probe.concrete(t)
    except Exception:  # noqa: BLE001  (a shape-dependent failure: the dtype stays unknown)
        return None
    return None if out is None else np.dtype(out.dtype)


def _getitem(self: DeferredTensor, key: Any) -> DeferredTensor:
    from adplugin.primitives.shape import basic_index

    return _record(basic_index, (self, key), {}, "index")


register_symbolic_type(DeferredTensor, _bind, priority=3)
register_deferred_type(DeferredTensor, _wrapper_call)
install_operators(DeferredTensor)
setattr(DeferredTensor, "__getitem__", _getitem)  # noqa: B010  (basic_index needs shapes)
