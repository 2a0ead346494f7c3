"""Eager basic indexing (`v[i]`, slices, None, ...) of variables and eager tensors.

Values and gradients against jax.numpy / jax.grad; index values are runtime operands, so
indexing with many different integers compiles a bounded number of executables, and a tape's
structure does not change with the index. Graph tensors keep the static slice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin.eager import program
from adplugin.primitives.indexing import take_p
from adplugin.primitives.shape import reshape_p, slice_p

X = np.arange(60, dtype=np.float32).reshape(4, 5, 3) / 7.0
KEYS = [
    1, -1, -4, (2, 3), (-1, -2, 0), (1, slice(None), 2), slice(1, 3), slice(-3, None),
    slice(None, -1), slice(3, 1), slice(None, 100), (slice(1, 3), 4), (Ellipsis, 1),
    (Ellipsis, slice(0, 2)), (None, 2), (1, None, slice(2, 4), None), (Ellipsis, None),
    (2, Ellipsis, -1), (), Ellipsis, (slice(None), slice(None), slice(None)),
]


def executables() -> int:
    """Eager executables of the indexing primitives compiled so far."""
    return sum(fn._cache_size() for p in (take_p, slice_p, reshape_p)
               for fn in p.jax_primitive.impl.cache.values())


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_values_equal_jnp(key):
    want = np.asarray(jnp.asarray(X)[key])
    for value in (ap.Variable(X), ap.constant(X)):
        got = value[key]
        assert np.shape(got) == want.shape
        np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_gradient_inside_a_tape_equals_jax_grad(key):
    weights = np.linspace(-1.0, 2.0, np.asarray(X[key]).size, dtype=np.float32)
    weights = weights.reshape(np.shape(X[key]))

    def f_jnp(x):
        return jnp.sum(jnp.sin(x[key]) * weights)

    want = jax.grad(f_jnp)(jnp.asarray(X))
    v = ap.Variable(X)
    with ap.GradientTape() as tape:
        y = ap.sum(ap.multiply(ap.sin(v[key]), weights))
    np.testing.assert_allclose(float(y), float(f_jnp(jnp.asarray(X))), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tape.gradient(y, v)), np.asarray(want), rtol=1e-6)

    c = ap.constant(X)  # a watched eager constant, as tf.constant
    with ap.GradientTape() as tape:
        tape.watch(c)
        y = ap.sum(ap.multiply(ap.sin(c[key]), weights))
    np.testing.assert_allclose(np.asarray(tape.gradient(y, c)), np.asarray(want), rtol=1e-6)


def test_nested_indexing_and_second_order():
    v = ap.Variable(X)
    with ap.GradientTape() as outer:
        with ap.GradientTape() as inner:
            y = ap.sum(ap.square(v[1][2:4][-1]) * v[0, 0, 0])
        g = inner.gradient(y, v)
        gg = ap.sum(g[1])
    want_g = jax.grad(lambda x: jnp.sum(jnp.square(x[1][2:4][-1]) * x[0, 0, 0]))
    np.testing.assert_allclose(np.asarray(g), np.asarray(want_g(jnp.asarray(X))), rtol=1e-6)
    want_gg = jax.grad(lambda x: jnp.sum(want_g(x)[1]))(jnp.asarray(X))
    np.testing.assert_allclose(np.asarray(outer.gradient(gg, v)), np.asarray(want_gg),
                               rtol=1e-5)


def test_many_indices_compile_a_bounded_number_of_executables():
    rows = np.random.default_rng(1).standard_normal((80, 6)).astype(np.float32)
    v = ap.Variable(rows)
    np.testing.assert_array_equal(np.asarray(v[0]), rows[0])  # warm
    np.testing.assert_array_equal(np.asarray(v[1:3]), rows[1:3])
    before = executables()
    for i in range(50):
        np.testing.assert_array_equal(np.asarray(v[i]), rows[i])
        np.testing.assert_array_equal(np.asarray(v[-i - 1]), rows[-i - 1])
        np.testing.assert_array_equal(np.asarray(v[i, i % 6]), rows[i, i % 6])
        np.testing.assert_array_equal(np.asarray(v[i + 1:i + 3]), rows[i + 1:i + 3])
    assert executables() - before <= 2


def test_many_indices_inside_a_tape_share_one_structure():
    rows = np.random.default_rng(2).standard_normal((60, 4)).astype(np.float32)
    v = ap.Variable(rows)

    def grad_of_row(i):
        with ap.GradientTape() as tape:
            y = ap.sum(ap.square(v[i]))
        return np.asarray(tape.gradient(y, v))

    grad_of_row(0)
    grad_of_row(1)
    programs = len(program._PROGRAMS)
    for i in range(2, 52):
        want = np.zeros_like(rows)
        want[i] = 2 * rows[i]
        np.testing.assert_allclose(grad_of_row(i), want, rtol=1e-6)
    assert len(program._PROGRAMS) - programs <= 2


def test_graph_tensors_keep_the_static_slice():
    with ap.Graph() as g:
        p = ap.placeholder((4, 5, 3), np.float32, name="p")
        y = p[1, 2:4]
    ops = [n.op_name for n in g.nodes]
    assert "slice" in ops and "take" not in ops
    np.testing.assert_array_equal(np.asarray(g.run(y, {p: X})), X[1, 2:4])


def test_inside_ap_function_and_jit():
    v = ap.Variable(X)

    @ap.function
    def row(i_static):
        return v[i_static, 1:3]

    np.testing.assert_array_equal(np.asarray(row(2)), X[2, 1:3])
    np.testing.assert_array_equal(np.asarray(row(-1)), X[-1, 1:3])
    out = jax.jit(lambda: v[1, -2:])()  # inside a JAX trace: the static slice
    np.testing.assert_array_equal(np.asarray(out), X[1, -2:])
    jaxpr = str(jax.make_jaxpr(lambda: v[1, -2:])())
    assert "slice" in jaxpr and "take" not in jaxpr


@pytest.mark.parametrize("key, error", [
    (4, "out of range"), (-5, "out of range"), ((0, 0, 0, 0), "indices for an array of rank"),
    (slice(None, None, 2), "unit-step"), ((Ellipsis, Ellipsis), "at most one Ellipsis"),
    (np.array([1, 2]), "unsupported index"), (True, "unsupported index"),
])
def test_errors(key, error):
    with pytest.raises(IndexError, match=error):
        ap.Variable(X)[key]
