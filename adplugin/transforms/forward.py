"""Forward mode on graphs: tangents pushed through each node's JVP rules, in graph order."""

from __future__ import annotations

from typing import Any

from adplugin._errors import DerivativeError, message
from adplugin._primitive import NOT_DIFFERENTIABLE, get_primitive
from adplugin.ir.graph import Tensor
from adplugin.transforms.reverse import _as_list, _check_tensors, active_nodes, filled_like


def forward_gradients(ys: Any, xs: Any, tangents: Any) -> list[Tensor]:
    """Directional derivatives of each y along `tangents` (one per x), as graph tensors."""
    ys_list, _ = _as_list(ys)
    xs_list, _ = _as_list(xs)
    ts_list, _ = _as_list(tangents)
    graph = _check_tensors("xs", xs_list, _check_tensors("ys", ys_list, None))
    active = active_nodes(graph, xs_list)
    with graph.building():
        tan: dict[int, Tensor] = {x.node.id: graph._as_tensor(t, "forward_gradients")
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
