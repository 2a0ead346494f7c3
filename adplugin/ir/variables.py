"""Variables inside graphs (TensorFlow 1 style): read nodes fed at run time, assignment nodes
applied by `Graph.run`, and operations (`GraphOp`: an update, a group, an initializer).

A read node (`VARIABLE`) is fed the variable's value when the graph runs, so every read in one
run sees the values from before that run's assignments. An assignment node (`ASSIGN`) gives its
input's value; `run` stores it in the variable after the program ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from adplugin._errors import message
from adplugin._primitive import ShapeDtype
from adplugin.ir.graph import Graph, GraphError, Tensor

VARIABLE = "variable"  # reads a variable's value when the graph runs
ASSIGN = "assign"  # its output is its input's value, which run() then stores in the variable


def read_node(graph: Graph, v: Any) -> Tensor:
    """The node reading variable `v` in `graph` (one per variable and graph)."""
    reads = graph._variable_reads
    hit = reads.get(v)
    if hit is None:
        with graph._lock:  # re-entrant: _add takes it too
            hit = reads.get(v)
            if hit is None:
                hit = reads[v] = graph._add(VARIABLE, (), {}, ShapeDtype(v.shape, v.dtype),
                                            name=v.name, value=v)
                hit.node.sharding = getattr(v, "sharding", None)  # propagation starts here
    return hit


def assign_node(graph: Graph, v: Any, value: Any) -> Any:
    """A node that, when run, stores `value` in `v` (and gives that value). With a deferred
    value (shapes known at run time) the assignment is a deferred call too."""
    from adplugin.ir.deferred import any_deferred, record_graph_call

    if any_deferred(value):
        (t,) = record_graph_call(lambda g, x: assign_node(g, v, x), (value,), 1, "assign")
        t._shape, t._dtype = v.shape, v.dtype
        return t
    return _assign_node(graph, v, value)


def _assign_node(graph: Graph, v: Any, value: Any) -> Tensor:
    from adplugin.primitives.conversion import astype

    t = value if isinstance(value, Tensor) else graph.constant(value, v.dtype)
    if t.graph is not graph:
        raise GraphError(message("Variable.assign", "the value is a tensor of another graph",
                                 f"{t!r} of {t.graph.name}", f"a tensor of {graph.name}",
                                 "build the assignment in the graph of its value"))
    if t.shape != v.shape:
        raise GraphError(message(f"Variable({v.name}).assign", "the new value has another shape",
                                 list(t.shape), list(v.shape), "assign a value of the "
                                 "variable's shape"))
    if t.dtype != v.dtype:
        t = astype(t, v.dtype)  # a node of t's graph, with the role the context gives
    return graph._add(ASSIGN, (t,), {}, ShapeDtype(v.shape, v.dtype), value=v)


Effect = Callable[[list[Any]], None]


class GraphOp:
    """An operation without a value (TensorFlow 1's `Operation`): running it computes its
    `inputs` (applying the assignments among them and those they depend on), then calls
    `effect` with the inputs' values, then runs its `deps`. `Graph.run` gives None for it.

    `graph` is None for an operation that needs no graph (an initializer: adplugin's variables
    hold their value from creation)."""

    __slots__ = ("graph", "inputs", "effect", "deps", "name")

    def __init__(self, graph: Graph | None, inputs: Sequence[Any] = (),
                 effect: Effect | None = None, deps: Sequence[GraphOp] = (),
                 name: str | None = None):
        self.graph, self.inputs, self.effect = graph, tuple(inputs), effect
        self.deps, self.name = tuple(deps), name

    def mapped(self, graph: Graph, fn: Callable[[Any], Any]) -> GraphOp:
        """This operation with its inputs (and its deps') mapped by `fn` into `graph`."""
        return GraphOp(graph, [fn(t) for t in self.inputs], self.effect,
                       [d.mapped(graph, fn) for d in self.deps], self.name)

    def walk(self) -> list[GraphOp]:
        """This operation and every one it depends on, dependencies last."""
        out, stack = [], [self]
        while stack:
            op = stack.pop()
            out.append(op)
            stack.extend(reversed(op.deps))
        return out

    def __repr__(self) -> str:
        return f"<GraphOp {self.name or ''}: {len(self.inputs)} inputs>"


def group(*ops: Any, name: str | None = None) -> GraphOp:
    """One operation running all of `ops` (operations, or tensors computed for their
    assignments), as `tf.group`."""
    graphs = {id(g): g for g in (getattr(o, "graph", None) for o in ops) if g is not None}
    if len(graphs) > 1:
        raise GraphError(message("group", "operations of two graphs", [repr(o) for o in ops],
                                 "operations of one graph", "group within one graph"))
    graph = next(iter(graphs.values()), None)
    tensors = [o for o in ops if not isinstance(o, GraphOp)]
    return GraphOp(graph, tensors, None, [o for o in ops if isinstance(o, GraphOp)], name)
