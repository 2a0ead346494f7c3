"""The collectives a propagated graph calls for, each with the node it comes from.

From each node's propagated spec (see `propagate.py`), per-device bytes by the convention of
`collectives.py` (all-reduce: the reduced buffer; all-gather: the gathered result;
all-to-all: the operand):

- a contraction (`dot_general`) over a dimension both operands shard over the same mesh axes
  leaves partial sums: an all-reduce of the output over those axes; a contracted dimension
  only one operand shards is gathered first: an all-gather of that operand over its axes;
- a reduction (`reduce_sum`, `reduce_max`, `reduce_min`, `reduce_prod`) over sharded
  dimensions: an all-reduce of the output over their axes;
- a reshard (`ap.shard`) that removes axes from dimensions: an all-gather over them, or an
  all-to-all where an axis moves from one dimension to another.

Other ops keep sharded dimensions local (elementwise ops, broadcasts, transposes); what XLA
inserts beyond this list shows up as "unexpected" when compared (`compare_collectives`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from adplugin.ir.graph import Node, Tensor
from adplugin.sharding.compare import PredictedCollective
from adplugin.sharding.mesh import Spec, axis_names
from adplugin.sharding.propagate import Propagation

_REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod")


def predict_collectives(prop: Propagation) -> list[PredictedCollective]:
    """One row per predicted collective, in graph order."""
    if prop.mesh is None:
        return []
    sizes = mesh_sizes(prop.mesh)
    rows: list[PredictedCollective] = []
    for node in prop.nodes:
        if node.kind != "op" or prop.decisions[node.id].conflict is not None:
            continue
        given = prop.operand_specs.get(node.id)
        ins = [prop.spec(i) for i in node.inputs]
        if given is not None:  # a plan reshards these operands before the op
            for t, before, after in zip(node.inputs, ins, given):
                rows += reshard_rows(t, before, after, sizes, node)
            ins = list(given)
        rows += node_collectives(node, ins, prop.spec(node.output), sizes)
    return rows


def mesh_sizes(mesh: Any) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.devices.shape))


def node_collectives(node: Node, ins: Sequence[Spec], out: Spec, sizes: dict[str, int]
                     ) -> list[PredictedCollective]:
    """The collectives `node` calls for with operands `ins` and result `out` (axes of one
    device dropped: XLA makes no collective over them)."""
    name = node.op_name
    if name == "dot_general":
        rows = _contraction(node, ins, out, sizes)
    elif name in _REDUCTIONS:
        rows = _reduction(node, ins, out, sizes)
    elif name == "shard":
        rows = reshard_rows(node.inputs[0], ins[0], out, sizes, node)
    else:
        return []
    return _real(rows, sizes)


def reshard_rows(t: Tensor, before: Spec, after: Spec, sizes: dict[str, int], node: Node
                 ) -> list[PredictedCollective]:
    """Moving `t` from `before` to `after` (for `node`): an all-gather over the axes removed,
    an all-to-all over the axes that move to another dimension; adding axes is a local slice."""
    had = {a: d for d, e in enumerate(before) for a in axis_names(e)}
    has = {a: d for d, e in enumerate(after) for a in axis_names(e)}
    moved = sorted(a for a in had if a in has and has[a] != had[a])
    removed = sorted(a for a in had if a not in has)
    rows = []
    if moved:
        rows.append(_row("all-to-all", moved, per_device_bytes(t, before, sizes), node))
    if removed:
        rows.append(_row("all-gather", removed, per_device_bytes(t, after, sizes), node))
    return _real(rows, sizes)


def _real(rows: list[PredictedCollective], sizes: dict[str, int]) -> list[PredictedCollective]:
    rows = [replace(r, axes=tuple(a for a in r.axes if sizes[a] > 1)) for r in rows]
    return [r for r in rows if r.axes]


def per_device_bytes(t: Tensor, spec: Spec, sizes: dict[str, int]) -> int:
    """Bytes of one device's shard of `t` under `spec`."""
    shards = math.prod(sizes[a] for e in spec for a in axis_names(e))
    return math.prod(t.shape) * t.dtype.itemsize // max(shards, 1)


def _row(kind: str, axes: Sequence[str], nbytes: int, node: Node) -> PredictedCollective:
    return PredictedCollective(kind, tuple(sorted(axes)), int(nbytes), node.output.name)


def _contraction(node: Node, ins: Sequence[Spec], out: Spec, sizes: dict[str, int]
                 ) -> list[PredictedCollective]:
    (xc, yc), _ = node.params["dimension_numbers"]
    x, y = node.inputs
    xs, ys = ins
    reduced: list[str] = []
    rows = []
    for i, j in zip(xc, yc):
        ax, ay = set(axis_names(xs[i])), set(axis_names(ys[j]))
        reduced += sorted(ax & ay)
        for t, spec, dim, only in ((x, xs, i, ax - ay), (y, ys, j, ay - ax)):
            if only:  # gathered along the contracted dimension before the product
                gathered = tuple(None if k == dim else e for k, e in enumerate(spec))
                rows.append(_row("all-gather", sorted(only),
                                 per_device_bytes(t, gathered, sizes), node))
    if reduced:
        rows.insert(0, _row("all-reduce", reduced,
                            per_device_bytes(node.output, out, sizes), node))
    return rows


def _reduction(node: Node, ins: Sequence[Spec], out: Spec, sizes: dict[str, int]
               ) -> list[PredictedCollective]:
    axes = [a for d in node.params["axes"] for a in axis_names(ins[0][d])]
    if not axes:
        return []
    return [_row("all-reduce", axes, per_device_bytes(node.output, out, sizes), node)]


def describe(rows: Sequence[Any]) -> str:
    """The predicted rows as a table (kind, axes, bytes, node)."""
    lines = [f"{'kind':<12}{'axes':<12}{'bytes':>10}  node"]
    lines += [f"{r.kind:<12}{','.join(r.axes) or '-':<12}{r.nbytes:>10}  {r.node}" for r in rows]
    return "\n".join(lines)
