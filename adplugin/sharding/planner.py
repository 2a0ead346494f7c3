"""`ap.plan_sharding`: choose the inputs' shardings that make a step cheapest.

The decisions are the shardings of the graph's inputs (placeholders and variables): every
other node takes the sharding its primitive's rule propagates (`propagate.py`). Each candidate
assignment is costed with the same model the predictions use:

    cost = predicted collective bytes per device + flops per device / flops_per_byte

(`flops_per_byte`: how many flops a device does in the time it moves one byte; about 100 on
accelerators, the default), subject to a per-device memory budget (the inputs' shards plus
every node's output shard: the activations a training step keeps). Inputs in `fixed` keep the
given sharding. The search is exhaustive over the candidates (replicated, each dimension over
each mesh axis, two dimensions over two axes, one dimension over two axes) up to
`EXHAUSTIVE_LIMIT` assignments, so the plan is the optimum of the model there; past it,
coordinate descent from the best of replicated and data parallel (each input's first
dimension over the first axis), one input at a time until nothing improves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adplugin._errors import message
from adplugin._table import columns
from adplugin.ir.graph import PLACEHOLDER, Graph, Node, Tensor, needed_nodes
from adplugin.ir.variables import VARIABLE
from adplugin.sharding.compare import CollectiveCheck, PredictedCollective
from adplugin.sharding.mesh import MeshError, Spec, normalized_spec, spec_text
from adplugin.sharding.nodeplan import node_flops, plan_nodes
from adplugin.sharding.predict import per_device_bytes, predict_collectives
from adplugin.sharding.propagate import Decision, Propagation, propagate

EXHAUSTIVE_LIMIT = 4096
FLOPS_PER_BYTE = 100.0
BYTES_PER_COLLECTIVE = 1024.0


@dataclass
class Cost:
    """One assignment's predicted cost (per device)."""

    comm_bytes: int
    flops: float
    memory_bytes: int
    score: float
    conflicts: int = 0  # nodes whose rule refused their operands' specs (XLA reshards)


