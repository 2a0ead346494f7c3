"""A graph drawn as SVG with no external program: a layered layout, written by hand.

Graphviz draws better, but it is a system package; this needs nothing. The layout is the
classic layered one (Sugiyama's): each node sits on the layer of its longest path from an input,
nodes within a layer are ordered by the mean position of their inputs (the barycenter heuristic,
a few sweeps down and up), and edges are drawn as curves from a node's bottom to its user's top.
Colours follow `to_dot`: placeholders yellow, forward ops blue, derivative ops red, constants grey.
An optional `group` callback (a node's device, for example) draws one labelled band per group.
In a sharded graph, types show each node's propagated sharding (`f32[64@data,16]`, as `to_text`
prints them) and the edges of sharded values are drawn thick and blue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from adplugin.ir.graph import CONSTANT, DERIVATIVE, PLACEHOLDER, Node, Tensor, needed_nodes
from adplugin.ir.printing import _constant_text as constant_text
from adplugin.ir.printing import _sharding, _type

if TYPE_CHECKING:
    from adplugin.ir.graph import Graph

_FILL = {PLACEHOLDER: "#fff2cc", CONSTANT: "#eeeeee", "forward": "#dae8fc", DERIVATIVE: "#f8cecc"}
_STROKE = {PLACEHOLDER: "#d6b656", CONSTANT: "#999999", "forward": "#6c8ebf",
           DERIVATIVE: "#b85450"}
_GROUP_FILLS = ("#e8f4ea", "#fdebd3", "#e7e3f4", "#dff1f7", "#f9e1ec", "#f1f1d8")
_CHAR_W, _BOX_H, _GAP_X, _GAP_Y, _PAD = 7.0, 34.0, 24.0, 46.0, 20.0


def _kind(n: Node) -> str:
    return n.op if n.op in (PLACEHOLDER, CONSTANT) else n.role


def _label(n: Node, sharding: Any = None) -> tuple[str, str]:
    type_text = _type(sharding, n.output)
    if n.op == PLACEHOLDER:
        return n.output.name, type_text
    if n.op == CONSTANT:
        return constant_text(n.value), type_text
    return n.op_name, f"{n.output.name}: {type_text}"


def _layers(nodes: Sequence[Node]) -> list[list[Node]]:
    """Longest-path layering (nodes come in topological order)."""
    depth: dict[int, int] = {}
    for n in nodes:
        depth[n.id] = 1 + max((depth.get(i.node.id, -1) for i in n.inputs), default=-1)
    layers: list[list[Node]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for n in nodes:
        layers[depth[n.id]].append(n)
    return layers


def _order(layers: list[list[Node]], sweeps: int = 4) -> None:
    """Barycenter ordering: sort each layer by the mean index of its neighbours in the last."""
    users: dict[int, list[int]] = {}
    for layer in layers:
        for n in layer:
            for i in n.inputs:
                users.setdefault(i.node.id, []).append(n.id)
    centre: dict[int, float]
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        for k in range(1, len(layers)) if down else range(len(layers) - 2, -1, -1):
            ref = {n.id: j for j, n in enumerate(layers[k - 1 if down else k + 1])}
            near = {n.id: [i.node.id for i in n.inputs] if down else users.get(n.id, [])
                    for n in layers[k]}
            centre = {m: _barycenter(ids, ref) for m, ids in near.items()}
            layers[k].sort(key=lambda n: centre[n.id])


def _barycenter(neighbours: list[int], index: dict[int, int]) -> float:
    pos = [index[m] for m in neighbours if m in index]
    return sum(pos) / len(pos) if pos else float("inf")


def to_svg(graph: Graph, outputs: Sequence[Tensor] | None = None,
           group: Callable[[Node], str | None] | None = None) -> str:
    """The graph (the nodes `outputs` need) as an SVG document."""
    nodes = needed_nodes(graph, outputs)
    sharding = _sharding(graph, nodes)
    layers = _layers(nodes)
    _order(layers)
    width = {n.id: max(len(s) for s in _label(n, sharding)) * _CHAR_W + 16 for n in nodes}
    row_w = [sum(width[n.id] for n in layer) + _GAP_X * (len(layer) - 1) for layer in layers]
    total_w = max(row_w, default=0) + 2 * _PAD
    pos: dict[int, tuple[float, float]] = {}  # centre of each box
    for k, layer in enumerate(layers):
        x = (total_w - row_w[k]) / 2
        for n in layer:
            pos[n.id] = (x + width[n.id] / 2, _PAD + k * (_BOX_H + _GAP_Y) + _BOX_H / 2)
            x += width[n.id] + _GAP_X
    out_y = _PAD + len(layers) * (_BOX_H + _GAP_Y)
    total_h = out_y + (_BOX_H if outputs else 0) + _PAD
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" '
             f'height="{total_h:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
             "</defs>"]
    if group is not None:
        parts += _group_boxes(nodes, pos, width, group)
    for n in nodes:
        for i in n.inputs:
            split = sharding is not None and sharding.decisions[i.node.id].sharded
            parts.append(_edge(pos[i.node.id], pos[n.id], sharded=split))
    for t in outputs or ():
        x, _ = pos[t.node.id]
        parts.append(_edge(pos[t.node.id], (x, out_y + _BOX_H / 2), dashed=True))
        parts.append(f'<text x="{x:.1f}" y="{out_y + _BOX_H / 2 + 14:.1f}" '
                     f'text-anchor="middle">{escape(t.name)}</text>')
    for n in nodes:
        parts.append(_box(n, pos[n.id], width[n.id], sharding))
    parts.append("</svg>")
    return "\n".join(parts)


def _edge(a: tuple[float, float], b: tuple[float, float], dashed: bool = False,
          sharded: bool = False) -> str:
    (x0, y0), (x1, y1) = a, b
    y0, y1 = y0 + _BOX_H / 2, y1 - _BOX_H / 2
    mid = (y0 + y1) / 2
    dash = ' stroke-dasharray="4,3"' if dashed else ""
    stroke = 'stroke="#1f77b4" stroke-width="2.5"' if sharded else 'stroke="#555"'
    return (f'<path d="M{x0:.1f},{y0:.1f} C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},'
            f'{y1:.1f}" fill="none" {stroke}{dash} marker-end="url(#arrow)"/>')


def _box(n: Node, centre: tuple[float, float], w: float, sharding: Any = None) -> str:
    x, y = centre
    kind = _kind(n)
    rx = 17 if n.op == PLACEHOLDER else 6
    top, bottom = _label(n, sharding)
    return (f'<g><rect x="{x - w / 2:.1f}" y="{y - _BOX_H / 2:.1f}" width="{w:.1f}" '
            f'height="{_BOX_H:.0f}" rx="{rx}" fill="{_FILL[kind]}" stroke="{_STROKE[kind]}"/>'
            f'<text x="{x:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-weight="bold">'
            f"{escape(top)}</text>"
            f'<text x="{x:.1f}" y="{y + 11:.1f}" text-anchor="middle" font-size="10" '
            f'fill="#444">{escape(bottom)}</text></g>')


def _group_boxes(nodes: Sequence[Node], pos: dict[int, tuple[float, float]],
                 width: dict[int, float], group: Callable[[Node], str | None]) -> list[str]:
    """One translucent, labelled rectangle around each group's nodes."""
    members: dict[str, list[Node]] = {}
    for n in nodes:
        g = group(n)
        if g is not None:
            members.setdefault(g, []).append(n)
    parts = []
    for k, (name, ns) in enumerate(sorted(members.items())):
        x0 = min(pos[n.id][0] - width[n.id] / 2 for n in ns) - 8
        x1 = max(pos[n.id][0] + width[n.id] / 2 for n in ns) + 8
        y0 = min(pos[n.id][1] for n in ns) - _BOX_H / 2 - 18
        y1 = max(pos[n.id][1] for n in ns) + _BOX_H / 2 + 8
        fill = _GROUP_FILLS[k % len(_GROUP_FILLS)]
        parts.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                     f'height="{y1 - y0:.1f}" rx="10" fill="{fill}" fill-opacity="0.7" '
                     f'stroke="#888" stroke-dasharray="5,3"/>'
                     f'<text x="{x0 + 6:.1f}" y="{y0 + 13:.1f}" font-size="11" fill="#333">'
                     f"{escape(name)}</text>")
    return parts
