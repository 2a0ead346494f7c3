"""Running a graph: cut at the feeds, simplify, lower through `jax.jit`, cache, execute.

Each node's primitive is bound on JAX tracers, so the lowered module is the StableHLO of
adplugin's primitives. The executable is cached per graph and per (fetches, feeds) set; the
graph is append-only, so that set always names the same computation.

Variables (TensorFlow 1 style): each variable read node is an extra input, fed the variable's
value when the run starts; the assignments the fetches depend on are extra outputs, stored in
their variables after the run (so a run sees the values from before its assignments). Fetching
an operation (`GraphOp`: an optimizer's update, a group) runs its inputs and its effect and
gives None. Deferred tensors (unknown shapes) run in the graph's specialization for the fed
shapes (`adplugin.ir.deferred`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.export
import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._context import jax_evaluation
from adplugin._errors import message
from adplugin._lru import LRU
from adplugin.eager.variable import Variable
from adplugin.ir.deferred import DeferredTensor, any_deferred, specialize
from adplugin.ir.graph import CONSTANT, PLACEHOLDER, GraphError, Node, Tensor, needed_nodes
from adplugin.ir.variables import ASSIGN, VARIABLE, GraphOp, read_node

if TYPE_CHECKING:
    from adplugin.ir.graph import Graph


def evaluate(nodes: Sequence[Node], outputs: Sequence[Tensor], env: dict[int, Any],
             labels: dict[int, str] | None = None) -> list[Any]:
    """Values of `outputs`, binding each node's primitive in order (`env`: fed values by id).

    The primitives bind JAX's, whatever graph or tape the caller is building meanwhile. Where
    JAX evaluates eagerly (no trace active), each primitive's eager implementation is called
    directly: the values are concrete, so JAX's dispatch would only lead there, slower."""
    if jx.at_top_level():
        return _evaluate(nodes, outputs, env, eager=True)
    with jax_evaluation():
        return _evaluate(nodes, outputs, env, eager=False, labels=labels)


def _evaluate(nodes: Sequence[Node], outputs: Sequence[Tensor], env: dict[int, Any],
              eager: bool, labels: dict[int, str] | None = None) -> list[Any]:
    for node in nodes:
        if node.id in env:
            continue
        if node.op == CONSTANT:
            env[node.id] = node.value
        elif node.op == ASSIGN:  # the value assigned (run() stores it afterwards)
            env[node.id] = env[node.inputs[0].node.id]
        elif node.op == VARIABLE:
            env[node.id] = node.value.value
        elif node.op == PLACEHOLDER:
            raise GraphError(message(
                "Graph.run", "a placeholder the fetches depend on was not fed",
                f"no value for {node.output!r}", "a feed_dict entry for every placeholder used",
                f"pass feed_dict={{{node.output.name}: value}}"))
        else:
            node_op = node.op
            assert not isinstance(node_op, str)
            args = [env[i.node.id] for i in node.inputs]
            if eager:
                env[node.id] = node_op.jax_primitive.impl(*args, **node.params)
            elif labels is not None and node.id in labels:
                # lowered under the graph node's name and the user's line that built it: XLA's
                # op metadata (op_name, source line) keeps both, so a collective the
                # partitioner inserts can be traced back to its node and line
                with jax.named_scope(labels[node.id]), jx.source_context(node.traceback):
                    env[node.id] = node_op.bind(*args, **node.params)
            else:
                env[node.id] = node_op.bind(*args, **node.params)
    return [env[t.node.id] for t in outputs]


def _check_fetch(graph: Graph, t: Any) -> Tensor:
    if isinstance(t, Variable):  # a variable fetched: its value as the run starts
        return read_node(graph, t)
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
    labels = node_labels(graph, mapping)

    def program(*values: Any) -> list[Any]:
        env = {t.node.id: v for t, v in zip(ins, values) if t is not None}
        return evaluate(small_nodes, outs, env, labels)

    return program


