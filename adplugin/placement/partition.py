"""Cutting a placed graph into one subprogram per device run (MPMD), with explicit transfers.

Each op node gets a stage: the largest over its op inputs of the input's stage, plus one when
that input is on another device. The nodes of one device and one stage form a subprogram. An
edge between two subprograms goes from a lower stage to a higher one (or stays inside one),
so running the subprograms by stage is a topological order of the cut graph: no subprogram
ever waits for one dispatched after it, and none can deadlock. Constants are copied into every
subprogram that uses them; fed values (placeholders, variable reads) are put on their own
device once; every value a subprogram takes from another device crosses on a `Transfer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adplugin._errors import message
from adplugin.ir.graph import CONSTANT, PLACEHOLDER, GraphError, Node, Tensor
from adplugin.placement.devices import device_name
from adplugin.placement.placer import ASSIGN, Placement, nbytes


@dataclass(frozen=True)
class Transfer:
    """A value copied from one device to another before a subprogram runs."""

    tensor: Tensor
    source: Any
    target: Any

    @property
    def nbytes(self) -> int:
        return nbytes(self.tensor)

    def __str__(self) -> str:
        return f"{self.tensor.name}: {device_name(self.source)} -> " \
               f"{device_name(self.target)} ({self.nbytes} B)"


@dataclass
class Subprogram:
    """The op nodes of one device and stage: computed from `inputs` into `outputs`."""

    device: Any
    stage: int
    nodes: list[Node] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)  # copied in before it runs

    def __str__(self) -> str:
        ops = f"{len(self.nodes)} op{'s' if len(self.nodes) != 1 else ''}"
        return f"subprogram on {device_name(self.device)} (stage {self.stage}): {ops}, " \
               f"in ({', '.join(t.name for t in self.inputs)}), " \
               f"out ({', '.join(t.name for t in self.outputs)})"


@dataclass
class Partition:
    """A placed graph cut into subprograms, in an order that runs them correctly."""

    subprograms: list[Subprogram]
    sources: list[tuple[Tensor, Any]]  # fed values and constants fetched: each on its device
    outputs: list[Tensor]  # the fetches, aliases (assignments) resolved to their values

    @property
    def transfers(self) -> list[Transfer]:
        return [t for p in self.subprograms for t in p.transfers]

    def __str__(self) -> str:
        lines = [str(p) for p in self.subprograms]
        lines += [f"  transfer {t}" for t in self.transfers]
        return "\n".join(lines)


def value_of(t: Tensor) -> Tensor:
    """The tensor whose value `t` has: an assignment gives its input's value."""
    while t.node.op == ASSIGN:
        t = t.node.inputs[0]
    return t


def partition(nodes: Sequence[Node], placement: Placement, fetches: Sequence[Tensor],
              feeds: Sequence[Tensor]) -> Partition:
    """Cut `nodes` (the nodes the fetches need, cut at the feeds, in graph order)."""
    fed = {t.node.id for t in feeds}
    device = {n.id: placement[n] for n in nodes}
    outputs = [value_of(t) for t in fetches]
    # ops on constants alone are folded into each program using them, like constants
    floating = constant_like(nodes, fed) - {t.node.id for t in outputs}
    order = {d: k for k, d in enumerate(dict.fromkeys(device.values()))}
    stage: dict[int, int] = {}
    parts: dict[tuple[Any, int], Subprogram] = {}
    home: dict[int, Subprogram] = {}
    for n in nodes:
        if n.id in fed or n.kind != "op" or n.id in floating:
            continue
        s = 0
        for i in n.inputs:
            j = value_of(i).node.id
            if j in stage:
                s = max(s, stage[j] + (device[j] != device[n.id]))
        stage[n.id] = s
        key = (device[n.id], s)
        part = parts.get(key)
        if part is None:
            part = parts[key] = Subprogram(device[n.id], s)
        part.nodes.append(n)
        home[n.id] = part
    subprograms = sorted(parts.values(), key=lambda p: (p.stage, order[p.device]))
    _connect(subprograms, home, device, outputs, fed, floating)
    sources: dict[int, tuple[Tensor, Any]] = {}
    for t in [*feeds, *(o for o in outputs if o.node.id not in home)]:
        if t.node.id in device:
            sources.setdefault(t.node.id, (t, device[t.node.id]))
    return Partition(subprograms, list(sources.values()), outputs)


def constant_like(nodes: Sequence[Node], fed: set[int]) -> set[int]:
    """Ids of the op nodes computed from constants alone (folded wherever they are used)."""
    out: set[int] = set()
    for n in nodes:
        if n.kind == "op" and n.id not in fed and all(
                (v.node.op == CONSTANT and v.node.id not in fed) or v.node.id in out
                for v in map(value_of, n.inputs)):
            out.add(n.id)
    return out


def check_fed(nodes: Sequence[Node], feeds: Sequence[Tensor]) -> None:
    """Every placeholder the nodes need is fed (else the error `Graph.run` gives)."""
    fed = {t.node.id for t in feeds}
    for n in nodes:
        if n.op == PLACEHOLDER and n.id not in fed:
            raise GraphError(message(
                "Graph.run", "a placeholder the fetches depend on was not fed",
                f"no value for {n.output!r}", "a feed_dict entry for every placeholder used",
                f"pass feed_dict={{{n.output.name}: value}}"))


def _connect(subprograms: list[Subprogram], home: dict[int, Subprogram],
             device: dict[int, Any], outputs: list[Tensor], fed: set[int],
             floating: set[int]) -> None:
    """Each subprogram's inputs, outputs and inbound transfers."""
    wanted = {t.node.id for t in outputs}
    for part in subprograms:
        seen_in: set[int] = set()
        for n in part.nodes:
            for i in n.inputs:
                v = value_of(i)
                j = v.node.id
                if home.get(j) is part or j in seen_in or (
                        j not in fed and (v.node.op == CONSTANT or j in floating)):
                    continue  # inside, or a constant (copied in)
                seen_in.add(j)
                part.inputs.append(v)
                producer = home.get(j)
                if producer is not None:
                    wanted.add(j)
                if device[j] != part.device:
                    part.transfers.append(Transfer(v, device[j], part.device))
    for part in subprograms:
        part.outputs = [n.output for n in part.nodes if n.id in wanted]
