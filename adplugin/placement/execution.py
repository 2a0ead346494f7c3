"""Running a placed graph: one compiled program per subprogram, dispatched without waiting.

`PlacedProgram` is called like a jitted program (`program(*feed_values) -> fetch values`).
Its first call places the nodes, cuts the graph (`partition.py`) and compiles each subprogram
once, pinned to its device (`jax.jit` with single-device input and output shardings, lowered and
compiled ahead). Every call then, for each subprogram in order, copies its inbound values
over (the batched copy `jax.device_put` makes; between host CPU devices a value computed
already goes as a view of host memory, copied in by the call) and calls its executable. JAX
dispatches asynchronously: a call returns futures at once, so the subprograms of different
devices run at the same time and nothing here waits for a result.

A subprogram whose program calls back into Python (a host callback) executes synchronously
where it is dispatched, on CPU; such subprograms, and those taking their results, are
dispatched from one worker thread per device, so the other devices' programs still overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from adplugin import _jax_adapter as jx
from adplugin._lru import LRU
from adplugin.ir.graph import CONSTANT, Graph, Node, Tensor, needed_nodes
from adplugin.placement.devices import get_soft_device_placement
from adplugin.placement.partition import Partition, Subprogram, check_fed, partition
from adplugin.placement.placer import Placement, is_placed, place
from adplugin.placement.requests import put, sharding_of


class _Step:
    """One subprogram, ready to dispatch: slots of its inputs and outputs in the run's
    environment, which inputs cross devices, and its compiled program."""

    __slots__ = ("sub", "sharding", "ins", "check", "outs", "fn", "threaded", "on_host")

    def __init__(self, sub: Subprogram, slot: dict[int, int], fn: Any, threaded: bool,
                 local: set[int]):
        self.sub = sub
        self.sharding = sharding_of(sub.device)
        self.ins = [slot[t.node.id] for t in sub.inputs]
        # inputs that may be elsewhere: all but the outputs of this device's subprograms
        self.check = [k for k, t in enumerate(sub.inputs) if t.node.id not in local]
        self.outs = [slot[t.node.id] for t in sub.outputs]
        self.fn, self.threaded = fn, threaded
        self.on_host = sub.device.platform == "cpu"  # host CPU devices share host memory

    def run(self, args: list[Any]) -> Sequence[Any]:
        sharding = self.sharding
        moving = []
        for k in self.check:
            a = args[k]
            if not isinstance(a, jax.Array) or a.sharding == sharding:
                continue  # host values are copied in by the program's call
            if self.on_host and _ready_on_host(a):
                args[k] = np.asarray(a)  # computed already, in host memory: a view of it
            else:
                moving.append(k)
        if moving:  # the transfers: one batched device_put of the values crossing over
            for k, v in zip(moving, jx.copy_to_device([args[k] for k in moving], sharding)):
                args[k] = v
        out: Sequence[Any] = self.fn(*args)
        return out

    def run_resolving(self, args: list[Any]) -> Sequence[Any]:
        return self.run([a.result() if isinstance(a, _Pending) else a for a in args])


def _ready_on_host(a: Any) -> bool:
    """A value computed already on a host CPU device (its host view is the value; weak types
    stay on the device so the program is called with the types it was compiled for)."""
    return bool(a.is_ready()) and not a.weak_type and next(iter(a.devices())).platform == "cpu"


class _Pending:
    """An output of a subprogram dispatched from a worker thread (not dispatched yet)."""

    __slots__ = ("future", "index")

    def __init__(self, future: Future[Sequence[Any]], index: int):
        self.future, self.index = future, index

    def result(self) -> Any:
        return self.future.result()[self.index]


_WORKERS: dict[Any, ThreadPoolExecutor] = {}  # one per device: at most as many as devices
_WORKERS_LOCK = threading.Lock()


def _worker(device: Any) -> ThreadPoolExecutor:
    with _WORKERS_LOCK:
        pool = _WORKERS.get(device)
        if pool is None:
            pool = _WORKERS[device] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"adplugin-{device.platform}{device.id}")
        return pool


class Executable:
    """A placement, its partition, and the compiled subprograms (one placement's plan)."""

    def __init__(self, graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor],
                 nodes: Sequence[Node], soft: bool, pinned: dict[int, Any] | None = None):
        from adplugin.lowering.run import simplified_program

        check_fed(nodes, feeds)
        self.placement: Placement = place(graph, nodes, soft, pinned)
        self.partition: Partition = partition(nodes, self.placement, fetches, feeds)
        slot: dict[int, int] = {}
        for t in [*feeds, *(t for p in self.partition.subprograms for t in p.outputs),
                  *self.partition.outputs]:
            slot.setdefault(t.node.id, len(slot))
        self.n_slots = len(slot)
        # fed values go to the programs as they are (each program's jit copies a host value
        # onto its device; a device array elsewhere is transferred); fetched, they are put on
        # their own device, as fetched constants are
        self.feeds = [(k, slot[t.node.id]) for k, t in enumerate(feeds) if t.node.id in slot]
        fetched = {t.node.id for t in self.partition.outputs}
        self.fetched_sources: list[tuple[int, Any]] = []
        self.constants: list[tuple[int, Any]] = []
        fed = {t.node.id for t in feeds}
        for t, device in self.partition.sources:
            if t.node.op == CONSTANT and t.node.id not in fed:
                self.constants.append((slot[t.node.id], jax.device_put(t.node.value, device)))
            elif t.node.id in fetched:
                self.fetched_sources.append((slot[t.node.id], sharding_of(device)))
        self.steps: list[_Step] = []
        local: dict[Any, set[int]] = {}
        for sub in self.partition.subprograms:
            local.setdefault(sub.device, set()).update(t.node.id for t in sub.outputs)
        for sub in self.partition.subprograms:
            sharding = sharding_of(sub.device)
            # pinned to its device: one executable takes host arrays (fed values), arrays
            # on the device and arrays transferred to it alike
            fn = jax.jit(simplified_program(graph, sub.outputs, sub.inputs),
                         in_shardings=sharding, out_shardings=sharding)
            specs = [jax.ShapeDtypeStruct(t.shape, t.dtype, weak_type=t.weak_type)
                     for t in sub.inputs]
            lowered = fn.lower(*specs)
            lowered.compile()  # compiled once, now: jit's own cache serves every call
            self.steps.append(_Step(sub, slot, fn, jx.has_host_callbacks(lowered),
                                    local[sub.device]))
        self.outs = [slot[t.node.id] for t in self.partition.outputs]

    def __call__(self, values: Sequence[Any]) -> list[Any]:
        env: list[Any] = [None] * self.n_slots
        for k, at in self.feeds:
            env[at] = values[k]
        for at, value in self.constants:
            env[at] = value
        threaded = False
        for step in self.steps:
            args = [env[i] for i in step.ins]
            if step.threaded or (threaded and any(isinstance(a, _Pending) for a in args)):
                threaded = True
                future = _worker(step.sub.device).submit(step.run_resolving, args)
                for k, at in enumerate(step.outs):
                    env[at] = _Pending(future, k)
                continue
            for at, value in zip(step.outs, step.run(args)):
                env[at] = value
        for at, sharding in self.fetched_sources:
            env[at] = put(_array(env[at]), sharding)
        out = [env[i] for i in self.outs]
        if threaded:
            out = [v.result() if isinstance(v, _Pending) else v for v in out]
        return out