def node_labels(graph: Graph, mapping: dict[int, Tensor]) -> dict[int, str]:
    """Simplified node id -> the name of the graph node it computes (the first one, where
    simplification merged several), for op metadata."""
    labels: dict[int, str] = {}
    for old_id, t in mapping.items():
        node = graph.nodes[old_id]
        if not isinstance(node.op, str):
            labels.setdefault(t.node.id, node.output.name)
    return labels


_PROGRAMS_PER_GRAPH = 64


class Plan:
    """A compiled program for one (fetches, feeds) set, with the variables it reads (extra
    inputs after the feeds) and assigns (extra outputs after the fetches)."""

    def __init__(self, graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor]):
        nodes = needed_nodes(graph, fetches, cut={t.node.id for t in feeds})
        reads = [n.output for n in nodes if n.op == VARIABLE]
        assigns = [n.output for n in nodes if n.op == ASSIGN]
        self.reads: list[Variable] = [t.node.value for t in reads]
        self.assigned: list[Variable] = [t.node.value for t in assigns]
        self.n_fetches = len(fetches)
        from adplugin.placement.placer import is_placed

        if is_placed(nodes):  # devices requested: a program per device (adplugin.placement)
            from adplugin.placement.execution import PlacedProgram

            self.program: Any = PlacedProgram(graph, [*fetches, *assigns], [*feeds, *reads],
                                              nodes)
        else:
            self.program = jax.jit(simplified_program(graph, [*fetches, *assigns],
                                                      [*feeds, *reads]))

    def read_values(self) -> list[Any]:
        return [v._stored for v in self.reads]

    def __call__(self, *values: Any) -> list[Any]:
        """The fetches' values; the assignments are stored in their variables."""
        out = self.program(*values, *self.read_values())
        if self.assigned:
            with jax_evaluation():  # store, never build: this may run inside a graph's block
                for v, value in zip(self.assigned, out[self.n_fetches:]):
                    v.assign(value)
        return list(out[:self.n_fetches])

    def lower(self, *values: Any) -> Any:
        return self.program.lower(*values, *self.read_values())


def compile_graph(graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor]) -> Plan:
    """The compiled plan computing the fetches from the feeds' values (cached per graph by
    fetch and feed set: the graph is append-only, so the set names one computation; jit
    itself keys its executables by the fed types and JAX's configuration)."""
    cache = graph._compiled
    if cache is None:
        cache = graph._compiled = LRU(_PROGRAMS_PER_GRAPH)
    key = (tuple(t.node.id for t in fetches), tuple(t.node.id for t in feeds))
    return cache.get_or_build(key, lambda: Plan(graph, fetches, feeds))


def _is_fetch_leaf(x: Any) -> bool:
    return isinstance(x, (Tensor, DeferredTensor, GraphOp, Variable))


class _Fetches:
    """The flat fetches: tensors to compute (operations' inputs included), once each."""

    def __init__(self, graph: Graph, flat: Sequence[Any]):
        self.tensors: list[Tensor] = []
        self._index: dict[int, int] = {}
        self.positions: list[int | None] = []  # per fetch: its tensor, None for an operation
        self.ops: list[tuple[GraphOp, list[int]]] = []
        for f in flat:
            if isinstance(f, GraphOp):
                self._add_op(graph, f)
                self.positions.append(None)
            else:
                self.positions.append(self._add(_check_fetch(graph, f)))

    def _add(self, t: Tensor) -> int:
        at = self._index.get(id(t))
        if at is None:
            at = self._index[id(t)] = len(self.tensors)
            self.tensors.append(t)
        return at

    def _add_op(self, graph: Graph, op: GraphOp) -> None:
        for o in op.walk():
            if o.graph is not None and o.graph is not graph:
                raise GraphError(message("Graph.run", "fetched an operation of another graph",
                                         repr(o), f"an operation of {graph.name}",
                                         "run the graph the operation was built in"))
            self.ops.append((o, [self._add(_check_fetch(graph, t)) for t in o.inputs]))

    def results(self, values: Sequence[Any]) -> list[Any]:
        """Apply the operations' effects; the fetches' values (None for operations)."""
        for op, at in self.ops:
            if op.effect is not None:
                with jax_evaluation():
                    op.effect([values[i] for i in at])
        return [None if p is None else values[p] for p in self.positions]


