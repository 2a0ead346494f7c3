"""The operation graph: nodes are primitive applications, tensors are the values between them.

A `Graph` is append-only and its nodes are immutable: a node, once added, never changes, so a
tensor names one value for the life of the graph. Nodes are kept in creation order, which is a
topological order (a node's inputs always exist before it). Transforms either append derived
nodes (`gradients` does, as TensorFlow's does) or build a new graph (`simplify`).
"""

from __future__ import annotations

import gc
import itertools
import math
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from adplugin import _context
from adplugin import _jax_adapter as jx
from adplugin._context import DERIVATIVE, FORWARD
from adplugin._errors import AdpluginError, message
from adplugin._operator_types import OperatorMethods
from adplugin._primitive import (
    Primitive,
    ShapeDtype,
    _as_shape_dtype,
    register_scope_taker,
    register_symbolic_type,
)

PLACEHOLDER = "placeholder"
CONSTANT = "constant"
__all__ = ["CONSTANT", "DERIVATIVE", "FORWARD", "PLACEHOLDER", "Graph", "GraphError", "Node",
           "Tensor", "constant", "get_default_graph", "needed_nodes", "no_cyclic_gc",
           "placeholder"]


class GraphError(AdpluginError, ValueError):
    """A graph was used inconsistently (foreign tensor, missing or wrong feed, ...)."""


class Node:
    """One primitive application (or a placeholder or constant) with its static params."""

    __slots__ = ("id", "op", "inputs", "params", "output", "role", "name", "value", "device",
                 "colocate", "sharding", "operand_shardings", "traceback")

    def __init__(self, id: int, op: Primitive | str, inputs: tuple[Tensor, ...],
                 params: dict[str, Any], role: str, name: str | None, value: Any = None):
        self.id, self.op, self.inputs, self.params = id, op, inputs, params
        self.role, self.name, self.value = role, name, value
        self.output: Tensor
        self.device: Any = None  # the requested device (a placement DeviceSpec), or None
        self.colocate: int | None = None  # the id of a node whose colocation group it joins
        self.sharding: Any = None  # an input's NamedSharding (placeholder(..., sharding=)),
        # or an op's result sharding applied by `ShardingPlan.apply`
        # the shardings a plan moves the operands to before the op (None: as they come)
        self.operand_shardings: tuple[Any, ...] | None = None
        self.traceback: Any = None  # where it was built (lowering attributes XLA's ops to it)

    @property
    def kind(self) -> str:
        return self.op if isinstance(self.op, str) else "op"

    @property
    def op_name(self) -> str:
        return self.op if isinstance(self.op, str) else self.op.name

    @property
    def source(self) -> str | None:
        """`file.py:12`: the user's line that built the node (outside adplugin and JAX)."""
        return jx.user_source(self.traceback)

    def __repr__(self) -> str:
        return f"Node({self.id}, {self.op_name}, role={self.role})"


class SymbolicValue:
    """Mixin of graph values: no truth value and no array until the graph runs."""

    __slots__ = ()

    def __bool__(self) -> bool:
        raise GraphError(message(
            f"{type(self).__name__}.__bool__", "a symbolic tensor has no truth value",
            repr(self), "a concrete value",
            "use ap.where for data-dependent choices, or run the graph"))

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise GraphError(message(
            f"{type(self).__name__}.__array__", "a symbolic tensor has no value until the "
            "graph runs", repr(self), "a concrete array",
            "fetch it with graph.run(tensor, feed_dict)"))


class Tensor(SymbolicValue, OperatorMethods):
    """A symbolic value of a graph: shape, dtype and the node that computes it.

    Works with every `ap.*` op and with Python operators (`2*a*b**2 + 3*a**2*b`).
    """

    __slots__ = ("graph", "node", "shape", "dtype", "weak_type", "__weakref__")
    __array_priority__ = 1000  # numpy scalars defer to our operators

    def __init__(self, graph: Graph, node: Node, aval: ShapeDtype):
        self.graph, self.node = graph, node
        self.shape, self.dtype, self.weak_type = aval.shape, aval.dtype, aval.weak_type

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def name(self) -> str:
        return self.node.name or f"%{self.node.id}"

    @property
    def type_str(self) -> str:
        return f"{_short_dtype(self.dtype)}{list(self.shape)}".replace(" ", "")

    def __repr__(self) -> str:
        return f"<Tensor {self.name}: {self.type_str} = {self.node.op_name}>"

    # operators are attached below, from the ap.* ops


