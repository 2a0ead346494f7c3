"""Placement on 8 host CPU devices: requests, the placer, soft placement, partitioned runs.

References: the same computation built without any device request (the unplaced run, which
compiles one program) and `jax.numpy` / `jax.grad`. Placed results must equal the unplaced
ones bit for bit, and every value must sit on the device the placer gave it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin import _jax_adapter as jx
from adplugin.placement import execution
from adplugin.placement.devices import DeviceSpec, parse

ROOT = Path(__file__).resolve().parent.parent
CPU = jax.devices("cpu")


def cpu(i: int) -> Any:
    return CPU[i]


@pytest.fixture(autouse=True)
def soft_placement_restored() -> Iterator[None]:
    before = ap.get_soft_device_placement()
    yield
    ap.set_soft_device_placement(before)


def bits(x: Any) -> np.ndarray:
    a = np.asarray(x)
    return a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.kind == "f" else a


def assert_bit_equal(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(bits(g), bits(w))


def only_device(x: Any) -> Any:
    (d,) = x.devices()
    return d


# ----------------------------------------------------------------------------------------------
# Device specs
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, platform, index", [
    ("cpu:1", "cpu", 1), ("CPU:1", "cpu", 1), ("gpu:0", "gpu", 0), ("gpu", "gpu", None),
    ("/device:GPU:0", "gpu", 0), ("/cpu:0", "cpu", 0), ("/device:CPU:3", "cpu", 3),
    ("/job:localhost/replica:0/task:0/device:CPU:2", "cpu", 2), ("cuda:1", "gpu", 1),
    ("/gpu:*", "gpu", None), ("tpu:4", "tpu", 4),
])
def test_spec_spellings(spec: str, platform: str, index: int | None) -> None:
    assert parse(spec) == DeviceSpec(platform, index)


def test_spec_of_a_device_and_none() -> None:
    assert parse(cpu(5)) == DeviceSpec("cpu", 5)
    assert parse(None) is None


@pytest.mark.parametrize("bad", ["cpu:x", "cpu:-1", "", "/job:worker/device:CPU:0",
                                 "/task:3/cpu:0", 3, 1.5])
def test_bad_specs_are_refused_clearly(bad: Any) -> None:
    with pytest.raises(ap.PlacementError, match=r"ap\.device: .*Given: .*Expected: .*cpu:1"):
        ap.device(bad)


# ----------------------------------------------------------------------------------------------
# Requests: graphs, nesting, colocation scopes
# ----------------------------------------------------------------------------------------------

def test_scopes_stamp_graph_nodes() -> None:
    with ap.Graph():
        x = ap.placeholder((3,), name="x")
        with ap.device("cpu:1"):
            a = ap.sin(x)
            with ap.device("/device:CPU:2"):
                b = a * 2.0
            with ap.device(None):
                c = b + 1.0
            d = ap.exp(c)
        e = d - 1.0
    assert x.node.device is None
    assert a.node.device == DeviceSpec("cpu", 1)
    assert b.node.device == DeviceSpec("cpu", 2)
    assert c.node.device is None
    assert d.node.device == DeviceSpec("cpu", 1)
    assert e.node.device is None


def test_device_scope_outside_the_graph_applies_inside() -> None:
    with ap.device(cpu(3)), ap.Graph() as g:
        x = ap.placeholder((), name="x")
        y = ap.square(x)
    assert all(n.device == DeviceSpec("cpu", 3) for n in g.nodes)
    assert only_device(g.run(y, {x: 3.0})) == cpu(3)


def test_colocate_with_joins_the_group_and_drops_the_outer_request() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((4,), name="x")
        with ap.device("cpu:4"):
            a = ap.sin(x)
        with ap.device("cpu:6"):
            with ap.colocate_with(a):
                b = ap.cos(a)  # outer cpu:6 dropped: b goes where a goes
            c = ap.exp(b)
    assert b.node.device is None and b.node.colocate == a.node.id
    p = g.placement(c)
    assert p[b] == cpu(4) and p[c] == cpu(6)
    assert p.decision(b).reason == f"colocated with {a.name} sin"


def test_colocation_across_graphs_is_refused() -> None:
    with ap.Graph():
        t = ap.placeholder((), name="t")
    with ap.Graph(), ap.colocate_with(t), pytest.raises(ap.GraphError, match="another graph"):
        ap.placeholder((), name="u")


# ----------------------------------------------------------------------------------------------
# The placer
# ----------------------------------------------------------------------------------------------

def seed_graph(dev0: Any = "cpu:0", dev1: Any = "cpu:1") -> tuple[Any, ...]:
    """The README's f = 2ab^2 + 3a^2b, its two terms pinned to two devices, and df/da."""
    with ap.Graph() as g:
        a, b = ap.placeholder((), name="a"), ap.placeholder((), name="b")
        with ap.device(dev0):
            t1 = 2 * a * b**2
        with ap.device(dev1):
            t2 = 3 * a**2 * b
        f = t1 + t2
        (da,) = ap.gradients(f, [a])
    return g, a, b, t1, t2, f, da