@dataclass
class ShardingPlan:
    """The chosen input shardings, what they propagate to, and the predicted collectives."""

    graph: Graph
    outputs: list[Tensor]
    mesh: Mesh
    inputs: dict[Tensor, Spec]
    propagation: Propagation
    collectives: list[PredictedCollective]
    cost: Cost
    searched: int
    exhaustive: bool  # the plan is the model's optimum
    measured: CollectiveCheck | None = field(default=None)
    method: str = "exhaustive"  # "integer program", "exhaustive" or "coordinate descent"
    per_node: bool = False  # every node's sharding decided (else the inputs' only)

    def spec(self, t: Tensor) -> Spec:
        return self.propagation.spec(t)

    def sharding(self, t: Tensor) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(*self.spec(t)))

    def apply(self) -> None:
        """Annotate the graph with the plan: each placeholder gets its sharding, and each
        variable is resharded (it keeps the new sharding from then on). A per-node plan also
        constrains every op's result to its spec and reshards the operands it moves (sharding
        constraints, added where the graph is lowered)."""
        for t, spec in self.inputs.items():
            sharding = NamedSharding(self.mesh, PartitionSpec(*spec))
            t.node.sharding = sharding
            if t.node.op == VARIABLE:
                _reshard_variable(t.node.value, sharding)
        self.graph._compiled = None  # programs compiled under other constraints
        moves = self.propagation.operand_specs
        for node in self.propagation.nodes:
            if node.kind != "op":
                continue
            if not self.per_node:  # the inputs' plan: an earlier plan's constraints go
                node.sharding = node.operand_shardings = None
                continue
            node.sharding = self.sharding(node.output)
            given = moves.get(node.id)
            node.operand_shardings = None if given is None else tuple(
                None if spec == self.spec(t) else NamedSharding(self.mesh, PartitionSpec(*spec))
                for t, spec in zip(node.inputs, given))

    def measure(self, feed_dict: dict[Any, Any]) -> CollectiveCheck:
        """Apply the plan, compile the step and check the predictions against the HLO."""
        from adplugin.sharding.collectives import collectives
        from adplugin.sharding.compare import compare_collectives

        self.apply()
        measured = collectives(self.graph.lower(self.outputs, feed_dict).compile())
        self.measured = compare_collectives(self.collectives, measured)
        return self.measured

    def table(self) -> str:
        """Node, op, input specs, output spec, predicted collective and bytes, the bytes
        measured in the HLO for its row (after `measure`), and the user's line that built the
        node."""
        by_node: dict[str, list[PredictedCollective]] = {}
        for c in self.collectives:
            by_node.setdefault(c.node or "?", []).append(c)
        measured = _measured_by_node(self.measured)
        rows = [("node", "op", "inputs", "output", "collective", "bytes", "measured", "source")]
        prop = self.propagation
        for node in prop.nodes:
            name = node.output.name
            interesting = node.kind in (PLACEHOLDER, VARIABLE) or name in by_node or (
                node.kind == "op" and prop.decisions[node.id].sharded)
            if not interesting:
                continue
            consumed = prop.operand_specs.get(node.id) or [prop.spec(i) for i in node.inputs]
            ins = " ".join(spec_text(i.shape, c) for i, c in zip(node.inputs, consumed)) or "-"
            out = spec_text(node.output.shape, prop.spec(node.output))
            found: list[PredictedCollective | None] = [*by_node.get(name, [])] or [None]
            for k, pc in enumerate(found):
                kind = "-" if pc is None else f"{pc.kind}({','.join(pc.axes)})"
                rows.append((name if k == 0 else "", node.op_name if k == 0 else "",
                             ins if k == 0 else "", out if k == 0 else "", kind,
                             "-" if pc is None else str(pc.nbytes),
                             measured.get(name, "-") if pc is not None else "-",
                             (node.source or "-") if k == 0 else ""))
        lines = columns(rows)
        cost = self.cost
        lines.append(f"plan: {cost.comm_bytes} collective bytes, {cost.flops:.3g} flops and "
                     f"{cost.memory_bytes} bytes per device; " + (
                         f"{self.searched} variables ({self.method})" if self.per_node else
                         f"{self.searched} assignments searched ({self.method})"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _measured_by_node(check: CollectiveCheck | None) -> dict[str, str]:
    if check is None:
        return {}
    out: dict[str, str] = {}
    for m in check.matched + check.mismatched:
        for p in m.predicted:
            out.setdefault(p.node or "?", f"{m.measured.nbytes} ({m.measured.kind})")
    return out


def _reshard_variable(v: Any, sharding: NamedSharding) -> None:
    import jax

    v._sharding = sharding
    v._stored = jax.device_put(v._stored, sharding)


# ---------------------------------------------------------------------------------------------
# the search

def plan_sharding(graph_or_fn: Any, mesh: Mesh, *, outputs: Sequence[Tensor] | None = None,
                  memory_budget: int | None = None, fixed: dict[Any, Any] | None = None,
                  flops_per_byte: float = FLOPS_PER_BYTE,
                  bytes_per_collective: float = BYTES_PER_COLLECTIVE, scope: str = "nodes",
                  example_args: Sequence[Any] = ()) -> ShardingPlan:
    """Choose shardings on `mesh` for the cheapest step (see the module).

    `graph_or_fn`: an `ap.Graph` with its `outputs` (a training step's loss and gradients), or a
    function of arrays traced with `ap.trace` at `example_args` (its outputs then). `fixed`
    maps inputs (placeholders or variables) to the `PartitionSpec` they must keep. `scope`:
    "nodes" (default) chooses every node's sharding with an integer program, falling back to
    the input search past its size limit; "inputs" chooses the inputs' only, the rest by
    propagation. Returns a `ShardingPlan`: `.table()`, `.apply()`, `.measure(feed_dict)`.
    """
    if scope not in ("nodes", "inputs"):
        raise MeshError(message("plan_sharding", "unknown scope", repr(scope),
                                "'nodes' or 'inputs'", "pass scope='nodes' (every node) or "
                                "scope='inputs' (the inputs, the rest propagated)"))
    graph, outs = _graph_and_outputs(graph_or_fn, outputs, example_args)
    nodes = needed_nodes(graph, outs)
    inputs = [n for n in nodes if n.op in (PLACEHOLDER, VARIABLE)]
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    pinned = _fixed(fixed or {}, inputs, mesh)
    choices = [[pinned[n.id]] if n.id in pinned else candidates(n.output.shape, sizes)
               for n in inputs]
    if scope == "nodes":
        planned = plan_nodes(nodes, sizes, {n.id: c for n, c in zip(inputs, choices)},
                             memory_budget, flops_per_byte, bytes_per_collective, candidates)
        if planned is not None and not planned.chosen:
            _no_fit(memory_budget, None)
        if planned is not None:
            return _node_plan(graph, outs, mesh, nodes, inputs, planned,
                              flops_per_byte, bytes_per_collective)

    def cost_of(assignment: Sequence[Spec]) -> tuple[Cost, Propagation, list[Any]]:
        specs = {n.id: s for n, s in zip(inputs, assignment)}
        prop = propagate(graph, outs, inputs=specs, mesh=mesh, nodes=nodes)
        predicted = predict_collectives(prop)
        cost = _cost(prop, predicted, sizes, flops_per_byte, bytes_per_collective)
        return cost, prop, predicted

    best: tuple[Cost, Propagation, list[Any], tuple[Spec, ...]] | None = None
    total = math.prod(len(c) for c in choices)
    exhaustive = total <= EXHAUSTIVE_LIMIT
    searched = 0
    lowest_memory = None
    if exhaustive:
        for assignment in itertools.product(*choices):
            searched += 1
            cost, prop, predicted = cost_of(assignment)
            lowest_memory = min(lowest_memory or cost.memory_bytes, cost.memory_bytes)
            if memory_budget is not None and cost.memory_bytes > memory_budget:
                continue
            if prop.conflicts and any(n.id not in pinned for n in inputs):
                continue  # XLA would reshard there: collectives the model cannot predict
            if best is None or cost.score < best[0].score:
                best = (cost, prop, predicted, tuple(assignment))
    else:
        best, searched, lowest_memory = _descend(choices, cost_of, memory_budget, mesh)
    if best is None:
        _no_fit(memory_budget, lowest_memory)
    assert best is not None
    cost, prop, predicted, assignment = best
    method = "exhaustive" if exhaustive else "coordinate descent"
    return ShardingPlan(graph, list(outs), mesh, {n.output: s for n, s in zip(inputs, assignment)},
                        prop, predicted, cost, searched, exhaustive, method=method)


def _no_fit(memory_budget: int | None, lowest: int | None) -> None:
    least = "more" if lowest is None else f"at least {lowest}"
    raise MeshError(message(
        "plan_sharding", "no sharding of the inputs fits the memory budget",
        f"memory_budget={memory_budget} bytes per device",
        f"{least} bytes per device (the least any candidate needs)",
        "raise the budget, or use a mesh with more devices"))


def _node_plan(graph: Graph, outs: list[Tensor], mesh: Mesh, nodes: list[Node],
               inputs: list[Node], planned: Any, flops_per_byte: float,
               bytes_per_collective: float) -> ShardingPlan:
    """The integer program's strategies as a plan: each node's result spec decided by the
    plan, and the operands it reshards before the op."""
    chosen = planned.chosen
    decisions = {n.id: Decision(chosen[n.id].out, "the plan", tuple(i.node.id for i in n.inputs))
                 for n in nodes}
    moves = {}
    for n in nodes:
        consumed = chosen[n.id].operands
        if n.kind == "op" and any(spec != chosen[t.node.id].out
                                  for t, spec in zip(n.inputs, consumed)):
            moves[n.id] = consumed
    prop = Propagation(graph, nodes, mesh, decisions, moves)
    predicted = predict_collectives(prop)
    comm = sum(p.nbytes for p in predicted)
    score = comm + len(predicted) * bytes_per_collective + planned.flops / flops_per_byte
    cost = Cost(comm, planned.flops, planned.memory, score)
    return ShardingPlan(graph, list(outs), mesh, {n.output: chosen[n.id].out for n in inputs},
                        prop, predicted, cost, planned.variables, True,
                        method="integer program", per_node=True)


def _descend(choices: list[list[Spec]], cost_of: Any, memory_budget: int | None, mesh: Mesh
             ) -> tuple[Any, int, int | None]:
    def fits(cost: Cost) -> bool:
        return (memory_budget is None or cost.memory_bytes <= memory_budget) and \
            cost.conflicts == 0

    first_axis = mesh.axis_names[0]
    starts = [[c[0] for c in choices],  # replicated (the first candidate)
              [next((s for s in c if s and s[0] == first_axis), c[0]) for c in choices]]
    searched, best, lowest = 0, None, None
    for start in starts:
        current = list(start)
        cost, prop, predicted = cost_of(current)
        searched += 1
        improved = True
        while improved:
            improved = False
            for i, options in enumerate(choices):
                for option in options:
                    if option == current[i]:
                        continue
                    trial = current[:i] + [option] + current[i + 1:]
                    c, p, pr = cost_of(trial)
                    searched += 1
                    lowest = min(lowest or c.memory_bytes, c.memory_bytes)
                    better = (fits(c) and (not fits(cost) or c.score < cost.score)) or (
                        not fits(cost) and c.memory_bytes < cost.memory_bytes)
                    if better:
                        current, cost, prop, predicted, improved = trial, c, p, pr, True
        if fits(cost) and (best is None or cost.score < best[0].score):
            best = (cost, prop, predicted, tuple(current))
    return best, searched, lowest


def candidates(shape: Sequence[int], sizes: dict[str, int]) -> list[Spec]:
    """Replicated first, then each dimension over each axis, two dimensions over two axes, and
    one dimension over two axes: the ones that divide the dimensions evenly."""
    rank, axes = len(shape), list(sizes)
    found: list[Spec] = [(None,) * rank]

    def add(entries: dict[int, Any]) -> None:
        spec = tuple(entries.get(d) for d in range(rank))
        if spec not in found:
            found.append(spec)

    for d, a in itertools.product(range(rank), axes):
        if sizes[a] > 1 and shape[d] % sizes[a] == 0:
            add({d: a})
    for (d1, a1), (d2, a2) in itertools.permutations(itertools.product(range(rank), axes), 2):
        if d1 < d2 and a1 != a2 and min(sizes[a1], sizes[a2]) > 1 and \
                shape[d1] % sizes[a1] == 0 and shape[d2] % sizes[a2] == 0:
            add({d1: a1, d2: a2})
    for d, (a1, a2) in itertools.product(range(rank), itertools.combinations(axes, 2)):
        if min(sizes[a1], sizes[a2]) > 1 and shape[d] % (sizes[a1] * sizes[a2]) == 0:
            add({d: (a1, a2)})
    return found


def _fixed(fixed: dict[Any, Any], inputs: list[Node], mesh: Mesh) -> dict[int, Spec]:
    pinned: dict[int, Spec] = {}
    by_variable = {id(n.value): n for n in inputs if n.op == VARIABLE}
    for key, spec in fixed.items():
        node = key.node if isinstance(key, Tensor) else by_variable.get(id(key))
        if node is None or node not in inputs:
            raise MeshError(message("plan_sharding", "a fixed entry is not an input of the "
                                    "step", repr(key)[:80], "a placeholder or variable the "
                                    "outputs depend on", "fix only the step's inputs"))
        pinned[node.id] = normalized_spec("plan_sharding", spec, len(node.output.shape), mesh)
    return pinned


def _graph_and_outputs(graph_or_fn: Any, outputs: Sequence[Tensor] | None,
                       example_args: Sequence[Any]) -> tuple[Graph, list[Tensor]]:
    if isinstance(graph_or_fn, Graph):
        if not outputs:
            raise MeshError(message("plan_sharding", "a graph needs the outputs to plan for",
                                    "outputs=None", "the step's loss and gradients",
                                    "pass outputs=[loss, *grads]"))
        return graph_or_fn, list(outputs)
    if callable(graph_or_fn):
        from adplugin.frontends.trace import trace

        traced = trace(graph_or_fn, *example_args)
        return traced.graph, list(traced.outputs)
    raise MeshError(message("plan_sharding", "neither a graph nor a function",
                            type(graph_or_fn).__name__, "an ap.Graph or a function of arrays",
                            "pass the step's graph (with outputs=) or the step function"))


# ---------------------------------------------------------------------------------------------
# the cost model

def _cost(prop: Propagation, predicted: list[PredictedCollective], sizes: dict[str, int],
          flops_per_byte: float, bytes_per_collective: float) -> Cost:
    comm = sum(p.nbytes for p in predicted)
    flops = 0.0
    memory = 0
    live: set[int] = set()  # nodes computed from the inputs (constants' broadcasts fuse away)
    for node in prop.nodes:
        out = node.output
        if node.op in (PLACEHOLDER, VARIABLE) or any(i.node.id in live for i in node.inputs):
            live.add(node.id)
            memory += per_device_bytes(out, prop.spec(out), sizes)
            if node.kind == "op":
                flops += _flops(prop, node, sizes)
    score = comm + len(predicted) * bytes_per_collective + flops / flops_per_byte
    return Cost(comm, flops, memory, score, len(prop.conflicts))


def _flops(prop: Propagation, node: Node, sizes: dict[str, int]) -> float:
    return node_flops(node, [prop.spec(i) for i in node.inputs], prop.spec(node.output), sizes)
