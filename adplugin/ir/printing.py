"""A graph as text (one node a line, like a jaxpr) and as Graphviz DOT."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from adplugin.ir.graph import CONSTANT, DERIVATIVE, PLACEHOLDER, Node, Tensor, needed_nodes

if TYPE_CHECKING:
    from adplugin.ir.graph import Graph


def _param_text(value: Any) -> str:
    if isinstance(value, np.dtype):
        return value.name
    spec = getattr(value, "spec", None)  # a NamedSharding: its spec (the mesh is the graph's)
    if spec is not None and hasattr(value, "mesh"):
        return str(spec).replace(" ", "")
    return str(value).replace(" ", "")


def _constant_text(value: np.ndarray) -> str:
    if value.size == 1:
        return f"{value.reshape(()).item()!r}"
    return f"<{value.size} values>"


def node_text(node: Node, where: str = "", type_text: str | None = None) -> str:
    """One node as a line; `where` is its device (" @cpu:1") when the graph is placed;
    `type_text` its type when shown otherwise (sharded: `f32[8@x,4]`)."""
    out = node.output
    lhs = f"{out.name}:{type_text or out.type_str}"
    if node.op == PLACEHOLDER:
        return f"{lhs} = placeholder{where}"
    if node.op == CONSTANT:
        return f"{lhs} = constant {_constant_text(node.value)}{where}"
    params = " ".join(f"{k}={_param_text(v)}" for k, v in sorted(node.params.items()))
    args = " ".join(i.name for i in node.inputs)
    mark = "  # derivative" if node.role == DERIVATIVE else ""
    return f"{lhs} = {node.op_name}{f'[{params}]' if params else ''} {args}{where}{mark}"


def _placement(graph: Graph, nodes: Sequence[Node]) -> Any:
    """The placement of `nodes` when some of them ask for a device (else None). Printing
    never fails: requests no device satisfies show where soft placement would put them."""
    from adplugin.placement.placer import is_placed, place

    return place(graph, nodes, soft=True) if is_placed(nodes) else None


def _where(placement: Any, node: Node) -> str:
    if placement is None:
        return ""
    d = placement.decision(node)
    soft = f" (asked {d.requested})" if d.reason.startswith("soft") else ""
    return f" @{d.device_name}{soft}"


def _sharding(graph: Graph, nodes: Sequence[Node]) -> Any:
    """The propagated shardings when some node is annotated with one (else None)."""
    if not any(n.sharding is not None or n.op_name == "shard" for n in nodes):
        return None
    from adplugin.sharding.propagate import propagate

    return propagate(graph, [n.output for n in nodes])


def _type(sharding: Any, t: Tensor) -> str:
    return t.type_str if sharding is None else sharding.type_text(t)


def to_text(graph: Graph, outputs: Sequence[Tensor] | None = None) -> str:
    """The graph one node a line, like a jaxpr; in a placed graph each node ends with the
    device the placer gives it (`@cpu:1`); in a sharded one, types show each dimension's
    mesh axes (`f32[4778@x,100]`) and a sharding conflict is marked on its node."""
    nodes = needed_nodes(graph, outputs)
    placement = _placement(graph, nodes)
    sharding = _sharding(graph, nodes)
    ins = " ".join(f"{n.output.name}:{_type(sharding, n.output)}{_where(placement, n)}"
                   for n in nodes if n.op == PLACEHOLDER)
    body = [f"    {node_text(n, _where(placement, n), _type(sharding, n.output))}"
            f"{_conflict_mark(sharding, n)}" for n in nodes if n.op != PLACEHOLDER]
    outs = ", ".join(t.name for t in outputs) if outputs is not None else ""
    return "\n".join([f"{{ graph {graph.name} ; {ins}. let", *body, f"  in ({outs}) }}"])


def _conflict_mark(sharding: Any, node: Node) -> str:
    if sharding is None or sharding.decisions[node.id].conflict is None:
        return ""
    return "  # sharding conflict: replicated here (see explain_sharding)"


_STYLE = {
    PLACEHOLDER: 'shape=ellipse, style=filled, fillcolor="#fff2cc"',
    CONSTANT: 'shape=box, style="rounded,filled", fillcolor="#eeeeee", fontsize=10',
    "forward": 'shape=box, style="rounded,filled", fillcolor="#dae8fc"',
    DERIVATIVE: 'shape=box, style="rounded,filled", fillcolor="#f8cecc"',
}


def to_dot(graph: Graph, outputs: Sequence[Tensor] | None = None) -> str:
    """Graphviz DOT: placeholders yellow, forward ops blue, derivative ops red, constants grey.
    In a placed graph each device is a cluster, and an edge between devices (a transfer) is
    bold and labelled with the bytes it moves."""
    nodes = needed_nodes(graph, outputs)
    placement = _placement(graph, nodes)
    sharding = _sharding(graph, nodes)
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [fontname="Helvetica"];']
    clusters: dict[str, list[str]] = {}
    edges: list[str] = []
    for n in nodes:
        style = _STYLE[n.op if isinstance(n.op, str) else n.role]
        if n.op == PLACEHOLDER:
            label = f"{n.output.name}\\n{_type(sharding, n.output)}"
        elif n.op == CONSTANT:
            label = _constant_text(n.value)
        else:
            label = f"{n.op_name}\\n{n.output.name}: {_type(sharding, n.output)}"
        if _conflict_mark(sharding, n):
            style += ', color="#d62728", penwidth=2'
        line = f'  n{n.id} [label="{label}", {style}];'
        if placement is None:
            lines.append(line)
        else:
            clusters.setdefault(placement.decision(n).device_name, []).append(line)
        edges.extend(f"  n{i.node.id} -> n{n.id}{_edge(placement, i, n)}"
                     f"{_sharded_edge(sharding, i)};" for i in n.inputs)
    for k, (name, members) in enumerate(clusters.items()):
        lines.append(f'  subgraph cluster_{k} {{ label="{name}"; style="rounded,dashed";')
        lines.extend(f"  {m}" for m in members)
        lines.append("  }")
    lines.extend(edges)
    for k, t in enumerate(outputs or ()):
        lines.append(f'  out{k} [label="{t.name}", shape=plaintext];')
        lines.append(f"  n{t.node.id} -> out{k} [style=dashed];")
    lines.append("}")
    return "\n".join(lines)


def _edge(placement: Any, t: Tensor, consumer: Node) -> str:
    """Edge attributes: a value crossing devices is a transfer, labelled with its bytes (a
    constant is copied into each program that uses it instead: dashed, no transfer)."""
    if placement is None or placement[t] == placement[consumer]:
        return ""
    if t.node.op == CONSTANT:
        return " [style=dashed]"
    nbytes = int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize
    return f' [label="{nbytes} B", style=bold, color="#d62728", fontcolor="#d62728"]'


def _sharded_edge(sharding: Any, t: Tensor) -> str:
    """A sharded value's edge: blue, labelled with its mesh axes."""
    if sharding is None or not sharding.decisions[t.node.id].sharded:
        return ""
    return f' [color="#1f77b4", penwidth=2, tooltip="{sharding.type_text(t)}"]'


def render(dot: str, path: str, fmt: str | None = None) -> str:
    """Draw DOT text to an SVG/PNG file with the Graphviz `dot` program (when installed)."""
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("rendering needs the Graphviz `dot` program (e.g. apt-get install "
                           "graphviz); the DOT text itself needs nothing")
    fmt = fmt or path.rsplit(".", 1)[-1]
    subprocess.run([exe, f"-T{fmt}", "-o", path], input=dot.encode(), check=True)
    return path
