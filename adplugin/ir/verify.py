"""`verify(graph)`: the invariants every pass must keep."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from adplugin._primitive import _as_shape_dtype
from adplugin.ir.graph import CONSTANT, GraphError

if TYPE_CHECKING:
    from adplugin.ir.graph import Graph


def verify(graph: Graph) -> None:
    """Raise GraphError unless: ids are positions, inputs precede their users and belong to
    the graph, and each op node's type is what its primitive's abstract eval says."""
    for position, node in enumerate(graph.nodes):
        where = f"node {node.id} ({node.op_name}) of {graph.name}"
        if node.id != position or node.output.node is not node:
            raise GraphError(f"verify: {where} is out of place")
        for t in node.inputs:
            if t.graph is not graph:
                raise GraphError(f"verify: {where} uses a tensor of graph {t.graph.name}")
            if t.node.id >= node.id or graph.nodes[t.node.id] is not t.node:
                raise GraphError(f"verify: {where} uses {t.name}, which does not precede it")
        if node.op == CONSTANT:
            if node.value.shape != node.output.shape or node.value.dtype != node.output.dtype:
                raise GraphError(f"verify: {where} holds a value of another type")
        elif not isinstance(node.op, str):
            aval = _as_shape_dtype(node.op.abstract_eval(*node.inputs, **node.params))
            out = node.output
            if aval.shape != out.shape or np.dtype(aval.dtype) != np.dtype(out.dtype):
                raise GraphError(f"verify: {where} has type {out.type_str} but its rule gives "
                                 f"{aval.dtype}{list(aval.shape)}")