def test_placement_reasons() -> None:
    g, a, b, t1, t2, f, da = seed_graph()
    p = g.placement([f, da])
    assert p[t1] == cpu(0) and p[t2] == cpu(1)
    assert p.decision(t1).reason == "requested" and p.decision(t1).requested == "cpu:0"
    # f = t1 + t2 has no request: it inherits from its inputs (4 bytes each: first wins)
    assert p[f] == cpu(0) and p.decision(f).reason.startswith("inherited from inputs")
    # a placeholder goes where its first consumer runs
    assert p.decision(a).reason.startswith("with its consumer")
    table = p.table()
    assert table.splitlines()[0].split() == ["node", "op", "requested", "device", "reason"]
    assert all(str(n.output.name) in table for n in p.nodes)
    assert len(table.splitlines()) == len(p.decisions) + 1


def test_no_request_goes_to_the_default_device() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((), name="x")
        with ap.device("cpu:2"):
            y = ap.sin(x)
        z = ap.constant(1.0) + 2.0  # computed from constants only, fetched alone
    p = g.placement([y, z])
    assert p[z] == jax.devices()[0]
    assert "default device" in p.decision(z).reason
    with jax.default_device(cpu(5)):  # JAX's default device is the default device
        assert g.placement([y, z])[z] == cpu(5)
        assert only_device(g.run([y, z], {x: 1.0})[1]) == cpu(5)
    assert only_device(g.run([y, z], {x: 1.0})[1]) == jax.devices()[0]


def test_colocation_chains_are_solved_together() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((2,), name="x")
        a = ap.sin(x)
        with ap.colocate_with(a):
            b = ap.cos(x)
        with ap.colocate_with(b), ap.device("cpu:5"):  # a request inside places the group
            c = ap.exp(x)
        d = a + b + c
    p = g.placement(d)
    assert p[a] == p[b] == p[c] == cpu(5)
    assert p.decision(c).reason == "requested"
    assert p.decision(a).reason == f"colocated with {c.name} exp"


def conflicting_graph() -> tuple[Any, ...]:
    with ap.Graph() as g:
        x = ap.placeholder((2,), name="x")
        with ap.device("cpu:1"):
            a = ap.sin(x)
        with ap.colocate_with(a), ap.device("cpu:2"):
            b = ap.cos(a)
    return g, x, a, b


def test_conflicting_requests_soft_first_request_wins() -> None:
    g, x, a, b = conflicting_graph()
    p = g.placement(b)
    assert p[a] == p[b] == cpu(1)
    assert p.decision(b).reason.startswith("soft-placed on cpu:1: requests name different")
    np.testing.assert_allclose(np.asarray(g.run(b, {x: np.ones(2, np.float32)})),
                               np.cos(np.sin(np.ones(2, np.float32))), rtol=1e-6)


def test_hard_placement_error_is_one_table() -> None:
    ap.set_soft_device_placement(False)
    g, x, a, b = conflicting_graph()
    with ap.Graph() as g2:
        y = ap.placeholder((), name="y")
        with ap.device("cpu:99"):
            z = ap.sin(y)
    with pytest.raises(ap.PlacementError) as info:
        g.placement(b)
    text = str(info.value)
    lines = text.splitlines()
    assert "soft device placement is off" in lines[0]
    assert lines[1].split()[:4] == ["group", "members", "requests", "problem"]
    assert f"{a.name} sin, {b.name} cos" in text
    assert f"cpu:1 by {a.name}, cpu:2 by {b.name}" in text
    assert "available devices: cpu:0..7" in text
    assert "fix:" in text and "ap.set_soft_device_placement(True)" in text
    with pytest.raises(ap.PlacementError, match="no device cpu:99"):
        g2.run(z, {y: 1.0})
    ap.set_soft_device_placement(True)  # the same graph soft-places, and says so
    p = g2.placement(z)
    assert p[z] == cpu(0) and "no device cpu:99" in p.decision(z).reason


def test_variables_are_requests() -> None:
    v = ap.Variable(np.arange(3, dtype=np.float32), device="cpu:6")
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        y = ap.sum(v * x)
        step = v.assign(v * 2.0)
    p = g.placement([y, step])
    read = next(n for n in p.nodes if n.op == "variable")
    assert p[read] == cpu(6) and p.decision(read).requested == "cpu:6"
    out = g.run([y, step], {x: np.ones(3, np.float32)})
    assert float(out[0]) == 3.0
    np.testing.assert_array_equal(np.asarray(v.value), [0.0, 2.0, 4.0])
    assert only_device(v.value) == cpu(6)


