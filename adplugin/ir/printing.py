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
    return str(value).replace(" ", "")


def _constant_text(value: np.ndarray) -> str:
    if value.size == 1:
        return f"{value.reshape(()).item()!r}"
    return f"<{value.size} values>"


def node_text(node: Node) -> str:
    out = node.output
    lhs = f"{out.name}:{out.type_str}"
    if node.op == PLACEHOLDER:
        return f"{lhs} = placeholder"
    if node.op == CONSTANT:
        return f"{lhs} = constant {_constant_text(node.value)}"
    params = " ".join(f"{k}={_param_text(v)}" for k, v in sorted(node.params.items()))
    args = " ".join(i.name for i in node.inputs)
    mark = "  # derivative" if node.role == DERIVATIVE else ""
    return f"{lhs} = {node.op_name}{f'[{params}]' if params else ''} {args}{mark}"


def to_text(graph: Graph, outputs: Sequence[Tensor] | None = None) -> str:
    nodes = needed_nodes(graph, outputs)
    ins = " ".join(f"{n.output.name}:{n.output.type_str}" for n in nodes if n.op == PLACEHOLDER)
    body = [f"    {node_text(n)}" for n in nodes if n.op != PLACEHOLDER]
    outs = ", ".join(t.name for t in outputs) if outputs is not None else ""
    return "\n".join([f"{{ graph {graph.name} ; {ins}. let", *body, f"  in ({outs}) }}"])


_STYLE = {
    PLACEHOLDER: 'shape=ellipse, style=filled, fillcolor="#fff2cc"',
    CONSTANT: 'shape=box, style="rounded,filled", fillcolor="#eeeeee", fontsize=10',
    "forward": 'shape=box, style="rounded,filled", fillcolor="#dae8fc"',
    DERIVATIVE: 'shape=box, style="rounded,filled", fillcolor="#f8cecc"',
}


def to_dot(graph: Graph, outputs: Sequence[Tensor] | None = None) -> str:
    """Graphviz DOT: placeholders yellow, forward ops blue, derivative ops red, constants grey."""
    nodes = needed_nodes(graph, outputs)
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [fontname="Helvetica"];']
    for n in nodes:
        style = _STYLE[n.op if isinstance(n.op, str) else n.role]
        if n.op == PLACEHOLDER:
            label = f"{n.output.name}\\n{n.output.type_str}"
        elif n.op == CONSTANT:
            label = _constant_text(n.value)
        else:
            label = f"{n.op_name}\\n{n.output.name}: {n.output.type_str}"
        lines.append(f'  n{n.id} [label="{label}", {style}];')
        for i in n.inputs:
            lines.append(f"  n{i.node.id} -> n{n.id};")
    for k, t in enumerate(outputs or ()):
        lines.append(f'  out{k} [label="{t.name}", shape=plaintext];')
        lines.append(f"  n{t.node.id} -> out{k} [style=dashed];")
    lines.append("}")
    return "\n".join(lines)


def render(dot: str, path: str, fmt: str | None = None) -> str:
    """Draw DOT text to an SVG/PNG file with the Graphviz `dot` program (when installed)."""
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("rendering needs the Graphviz `dot` program (e.g. apt-get install "
                           "graphviz); the DOT text itself needs nothing")
    fmt = fmt or path.rsplit(".", 1)[-1]
    subprocess.run([exe, f"-T{fmt}", "-o", path], input=dot.encode(), check=True)
    return path