def _array(x: Any) -> Any:
    return x if isinstance(x, jax.Array) else np.asarray(x)


class PlacedProgram:
    """A function of the feeds' values computing the fetches of a graph whose nodes ask for
    devices: placed, partitioned and compiled on first use (per soft-placement setting).

    With `pin_feeds` (a tape's recorded values), a fed value committed to a device stays
    there: the placement is made per layout of the fed values' devices."""

    def __init__(self, graph: Graph, fetches: Sequence[Tensor], feeds: Sequence[Tensor],
                 nodes: Sequence[Node] | None = None, pin_feeds: bool = False):
        self.graph, self.fetches, self.feeds = graph, list(fetches), list(feeds)
        self.nodes = list(nodes) if nodes is not None else needed_nodes(
            graph, self.fetches, {t.node.id for t in self.feeds})
        self.pin_feeds = pin_feeds
        # per soft-placement setting, JAX configuration (and fed values' devices)
        self._plans: LRU[Executable] = LRU(8)

    def executable(self, soft: bool | None = None, values: Sequence[Any] = ()) -> Executable:
        soft = get_soft_device_placement() if soft is None else soft
        config = jx.config_key()  # JAX's configuration, the default device included
        if not self.pin_feeds:
            return self._plans.get_or_build((soft, config), lambda: Executable(
                self.graph, self.fetches, self.feeds, self.nodes, soft))
        layout = tuple(value_device(v) for v in values)
        pinned = {t.node.id: d for t, d in zip(self.feeds, layout) if d is not None}
        return self._plans.get_or_build((soft, config, layout), lambda: Executable(
            self.graph, self.fetches, self.feeds, self.nodes, soft, pinned))

    def __call__(self, *values: Any) -> list[Any]:
        if any(jx.is_tracer(v) for v in values):  # inside a JAX trace: placement is JAX's
            from adplugin.lowering.run import simplified_program

            return simplified_program(self.graph, self.fetches, self.feeds, self.nodes)(*values)
        return self.executable(values=values)(values)

    def single_program(self) -> Any:
        """The jitted program, when the placement put everything in one subprogram taking
        the feeds in order (so it can be lowered and exported as one); else a clear error."""
        steps = self.executable().steps
        ids = lambda ts: [t.node.id for t in ts]  # noqa: E731
        if len(steps) == 1 and ids(steps[0].sub.inputs) == ids(self.feeds) and ids(
                steps[0].sub.outputs) == ids(self.fetches):
            return steps[0].fn
        from adplugin._errors import message
        from adplugin.ir.graph import GraphError

        raise GraphError(message(
            "Graph.lower", "the graph is placed on several devices, so it is several programs",
            f"{len(steps)} subprograms on "
            f"{', '.join(dict.fromkeys(str(s.sub.device) for s in steps))}",
            "a graph whose nodes all run on one device", "inspect the subprograms with "
            "g.placement(fetches).partition(), or lower the graph built without device "
            "requests"))

    def lower(self, *values: Any) -> Any:
        return self.single_program().lower(*values)


