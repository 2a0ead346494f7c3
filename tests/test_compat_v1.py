"""TensorFlow 1 programs: placeholders of unknown shape, variables in graphs, minimize in a
graph, `adplugin.compat.v1`, and the two TF1 example programs."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _examples import EXAMPLES, ROOT, load_example

import adplugin as ap
import adplugin.compat.v1 as tf
from adplugin.ir import deferred

tf1_gradients = load_example("tf1_gradients")
tf1_linear_regression = load_example("tf1_linear_regression")


def _quiet(*args: Any) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# The example programs
# ----------------------------------------------------------------------------------------------

def test_tf1_gradients_example_computes_72_54_24() -> None:
    assert tf1_gradients.run(2.0, 3.0, emit=_quiet) == {"f": 72.0, "df_da": 54.0,
                                                        "d2f_dadb": 24.0}
    # other points: f = 2ab² + 3a²b, df/da = 2b² + 6ab, d²f/da db = 4b + 6a
    a, b = -1.5, 0.5
    out = tf1_gradients.run(a, b, emit=_quiet)
    assert out["f"] == pytest.approx(2 * a * b**2 + 3 * a**2 * b)
    assert out["df_da"] == pytest.approx(2 * b**2 + 6 * a * b)
    assert out["d2f_dadb"] == pytest.approx(4 * b + 6 * a)


def _numpy_sgd(W: float, b: float, epochs: int, lr: float) -> tuple[float, float]:
    """Per-sample gradient descent on (Wx + b - y)² / (2n), float64, as the program runs."""
    x_all = np.asarray(tf1_linear_regression.TRAIN_X)
    y_all = np.asarray(tf1_linear_regression.TRAIN_Y)
    n = len(x_all)
    for _ in range(epochs):
        for x, y in zip(x_all, y_all):
            r = W * x + b - y
            W, b = W - lr * r * x / n, b - lr * r / n
    return W, b


def _cost(W: float, b: float) -> float:
    x = np.asarray(tf1_linear_regression.TRAIN_X)
    y = np.asarray(tf1_linear_regression.TRAIN_Y)
    return float(np.sum((W * x + b - y) ** 2) / (2 * len(x)))


def test_tf1_linear_regression_matches_numpy_sgd_and_approaches_least_squares() -> None:
    out = tf1_linear_regression.run(1000, 250, 0.01, seed=0, emit=_quiet)
    np.random.seed(0)
    assert (out["W0"], out["b0"]) == pytest.approx((np.random.randn(), np.random.randn()),
                                                   rel=1e-6)
    W, b = _numpy_sgd(out["W0"], out["b0"], 1000, 0.01)
    assert out["W"] == pytest.approx(W, rel=1e-4)
    assert out["b"] == pytest.approx(b, rel=1e-4)
    assert out["cost"] == pytest.approx(_cost(W, b), rel=1e-4)
    # the cost falls towards the least-squares minimum, and never below it
    W_ls, b_ls = np.polyfit(tf1_linear_regression.TRAIN_X, tf1_linear_regression.TRAIN_Y, 1)
    best = _cost(W_ls, b_ls)
    assert all(h1 > h2 for h1, h2 in zip(out["history"], out["history"][1:]))
    assert best <= out["cost"] < 1.03 * best
    assert out["history"][0] - best > 5 * (out["cost"] - best)


@pytest.mark.parametrize("script,expected", [
    ("tf1_gradients.py", ["f = 72.0", "df/da = 54.0", "d2f/dadb = 24.0"]),
    ("tf1_linear_regression.py", ["Epoch: 0020 cost=", "Optimization Finished!",
                                  "Training cost="]),
])
def test_tf1_example_scripts_run(script: str, expected: list[str]) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--small"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in expected:
        assert line in done.stdout


# ----------------------------------------------------------------------------------------------
# Placeholders with unknown dimensions or rank
# ----------------------------------------------------------------------------------------------

def test_unknown_rank_placeholder_fed_a_scalar_then_a_vector() -> None:
    with ap.Graph() as g:
        x = ap.placeholder(None, name="x")
        y = ap.sum(ap.square(x) * 3.0 + 1.0)
        (dy,) = ap.gradients(y, [x])
    assert isinstance(x, deferred.DeferredTensor) and x.shape is None
    assert y.dtype == np.float32
    for value in (np.float32(2.0), np.arange(4, dtype=np.float32),
                  np.ones((2, 3), np.float32)):
        got_y, got_dy = g.run([y, dy], {x: value})
        want_y, want_dy = jax.value_and_grad(lambda v: jnp.sum(3 * v**2 + 1))(value)
        np.testing.assert_allclose(got_y, want_y, rtol=1e-6)
        np.testing.assert_allclose(got_dy, want_dy, rtol=1e-6)
        assert np.shape(got_dy) == np.shape(value)


def test_partially_known_shape_broadcasts_with_known_tensors() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((None, 3), name="x")
        w = ap.placeholder((3, 2), name="w")
        out = ap.tanh(ap.matmul(x, w))
        mean = ap.mean(out, axis=0)
    assert x.shape == (None, 3)
    w_value = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    for rows in (1, 4, 7):
        x_value = np.linspace(-1, 1, rows * 3, dtype=np.float32).reshape(rows, 3)
        got = g.run(mean, {x: x_value, w: w_value})
        np.testing.assert_allclose(got, np.tanh(x_value @ w_value).mean(0), rtol=1e-5)
    with pytest.raises(ap.GraphError, match="wrong shape fed for x"):
        g.run(mean, {x: np.zeros((2, 4), np.float32), w: w_value})
    with pytest.raises(ap.GraphError, match="not fed"):
        g.run(mean, {w: w_value})


def test_specializations_are_cached_and_bounded() -> None:
    with ap.Graph() as g:
        x = ap.placeholder([None], name="x")
        y = ap.sum(x * x)
    cache = deferred.specializations(g)
    for n in range(1, 3 * deferred.SPECIALIZATIONS_PER_GRAPH):
        value = np.arange(n, dtype=np.float32)
        assert float(g.run(y, {x: value})) == pytest.approx(float(np.sum(value**2)))
        assert len(cache) <= deferred.SPECIALIZATIONS_PER_GRAPH
    assert len(cache) == deferred.SPECIALIZATIONS_PER_GRAPH
    before = cache.values()[-1]
    g.run(y, {x: np.arange(3 * deferred.SPECIALIZATIONS_PER_GRAPH - 1, dtype=np.float32)})
    assert cache.values()[-1] is before  # the same shape again: the same specialization


def test_deferred_gradient_of_an_unreached_source_is_none() -> None:
    with ap.Graph():
        x = ap.placeholder(None, name="x")
        z = ap.placeholder(None, name="z")
        y = ap.exp(x)
        assert ap.gradients(y, [x, z])[1] is None
        zero = ap.gradients(y, [z], unconnected_gradients="zero")[0]
    assert zero is not None


def test_placeholder_outside_a_graph_raises() -> None:
    with pytest.raises(ap.GraphError, match="placeholder"):
        ap.placeholder(None)


# ----------------------------------------------------------------------------------------------
# Variables in graphs
# ----------------------------------------------------------------------------------------------

def test_graph_reads_see_assignments_between_runs() -> None:
    v = ap.Variable(1.0, name="v")
    with ap.Graph() as g:
        y = ap.multiply(v, 2.0)
        bump = v.assign(ap.add(v, 1.0))
    assert float(g.run(y)) == 2.0
    v.assign(3.0)  # an eager assignment between runs
    assert float(g.run(y)) == 6.0
    # a run sees the values from before its own assignments
    got_y, got_bump = g.run([y, bump])
    assert (float(got_y), float(got_bump)) == (6.0, 4.0)
    assert float(v.numpy()) == 4.0
    assert float(g.run(y)) == 8.0


def test_graph_assignment_with_unknown_shapes() -> None:
    v = ap.Variable(np.zeros(3, np.float32), name="acc")
    with ap.Graph() as g:
        x = ap.placeholder(None, name="x")
        acc = v.assign(ap.add(v, x))
    g.run(acc, {x: 2.0})
    g.run(acc, {x: np.arange(3, dtype=np.float32)})
    np.testing.assert_allclose(v.numpy(), [2.0, 3.0, 4.0])


# ----------------------------------------------------------------------------------------------
# minimize in a graph
# ----------------------------------------------------------------------------------------------

def _loss(params: dict[str, Any], x: Any, y: Any) -> Any:
    return jnp.mean((params["w"] * x + params["b"] - y) ** 2)


_X = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
_Y = np.array([1.0, 0.0, 2.5, 4.0], np.float32)


def _graph_loss(w: ap.Variable, b: ap.Variable) -> tuple[Any, Any, Any]:
    x, y = tf.placeholder("float"), tf.placeholder("float", shape=[None])
    return x, y, tf.reduce_mean(tf.square(tf.add(tf.multiply(x, w), b) - y))


def _by_hand(transform: Any, steps: int) -> dict[str, Any]:
    params = {"w": jnp.float32(0.3), "b": jnp.float32(-0.2)}
    state = transform.init(params)
    for _ in range(steps):
        grads = jax.grad(_loss)(params, _X, _Y)
        updates, state = transform.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("make,reference", [
    (lambda: tf.train.GradientDescentOptimizer(0.1), lambda: optax.sgd(0.1)),
    (lambda: tf.train.AdamOptimizer(0.05), lambda: optax.adam(0.05, eps=1e-8)),
])
def test_minimize_in_a_graph_matches_optax_steps(make: Any, reference: Any) -> None:
    tf.reset_default_graph()
    w, b = tf.Variable(0.3, name="w"), tf.Variable(-0.2, name="b")
    x, y, loss = _graph_loss(w, b)
    step = make().minimize(loss)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        for _ in range(4):
            assert sess.run(step, feed_dict={x: _X, y: _Y}) is None
        final = sess.run(loss, feed_dict={x: _X, y: _Y})
    want = _by_hand(reference(), 4)
    np.testing.assert_allclose([w.numpy(), b.numpy()], [want["w"], want["b"]], rtol=2e-5)
    np.testing.assert_allclose(final, _loss(want, _X, _Y), rtol=2e-5)


def test_ap_optimizer_minimize_on_a_graph_tensor() -> None:
    w, b = ap.Variable(0.3, name="w"), ap.Variable(-0.2, name="b")
    with ap.Graph() as g:
        x, y = ap.placeholder((4,), name="x"), ap.placeholder((4,), name="y")
        loss = ap.mean(ap.square(w * x + b - y))
        opt = ap.optimizers.SGD(0.1)
        step = opt.minimize(loss)
    for _ in range(3):
        g.run(step, {x: _X, y: _Y})
    want = _by_hand(optax.sgd(0.1), 3)
    np.testing.assert_allclose([w.numpy(), b.numpy()], [want["w"], want["b"]], rtol=2e-5)
    assert opt.iterations == 3


def test_minimize_with_global_step_and_var_list() -> None:
    tf.reset_default_graph()
    w, b = tf.Variable(0.3, name="w"), tf.Variable(-0.2, name="b")
    counter = tf.Variable(0, trainable=False, name="global_step")
    x, y, loss = _graph_loss(w, b)
    step = tf.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=counter,
                                                           var_list=[w])
    with tf.Session() as sess:
        for _ in range(2):
            sess.run(step, {x: _X, y: _Y})
    assert int(counter.numpy()) == 2
    assert float(b.numpy()) == pytest.approx(-0.2)  # not in var_list: unchanged
    params = {"w": jnp.float32(0.3), "b": jnp.float32(-0.2)}
    for _ in range(2):
        params["w"] = params["w"] - 0.1 * jax.grad(_loss)(params, _X, _Y)["w"]
    assert float(w.numpy()) == pytest.approx(float(params["w"]), rel=2e-5)


# ----------------------------------------------------------------------------------------------
# compat.v1: sessions and default graphs
# ----------------------------------------------------------------------------------------------

def test_session_runs_the_graph_of_its_fetches_and_refuses_after_close() -> None:
    g = tf.Graph()
    with g.as_default():
        c = tf.constant(3.0) * 2.0
        assert tf.get_default_graph() is g
    assert tf.get_default_graph() is not g
    sess = tf.Session()
    assert sess.run(c) == 6.0 and isinstance(sess.run(c), np.floating)
    assert tf.Session(graph=g).run([c, {"k": c}]) == [6.0, {"k": 6.0}]
    sess.close()
    with pytest.raises(RuntimeError, match="closed Session"):
        sess.run(c)


def test_default_graph_is_per_thread() -> None:
    tf.reset_default_graph()
    main = tf.get_default_graph()
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(tf.get_default_graph()))
    thread.start()
    thread.join()
    assert seen[0] is not main and tf.get_default_graph() is main
    tf.reset_default_graph()
    assert tf.get_default_graph() is not main


def test_placeholder_dtypes_and_partial_shapes() -> None:
    tf.reset_default_graph()
    assert tf.placeholder("float").dtype == np.float32
    assert tf.placeholder(tf.int32, shape=[None, 2]).shape == (None, 2)
    full = tf.placeholder(np.float32, shape=[2])
    assert isinstance(full, ap.Tensor) and full.shape == (2,)
    with tf.Session() as sess:
        np.testing.assert_allclose(sess.run(tf.exp(full), {full: [0.0, 1.0]}), [1, np.e],
                                   rtol=1e-6)


def test_top_level_gradients_and_minimize_take_unknown_shapes() -> None:
    with ap.Graph() as g:
        x = ap.placeholder(None, name="x")
        (dx,) = ap.gradients(ap.sum(x * x), [x])
        w = ap.Variable(np.float32(1.0))
        update = ap.optimizers.SGD(0.1).minimize(ap.sum(ap.square(x * w - 2.0)))
    assert float(g.run(dx, {x: 3.0})) == 6.0
    np.testing.assert_allclose(g.run(dx, {x: np.arange(3, dtype=np.float32)}), [0.0, 2.0, 4.0])
    g.run(update, {x: np.float32(1.0)})  # d/dw (w - 2)^2 = -2 at w = 1
    np.testing.assert_allclose(float(w.value), 1.2, rtol=1e-6)