_DTYPE_SHORT = {"float": "f", "int": "i", "uint": "u", "bool": "bool", "bfloat": "bf"}


def _short_dtype(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    for long, short in _DTYPE_SHORT.items():
        if name.startswith(long):
            return name.replace(long, short, 1)
    return name


class Graph:
    """An operation graph; `with ap.Graph() as g:` makes it the default for new tensors."""

    _ids = itertools.count()

    def __init__(self, name: str | None = None):
        self.name = name or f"graph{next(Graph._ids)}"
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._name_counts: dict[str, int] = {}
        self._compiled: Any = None  # an LRU of compiled programs, made on first run
        self._lock = threading.RLock()  # threads may add nodes to one graph at once
        self._variable_reads: dict[Any, Tensor] = {}  # variable -> its read node (ir.variables)
        self._deferred: Any = None  # placeholders of unknown shape and their specializations

    # --- building ---------------------------------------------------------------------------

    def _add(self, op: Primitive | str, inputs: tuple[Tensor, ...], params: dict[str, Any],
             aval: ShapeDtype, name: str | None = None, value: Any = None,
             role: str | None = None) -> Tensor:
        scope = _context.current()
        if role is None:
            role = scope.role if scope is not None and scope.graph is self else FORWARD
        with self._lock:
            if name is not None:
                name = self._unique(name)
            node = Node(len(self.nodes), op, inputs, params, role, name, value)
            node.traceback = jx.capture_traceback()
            if scope is not None and (scope.device is not None or scope.colocate is not None):
                from adplugin.placement.requests import stamp  # the scope's device request

                stamp(self, node, scope)
            node.output = Tensor(self, node, aval)
            self.nodes.append(node)
        return node.output

    def _unique(self, name: str) -> str:
        """`name`, or `name_k` with the first free k (amortized O(1): a counter per name)."""
        candidate, k = name, self._name_counts.get(name, 0)
        if k:
            candidate = f"{name}_{k}"
        while candidate in self._names:
            k += 1
            candidate = f"{name}_{k}"
        self._name_counts[name] = k + 1
        self._names.add(candidate)
        return candidate

    def placeholder(self, shape: Sequence[int | None] | None, dtype: Any = np.float32,
                    name: str | None = None, sharding: Any = None) -> Any:
        """A graph input fed at run time. With an unknown dimension (None) or rank (shape
        None) it is a `DeferredTensor`: the graph is specialized per fed shape when it runs.
        A dimension of -1 means None, as in TensorFlow; anything else not a size is refused.
        `sharding` (a `PartitionSpec` on the mesh in scope, or a `NamedSharding`): fed values
        are put in that sharding, and propagation starts from it."""
        from adplugin.primitives._wrapping import placeholder_type

        shape, dtype = placeholder_type(shape, dtype)
        if shape is None or any(d is None for d in shape):
            if sharding is not None:
                raise GraphError(message(
                    "placeholder", "a sharded placeholder needs a known shape",
                    f"shape {shape} with sharding {sharding}", "every dimension known",
                    "give the full shape (shard the batch, not an unknown dimension)"))
            from adplugin.ir.deferred import deferred_placeholder

            return deferred_placeholder(self, shape, dtype, name)
        aval = ShapeDtype(tuple(int(d) for d in shape if d is not None),  # (none is None)
                          jx.canonical_dtype(dtype))
        named = None
        if sharding is not None:
            from adplugin.sharding.mesh import named_sharding

            named = named_sharding("placeholder", sharding, aval.shape)
        t = self._add(PLACEHOLDER, (), {}, aval, name or "placeholder")
        t.node.sharding = named
        return t

    def constant(self, value: Any, dtype: Any = None, name: str | None = None) -> Tensor:
        if isinstance(value, Tensor):
            raise GraphError(message("constant", "the value is already a tensor", repr(value),
                                     "a concrete array or scalar", "use the tensor directly"))
        weak = dtype is None and type(value) in (int, float, complex)  # not NumPy scalars
        dtype = jx.canonical_dtype(dtype if dtype is not None else jx.result_type(value)[0])
        array = np.asarray(value, dtype)
        return self._add(CONSTANT, (), {}, ShapeDtype(array.shape, array.dtype, weak), name,
                         array)

    def apply(self, prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> Tensor:
        """Add a node applying `prim` (non-tensor arguments become constants)."""
        inputs = tuple([a if type(a) is Tensor and a.graph is self else
                        self._as_tensor(a, prim.name) for a in args])
        aval = _as_shape_dtype(prim.abstract_eval(*inputs, **params))
        return self._add(prim, inputs, params, aval)

    def _as_tensor(self, x: Any, op: str) -> Tensor:
        if isinstance(x, Tensor):
            if x.graph is not self:
                raise GraphError(message(
                    op, "a tensor of another graph", f"{x!r} of {x.graph.name}",
                    f"tensors of {self.name}", "build all the tensors of one computation in "
                    "one graph"))
            return x
        if isinstance(x, Linear):
            raise TypeError(f"ap.{op}: an unknown linear value cannot enter the graph")
        return self.constant(np.asarray(x) if not isinstance(x, (bool, int, float)) else x)

    # --- the graph as a scope of the dispatch context -----------------------------------------

    def __enter__(self) -> Graph:
        _context.push(self, graph=self, role=FORWARD, recording=None, paused=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        _context.pop(self)

    @contextmanager
    def building(self, role: str = DERIVATIVE) -> Iterator[Graph]:
        """Inside, ops on constants alone add nodes to this graph, with `role` (derivative
        nodes by default: transforms build inside it)."""
        with _context.scoped(self, graph=self, role=role, recording=None, paused=False):
            yield self

    # --- inspection -------------------------------------------------------------------------

    @property
    def placeholders(self) -> list[Tensor]:
        return [n.output for n in self.nodes if n.op == PLACEHOLDER]

    def verify(self) -> None:
        """Check the invariants: topological order, own tensors, types agree with the rules."""
        from adplugin.ir.verify import verify

        verify(self)

    def to_text(self, outputs: Sequence[Tensor] | None = None) -> str:
        from adplugin.ir.printing import to_text

        return to_text(self, outputs)

    def to_dot(self, outputs: Sequence[Tensor] | None = None) -> str:
        from adplugin.ir.printing import to_dot

        return to_dot(self, outputs)

    def __str__(self) -> str:
        return self.to_text()

    def sharding(self, outputs: Sequence[Tensor] | None = None, strict: bool = False) -> Any:
        """Every node's sharding, propagated from the annotations with each primitive's rule
        (a `Propagation`: `.spec(t)`, `.type_text(t)`, `.conflicts`, `.explain(t)`);
        `strict=True` raises on a conflict instead of taking the node as replicated."""
        from adplugin.sharding.propagate import propagate

        return propagate(self, outputs, strict)

    def explain_sharding(self, t: Tensor) -> str:
        """The chain of nodes and rules that decided `t`'s sharding."""
        return self.sharding([t]).explain(t)  # type: ignore[no-any-return]

    def predicted_collectives(self, outputs: Sequence[Tensor] | None = None) -> Any:
        """The collectives the propagated shardings call for, each with its node."""
        from adplugin.sharding.predict import predict_collectives

        return predict_collectives(self.sharding(outputs))

    def placement(self, fetches: Any, feed_dict: dict[Any, Any] | None = None) -> Any:
        """Where each node the fetches need runs, and why: a `Placement` (`table()` prints it,
        `partition()` gives the per-device subprograms and transfers `run` uses)."""
        from adplugin.placement.execution import placement_for_run

        return placement_for_run(self, fetches, feed_dict or {})

    def run(self, fetches: Any, feed_dict: dict[Tensor, Any] | None = None) -> Any:
        """Compile (once per fetch and feed set) and run; returns fetches' values."""
        from adplugin.lowering.run import run

        return run(self, fetches, feed_dict or {})

    def lower(self, fetches: Any, feed_dict: dict[Tensor, Any] | None = None) -> Any:
        """The lowered program for these fetches and feeds (StableHLO text, cost analysis)."""
        from adplugin.lowering.run import lower

        return lower(self, fetches, feed_dict or {})

    def export(self, fetches: Any, feed_dict: dict[Tensor, Any] | None = None,
               platforms: Sequence[str] | None = None) -> Any:
        """The program as a serializable `jax.export.Exported` (input shardings kept;
        `platforms` such as `("cpu", "cuda", "tpu")` lowers for each of them)."""
        from adplugin.lowering.run import export

        return export(self, fetches, feed_dict or {}, platforms)

    def _bind(self, prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> Tensor:
        return self.apply(prim, args, params)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.nodes)} nodes>"


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Graph passes allocate many small objects and free none: the cyclic collector would
    rescan them all again and again (quadratic time), so it waits until the end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def needed_nodes(graph: Graph, outputs: Sequence[Tensor] | None,
                 cut: Collection[int] = ()) -> list[Node]:
    """The nodes `outputs` depend on, in graph order (all nodes when outputs is None), not
    looking past the nodes whose ids are in `cut` (values fed from outside)."""
    if outputs is None:
        return list(graph.nodes)
    keep: set[int] = set()
    stack = [t.node for t in outputs]
    while stack:
        node = stack.pop()
        if node.id in keep:
            continue
        keep.add(node.id)
        if node.id not in cut:
            stack.extend(i.node for i in node.inputs)
    return [n for n in graph.nodes if n.id in keep]


from adplugin._primitive import Linear  # noqa: E402  (after Tensor: no cycle at import)


def get_default_graph() -> Graph:
    """The innermost `with ap.Graph():` graph of this thread or task."""
    scope = _context.current()
    if scope is None or scope.graph is None:
        raise GraphError(message(
            "get_default_graph", "no graph is being built here", "a call outside any "
            "`with ap.Graph():` block", "a `with ap.Graph() as g:` block around graph code",
            "open one (adplugin keeps no hidden global graph; adplugin.compat.v1 has "
            "TensorFlow 1's default graph)"))
    return scope.graph


def placeholder(shape: Sequence[int | None] | None, dtype: Any = np.float32,
                name: str | None = None, sharding: Any = None) -> Any:
    """A graph input to be fed at run time (TensorFlow 1 style), in the innermost graph. None
    for a dimension (or for the shape: unknown rank) defers shapes to run time: the graph is
    specialized per fed shape (see `adplugin.ir.deferred`)."""
    scope = _context.current()
    if scope is None or scope.graph is None:
        raise GraphError(message(
            "placeholder", "a placeholder belongs to a graph, and none is being built here",
            f"placeholder({shape!r:.40}) outside any graph",
            "a `with ap.Graph() as g:` block", "create placeholders inside `with ap.Graph():`, "
            "or pass arrays to the ops directly (eager)"))
    return scope.graph.placeholder(shape, dtype, name, sharding)


def constant(value: Any, dtype: Any = None, name: str | None = None) -> Any:
    """A constant: a node of the graph being built, or outside graphs an eager tensor (as
    `tf.constant` in TensorFlow 2: Python operators work, and a tape records it if watched).
    Under a JAX trace started inside a graph (jax.jit called there), it is not the graph's."""
    scope = _context.effective()
    if scope is not None and scope.graph is not None:
        return scope.graph.constant(value, dtype, name)
    from adplugin.eager.recording import eager_constant

    return eager_constant(value, dtype)


def convert_to_tensor(value: Any, dtype: Any = None) -> Any:
    """`value` as a tensor: graph tensors and eager tensors as they are; anything else a
    constant (of the graph being built, or eager outside graphs)."""
    if isinstance(value, Tensor) or type(value).__name__ == "EagerTensor" and dtype is None:
        return value
    if jx.is_tracer(value):  # inside a JAX transformation: JAX's own value
        return value if dtype is None else value.astype(dtype)
    return constant(value, dtype)


def _graph_bind(prim: Primitive, args: Sequence[Any], params: dict[str, Any]) -> Any:
    for a in args:
        if type(a) is Tensor:
            return a.graph.apply(prim, args, params)
    raise AssertionError("no graph tensor among the arguments")


def _graph_takes(scope: Any, args: Sequence[Any]) -> Any:
    """Inside a graph being built, ops on constants (Python scalars, NumPy or concrete JAX
    arrays) add nodes, as in TensorFlow's graph mode; tracers belong to JAX."""
    graph = scope.graph
    if graph is None or any(jx.is_tracer(a) for a in args):
        return None
    return graph._bind


register_symbolic_type(Tensor, _graph_bind)
register_scope_taker(_graph_takes)