# ----------------------------------------------------------------------------------------------
# Partitions and transfers
# ----------------------------------------------------------------------------------------------

def test_partition_of_the_seed_graph() -> None:
    g, a, b, t1, t2, f, da = seed_graph()
    placement = g.placement([f, da], {a: None, b: None})
    part = placement.partition()
    # the derivative of 3a^2 b is colocated with it on cpu:1; f and the final sum on cpu:0
    assert [(only_device_name(s.device), s.stage) for s in part.subprograms] == [
        ("cpu:0", 0), ("cpu:1", 0), ("cpu:0", 1)]
    # every value an op takes from another device crosses once, as a transfer of its bytes
    crossing = {(v.node.id, sub.device) for sub in part.subprograms for n in sub.nodes
                for v in n.inputs if placement[v] != sub.device and v.node.op != "constant"}
    assert {(t.tensor.node.id, t.target) for t in part.transfers} == crossing
    assert len(part.transfers) == len(crossing)
    assert all(t.nbytes == 4 for t in part.transfers)  # float32 scalars


def only_device_name(d: Any) -> str:
    return f"{d.platform}:{d.id}"


def chain(devices: list[Any], size: int = 16) -> tuple[Any, Any, Any]:
    with ap.Graph() as g:
        x = ap.placeholder((size,), name="x")
        y = x
        for d in devices:
            with ap.device(d):
                y = ap.sin(y) * 2.0 + 1.0
    return g, x, y


def test_alternating_chain_is_four_subprograms_and_three_transfers() -> None:
    g, x, y = chain(["cpu:0", "cpu:1", "cpu:0", "cpu:1"])
    part = g.placement(y, {x: None}).partition()
    assert [(only_device_name(s.device), s.stage) for s in part.subprograms] == [
        ("cpu:0", 0), ("cpu:1", 1), ("cpu:0", 2), ("cpu:1", 3)]
    assert [t.nbytes for t in part.transfers] == [64, 64, 64]
    # constants broadcast inside each program, not moved
    assert all(t.tensor.node.op_name == "add" for t in part.transfers)
    out = g.run(y, {x: np.linspace(0, 1, 16, dtype=np.float32)})
    assert only_device(out) == cpu(1)
    g1, x1, y1 = chain([None] * 4)
    assert_bit_equal([out], [g1.run(y1, {x1: np.linspace(0, 1, 16, dtype=np.float32)})])


def test_dispatch_order_is_topological() -> None:
    for seed in range(6):
        g, xs, outs, _ = random_graph(seed, devices=["cpu:0", "cpu:1", "cpu:2", None])
        part = g.placement(outs, {x: None for x in xs}).partition()
        made: dict[int, int] = {}
        for k, sub in enumerate(part.subprograms):
            for t in sub.inputs:
                assert made.get(t.node.id, -1) < k, "a subprogram waits for a later one"
            for t in sub.outputs:
                made[t.node.id] = k


def test_transfers_are_counted_per_value_and_device() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((8,), name="x")
        with ap.device("cpu:0"):
            a = ap.sin(x)
        with ap.device("cpu:1"):
            b1, b2 = ap.cos(a), ap.exp(a)  # one transfer of a to cpu:1 serves both
        with ap.device("cpu:2"):
            c = ap.tanh(a)
        y = b1 + b2 + c
    part = g.placement(y, {x: None}).partition()
    moved = sorted((t.tensor.name, only_device_name(t.target)) for t in part.transfers)
    assert moved.count((a.name, "cpu:1")) == 1 and moved.count((a.name, "cpu:2")) == 1
    assert sum(t.nbytes for t in part.transfers) == 8 * 4 * len(part.transfers)


# ----------------------------------------------------------------------------------------------
# Placed runs equal unplaced runs, bit for bit
# ----------------------------------------------------------------------------------------------

UNARY = [ap.sin, ap.exp, ap.tanh, ap.square, ap.negative]
BINARY = [ap.add, ap.multiply, ap.subtract, ap.maximum]


