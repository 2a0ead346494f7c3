"""Forward mode on graphs: tangents pushed through each node's JVP rules, in graph order."""

from __future__ import annotations

from typing import Any

from adplugin._errors import DerivativeError, message
from adplugin._primitive import NOT_DIFFERENTIABLE, get_primitive
from adplugin.ir.graph import Tensor
from adplugin.transforms.reverse import (
    _as_graph_tensors,
    _as_list,
    _check_tensors,
    active_nodes,
    conformed,
    filled_like,
)


def forward_gradients(ys: Any, xs: Any, tangents: Any) -> list[Tensor]:
    """Directional derivatives of each y along `tangents` (one per x), as graph tensors.

    With no xs (and no tangents) the derivative along nothing is zeros of each y's shape;
    with no ys the answer is []."""
    from adplugin.ir.deferred import any_deferred
    from adplugin.ir.deferred import forward_gradients as deferred_forward

    ys_list, _ = _as_list(ys)
    ts_list, _ = _as_list(tangents)
    if not ys_list:
        return []
    if any_deferred(ys, xs, tangents):  # shapes known at run time: derived per fed shape
        if len(ts_list) != len(_as_list(xs)[0]):
            raise ValueError(message("forward_gradients", "tangents do not match xs",
                                     f"{len(ts_list)} tangents",
                                     f"{len(_as_list(xs)[0])}, one per x",
                                     "give one tangent per x, of its shape"))
        return deferred_forward(ys_list, _as_list(xs)[0], ts_list)
    graph = _check_tensors("ys", ys_list, None)
    xs_list = _as_graph_tensors(_as_list(xs)[0], graph)
    _check_tensors("xs", xs_list, graph)
    if len(ts_list) != len(xs_list):
        raise ValueError(message("forward_gradients", "tangents do not match xs",
                                 f"{len(ts_list)} tangents", f"{len(xs_list)}, one per x",
                                 "give one tangent per x, of its shape"))
    if not xs_list:
        with graph.building():
            return [filled_like(y, 0) for y in ys_list]
    active = active_nodes(graph, xs_list)
    with graph.building():
        tan: dict[int, Tensor] = {x.node.id: conformed(graph, t, x, "forward_gradients", "tangent")
                                  for x, t in zip(xs_list, ts_list)}
        last = max(y.node.id for y in ys_list)
        for node in graph.nodes[min(tan):last + 1]:
            if node.kind != "op" or node.id not in active or node.id in tan:
                continue
            prim = node.op
            live = [i for i, inp in enumerate(node.inputs) if inp.node.id in tan]
            if live and prim.jvp is NOT_DIFFERENTIABLE:  # type: ignore[union-attr]
                raise DerivativeError(message(
                    node.op_name, "the op is not differentiable", repr(node.output),
                    "no derivative paths through it", "wrap its inputs in ap.stop_gradient"))
            total = None
            for i in live:
                rule = prim.jvp[i]  # type: ignore[union-attr,index]
                if rule is None:
                    continue
                part = rule(tan[node.inputs[i].node.id], node.output, *node.inputs,
                            **node.params)
                if part is not None:
                    total = part if total is None else get_primitive("add").bind(total, part)
            if total is not None:
                tan[node.id] = total
        return [tan[y.node.id] if y.node.id in tan else filled_like(y, 0) for y in ys_list]
