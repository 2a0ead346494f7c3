"""`ap.function` compiles whole train steps: tapes, gradients, optimizer updates, assignments.

References: the same steps run eagerly, a `jax.grad` loop with Keras's Adam written in
jax.numpy (exact), and `jax.grad` + optax.adam (which places epsilon differently: ~1e-5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adplugin as ap

LR, STEPS = 0.05, 6
RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 3)).astype(np.float32)
Y = RNG.standard_normal((8, 2)).astype(np.float32)
W0 = RNG.standard_normal((3, 2)).astype(np.float32)
B0 = RNG.standard_normal((2,)).astype(np.float32)


def loss_ap(w, b, x, y):
    err = ap.subtract(ap.add(ap.matmul(x, w), b), y)
    return ap.mean(ap.square(err))


def loss_jnp(params, x, y):
    w, b = params
    return jnp.mean(jnp.square(x @ w + b - y))


def make_step(w, b, opt):
    def step(x, y):
        with ap.GradientTape() as tape:
            loss = loss_ap(w, b, x, y)
        grads = tape.gradient(loss, [w, b])
        opt.apply_gradients(zip(grads, [w, b]))
        return loss

    return step


def fresh():
    w, b = ap.Variable(W0, name="w"), ap.Variable(B0, name="b")
    return w, b, ap.optimizers.Adam(learning_rate=LR)


def keras_adam_reference(steps):
    """jax.grad + Adam as Keras (and TensorFlow) compute it, which ap's Adam follows:
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""
    b1, b2, eps = 0.9, 0.999, 1e-7
    params = [jnp.asarray(W0), jnp.asarray(B0)]
    m = [jnp.zeros_like(p) for p in params]
    v = [jnp.zeros_like(p) for p in params]
    losses = []
    for t in range(1, steps + 1):
        loss, grads = jax.value_and_grad(loss_jnp)(params, X, Y)
        m = [mi + (g - mi) * (1 - b1) for mi, g in zip(m, grads)]
        v = [vi + (g * g - vi) * (1 - b2) for vi, g in zip(v, grads)]
        step, one = jnp.float32(t), jnp.float32(1)  # in float32, as Keras computes it
        alpha = (jnp.float32(LR) * jnp.sqrt(one - jnp.float32(b2) ** step)
                 / (one - jnp.float32(b1) ** step))
        params = [p - alpha * mi / (jnp.sqrt(vi) + eps) for p, mi, vi in zip(params, m, v)]
        losses.append(float(loss))
    return losses, params


def optax_reference(steps):
    """jax.grad + optax.adam (epsilon inside the bias correction: equal to Keras's to ~1e-5)."""
    opt = optax.adam(LR, eps=1e-7)
    params = [jnp.asarray(W0), jnp.asarray(B0)]
    state = opt.init(params)
    for _ in range(steps):
        grads = jax.grad(loss_jnp)(params, X, Y)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_train_step_matches_eager_keras_and_optax():
    w, b, opt = fresh()
    compiled = ap.function(make_step(w, b, opt))
    got = [float(compiled(X, Y)) for _ in range(STEPS)]

    we, be, opte = fresh()
    eager = make_step(we, be, opte)
    want_eager = [float(eager(X, Y)) for _ in range(STEPS)]
    want_keras, params = keras_adam_reference(STEPS)

    np.testing.assert_allclose(got, want_eager, rtol=1e-6)
    np.testing.assert_allclose(got, want_keras, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w.value), np.asarray(we.value), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(b.value), np.asarray(be.value), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(w.value), np.asarray(params[0]), rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(b.value), np.asarray(params[1]), rtol=1e-6,
                               atol=1e-7)
    ref = optax_reference(STEPS)
    np.testing.assert_allclose(np.asarray(w.value), np.asarray(ref[0]), rtol=1e-4)
    assert opt.iterations == STEPS


def test_updates_happen_on_every_call():
    w, b, opt = fresh()
    step = ap.function(make_step(w, b, opt))
    losses, previous = [], np.asarray(w.value)
    for _ in range(8):
        losses.append(float(step(X, Y)))
        now = np.asarray(w.value)
        assert not np.array_equal(now, previous), "the variable did not change in this call"
        previous = now
    assert all(a > c for a, c in zip(losses, losses[1:])), losses
    assert step.experimental_get_tracing_count() <= 3  # discovery, then one program


def test_one_trace_per_input_signature():
    v = ap.Variable(np.float32(2.0))
    bodies = []

    @ap.function
    def f(x):
        bodies.append(np.shape(x))
        return ap.sum(ap.multiply(x, v))

    x8, x4 = np.ones((8, 3), np.float32), np.ones((4, 3), np.float32)
    assert float(f(x8)) == 48.0
    settled = len(bodies)
    assert float(f(x8)) == 48.0 and len(bodies) == settled  # cached
    assert float(f(x4)) == 24.0 and len(bodies) == settled + 1  # a new shape: one trace
    assert float(f(x4)) == 24.0 and float(f(x8)) == 48.0 and len(bodies) == settled + 1
    assert float(f(np.ones(5, np.float32))) == 10.0 and len(bodies) == settled + 2
    v.assign(3.0)  # new values of variables do not retrace
    assert float(f(x4)) == 36.0 and len(bodies) == settled + 2
    f(np.ones((4, 3), np.float64) if jax.config.jax_enable_x64 else np.ones((4, 3), np.int32))
    assert len(bodies) == settled + 3  # another dtype: one more