def random_graph(seed: int, devices: list[Any]) -> tuple[Any, list[Any], list[Any], Any]:
    """A random expression graph over two (4, 4) inputs, each op on a random device (or
    none), with matmuls, reductions and the gradient of a sum of its outputs."""
    rng = np.random.default_rng(seed)
    where = np.random.default_rng(seed + 1000).integers(len(devices), size=10)  # apart: the
    with ap.Graph() as g:  # same graph whatever the devices
        xs = [ap.placeholder((4, 4), name=f"x{i}") for i in range(2)]
        pool = list(xs)
        for k in range(10):
            with ap.device(devices[where[k]]):
                kind = rng.integers(4)
                if kind == 0:
                    pool.append(UNARY[rng.integers(len(UNARY))](pool[rng.integers(len(pool))]))
                elif kind == 1:
                    pool.append(BINARY[rng.integers(len(BINARY))](
                        pool[rng.integers(len(pool))], pool[rng.integers(len(pool))]))
                elif kind == 2:
                    pool.append(ap.matmul(pool[rng.integers(len(pool))],
                                          pool[rng.integers(len(pool))]) * 0.25)
                else:
                    pool.append(ap.sum(pool[rng.integers(len(pool))], axis=0) + pool[-1])
        outs = pool[-3:]
        loss = ap.sum(ap.tanh(outs[-1]))
        grads = ap.gradients(loss, xs)
    feeds = {x: rng.standard_normal((4, 4)).astype(np.float32) for x in xs}
    return g, xs, [*outs, loss, *grads], feeds


def same_programs_on_one_device(g: Any, outs: list[Any], feeds: dict[Any, Any]) -> list[Any]:
    """The placed run's subprograms, run in order on the default device with no transfer:
    what the placed run must give bit for bit (moving values and dispatching them on other
    devices changes nothing)."""
    from adplugin.lowering.run import simplified_program

    (plan,) = g._compiled.values()
    part = plan.program.executable().partition
    env = {t.node.id: jnp.asarray(v) for t, v in feeds.items()}
    for n in plan.program.nodes:
        if n.op == "constant":
            env[n.id] = jnp.asarray(n.value)
    for sub in part.subprograms:
        fn = jax.jit(simplified_program(g, sub.outputs, sub.inputs))
        for t, v in zip(sub.outputs, fn(*[jax.device_put(env[t.node.id], CPU[0])
                                          for t in sub.inputs])):
            env[t.node.id] = v
    return [None if t is None else env[t.node.id] for t in outs]


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_match_the_unplaced_run(seed: int) -> None:
    g, xs, outs, feeds = random_graph(seed, ["cpu:0", "cpu:1", "cpu:2", "cpu:3", None])
    g0, xs0, outs0, _ = random_graph(seed, [None])
    got = g.run(outs, feeds)
    want = g0.run(outs0, {x0: feeds[x] for x, x0 in zip(xs, xs0)})
    placement = g.placement(outs, feeds)
    for t, v, w in zip(outs, got, want):
        if t is None:
            assert v is None and w is None
            continue
        assert only_device(v) == placement[t]
        # XLA fuses across what is a cut here (multiply-adds, reductions): last bits only
        np.testing.assert_allclose(np.asarray(v), np.asarray(w), rtol=1e-5, atol=1e-6)
    reference = same_programs_on_one_device(g, outs, feeds)
    assert_bit_equal([v for v in got if v is not None], [r for r in reference if r is not None])


ELEMENTWISE_UNARY = [ap.sin, ap.exp, ap.tanh, ap.negative, ap.cos]
ELEMENTWISE_BINARY = [ap.add, ap.subtract, ap.maximum, ap.minimum]


@pytest.mark.parametrize("seed", range(8))
def test_graphs_without_products_or_reductions_are_bit_equal(seed: int) -> None:
    """No op XLA could fuse differently across a cut (no product to contract into a
    multiply-add, no reduction to reorder): the placed run is the unplaced run, bit for bit."""
    def build(devices: list[Any]) -> tuple[Any, list[Any], list[Any]]:
        rng = np.random.default_rng(seed)
        where = np.random.default_rng(seed + 1).integers(len(devices), size=16)
        with ap.Graph() as g:
            xs = [ap.placeholder((64,), name=f"x{i}") for i in range(3)]
            pool = list(xs)
            for k in range(16):
                with ap.device(devices[where[k]]):
                    if rng.integers(2):
                        op = ELEMENTWISE_UNARY[rng.integers(len(ELEMENTWISE_UNARY))]
                        pool.append(op(pool[rng.integers(len(pool))]) * 0.5)
                    else:
                        op = ELEMENTWISE_BINARY[rng.integers(len(ELEMENTWISE_BINARY))]
                        pool.append(op(pool[rng.integers(len(pool))],
                                       pool[rng.integers(len(pool))]))
        return g, xs, pool[-4:]

    g, xs, outs = build(["cpu:0", "cpu:1", "cpu:2", None])
    g0, xs0, outs0 = build([None])
    vals = [np.random.default_rng(seed).standard_normal(64).astype(np.float32) for _ in xs]
    got = g.run(outs, dict(zip(xs, vals)))
    assert len({only_device(v) for v in got} | set(g.placement(outs).devices)) >= 2
    assert_bit_equal(got, g0.run(outs0, dict(zip(xs0, vals))))


