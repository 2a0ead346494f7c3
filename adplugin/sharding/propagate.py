"""Sharding propagation over a graph: every node's partition spec, and why.

Sources are the placeholders given `sharding=` and the `ap.shard` nodes; every other node's
spec comes from its primitive's own sharding rule (`Primitive.sharding`, the rule JAX uses
when shardings are part of the types) applied to its inputs' specs, in graph order, so
derivative nodes get theirs the same way. A rule that refuses its inputs' specs (two operands
sharded differently along one dimension) is a *conflict*: the node is taken as replicated,
and the conflict names the node, its two inputs and the fix; `strict=True` raises it.

`Propagation.explain(t)` prints the chain of nodes and rules that decided `t`'s spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jax.sharding import Mesh

from adplugin._errors import ShardingRuleError, message
from adplugin.ir.graph import (
    CONSTANT,
    PLACEHOLDER,
    Graph,
    GraphError,
    Node,
    Tensor,
    needed_nodes,
)
from adplugin.sharding.mesh import Spec, axis_names, spec_of, spec_text


class ShardingConflictError(GraphError):
    """Two shardings meet at a node and its rule cannot reconcile them."""


@dataclass(frozen=True)
class Decision:
    """How one node got its spec: `source` is what decided it ("sharding=" of a placeholder,
    "ap.shard", "<op> rule", "replicated"), `inputs` the nodes whose specs the rule read."""

    spec: Spec
    source: str
    inputs: tuple[int, ...] = ()
    conflict: str | None = None

    @property
    def sharded(self) -> bool:
        return any(e is not None for e in self.spec)


class Propagation:
    """The propagated specs of the nodes some outputs need (see the module)."""

    def __init__(self, graph: Graph, nodes: Sequence[Node], mesh: Mesh | None,
                 decisions: dict[int, Decision],
                 operand_specs: dict[int, tuple[Spec, ...]] | None = None):
        self.graph, self.nodes, self.mesh, self.decisions = graph, list(nodes), mesh, decisions
        # node id -> the specs a plan reshards its operands to before the op
        self.operand_specs = operand_specs or {}

    def spec(self, t: Tensor) -> Spec:
        return self.decisions[t.node.id].spec

    def type_text(self, t: Tensor) -> str:
        """`f32[4778@x,100]`: the tensor's type with the mesh axes of each sharded dim."""
        return t.type_str.split("[")[0] + f"[{spec_text(t.shape, self.spec(t))}]"

    @property
    def conflicts(self) -> list[tuple[Node, str]]:
        return [(n, d.conflict) for n in self.nodes
                if (d := self.decisions[n.id]).conflict is not None]

    @property
    def any_sharded(self) -> bool:
        return any(d.sharded for d in self.decisions.values())

    def explain(self, t: Tensor) -> str:
        """The chain of nodes and rules that decided `t`'s spec, from its sources to `t`."""
        lines: list[str] = []
        seen: set[int] = set()

        def visit(node_id: int, depth: int) -> None:
            node, d = self.graph.nodes[node_id], self.decisions[node_id]
            mark = "" if node_id not in seen else "  (above)"
            lines.append(f"{'  ' * depth}{node.output.name}: {self.type_text(node.output)} "
                         f"<- {d.source}{mark}")
            if d.conflict:
                lines.append(f"{'  ' * depth}  conflict: {d.conflict}")
            if node_id in seen:
                return
            seen.add(node_id)
            for i in d.inputs:
                if self.decisions[i].sharded:  # replicated inputs decide nothing
                    visit(i, depth + 1)

        visit(t.node.id, 0)
        return "\n".join(lines)


def propagate(graph: Graph, outputs: Sequence[Tensor] | None = None, strict: bool = False,
              inputs: dict[int, Spec] | None = None, mesh: Mesh | None = None,
              nodes: Sequence[Node] | None = None) -> Propagation:
    """The specs of every node `outputs` need (all nodes when None). `inputs` (node id ->
    spec, on `mesh`) replaces the annotations of those nodes: what a planner tries (it then
    ignores the constraints an earlier plan applied to ops)."""
    nodes = needed_nodes(graph, outputs) if nodes is None else nodes
    decisions: dict[int, Decision] = {}
    operand_specs: dict[int, tuple[Spec, ...]] = {}
    for node in nodes:
        planned = inputs is None and node.kind == "op"  # an earlier plan's constraints count
        if planned and node.operand_shardings is not None:  # applied by a sharding plan
            operand_specs[node.id] = tuple(
                spec_of(s, len(i.shape)) if s is not None else decisions[i.node.id].spec
                for i, s in zip(node.inputs, node.operand_shardings))
        if inputs is not None and node.id in inputs:
            d = Decision(inputs[node.id], "the plan")
        else:
            d = _decide(node, decisions, planned)
        if d.conflict is not None and strict:
            raise ShardingConflictError(d.conflict)
        decisions[node.id] = d
        mesh = mesh or _mesh_of(node)
    return Propagation(graph, nodes, mesh, decisions, operand_specs)


def _mesh_of(node: Node) -> Any:
    sharding = node.sharding if node.sharding is not None else node.params.get("sharding")
    return getattr(sharding, "mesh", None)


def _decide(node: Node, decisions: dict[int, Decision], planned: bool) -> Decision:
    ndim = len(node.output.shape)
    if node.op == PLACEHOLDER or node.sharding is not None and (planned or node.kind != "op"):
        if node.sharding is None:
            return Decision(spec_of(None, ndim), "replicated (input)")
        source = "the plan" if node.kind == "op" else "sharding= of the input"
        return Decision(spec_of(node.sharding, ndim), source,
                        tuple(i.node.id for i in node.inputs))
    if node.kind != "op":  # constants, variable reads and assignments
        source = "replicated (constant)" if node.op == CONSTANT else f"replicated ({node.op})"
        inputs = tuple(i.node.id for i in node.inputs)
        if inputs:  # an assignment: the value assigned
            first = decisions[inputs[0]]
            return Decision(first.spec, f"{node.op} of its value", inputs)
        return Decision(spec_of(None, ndim), source)
    prim = node.op
    assert not isinstance(prim, str)
    inputs = tuple(i.node.id for i in node.inputs)
    if prim.name == "shard":
        return Decision(spec_of(node.params["sharding"], ndim), "ap.shard", inputs)
    specs = [decisions[i].spec for i in inputs]
    if not any(e is not None for s in specs for e in s):
        return Decision(spec_of(None, ndim), "replicated", inputs)
    try:
        spec = tuple(prim.sharding(specs, *[i for i in node.inputs], **node.params))
    except ShardingRuleError as e:
        sharded = [i for i in node.inputs if decisions[i.node.id].sharded]
        return Decision(spec_of(None, ndim), f"{prim.name} rule", inputs,
                        _conflict_text(node, sharded, e))
    return Decision(spec + (None,) * (ndim - len(spec)), f"{prim.name} rule", inputs)


def _conflict_text(node: Node, sharded: list[Tensor], error: Exception) -> str:
    names = " and ".join(i.name for i in sharded[:2])
    return message(
        node.op_name, f"the shardings of {names} meet at {node.output.name} and its rule "
        "cannot reconcile them", str(error).split(". Given:")[0],
        "operands whose specs the rule accepts",
        f"reshard one of them first: ap.shard({sharded[0].name if sharded else 'x'}, P(...))")


def sharded_axes(spec: Spec) -> set[str]:
    """The mesh axes a spec shards over."""
    return {a for e in spec for a in axis_names(e)}