def _prepare(graph: Graph, fetches: Any, feed_dict: dict[Any, Any]
             ) -> tuple[Graph, _Fetches, Any, list[Tensor], list[Any]]:
    flat, tree = jax.tree.flatten(fetches, is_leaf=_is_fetch_leaf)
    if any_deferred(flat, list(feed_dict)) or any(
            isinstance(f, GraphOp) and any_deferred([o.inputs for o in f.walk()]) for f in flat):
        graph, flat, feed_dict = specialize(graph, flat, feed_dict)
    fetched = _Fetches(graph, flat)
    feeds = sorted(feed_dict, key=lambda t: t.node.id if isinstance(t, Tensor) else -1)
    values = [_placed_feed(t, _check_feed(graph, t, feed_dict[t])) for t in feeds]
    return graph, fetched, tree, feeds, values


def _placed_feed(t: Tensor, value: Any) -> Any:
    """A value fed to a sharded placeholder, put in the placeholder's sharding."""
    sharding = t.node.sharding
    if sharding is None or getattr(value, "sharding", None) == sharding:
        return value
    return jax.device_put(value, sharding)


def run(graph: Graph, fetches: Any, feed_dict: dict[Any, Any]) -> Any:
    graph, fetched, tree, feeds, values = _prepare(graph, fetches, feed_dict)
    out = compile_graph(graph, fetched.tensors, feeds)(*values) if fetched.tensors else []
    return jax.tree.unflatten(tree, fetched.results(out))


def lower(graph: Graph, fetches: Any, feed_dict: dict[Any, Any]) -> Any:
    """The lowered program (a `jax.stages.Lowered`): `.as_text()` is its StableHLO,
    `.compile()` the XLA executable, with `.cost_analysis()` and `.memory_analysis()`."""
    graph, fetched, _, feeds, values = _prepare(graph, fetches, feed_dict)
    return compile_graph(graph, fetched.tensors, feeds).lower(*values)


def export(graph: Graph, fetches: Any, feed_dict: dict[Any, Any],
           platforms: Sequence[str] | None = None) -> Any:
    """A serializable `jax.export.Exported` of the program (`.serialize()` gives bytes that
    `jax.export.deserialize` loads and `.call`s without adplugin). It takes the fed values
    in the order their placeholders were created, then the values of the variables read (in
    graph order), and returns the fetches flattened, then the values assigned. Sharded
    inputs keep their shardings (`in_shardings_hlo`, and the outputs' the partitioner
    chose); `platforms` (e.g. `("cpu", "cuda", "tpu")`) lowers for each, present or not."""
    graph, fetched, _, feeds, values = _prepare(graph, fetches, feed_dict)
    plan = compile_graph(graph, fetched.tensors, feeds)
    inputs = [*values, *plan.read_values()]
    shardings = [_named(v) for v in inputs]
    specs = [jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=s)
             for v, s in zip(inputs, shardings)]
    program = getattr(plan.program, "single_program", lambda: plan.program)()  # placed
    if any(s is not None for s in shardings):  # the exported module states them
        program = jax.jit(program, in_shardings=tuple(shardings))
    exporter = (jax.export.export(program) if platforms is None else
                jax.export.export(program, platforms=tuple(platforms)))
    return exporter(*specs)


def _named(value: Any) -> Any:
    """A value's NamedSharding when it is sharded over a mesh (kept by exports), else None."""
    sharding = getattr(value, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
        return sharding
    return None