def test_a_cut_between_a_product_and_its_add_rounds_twice() -> None:
    """Why some placed values differ from the unplaced run in the last bits: in one program
    XLA on CPU computes x*y + z as a fused multiply-add (rounded once); with the product made
    on another device it is rounded before the add, as NumPy does. Other values stay exact."""
    rng = np.random.default_rng(0)
    vals = [rng.standard_normal(4096).astype(np.float32) for _ in range(3)]

    def build(d0: Any, d1: Any) -> tuple[Any, ...]:
        with ap.Graph() as g:
            x, y, z = (ap.placeholder((4096,), name=n) for n in "xyz")
            with ap.device(d0):
                p = x * y
            with ap.device(d1):
                s = p + z
                e = ap.exp(p)
        return g, {x: vals[0], y: vals[1], z: vals[2]}, [s, e]

    g, feed, (s, e) = build("cpu:0", "cpu:1")
    g0, feed0, (s0, e0) = build(None, None)
    got, want = g.run([s, e], feed), g0.run([s0, e0], feed0)
    assert_bit_equal([got[1]], [want[1]])
    fused = (np.float64(vals[0]) * vals[1] + vals[2]).astype(np.float32)  # rounded once
    twice = vals[0] * vals[1] + vals[2]  # rounded twice
    np.testing.assert_array_equal(np.asarray(got[0]), twice)
    assert (np.asarray(want[0]) == fused).mean() > 0.99 > (twice == fused).mean()


def test_gradients_match_jax() -> None:
    g, a, b, t1, t2, f, da = seed_graph()
    got = g.run([f, da], {a: 2.0, b: 3.0})
    fn = lambda a, b: 2 * a * b**2 + 3 * a**2 * b  # noqa: E731
    assert float(got[0]) == fn(2.0, 3.0)
    assert float(got[1]) == float(jax.grad(fn)(jnp.float32(2.0), jnp.float32(3.0)))


def test_unplaced_graphs_run_as_before() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        y = ap.sin(x)
    g.run(y, {x: np.ones(3, np.float32)})
    (plan,) = g._compiled.values()
    assert not isinstance(plan.program, execution.PlacedProgram)
    assert "@" not in g.to_text([y])


def test_subprograms_compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    original = execution.Executable.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(execution.Executable, "__init__", counting)
    g, x, y = chain(["cpu:2", "cpu:3"])
    feed = {x: np.ones(16, np.float32)}
    first = g.run(y, feed)
    for _ in range(3):
        assert_bit_equal([g.run(y, feed)], [first])
    assert len(built) == 1
    ap.set_soft_device_placement(False)  # another setting: another placement, once
    g.run(y, feed)
    g.run(y, feed)
    assert len(built) == 2


def test_fetching_fed_and_constant_values_places_them() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((2,), name="x")
        with ap.device("cpu:3"):
            c = ap.constant(np.array([1.0, 2.0], np.float32))
            y = ap.sin(x) + c
    out = g.run([x, c, y], {x: np.zeros(2, np.float32)})
    assert [only_device(v) for v in out] == [cpu(3)] * 3
    np.testing.assert_array_equal(np.asarray(out[2]), [1.0, 2.0])


def test_unfed_placeholder_error_is_the_usual_one() -> None:
    g, x, y = chain(["cpu:0", "cpu:1"])
    with pytest.raises(ap.GraphError, match="was not fed"):
        g.run(y)


def test_lower_and_export_of_a_placed_graph() -> None:
    g, x, y = chain(["cpu:0", "cpu:1"])
    with pytest.raises(ap.GraphError, match="placed on several devices"):
        g.lower(y, {x: np.ones(16, np.float32)})
    with pytest.raises(ap.GraphError, match="placed on several devices"):
        g.export(y, {x: np.ones(16, np.float32)})
    g1, x1, y1 = chain(["cpu:2", "cpu:2"])  # one device: one program, as unplaced
    assert "stablehlo" in g1.lower(y1, {x1: np.ones(16, np.float32)}).as_text()


# ----------------------------------------------------------------------------------------------
# Asynchronous dispatch: subprograms of two devices in flight at once
# ----------------------------------------------------------------------------------------------

_GATE: dict[str, Any] = {}


def _wait_for_gate(x: np.ndarray) -> np.ndarray:
    _GATE["opened"] = _GATE["event"].wait(_GATE["timeout"])
    return x


def _open_gate(x: np.ndarray) -> np.ndarray:
    _GATE["event"].set()
    return x