def test_assignments_seen_by_later_reads_in_the_same_call():
    v = ap.Variable(np.array([1.0, 2.0], np.float32))

    def body(x):
        v.assign(v * 2.0)
        doubled = v.read_value() + 0.0
        v.assign_add(x)
        return doubled, ap.multiply(v, 1.0)

    compiled = ap.function(body)
    x = np.array([0.5, -1.0], np.float32)
    for _ in range(3):
        start = np.asarray(v.value)
        doubled, after = compiled(x)
        np.testing.assert_allclose(np.asarray(doubled), start * 2)
        np.testing.assert_allclose(np.asarray(after), start * 2 + x)
        np.testing.assert_allclose(np.asarray(v.value), start * 2 + x)


def test_assignment_inside_a_tape_inside_a_function():
    v = ap.Variable(np.float32(2.0))

    @ap.function
    def f():
        with ap.GradientTape() as tape:
            before = v * v  # d/dv = 2v at the old value
            v.assign(3.0)
            after = v * v * v  # differentiated at the new value: 3 v^2 = 27
        return before, tape.gradient(after, v)

    before, g = f()
    assert float(before) == 4.0 and float(g) == 27.0
    v.assign(2.0)
    before, g = f()
    assert float(before) == 4.0 and float(g) == 27.0


def test_gradient_inside_function_matches_jax_grad():
    w = ap.Variable(np.array([0.3, -1.2, 2.0], np.float32))

    @ap.function
    def grad_of(x):
        with ap.GradientTape() as tape:
            y = ap.sum(ap.tanh(w * x) * ap.sin(x))
        return tape.gradient(y, w)

    x = np.array([1.0, 0.5, -2.0], np.float32)
    want = jax.grad(lambda w: jnp.sum(jnp.tanh(w * x) * jnp.sin(x)))(jnp.asarray(w.value))
    np.testing.assert_allclose(np.asarray(grad_of(x)), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_variable_created_inside_raises():
    @ap.function
    def f(x):
        return ap.Variable(x) * 2.0

    with pytest.raises(RuntimeError, match="variable was created inside an `ap.function`"):
        f(np.ones(2, np.float32))


def test_jax_jit_around_an_assigning_step_raises():
    w, b, opt = fresh()
    step = make_step(w, b, opt)
    with pytest.raises(RuntimeError, match="lost on every later call"):
        jax.jit(step)(X, Y)
    np.testing.assert_array_equal(np.asarray(w.value), W0)  # nothing half-applied
    compiled = ap.function(make_step(w, b, opt))
    with pytest.raises(RuntimeError, match="lost on every later call"):
        jax.jit(compiled)(X, Y)
    v = ap.Variable(np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="lost on every later call"):
        jax.jit(lambda: v.assign(np.ones(2, np.float32)))()  # even a constant value
    np.testing.assert_array_equal(np.asarray(v.value), np.zeros(2))


def test_runs_op_by_op_inside_a_tape():
    w = ap.Variable(np.array([1.0, 2.0], np.float32))

    @ap.function
    def f(x):
        return ap.sum(ap.sin(w * x))

    x = np.array([0.5, 3.0], np.float32)
    f(x)
    traces = f.experimental_get_tracing_count()
    with ap.GradientTape() as tape:
        y = f(x)
    g = tape.gradient(y, w)
    want = jax.grad(lambda w: jnp.sum(jnp.sin(w * x)))(jnp.asarray(w.value))
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-6)
    assert f.experimental_get_tracing_count() == traces  # not traced: recorded by the tape


def test_arguments_of_any_structure():
    v = ap.Variable(np.float32(1.5))

    @ap.function
    def f(batch, scale, use_v=True):
        out = ap.multiply(batch["a"], scale) + batch["b"][0]
        return {"out": out * v if use_v else out, "n": 3}

    a, b0 = np.arange(4, dtype=np.float32), np.ones((), np.float32)
    got = f({"a": a, "b": (b0,)}, 2.0)
    np.testing.assert_allclose(np.asarray(got["out"]), (a * 2 + 1) * 1.5)
    assert got["n"] == 3
    got = f({"a": a, "b": (b0,)}, 2.0, False)
    np.testing.assert_allclose(np.asarray(got["out"]), a * 2 + 1)
    with pytest.raises(TypeError, match="neither an array nor hashable"):
        f({"a": a, "b": (b0,)}, {2.0})  # a set: not a pytree, not hashable


def test_setting_the_learning_rate_between_calls_changes_the_next_step() -> None:
    w = ap.Variable(np.float32(0.0))
    opt = ap.optimizers.SGD(learning_rate=1.0)

    @ap.function
    def step() -> object:
        with ap.GradientTape() as tape:
            loss = w * 1.0  # d loss / d w = 1: each step moves w by -learning_rate
        opt.apply_gradients([(tape.gradient(loss, w), w)])
        return loss

    step()
    assert float(w.value) == -1.0
    opt.learning_rate = 10.0
    step()
    assert float(w.value) == -11.0
    assert step.experimental_get_tracing_count() <= 2
