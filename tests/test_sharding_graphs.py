"""Sharded graphs on 8 host devices: the mesh scope, `ap.shard` and sharded placeholders,
propagation shown in the graph's text and explained, collectives predicted per node and
checked against the compiled HLO, and exports that keep shardings."""

from __future__ import annotations

import inspect
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adplugin as ap
from adplugin.ir.svg import to_svg
from adplugin.sharding.propagate import ShardingConflictError

rng = np.random.default_rng(0)
AUTO = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
EXPLICIT = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)


def normal(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def mlp(mesh: Any, x_spec: Any, w0_spec: Any, w1_spec: Any, wrt_x: bool = False
        ) -> tuple[ap.Graph, list[Any], dict[Any, np.ndarray]]:
    """A two-layer MLP's loss and gradients, with the given input shardings."""
    g = ap.Graph()
    with ap.mesh(mesh), g:
        x = ap.placeholder((64, 16), sharding=x_spec, name="x")
        w0 = ap.placeholder((16, 32), sharding=w0_spec, name="w0")
        w1 = ap.placeholder((32, 8), sharding=w1_spec, name="w1")
        h = ap.tanh(ap.matmul(x, w0))
        loss = ap.mean(ap.square(ap.matmul(h, w1)))
        grads = ap.gradients(loss, [w0, w1, x] if wrt_x else [w0, w1])
    return g, [loss, *grads], {x: normal(64, 16), w0: normal(16, 32), w1: normal(32, 8)}


def unsharded(outs: list[Any], feed: dict[Any, np.ndarray]) -> list[np.ndarray]:
    """The same program as plain jax.numpy + jax.grad (the reference)."""
    x, w0, w1 = feed.values()

    def loss(x: Any, w0: Any, w1: Any) -> Any:
        return jnp.mean(jnp.square(jnp.tanh(x @ w0) @ w1))

    grads = jax.grad(loss, argnums=(1, 2, 0))(x, w0, w1)
    return [np.asarray(loss(x, w0, w1)), *map(np.asarray, grads[:len(outs) - 1])]


# --- the mesh scope ------------------------------------------------------------------------------

def test_the_mesh_scope_and_jax_set_mesh() -> None:
    assert ap.current_mesh() is None
    with ap.mesh(AUTO):
        assert ap.current_mesh() is AUTO
        assert jax.sharding.get_mesh() == AUTO  # JAX code in the block sees it too
    with jax.set_mesh(AUTO):
        assert ap.current_mesh() == AUTO
    with pytest.raises(ap.MeshError, match="not a device mesh"), \
            ap.mesh("data"):  # type: ignore[arg-type]
        pass


def test_bad_shardings_get_clear_errors() -> None:
    with pytest.raises(ap.MeshError, match="needs a device mesh.*ap.mesh"):
        ap.shard(jnp.ones((8, 4)), P("data"))
    with ap.mesh(AUTO):
        with pytest.raises(ap.MeshError, match="unknown mesh axis 'batch'"):
            ap.shard(jnp.ones((8, 4)), P("batch"))
        with pytest.raises(ap.MeshError, match="more entries than the array has dimensions"):
            ap.shard(jnp.ones(8), P("data", None))
        with pytest.raises(ap.MeshError, match="one mesh axis shards two dimensions"):
            ap.shard(jnp.ones((8, 4)), P("data", "data"))
        g = ap.Graph()
        with pytest.raises(ap.GraphError, match="sharded placeholder needs a known shape"):
            g.placeholder((None, 4), sharding=P("data"))


# --- ap.shard on arrays, under jit, grad and vmap ------------------------------------------------

@pytest.mark.parametrize("mesh", [AUTO, EXPLICIT], ids=["auto", "explicit"])
def test_shard_on_arrays_and_in_jax_transformations(mesh: Any) -> None:
    a = normal(8, 4)
    with ap.mesh(mesh):
        out = ap.shard(a, P("data", "model"))
        assert out.sharding.spec == P("data", "model")
        np.testing.assert_array_equal(out, a)

        def f(v: Any) -> Any:
            return ap.sum(ap.square(ap.shard(v * 2.0, P("data"))))

        np.testing.assert_allclose(jax.jit(f)(a), np.sum((2 * a) ** 2), rtol=1e-5)
        np.testing.assert_allclose(jax.grad(f)(a), 8 * a, rtol=1e-5)
        batched = jax.vmap(lambda v: ap.shard(v, P("model")))(a)
        assert batched.sharding.spec == P(None, "model")  # the batch dim stays unsharded


# --- graphs: values, propagation shown, explained -----------------------------------------------

@pytest.mark.parametrize("mesh", [AUTO, EXPLICIT], ids=["auto", "explicit"])
@pytest.mark.parametrize("specs", [(P("data"), None, None),
                                   (None, P(None, "model"), P("model", None)),
                                   (P("data"), P(None, "model"), P("model", None))],
                         ids=["data", "megatron", "both"])
def test_sharded_graphs_compute_the_unsharded_values(mesh: Any, specs: Any) -> None:
    g, outs, feed = mlp(mesh, *specs, wrt_x=True)
    got = g.run(outs, feed)
    for a, b in zip(got, unsharded(outs, feed)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    x = next(iter(feed))
    if specs[0] is not None:  # the fed value was put in the placeholder's sharding
        assert got[-1].shape == x.shape


def test_the_graph_text_shows_propagated_shardings() -> None:
    g, outs, _ = mlp(AUTO, P("data"), None, P(None, "model"))
    text = g.to_text(outs)
    assert "x:f32[64@data,16]" in text and "w1:f32[32,8@model]" in text
    h = outs[0].node.inputs[0].node.inputs[0]  # sum <- square <- matmul(h, w1)
    assert g.sharding(outs).type_text(h) == "f32[64@data,8@model]"
    dot = g.to_dot(outs)
    assert 'color="#1f77b4"' in dot and "64@data" in dot
    svg = to_svg(g, outs)
    assert "f32[64@data,16]" in svg and 'stroke="#1f77b4"' in svg
    plain = ap.Graph()
    with plain:
        y = ap.sin(plain.placeholder((3,)))
    assert "@" not in plain.to_text([y])  # unsharded graphs print as before
    assert "#1f77b4" not in to_svg(plain, [y])


def test_explain_sharding_names_the_chain() -> None:
    g, outs, _ = mlp(AUTO, P("data"), None, None)
    text = g.explain_sharding(outs[0].node.inputs[0])  # the reduce_sum's input: square
    lines = text.splitlines()
    assert lines[0].endswith("<- mul rule") or "rule" in lines[0]
    assert "x: f32[64@data,16] <- sharding= of the input" in text
    assert "dot_general rule" in text and "tanh rule" in text
    assert "w0" not in text  # replicated inputs decided nothing


def test_a_sharding_conflict_is_shown_or_raised() -> None:
    g = ap.Graph()
    with ap.mesh(AUTO), g:
        a = ap.placeholder((8, 4), sharding=P("data"), name="a")
        b = ap.placeholder((8, 4), sharding=P("model"), name="b")
        c = ap.add(a, b)
    prop = g.sharding([c])
    ((node, why),) = prop.conflicts
    assert node is c.node and "a and b" in why and "ap.shard(a" in why
    assert "sharding conflict" in g.to_text([c])
    with pytest.raises(ShardingConflictError, match="a and b meet at"):
        g.sharding([c], strict=True)
    va, vb = normal(8, 4), normal(8, 4)
    np.testing.assert_allclose(g.run(c, {a: va, b: vb}), va + vb)  # XLA reshards: still right


# --- collectives: predicted per node, checked against the compiled HLO ---------------------------

def check_predictions(g: ap.Graph, outs: list[Any], feed: dict[Any, Any]) -> Any:
    predicted = g.predicted_collectives(outs)
    measured = ap.collectives(g.lower(outs, feed).compile())
    return predicted, measured, ap.compare_collectives(predicted, measured)


def test_data_parallel_gradients_are_one_all_reduce_per_weight() -> None:
    g, outs, feed = mlp(AUTO, P("data"), None, None)
    predicted, measured, check = check_predictions(g, outs, feed)
    assert check.ok, check.table()
    assert {(p.kind, p.axes) for p in predicted} == {("all-reduce", ("data",))}
    weight_bytes = (16 * 32 + 32 * 8) * 4
    assert sum(p.nbytes for p in predicted) == weight_bytes + 4  # + the loss's partial sum
    assert measured.total_bytes == weight_bytes + 4
    grad_w0 = outs[1].node.inputs[0].name  # the transpose's input: the contraction
    assert any(p.node == grad_w0 for p in predicted)
    assert all(any(m.node for m in match.predicted) for match in check.matched)


def test_megatron_needs_one_all_reduce_forward_and_its_dual_backward() -> None:
    g, outs, feed = mlp(AUTO, None, P(None, "model"), P("model", None), wrt_x=True)
    predicted, measured, check = check_predictions(g, outs, feed)
    assert check.ok, check.table()
    assert [(p.kind, p.axes, p.nbytes) for p in predicted] == [
        ("all-reduce", ("model",), 64 * 8 * 4),     # h @ w1: partial sums over model
        ("all-reduce", ("model",), 64 * 16 * 4)]    # d x: its dual in the backward pass


def test_reshards_predict_all_gather_and_all_to_all() -> None:
    g = ap.Graph()
    with ap.mesh(AUTO), g:
        x = ap.placeholder((16, 8), sharding=P("data"), name="x")
        gathered = ap.sin(ap.shard(ap.exp(x), P()))
        moved = ap.cos(ap.shard(ap.exp(x), P(None, "data")))
    feed = {x: normal(16, 8)}
    predicted, _, check = check_predictions(g, [gathered, moved], feed)
    assert {(p.kind, p.nbytes) for p in predicted} == {("all-gather", 16 * 8 * 4),
                                                       ("all-to-all", 8 * 8 * 4)}
    assert check.ok, check.table()
    out = g.run([gathered, moved], feed)
    np.testing.assert_allclose(out[0], jnp.sin(jnp.exp(feed[x])), rtol=1e-5)
    np.testing.assert_allclose(out[1], jnp.cos(jnp.exp(feed[x])), rtol=1e-5)


def test_the_comparison_fails_when_the_prediction_is_wrong() -> None:
    g, outs, feed = mlp(AUTO, P("data"), None, None)
    wrong_graph, wrong_outs, _ = mlp(AUTO, None, P(None, "model"), P("model", None))
    measured = ap.collectives(g.lower(outs, feed).compile())
    check = ap.compare_collectives(wrong_graph.predicted_collectives(wrong_outs), measured)
    assert not check.ok and check.missing and check.unexpected


# --- exports keep shardings, and lower for platforms not present ---------------------------------

def test_a_sharded_export_keeps_shardings_and_round_trips() -> None:
    g, outs, feed = mlp(AUTO, P("data"), None, None)
    exported = g.export(outs, feed)
    x_sharding = exported.in_shardings_jax(AUTO)[0]
    assert isinstance(x_sharding, NamedSharding) and tuple(x_sharding.spec) == ("data", None)
    assert exported.nr_devices == 8
    restored = jax.export.deserialize(exported.serialize())
    for a, b in zip(restored.call(*on_mesh(feed)), g.run(outs, feed)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_an_export_lowers_for_cpu_cuda_and_tpu() -> None:
    g, outs, feed = mlp(AUTO, P("data"), None, None)
    exported = g.export(outs, feed, platforms=("cpu", "cuda", "tpu"))
    assert exported.platforms == ("cpu", "cuda", "tpu")
    restored = jax.export.deserialize(exported.serialize())
    np.testing.assert_allclose(restored.call(*on_mesh(feed))[0], g.run(outs[0], feed),
                               rtol=1e-6)


def on_mesh(feed: dict[Any, Any]) -> list[Any]:
    """The MLP's inputs on the 8 devices: x split over data, the weights replicated (an
    export for 8 devices is called with arguments on 8 devices)."""
    return [jax.device_put(v, NamedSharding(AUTO, P("data") if i == 0 else P()))
            for i, v in enumerate(feed.values())]


def test_an_axis_of_one_device_predicts_no_collective() -> None:
    one = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))
    g = ap.Graph()
    with ap.mesh(one), g:
        x = ap.placeholder((8, 4), sharding=P("data"), name="x")
        s = ap.sum(x)
    assert g.predicted_collectives([s]) == []
    measured = ap.collectives(g.lower([s], {x: normal(8, 4)}).compile())
    assert ap.compare_collectives([], measured).ok and not measured.rows


def test_a_contraction_split_on_one_side_gathers_that_operand() -> None:
    g = ap.Graph()
    with ap.mesh(AUTO), g:
        x = ap.placeholder((64, 16), sharding=P("data"), name="x")  # rows split, replicated k
        w = ap.placeholder((16, 32), sharding=P("model"), name="w")  # contracted dim split
        y = ap.sin(ap.matmul(x, w))
    feed = {x: normal(64, 16), w: normal(16, 32)}
    predicted, _, check = check_predictions(g, [y], feed)
    assert [(p.kind, p.axes, p.nbytes) for p in predicted] == [
        ("all-gather", ("model",), 16 * 32 * 4)]  # w gathered whole on every device
    assert check.ok, check.table()
    np.testing.assert_allclose(g.run(y, feed), jnp.sin(feed[x] @ feed[w]), rtol=1e-4, atol=1e-6)


def test_the_mesh_scope_is_per_thread_and_shard_is_recorded_by_tapes() -> None:
    import threading

    seen: dict[str, Any] = {}
    inside, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with ap.mesh(AUTO):
            seen["holder"] = ap.current_mesh()
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(30)
    seen["other"] = ap.current_mesh()  # another thread does not see the block's mesh
    leave.set()
    t.join()
    assert seen["holder"] is AUTO and seen["other"] is None
    x = jnp.asarray(normal(8, 4))
    with ap.mesh(AUTO), ap.GradientTape() as tape:
        tape.watch(x)
        y = ap.sum(ap.square(ap.shard(x, P("data"))))
    grad = tape.gradient(y, x)
    np.testing.assert_allclose(grad, 2 * np.asarray(x), rtol=1e-6)  # recorded, differentiated


def test_collectives_name_the_users_line_that_built_their_node() -> None:
    mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
    g = ap.Graph()
    with g, ap.mesh(mesh):
        x = ap.placeholder((64, 16), name="x", sharding=P("d"))
        w = ap.placeholder((16, 4), name="w")
        col = ap.sum(ap.matmul(x, w), axis=0); line = inspect.currentframe().f_lineno  # noqa: E702
    here = f"{os.path.basename(__file__)}:{line}"
    assert col.node.source == here and x.node.source != here
    feed = {x: normal(64, 16), w: normal(16, 4)}
    found = ap.collectives(g.lower([col], feed).compile())
    assert [(r.kind, r.source) for r in found.rows] == [("all-reduce", here)]
    plan = ap.plan_sharding(g, mesh, outputs=[col], fixed={x: P("d"), w: P()})
    assert here in plan.table()
