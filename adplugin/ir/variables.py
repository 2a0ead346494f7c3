"""Variables inside graphs (TensorFlow 1 style): read nodes fed at run time, assignment nodes
applied by `Graph.run`."""

from __future__ import annotations

from typing import Any

from adplugin._errors import message
from adplugin._primitive import ShapeDtype
from adplugin.ir.graph import Graph, GraphError, Tensor

VARIABLE = "variable"  # reads a variable's value when the graph runs
ASSIGN = "assign"  # its output is its input's value, which run() then stores in the variable


def read_node(graph: Graph, v: Any) -> Tensor:
    """The node reading variable `v` in `graph` (one per variable and graph)."""
    reads = graph.__dict__.setdefault("_variable_reads", {})
    hit = reads.get(v)
    if hit is None:
        hit = reads[v] = graph._add(VARIABLE, (), {}, ShapeDtype(v.shape, v.dtype), name=v.name,
                                    value=v)
    return hit


def assign_node(graph: Graph, v: Any, value: Any) -> Tensor:
    """A node that, when run, stores `value` in `v` (and gives that value)."""
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
        with graph.building(role=graph_role(graph)):
            t = astype(t, v.dtype)
    return graph._add(ASSIGN, (t,), {}, ShapeDtype(v.shape, v.dtype), value=v)


def graph_role(graph: Graph) -> str:
    from adplugin import _context

    scope = _context.current()
    return scope.role if scope is not None and scope.graph is graph else "forward"
