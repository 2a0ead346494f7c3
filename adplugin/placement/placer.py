"""The placer: a device for every node the fetches need, and the reason for it.

1. Colocation groups (`ap.colocate_with`, a derivative colocated with its forward node) are
   joined with union-find; a group is placed as one.
2. A group with requests goes where they ask: the member that requested says "requested", the
   others "colocated with <it>". A request no device satisfies, or two requests naming
   different devices in one group, is soft-placed (an available device; the reason says
   which and why) or, with soft placement off, an error listing every such group.
3. A node without any request inherits: an op from its inputs (the device holding most of its
   input bytes), a value without inputs from its first consumer; anything still unplaced goes
   to the default device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from adplugin._table import columns
from adplugin.ir.graph import Graph, Node, Tensor
from adplugin.placement.devices import (
    DeviceSpec,
    PlacementError,
    available_names,
    default_device,
    device_name,
    fallback,
    get_soft_device_placement,
    match,
    parse,
)

VARIABLE, ASSIGN = "variable", "assign"  # the ops of ir.variables (kept apart: no import cycle)


@dataclass(frozen=True)
class Decision:
    """Where one node runs: its request, the device chosen, and why."""

    node: Node
    requested: str | None
    device: Any
    reason: str
    group: int

    @property
    def device_name(self) -> str:
        return device_name(self.device)


def node_label(node: Node) -> str:
    return f"{node.output.name} {node.op_name}"


def requested(node: Node) -> DeviceSpec | None:
    """A node's own request: a variable's read or assignment asks for the variable's device."""
    if node.op in (VARIABLE, ASSIGN):
        v = node.value
        own = getattr(v, "_device", None)
        if own is not None:
            return parse(own)
    spec: DeviceSpec | None = node.device
    return spec


def is_placed(nodes: Iterable[Node]) -> bool:
    """Whether any of the nodes asks for a device or a colocation (else nothing to place)."""
    for n in nodes:
        if n.device is not None or n.colocate is not None:
            return True
        if n.op in (VARIABLE, ASSIGN) and getattr(n.value, "_device", None) is not None:
            return True
    return False


def nbytes(t: Tensor) -> int:
    return int(t.size) * t.dtype.itemsize


class _Groups:
    """Union-find over node ids (path halving); a group's root is its smallest id."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        parent = self.parent
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Problem:
    group: int
    members: list[Node]
    requests: list[tuple[Node, DeviceSpec]]
    what: str


class Placement:
    """The placement of every node some fetches need: `placement[tensor]` is its device;
    `decisions` lists each node's request, device and reason; `table()` prints them."""

    def __init__(self, graph: Graph, decisions: dict[int, Decision]):
        self.graph = graph
        self.decisions = decisions
        self.nodes: list[Node] = []  # what was placed, for what (set by `place`)
        self.fetches: list[Tensor] = []
        self.feeds: list[Tensor] = []

    def partition(self) -> Any:
        """The subprograms and transfers `Graph.run` uses for these fetches (partition.py)."""
        from adplugin.placement.partition import partition

        return partition(self.nodes, self, self.fetches, self.feeds)

    def __getitem__(self, x: Tensor | Node | int) -> Any:
        return self.decisions[_node_id(x)].device

    def decision(self, x: Tensor | Node | int) -> Decision:
        return self.decisions[_node_id(x)]

    def __contains__(self, x: Tensor | Node | int) -> bool:
        return _node_id(x) in self.decisions

    @property
    def devices(self) -> list[Any]:
        """The devices used, in order of first use."""
        return list(dict.fromkeys(d.device for d in self.decisions.values()))

    def table(self) -> str:
        """One line per node: node, op, requested device, assigned device, reason."""
        rows = [("node", "op", "requested", "device", "reason")]
        for d in sorted(self.decisions.values(), key=lambda d: d.node.id):
            rows.append((d.node.output.name, d.node.op_name, d.requested or "-",
                         d.device_name, d.reason))
        return _format_rows(rows)

    def __repr__(self) -> str:
        return f"<Placement of {len(self.decisions)} nodes on " \
               f"{', '.join(device_name(d) for d in self.devices)}>"


def _node_id(x: Tensor | Node | int) -> int:
    if isinstance(x, Tensor):
        return x.node.id
    if isinstance(x, Node):
        return x.id
    return int(x)


