"""Training on sharded variables (8 host devices): `Variable(..., sharding=P(...))` keeps its
sharding through assignments, tape steps, `ap.function` steps and graph (TF1) steps; the
optimizer's state is sharded like its variable; the values equal the unsharded run."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adplugin as ap

MESHES = {
    "auto": jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2),
    "explicit": jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2),
}
rng = np.random.default_rng(1)
W0, W1, X = (rng.standard_normal(s).astype(np.float32) for s in ((16, 32), (32, 8), (64, 16)))
COLUMNS, ROWS = P(None, "model"), P("model", None)


def train(mesh: Any, sharded: bool, compiled: bool, steps: int = 3
          ) -> tuple[float, ap.Variable, ap.Variable, Any]:
    """A Megatron-sharded (or unsharded) two-layer MLP trained with Adam under a tape."""
    with ap.mesh(mesh):
        w0 = ap.Variable(W0, sharding=COLUMNS if sharded else None, name="w0")
        w1 = ap.Variable(W1, sharding=ROWS if sharded else None, name="w1")
        x = jax.device_put(X, NamedSharding(mesh, P("data"))) if sharded else X
        opt = ap.optimizers.Adam(0.01)

        def step(x: Any) -> Any:
            with ap.GradientTape() as tape:
                loss = ap.mean(ap.square(ap.matmul(ap.tanh(ap.matmul(x, w0)), w1)))
            opt.apply_gradients(zip(tape.gradient(loss, [w0, w1]), [w0, w1]))
            return loss

        run = ap.function(step) if compiled else step
        for _ in range(steps):
            loss = run(x)
    return float(loss), w0, w1, opt


@pytest.mark.parametrize("compiled", [False, True], ids=["tape", "function"])
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_training_keeps_shardings_and_values(mesh: str, compiled: bool) -> None:
    loss, w0, w1, opt = train(MESHES[mesh], True, compiled)
    ref_loss, r0, r1, _ = train(MESHES[mesh], False, compiled)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    # Adam divides by sqrt(nu): a near-zero gradient summed in another order moves a weight
    # by up to ~1e-5 per step; a step not taken would move it by lr = 1e-2
    np.testing.assert_allclose(w0.value, r0.value, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(w1.value, r1.value, rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(w0.value) - W0).max() > 1e-2  # the steps happened
    assert w0.value.sharding.spec == COLUMNS and w1.value.sharding.spec == ROWS
    moments = [leaf for leaf in jax.tree.leaves(opt._slots[w0]._stored)
               if leaf.shape == w0.shape]
    assert len(moments) == 2  # Adam's mu and nu, sharded like w0
    assert all(m.sharding.spec == COLUMNS for m in moments)


def test_assign_keeps_the_sharding() -> None:
    with ap.mesh(MESHES["auto"]):
        v = ap.Variable(np.zeros((8, 4), np.float32), sharding=P("data"))
    assert v.sharding.spec == P("data", None) and v.value.sharding.spec == P("data", None)
    v.assign(np.ones((8, 4), np.float32))  # a host value: put back in the sharding
    assert v.value.sharding.spec == P("data", None)
    v.assign_add(1.0)
    assert v.value.sharding.spec == P("data", None)
    np.testing.assert_array_equal(v.value, np.full((8, 4), 2.0))


def test_sharded_variables_in_graphs_propagate_and_train() -> None:
    mesh = MESHES["auto"]
    with ap.mesh(mesh):
        w = ap.Variable(W0, sharding=COLUMNS, name="w")
        g = ap.Graph()
        with g:
            x = ap.placeholder((64, 16), sharding=P("data"), name="x")
            h = ap.tanh(ap.matmul(x, w))
            loss = ap.mean(ap.square(h))
            train_op = ap.optimizers.SGD(0.1).minimize(loss)
    assert "w:f32[16,32@model]" in g.to_text([h])
    assert g.sharding([h]).type_text(h) == "f32[64@data,32@model]"
    before = np.asarray(w.value)
    g.run(train_op, {x: X})
    assert w.value.sharding.spec == COLUMNS
    grad = jax.grad(lambda w: jax.numpy.mean(jax.numpy.square(jax.numpy.tanh(X @ w))))(before)
    np.testing.assert_allclose(w.value, before - 0.1 * grad, rtol=1e-5, atol=1e-6)


def test_a_variable_takes_a_device_or_a_sharding_not_both() -> None:
    with ap.mesh(MESHES["auto"]), pytest.raises(ap.MeshError, match="both a device and a "
                                                                    "sharding"):
        ap.Variable(np.zeros(8, np.float32), device="cpu:0", sharding=P("data"))
    with pytest.raises(ap.MeshError, match="needs a device mesh"):
        ap.Variable(np.zeros(8, np.float32), sharding=P("data"))


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_gradients_are_sharded_like_their_sources(mesh: str) -> None:
    with ap.mesh(MESHES[mesh]):
        w = ap.Variable(W0, sharding=COLUMNS, name="w")
        x = jax.device_put(X, NamedSharding(MESHES[mesh], P("data")))
        for _ in range(3):  # interpreted, then compiled: the same sharding
            with ap.GradientTape() as tape:
                loss = ap.sum(ap.square(ap.tanh(ap.matmul(x, w))))
            grad = tape.gradient(loss, w)
            assert tuple(grad.sharding.spec) == tuple(COLUMNS)
        g = ap.Graph()
        with g:
            xp = ap.placeholder((64, 16), sharding=P("data"), name="x")
            (gx,) = ap.gradients(ap.sum(ap.square(ap.matmul(xp, W0))), [xp])
    assert gx.node.op_name == "shard"  # the cotangent takes its input's sharding
    assert g.sharding([gx]).type_text(gx) == "f32[64@data,16]"
    assert tuple(g.run(gx, {xp: X}).sharding.spec) == ("data", None)
    ref = jax.grad(lambda v: jax.numpy.sum(jax.numpy.square(jax.numpy.tanh(X @ v))))(W0)
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)
