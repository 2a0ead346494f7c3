"""Derivatives of max/min (binary and reductions): jax.grad's tie and NaN semantics, and a
derivative that survives XLA recomputing an operand differently in two fusions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin._primitive import get_primitive

PAIRS = [  # (x, y): a win each way, a tie, signed zeros, a NaN on either side, infinities
    (np.float32(2.0), np.float32(1.0)), (np.float32(-1.0), np.float32(3.0)),
    (np.float32(1.5), np.float32(1.5)), (np.float32(-0.0), np.float32(0.0)),
    (np.float32(np.nan), np.float32(1.0)), (np.float32(1.0), np.float32(np.nan)),
    (np.float32(np.inf), np.float32(np.inf)), (np.float32(-np.inf), np.float32(0.0)),
]


@pytest.mark.parametrize(("ap_fn", "jnp_fn"), [(ap.maximum, jnp.maximum),
                                               (ap.minimum, jnp.minimum)])
@pytest.mark.parametrize(("x", "y"), PAIRS)
def test_binary_extremum_gradients_equal_jax_grad(ap_fn, jnp_fn, x, y) -> None:
    got = jax.grad(lambda a, b: ap_fn(a, b), argnums=(0, 1))(x, y)
    want = jax.grad(lambda a, b: jnp_fn(a, b), argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


ROWS = np.array([[[1.0, 3.0, 3.0, -2.0], [0.5, 0.5, 0.5, 0.5]],
                 [[np.nan, 1.0, 2.0, 0.0], [-np.inf, -np.inf, 4.0, 7.0]]], np.float32)


@pytest.mark.parametrize(("ap_fn", "jnp_fn"), [(ap.max, jnp.max), (ap.min, jnp.min)])
@pytest.mark.parametrize("axis", [2, 1, (0, 2), None])
def test_reduced_extremum_gradients_share_ties_as_jax_grad(ap_fn, jnp_fn, axis) -> None:
    def grad(fn, jit=False):  # a cotangent of distinct entries so each location's share shows
        def vjp(a):
            out, back = jax.vjp(lambda b: fn(b, axis=axis), a)
            return back(jnp.arange(1, 1 + out.size, dtype=out.dtype).reshape(out.shape))[0]
        return (jax.jit(vjp) if jit else vjp)(ROWS)

    for jit in (False, True):  # under jit XLA drops the NaN of 0/0 for both (a NaN row)
        np.testing.assert_allclose(np.asarray(grad(ap_fn, jit)), np.asarray(grad(jnp_fn, jit)),
                                   rtol=1e-6)


@pytest.mark.parametrize(("name", "pick"), [("reduce_max", np.argmax), ("reduce_min", np.argmin)])
def test_a_result_that_misses_every_location_falls_back_to_the_first_extremum(name, pick
                                                                              ) -> None:
    # XLA may compute the reduced value from one recomputation of x (say with a fused
    # multiply-add) and compare with another: simulate it with a result one ulp off
    x = jnp.asarray([[0.3, 2.0, -1.0], [4.0, 4.0, 1.0]], jnp.float32)
    exact = get_primitive(name).bind(x, axes=(1,))
    off = jnp.nextafter(exact, jnp.float32(np.inf))
    (jvp,) = get_primitive(name).jvp
    g = jnp.asarray([[1.0, 10.0, 100.0], [1.0, 10.0, 100.0]], jnp.float32)
    tangent = np.asarray(jvp(g, off, x, axes=(1,)))
    first = pick(np.asarray(x), axis=1)
    np.testing.assert_array_equal(tangent, np.asarray(g)[np.arange(2), first])
    # the exact result keeps jax.grad's shares at ties (row 1 of the max: two 4.0s)
    shares = np.asarray(jvp(g, exact, x, axes=(1,)))
    want = jax.jvp(lambda a: (jnp.max if name == "reduce_max" else jnp.min)(a, axis=1),
                   (x,), (g,))[1]
    np.testing.assert_allclose(shares, np.asarray(want), rtol=1e-6)


def test_a_nan_extremum_keeps_jax_grads_nan_and_needs_no_fallback() -> None:
    x = jnp.asarray([[np.nan, 1.0, 2.0]], jnp.float32)
    (jvp,) = get_primitive("reduce_max").jvp
    tangent = jvp(jnp.ones_like(x), get_primitive("reduce_max").bind(x, axes=(1,)), x, axes=(1,))
    assert np.isnan(np.asarray(tangent)).all()


@pytest.mark.parametrize("name", ["max", "min"])
def test_binary_extremum_weights_do_not_read_the_result(name) -> None:
    # a result one ulp off (computed from another recomputation of an operand) loses nothing
    x = jnp.asarray([0.3, 2.0, 1.0, 4.0], jnp.float32)
    y = jnp.asarray([1.0, -2.0, 1.0, 5.0], jnp.float32)
    off = jnp.nextafter(get_primitive(name).bind(x, y), jnp.float32(np.inf))
    dx, dy = (np.asarray(rule(jnp.ones_like(x), off, x, y)) for rule in get_primitive(name).jvp)
    np.testing.assert_array_equal(dx + dy, np.ones(4, np.float32))
    want = jax.grad(lambda a, b: jnp.sum((jnp.maximum if name == "max" else jnp.minimum)(a, b)),
                    argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(dx, np.asarray(want[0]))