def _format_rows(rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(columns(rows))


def place(graph: Graph, nodes: Sequence[Node], soft: bool | None = None,
          pinned: dict[int, Any] | None = None) -> Placement:
    """Place `nodes` (in graph order: the nodes some fetches need). `pinned` maps the ids of
    nodes whose values exist already (a tape's leaves) to the device they live on."""
    soft = get_soft_device_placement() if soft is None else soft
    groups = _Groups()
    for n in nodes:
        groups.find(n.id)
        _join(graph, groups, n)
    members: dict[int, list[Node]] = {}
    for i in list(groups.parent):
        members.setdefault(groups.find(i), []).append(graph.nodes[i])
    decisions: dict[int, Decision] = {}
    for i, device in (pinned or {}).items():
        decisions[i] = Decision(graph.nodes[i], None, device,
                                f"its value is on {device_name(device)}", groups.find(i))
    problems: list[_Problem] = []
    for root, group in members.items():
        group.sort(key=lambda n: n.id)
        _place_requested(root, group, soft, decisions, problems)
    if problems:
        raise PlacementError(_problem_table(problems))
    needed = {n.id for n in nodes}
    _inherit(graph, nodes, groups, members, decisions)
    placement = Placement(graph, {i: d for i, d in decisions.items() if i in needed})
    placement.nodes = list(nodes)
    return placement


def graph_placement(graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor],
                    soft: bool | None = None) -> Placement:
    """The placement of what `fetches` need, values fed for `feeds` (`Graph.placement`)."""
    from adplugin.ir.graph import needed_nodes

    nodes = needed_nodes(graph, fetches, {t.node.id for t in feeds})
    placement = place(graph, nodes, soft)
    placement.fetches, placement.feeds = list(fetches), list(feeds)
    return placement


def _join(graph: Graph, groups: _Groups, node: Node) -> None:
    """Union a node with the chain of nodes it is colocated with."""
    while node.colocate is not None:
        target = graph.nodes[node.colocate]
        if groups.find(target.id) == groups.find(node.id):
            return
        groups.union(node.id, target.id)
        node = target


def _place_requested(root: int, group: list[Node], soft: bool, decisions: dict[int, Decision],
                     problems: list[_Problem]) -> None:
    group = [n for n in group if n.id not in decisions]  # pinned values stay where they are
    asks = [(n, s) for n in group if (s := requested(n)) is not None]
    if not asks:
        return
    found = [(n, s, match(s)) for n, s in asks]
    missing = [(n, s) for n, s, d in found if d is None]
    chosen = {d for _, _, d in found if d is not None}
    by, first = asks[0]
    if missing or len(chosen) > 1:
        what = (f"no device {', '.join(sorted({str(s) for _, s in missing}))}" if missing else
                "requests name different devices, and a colocation group runs on one")
        if not soft:
            problems.append(_Problem(root, group, asks, what))
            return
        device = found[0][2] if found[0][2] is not None else fallback(first)
        why = f"soft-placed on {device_name(device)}: {what} (available: {available_names()})"
    else:
        device, why = next(iter(chosen)), ""
    for n in group:
        spec = requested(n)
        if spec is not None and spec.matches(device) and not why:
            reason = "requested"
        elif why:
            reason = why
        else:
            reason = f"colocated with {node_label(by)}"
        decisions[n.id] = Decision(n, str(spec) if spec is not None else None, device, reason,
                                   root)


def _inherit(graph: Graph, nodes: Sequence[Node], groups: _Groups,
             members: dict[int, list[Node]], decisions: dict[int, Decision]) -> None:
    """Nodes of groups without requests: an op where most of its input bytes are, then a value
    without placed inputs where its first consumer is, then the default device."""

    def assign(node: Node, device: Any, reason: str) -> None:
        root = groups.find(node.id)
        for m in members[root]:
            if m.id in decisions:
                continue
            why = reason if m is node else f"colocated with {node_label(node)}"
            decisions[m.id] = Decision(m, None, device, why, root)

    for n in nodes:
        if n.id in decisions or not n.inputs:
            continue
        weight: dict[Any, int] = {}
        for i in n.inputs:
            d = decisions.get(i.node.id)
            if d is not None:
                weight[d.device] = weight.get(d.device, 0) + nbytes(i)
        if weight:
            best = max(weight, key=lambda dev: weight[dev])  # first seen wins ties
            assign(n, best, f"inherited from inputs ({_input_names(n, best, decisions)})")
    consumers: dict[int, Node] = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i.node.id, n)
    for n in reversed(nodes):
        c = consumers.get(n.id)
        if n.id not in decisions and c is not None and c.id in decisions:
            assign(n, decisions[c.id].device, f"with its consumer {node_label(c)}")
    fallback_device = default_device()
    for n in nodes:
        if n.id not in decisions:
            assign(n, fallback_device, "no request: the default device")


def _input_names(node: Node, device: Any, decisions: dict[int, Decision]) -> str:
    names = [i.name for i in node.inputs
             if i.node.id in decisions and decisions[i.node.id].device == device]
    return f"{', '.join(dict.fromkeys(names))} on {device_name(device)}"


def _problem_table(problems: list[_Problem]) -> str:
    rows = [("group", "members", "requests", "problem")]
    for k, p in enumerate(problems, 1):
        names = ", ".join(node_label(n) for n in p.members[:6])
        if len(p.members) > 6:
            names += f", ... ({len(p.members)} nodes)"
        asks = ", ".join(f"{s} by {n.output.name}" for n, s in p.requests)
        rows.append((f"#{k}", names, asks, p.what))
    return (f"ap.placement: {len(problems)} colocation group(s) cannot be placed as requested "
            "(soft device placement is off).\n"
            + _format_rows(rows)
            + f"\navailable devices: {available_names()}\n"
            "fix: request an available device (ap.device(...)), make the requests of a "
            "colocation group agree, or call ap.set_soft_device_placement(True) to let the "
            "placer fall back to an available device (it says where, in placement.table())")
