"""`to_svg`: a graph drawn without Graphviz is well-formed SVG with one box per node and one
arrow per edge, in layers that follow the data flow."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import adplugin as ap
from adplugin.ir.graph import needed_nodes
from adplugin.ir.svg import to_svg

NS = {"s": "http://www.w3.org/2000/svg"}


def seed_graph():
    with ap.Graph("seed") as g:
        a, b = ap.placeholder((), name="a"), ap.placeholder((), name="b<&>")
        f = 2 * a * b**2 + 3 * a**2 * b
        (df,) = ap.gradients(f, [a])
    return g, [f, df]


def test_one_box_per_node_and_one_arrow_per_edge():
    g, outs = seed_graph()
    root = ET.fromstring(to_svg(g, outs))  # well-formed XML, names escaped
    nodes = needed_nodes(g, outs)
    boxes = root.findall("s:g/s:rect", NS)
    arrows = root.findall("s:path[@marker-end]", NS)
    assert len(boxes) == len(nodes)
    assert len(arrows) == sum(len(n.inputs) for n in nodes) + len(outs)
    assert "b<&>" in [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_layers_follow_the_data_flow():
    """Every arrow points down: each node sits below all of its inputs."""
    g, outs = seed_graph()
    ends = re.findall(r'<path d="M[\d.]+,([\d.]+) C[^"]* [\d.]+,([\d.]+)"', to_svg(g, outs))
    assert len(ends) == sum(len(n.inputs) for n in needed_nodes(g, outs)) + len(outs)
    for y_from, y_to in ends:
        assert float(y_to) > float(y_from)


def test_groups_draw_one_labelled_band_each():
    g, outs = seed_graph()
    svg = to_svg(g, outs, group=lambda n: "cpu:1" if n.role == "derivative" else "cpu:0")
    root = ET.fromstring(svg)
    bands = [r for r in root.findall("s:rect", NS) if r.get("stroke-dasharray")]
    assert len(bands) == 2
    labels = {t.text for t in root.findall("s:text", NS)}
    assert {"cpu:0", "cpu:1"} <= labels
    assert len(ET.fromstring(to_svg(g, outs)).findall("s:rect", NS)) == 0  # no groups: no band
