"""Running a graph: cut at the feeds, simplify, lower through `jax.jit`, cache, execute.

Each node's primitive is bound on JAX tracers, so the lowered module is the StableHLO of
adplugin's primitives. The executable is cached per graph and per (fetches, feeds) set; the
graph is append-only, so that set always names the same computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.export
import numpy as np

from adplugin._context import jax_evaluation
from adplugin._errors import message
from adplugin._lru import LRU
from adplugin.ir.graph import CONSTANT, PLACEHOLDER, GraphError, Node, Tensor

if TYPE_CHECKING:
    from adplugin.ir.graph import Graph


def evaluate(nodes: Sequence[Node], outputs: Sequence[Tensor], env: dict[int, Any]) -> list[Any]:
    """Values of `outputs`, binding each node's primitive in order (`env`: fed values by id).

    The primitives bind JAX's, whatever graph or tape the caller is building meanwhile."""
    with jax_evaluation():
        return _evaluate(nodes, outputs, env)


def _evaluate(nodes: Sequence[Node], outputs: Sequence[Tensor], env: dict[int, Any]) -> list[Any]:
    for node in nodes:
        if node.id in env:
            continue
        if node.op == CONSTANT:
            env[node.id] = node.value
        elif node.op == PLACEHOLDER:
            raise GraphError(message(
                "Graph.run", "a placeholder the fetches depend on was not fed",
                f"no value for {node.output!r}", "a feed_dict entry for every placeholder used",
                f"pass feed_dict={{{node.output.name}: value}}"))
        else:
            node_op = node.op
            assert not isinstance(node_op, str)
            env[node.id] = node_op.bind(*[env[i.node.id] for i in node.inputs], **node.params)
    return [env[t.node.id] for t in outputs]


def _check_fetch(graph: Graph, t: Any) -> Tensor:
    if not isinstance(t, Tensor):
        raise GraphError(message("Graph.run", "a fetch is not a tensor", repr(t)[:80],
                                 "tensors of this graph", "fetch the tensors the ops returned"))
    if t.graph is not graph:
        raise GraphError(message("Graph.run", "fetched a tensor of another graph",
                                 f"{t!r} of {t.graph.name}", f"a tensor of {graph.name}",
                                 "run the graph the tensor was built in"))
    return t


def _check_feed(graph: Graph, t: Any, value: Any) -> Any:
    if not isinstance(t, Tensor) or t.graph is not graph:
        raise GraphError(message("Graph.run", "a feed_dict key is not a tensor of this graph",
                                 repr(t)[:80], f"placeholders of {graph.name}",
                                 "key the feed_dict by the placeholders themselves"))
    array = value if isinstance(value, jax.Array) else np.asarray(value)
    if tuple(array.shape) != t.shape:
        raise GraphError(message("Graph.run", f"wrong shape fed for {t.name}",
                                 f"shape {list(array.shape)}", f"shape {list(t.shape)}",
                                 f"feed {t.name} an array of shape {list(t.shape)}"))
    if np.dtype(array.dtype) != t.dtype:
        if not np.can_cast(array.dtype, t.dtype, "same_kind"):
            raise GraphError(message("Graph.run", f"wrong dtype fed for {t.name}",
                                     np.dtype(array.dtype).name, t.dtype.name,
                                     f"feed {t.name} {t.dtype.name} values (astype)"))
        array = array.astype(t.dtype)
    return array


def simplified_program(graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor],
                       nodes: Sequence[Node] | None = None) -> Callable[..., list[Any]]:
    """A function of the feeds' values computing the fetches over the simplified graph
    (`nodes`: the ones the fetches need, when the caller has them already)."""
    from adplugin.transforms.simplify import simplify

    fed = {t.node.id for t in feeds}
    small, mapping = simplify(graph, fetches, cut=fed, nodes=nodes)
    outs = [mapping[t.node.id] for t in fetches]
    ins = [mapping.get(t.node.id) for t in feeds]
    small_nodes = small.nodes

    def program(*values: Any) -> list[Any]:
        env = {t.node.id: v for t, v in zip(ins, values) if t is not None}
        return evaluate(small_nodes, outs, env)

    return program


_PROGRAMS_PER_GRAPH = 64


def compile_graph(graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor]) -> Any:
    """A jitted function of the feeds' values returning the fetches' values (cached per graph
    by fetch and feed set: the graph is append-only, so the set names one computation; jit
    itself keys its executables by the fed types and JAX's configuration)."""
    cache = graph._compiled
    if cache is None:
        cache = graph._compiled = LRU(_PROGRAMS_PER_GRAPH)
    key = (tuple(t.node.id for t in fetches), tuple(t.node.id for t in feeds))
    return cache.get_or_build(key, lambda: jax.jit(simplified_program(graph, fetches, feeds)))


def _prepare(graph: Graph, fetches: Any, feed_dict: dict[Tensor, Any]
             ) -> tuple[list[Tensor], Any, list[Tensor], list[Any]]:
    flat, tree = jax.tree.flatten(fetches, is_leaf=lambda x: isinstance(x, Tensor))
    flat = [_check_fetch(graph, t) for t in flat]
    feeds = sorted(feed_dict, key=lambda t: t.node.id if isinstance(t, Tensor) else -1)
    values = [_check_feed(graph, t, feed_dict[t]) for t in feeds]
    return flat, tree, feeds, values


def run(graph: Graph, fetches: Any, feed_dict: dict[Tensor, Any]) -> Any:
    flat, tree, feeds, values = _prepare(graph, fetches, feed_dict)
    return jax.tree.unflatten(tree, compile_graph(graph, flat, feeds)(*values))


def lower(graph: Graph, fetches: Any, feed_dict: dict[Tensor, Any]) -> Any:
    """The lowered program (a `jax.stages.Lowered`): `.as_text()` is its StableHLO,
    `.compile()` the XLA executable, with `.cost_analysis()` and `.memory_analysis()`."""
    flat, _, feeds, values = _prepare(graph, fetches, feed_dict)
    return compile_graph(graph, flat, feeds).lower(*values)


def export(graph: Graph, fetches: Any, feed_dict: dict[Tensor, Any]) -> Any:
    """A serializable `jax.export.Exported` of the program (`.serialize()` gives bytes that
    `jax.export.deserialize` loads and `.call`s without adplugin). It takes the fed values
    in the order their placeholders were created and returns the fetches flattened."""
    flat, _, feeds, values = _prepare(graph, fetches, feed_dict)
    specs = [jax.ShapeDtypeStruct(np.shape(v), v.dtype) for v in values]
    return jax.export.export(compile_graph(graph, flat, feeds))(*specs)
