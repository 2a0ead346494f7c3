"""`ap.function`: trace a Python function once per input signature into a graph, compile, reuse."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from adplugin.eager.recording import EagerTensor, active_recording, variable_readers
from adplugin.eager.variable import Variable
from adplugin.ir.graph import Graph, Tensor
from adplugin.lowering.run import compile_graph


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, Variable, EagerTensor))


class Function:
    """A Python function of `ap.*` ops, traced into a graph per input signature.

    The signature is the arguments' structure with each array's shape and dtype (other
    arguments by value). Variables the function reads are fed their current value at every
    call, so assignments between calls are seen. Inside an active gradient tape the function
    runs op by op instead, so the tape records it.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._traces: dict[Any, tuple[Graph, list[Tensor], list[Variable], Any, Any]] = {}
        functools.update_wrapper(self, fn)

    def _signature(self, flat: list[Any], tree: Any) -> Any:
        return (tree, tuple((np.shape(x), np.dtype(x.dtype)) if _is_array(x) else ("static", x)
                            for x in flat))

    def _trace(self, flat: list[Any], tree: Any) -> Any:
        graph = Graph(getattr(self.fn, "__name__", "function"))
        holders = [graph.placeholder(np.shape(x), x.dtype, name=f"arg{i}") if _is_array(x)
                   else x for i, x in enumerate(flat)]
        variables: list[Variable] = []
        with graph, _VariableReads(graph, variables) as reads:
            out = self.fn(*jax.tree.unflatten(tree, holders))
        outs, out_tree = jax.tree.flatten(out, is_leaf=lambda v: isinstance(v, Tensor))
        feeds = [h for h in holders if isinstance(h, Tensor)] + [
            reads.leaves[id(v)] for v in variables]
        return graph, feeds, variables, outs, out_tree

    def __call__(self, *args: Any) -> Any:
        flat, tree = jax.tree.flatten(args, is_leaf=_is_array)
        if active_recording() is not None:
            return self.fn(*args)
        key = self._signature(flat, tree)
        entry = self._traces.get(key)
        if entry is None:
            entry = self._traces[key] = self._trace(flat, tree)
        graph, feeds, variables, outs, out_tree = entry
        values = [x.value if isinstance(x, Variable) else
                  x.materialized if isinstance(x, EagerTensor) else x
                  for x in flat if _is_array(x)] + [v.value for v in variables]
        tensors = [o for o in outs if isinstance(o, Tensor)]
        results = iter(compile_graph(graph, tensors, feeds)(*values))
        return jax.tree.unflatten(out_tree, [next(results) if isinstance(o, Tensor) else o
                                             for o in outs])


class _VariableReads:
    """While tracing, reads of variables become placeholders fed at each call."""

    def __init__(self, graph: Graph, variables: list[Variable]):
        self.graph, self.variables = graph, variables
        self.leaves: dict[int, Tensor] = {}

    def __enter__(self) -> _VariableReads:
        variable_readers.append(self.read)
        return self

    def __exit__(self, *exc: Any) -> None:
        variable_readers.pop()

    def read(self, v: Variable) -> Tensor:
        if id(v) not in self.leaves:
            self.leaves[id(v)] = self.graph.placeholder(v.shape, v.dtype, name=v.name)
            self.variables.append(v)
        return self.leaves[id(v)]


def function(fn: Callable[..., Any]) -> Function:
    """Decorator: trace `fn` once per input signature into a graph, compile, and reuse."""
    return Function(fn)