def _callback_primitive(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Any:
    def lower(x: Any) -> Any:
        return jax.pure_callback(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    return ap.define_primitive(name, lowering=jx.lowering_from_jax(lower),
                               jvp=ap.NOT_DIFFERENTIABLE, elementwise=True)


WAIT_FOR_GATE = _callback_primitive("test_placement.wait_for_gate", _wait_for_gate)
OPEN_GATE = _callback_primitive("test_placement.open_gate", _open_gate)


def gate_graph() -> tuple[Any, ...]:
    """cpu:0 waits (in a host callback) for a gate that only cpu:1's program opens: the
    first can finish only while the second runs, whatever the timing."""
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        with ap.device("cpu:0"):
            waited = WAIT_FOR_GATE.bind(ap.sin(x))
        with ap.device("cpu:1"):
            opened = OPEN_GATE.bind(ap.cos(x))
        y = waited + opened
    return g, x, y


def run_gate(timeout: float) -> bool:
    _GATE.update(event=threading.Event(), timeout=timeout, opened=None)
    g, x, y = gate_graph()
    v = np.ones(3, np.float32)
    out = g.run(y, {x: v})
    np.testing.assert_allclose(np.asarray(out), np.sin(v) + np.cos(v), rtol=1e-6)
    return bool(_GATE["opened"])


def test_subprograms_on_two_devices_are_in_flight_at_once() -> None:
    assert run_gate(timeout=60.0)


def test_the_gate_catches_serial_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant the bug: dispatch each subprogram on the caller's thread, one after the other
    (the host callbacks then run synchronously): the gate is never open in time."""
    monkeypatch.setattr(jx, "has_host_callbacks", lambda lowered: False)
    assert not run_gate(timeout=1.0)


def test_dispatch_does_not_wait_for_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without callbacks, the next subprogram is dispatched while the previous one's (heavy)
    result is still being computed: observed through its readiness."""
    n = 1024
    with ap.Graph() as g:
        x = ap.placeholder((n, n), name="x")
        with ap.device("cpu:0"):
            heavy = x
            for _ in range(6):
                heavy = ap.matmul(heavy, x) * 1e-3
        with ap.device("cpu:1"):
            light = ap.sin(x)
        y = ap.sum(heavy) + ap.sum(light)
    feed = {x: np.full((n, n), 0.5, np.float32)}
    g.run(y, feed)  # compile
    (plan,) = g._compiled.values()
    steps = plan.program.executable().steps
    assert [only_device_name(s.sub.device) for s in steps][:2] == ["cpu:0", "cpu:1"]
    seen: dict[str, Any] = {}
    first, second = steps[0].fn, steps[1].fn

    def first_fn(*args: Any) -> Any:
        seen["heavy"] = out = first(*args)
        return out

    def second_fn(*args: Any) -> Any:
        seen["heavy_ready_at_second_dispatch"] = all(o.is_ready() for o in seen["heavy"])
        return second(*args)

    monkeypatch.setattr(steps[0], "fn", first_fn)
    monkeypatch.setattr(steps[1], "fn", second_fn)
    jax.block_until_ready(g.run(y, feed))
    assert seen["heavy_ready_at_second_dispatch"] is False

    # the planted bug: an executor that waits for each subprogram's result is caught
    monkeypatch.setattr(steps[0], "fn", lambda *a: jax.block_until_ready(first_fn(*a)))
    jax.block_until_ready(g.run(y, feed))
    assert seen["heavy_ready_at_second_dispatch"] is True


# ----------------------------------------------------------------------------------------------
# Eager mode, variables, tapes, ap.function
# ----------------------------------------------------------------------------------------------

def test_eager_ops_run_in_the_scope() -> None:
    x = jnp.arange(4.0)
    with ap.device("cpu:2"):
        y = ap.sin(x) * 2.0
        z = ap.matmul(ap.reshape(y, (2, 2)), ap.reshape(y, (2, 2)))
    assert only_device(y) == cpu(2) and only_device(z) == cpu(2)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jnp.sin(x) * 2.0))
    with ap.device("/cpu:5"):
        w = ap.add(y, 1.0)  # an operand on another device is copied over
    assert only_device(w) == cpu(5)
    assert only_device(ap.sin(x)) == jax.devices()[0]  # outside: as before
    with ap.device("cpu:6"):
        c = ap.constant([1.0, 2.0])  # an eager constant lives where it is made
    assert only_device(c.materialized) == cpu(6)
    assert only_device((c * 2.0).materialized) == cpu(6)


def test_eager_soft_and_hard_placement() -> None:
    x = jnp.ones(2)
    with ap.device("cpu:42"):
        assert only_device(ap.exp(x)) == cpu(0)
    ap.set_soft_device_placement(False)
    with ap.device("cpu:42"), pytest.raises(ap.PlacementError, match="no device cpu:42"):
        ap.exp(x)


def test_variables_live_on_their_device() -> None:
    with ap.device("cpu:3"):
        v = ap.Variable(np.ones(2, np.float32))
    w = ap.Variable(2.0, device=cpu(4))
    assert only_device(v.value) == cpu(3) and v.device == cpu(3)
    assert only_device(w.value) == cpu(4)
    v.assign(jax.device_put(jnp.zeros(2), cpu(7)))
    assert only_device(v.value) == cpu(3)
    with ap.colocate_with(w):
        u = ap.multiply(jnp.ones(2), 3.0)
    assert only_device(u) == cpu(4)