def placement_for_run(graph: Graph, fetches: Any, feed_dict: dict[Any, Any]) -> Placement:
    """The placement `Graph.run(fetches, feed_dict)` uses (the values fed do not matter, only
    which tensors are fed): variables read are fed too, assignments are fetched too."""
    from adplugin.lowering.run import _prepare
    from adplugin.placement.placer import ASSIGN, VARIABLE, graph_placement

    graph, fetched, _, feeds, _ = _prepare(graph, fetches, {t: _stand_in(t, v)
                                                            for t, v in feed_dict.items()})
    nodes = needed_nodes(graph, fetched.tensors, {t.node.id for t in feeds})
    reads = [n.output for n in nodes if n.op == VARIABLE]
    assigns = [n.output for n in nodes if n.op == ASSIGN]
    return graph_placement(graph, [*fetched.tensors, *assigns], [*feeds, *reads])


def _stand_in(t: Any, value: Any) -> Any:
    """A feed's value, or zeros of its type when the caller passed None (only which tensors
    are fed matters for placement)."""
    if value is None and isinstance(t, Tensor):
        return np.zeros(t.shape, t.dtype)
    return value


def value_device(value: Any) -> Any | None:
    """The device a concrete value is committed to (None: not committed, or a NumPy value,
    which can go anywhere)."""
    if isinstance(value, jax.Array) and not jx.is_tracer(value) and value.committed:
        devices = value.devices()
        if len(devices) == 1:
            return next(iter(devices))
    return None


def interpret(graph: Graph, nodes: Sequence[Node], outputs: Sequence[Tensor],
              env: dict[int, Any]) -> list[Any]:
    """`lowering.run.evaluate` for placed nodes (a tape's recording): each op runs on the
    device the placer gives it, its operands copied there first; values known in `env` stay
    on the devices they live on."""
    known: dict[int, Node] = {}
    for n in nodes:
        for i in n.inputs:
            if i.node.id in env:
                known.setdefault(i.node.id, i.node)
    pinned = {i: d for i in known if (d := value_device(env[i])) is not None}
    todo = [n for n in nodes if n.id not in env]
    placement = place(graph, sorted([*known.values(), *todo], key=lambda n: n.id),
                      pinned=pinned)
    for n in todo:
        if n.op == CONSTANT:
            env[n.id] = n.value
            continue
        prim = n.op
        assert not isinstance(prim, str), f"a recording holds no {prim} nodes"
        target = sharding_of(placement[n])
        env[n.id] = prim.jax_primitive.impl(*[put(env[i.node.id], target) for i in n.inputs],
                                            **n.params)
    return [env[t.node.id] for t in outputs]


def placement_wanted(nodes: Sequence[Node], values: Sequence[Any]) -> bool:
    """Whether computing `nodes` from `values` needs the placer: a node asks for a device, or
    the values are committed to more than one device (one jit could not take them)."""
    if is_placed(nodes):
        return True
    devices = {d for v in values if (d := value_device(v)) is not None}
    return len(devices) > 1