def test_tape_records_devices_and_differentiates() -> None:
    w = ap.Variable(np.array([0.5, -1.0], np.float32), device="cpu:2")
    x = jnp.array([1.0, 2.0])
    with ap.GradientTape() as tape, ap.device("cpu:2"):
        y = ap.sum(ap.sin(w * x))
    assert y.node.node.device == DeviceSpec("cpu", 2)
    assert only_device(y.materialized) == cpu(2)
    (gw,) = tape.gradient(y, [w])
    want = jax.grad(lambda w: jnp.sum(jnp.sin(w * x)))(jnp.array([0.5, -1.0]))
    np.testing.assert_allclose(np.asarray(gw), np.asarray(want), rtol=1e-6)


def test_tape_values_across_devices() -> None:
    a = ap.Variable(np.float32(2.0), device="cpu:1")
    b = ap.Variable(np.float32(3.0), device="cpu:2")
    with ap.GradientTape():
        y = a * b  # operands on two devices: the placer moves one
        with ap.device("cpu:5"):
            z = ap.square(y)
    assert float(z) == 36.0 and only_device(z.materialized) == cpu(5)


def test_function_runs_where_it_is_called() -> None:
    v = ap.Variable(np.ones(3, np.float32))

    @ap.function
    def step(x: Any) -> Any:
        v.assign_add(x)
        return ap.sum(ap.sin(v * x))

    x = jnp.array([0.1, 0.2, 0.3])
    with ap.device("cpu:6"):
        out = step(x)
    assert only_device(out) == cpu(6)
    np.testing.assert_allclose(float(out), float(jnp.sum(jnp.sin((1 + x) * x))), rtol=1e-6)
    assert only_device(v.value) == jax.devices()[0]  # the variable stays where it lives
    out2 = step(x)  # outside the scope: another trace, on the default device
    assert only_device(out2) == jax.devices()[0]
    assert step.experimental_get_tracing_count() >= 2


# ----------------------------------------------------------------------------------------------
# Text and DOT
# ----------------------------------------------------------------------------------------------

def test_text_shows_each_nodes_device() -> None:
    g, a, b, t1, t2, f, da = seed_graph()
    text = g.to_text([f])
    p = g.placement(f)
    for n in p.nodes:
        line = next(ln for ln in text.splitlines() if f"{n.output.name}:" in ln)
        assert f"@{only_device_name(p[n])}" in line
    with ap.Graph() as g2:
        y = ap.placeholder((), name="y")
        with ap.device("cpu:77"):
            z = ap.sin(y)
    assert "@cpu:0 (asked cpu:77)" in g2.to_text([z])


def test_dot_has_a_cluster_per_device_and_transfer_bytes() -> None:
    g, x, y = chain(["cpu:0", "cpu:1"], size=10)
    dot = g.to_dot([y])
    assert dot.count("subgraph cluster_") == 2
    assert 'label="cpu:0"' in dot and 'label="cpu:1"' in dot
    assert dot.count('label="40 B"') == 1  # float32[10] crossing once
    unplaced, ux, uy = chain([None, None])
    assert "cluster" not in unplaced.to_dot([uy])


# ----------------------------------------------------------------------------------------------
# Threads, and the same program on a one-device host
# ----------------------------------------------------------------------------------------------

def test_threads_keep_their_own_device_scopes() -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=60)

    def work(k: int) -> None:
        try:
            for _ in range(20):
                barrier.wait()
                with ap.device(f"cpu:{k}"):
                    with ap.Graph() as g:
                        x = ap.placeholder((4,), name="x")
                        y = ap.exp(ap.sin(x))
                    eager = ap.sin(jnp.ones(4))
                assert all(n.device == DeviceSpec("cpu", k) for n in g.nodes)
                assert only_device(eager) == cpu(k)
                assert only_device(g.run(y, {x: np.ones(4, np.float32)})) == cpu(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in (3, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


ONE_DEVICE = textwrap.dedent("""
    import json, os
    import numpy as np, jax
    import adplugin as ap
    assert len(jax.devices()) == 1
    def build(d0, d1):
        with ap.Graph() as g:
            a, b = ap.placeholder((), name="a"), ap.placeholder((), name="b")
            with ap.device(d0):
                t1 = 2 * a * b**2
            with ap.device(d1):
                t2 = 3 * a**2 * b
            f = t1 + t2
            (da,) = ap.gradients(f, [a])
        return g, a, b, [f, da]
    g, a, b, outs = build("cpu:0", "cpu:1")
    g0, a0, b0, outs0 = build(None, None)
    got = [float(v) for v in g.run(outs, {a: 2.0, b: 3.0})]
    want = [float(v) for v in g0.run(outs0, {a0: 2.0, b0: 3.0})]
    reasons = [d.reason for d in g.placement(outs).decisions.values()]
    ap.set_soft_device_placement(False)
    try:
        g.placement(outs)
        hard = "no error"
    except ap.PlacementError as e:
        hard = str(e)
    print(json.dumps({"got": got, "want": want, "reasons": reasons, "hard": hard,
                      "devices": [str(d) for d in jax.devices()]}))
""")


def test_the_same_program_on_a_one_device_host() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", ONE_DEVICE], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(res["devices"]) == 1
    assert res["got"] == res["want"] == [72.0, 54.0]
    assert any(r.startswith("soft-placed on cpu:0: no device cpu:1") for r in res["reasons"])
    assert "no device cpu:1" in res["hard"] and "available devices: cpu:0" in res["hard"]


# ----------------------------------------------------------------------------------------------
# Derivatives are colocated with the forward node they come from
# ----------------------------------------------------------------------------------------------

def test_gradient_nodes_are_colocated_with_their_forward_node() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        with ap.device("cpu:4"):
            s = ap.sin(x)
        with ap.device("cpu:5"):
            y = ap.sum(ap.exp(s))
        (gx,) = ap.gradients(y, [x])
    derivative = [n for n in g.nodes if n.role == "derivative" and n.kind == "op"]
    p = g.placement(gx)
    assert {only_device_name(p[n]) for n in derivative} == {"cpu:4", "cpu:5"}
    assert any(p.decision(n).reason.startswith(f"colocated with {s.name}")
               for n in derivative)


# ----------------------------------------------------------------------------------------------
# The benchmark runs and reports what it promises
# ----------------------------------------------------------------------------------------------

def test_benchmark_quick(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _benchmark_runner import run_quick

    report = run_quick("placement.py", tmp_path, timeout=600)
    assert report["config"]["quick"] is True
    assert set(report["branches"]["median_s"]) == {"two_devices", "one_device", "unplaced"}
    assert report["branches"]["ratio_two_over_one_device"] > 0
    assert report["overhead"]["subprograms"] == 4 and report["overhead"]["transfers"] == 3
    assert set(report["overhead"]["median_us"]) == {"four_subprograms", "one_subprogram",
                                                    "unplaced"}
    assert [g["passed"] for g in report["goals"]] == [None, None]  # not judged when quick


def test_tape_gradient_of_values_on_two_devices_matches_jax_grad() -> None:
    """Watched values committed to different devices: the recorded program is placed (not one
    jit, which would refuse them), interpreted first, then compiled per device, and its
    gradients equal jax.grad's every time."""
    d0, d1 = jax.devices()[:2]
    x = jax.device_put(jnp.arange(1.0, 4.0), d0)
    w = jax.device_put(jnp.linspace(0.5, 1.5, 3), d1)

    def f(x, w):
        return jnp.sum(jnp.sin(x) * jnp.exp(w))

    want = jax.grad(f, argnums=(0, 1))(np.asarray(x), np.asarray(w))
    for _ in range(3):  # interpreted, then placed and compiled
        with ap.GradientTape() as tape:
            tape.watch(x)
            tape.watch(w)
            y = ap.sum(ap.sin(x) * ap.exp(w))
        gx, gw = tape.gradient(y, [x, w])
        np.testing.assert_allclose(gx, want[0], rtol=1e-6)
        np.testing.assert_allclose(gw, want[1], rtol=1e-6)


def test_tape_ops_in_a_device_scope_run_there_and_differentiate() -> None:
    v = ap.Variable(np.array([0.3, -0.2], np.float32), device="cpu:2")
    for _ in range(3):
        with ap.GradientTape() as tape, ap.device("cpu:3"):
            y = ap.sum(ap.tanh(v * 2.0))
        (g,) = tape.gradient(y, [v])
        want = jax.grad(lambda a: jnp.sum(jnp.tanh(a * 2.0)))(np.asarray(v.value))
        np.testing.assert_allclose(g, want, rtol=1e-6)


def test_simplify_keeps_device_requests_and_colocations() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        with ap.device("cpu:1"):
            s = ap.sin(x)
        with ap.colocate_with(s):
            y = ap.sum(s * 2.0)
    small, mapping = ap.simplify(g, [y])
    sin_copy = mapping[s.node.id].node
    sum_copy = mapping[y.node.id].node
    assert str(sin_copy.device) == str(s.node.device)
    assert sum_copy.colocate is not None and small.nodes[sum_copy.colocate] is sin_copy
    p = small.placement(mapping[y.node.id])
    assert only_device_name(p[sum_copy]) == "cpu:1"
