"""Eager training: Variables, GradientTape (TensorFlow's semantics), optimizers, ap.function."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adplugin as ap
from adplugin._errors import DerivativeError
from adplugin.eager import program as program_module


def close(a: Any, b: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_variable_behaves_like_an_array_and_updates() -> None:
    v = ap.Variable([1.0, 2.0, 3.0], name="v")
    assert v.shape == (3,) and v.dtype == np.float32 and v.name == "v"
    close(jnp.sum(v), 6.0)
    close(ap.sum(v * 2.0), 12.0)
    v.assign_add(np.ones(3, np.float32))
    v.assign_sub(np.full(3, 0.5, np.float32))
    close(v.numpy(), [1.5, 2.5, 3.5])
    with pytest.raises(ValueError, match="another shape"):
        v.assign(np.ones(4, np.float32))


def test_gradient_matches_jax_grad_for_nested_sources() -> None:
    params = {"w": ap.Variable(np.array([0.5, -1.0], np.float32)), "b": ap.Variable(0.3)}
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], np.float32)

    def loss(w: Any, b: Any) -> Any:
        return ap.mean(ap.square(ap.tanh(ap.matmul(x, w) + b)))

    with ap.GradientTape() as tape:
        value = loss(params["w"], params["b"])
    grads = tape.gradient(value, params)
    want = jax.grad(lambda p: jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2))(
        {"w": params["w"].value, "b": params["b"].value})
    close(grads["w"], want["w"])
    close(grads["b"], want["b"])
    close(value, jnp.mean(jnp.tanh(x @ params["w"].value + 0.3) ** 2))


def test_non_persistent_tape_allows_one_gradient() -> None:
    w = ap.Variable(2.0)
    with ap.GradientTape() as tape:
        y = w * w
    tape.gradient(y, w)
    with pytest.raises(RuntimeError, match="persistent=True"):
        tape.gradient(y, w)


def test_persistent_tape_watch_and_stop_recording() -> None:
    x = jnp.array(3.0)
    with ap.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ap.multiply(x, x)
        with tape.stop_recording():
            frozen = y * 10.0  # computed, not recorded: a constant for the tape
        z = ap.multiply(y, y) + ap.multiply(frozen, x)
    assert isinstance(frozen, ap.EagerTensor) and frozen.recording is None  # not recorded
    close(tape.gradient(z, x), 4 * 27.0 + 90.0)
    close(tape.gradient(y, x), 6.0)


def test_unwatched_and_unconnected_sources() -> None:
    w = ap.Variable(1.0)
    frozen = ap.Variable(2.0, trainable=False)
    other = ap.Variable(5.0)
    with ap.GradientTape() as tape:
        y = w * frozen
    gw, gf, go = tape.gradient(y, [w, frozen, other])
    assert gf is None and go is None
    close(gw, 2.0)
    with ap.GradientTape(watch_accessed_variables=False) as tape2:
        tape2.watch(frozen)
        y = w * frozen
    assert tape2.watched_variables() == [frozen]
    gw, gf, go = tape2.gradient(y, [w, frozen, other], unconnected_gradients="zero")
    assert float(gw) == 0.0 and float(go) == 0.0
    close(gf, 1.0)


def test_watched_variables_lists_reads_of_trainable_variables() -> None:
    a, b, c = ap.Variable(1.0), ap.Variable(2.0), ap.Variable(3.0, trainable=False)
    with ap.GradientTape() as tape:
        _ = a * c + b
    assert set(map(id, tape.watched_variables())) == {id(a), id(b)}


def test_nested_tapes_give_second_derivatives() -> None:
    x = ap.Variable(1.5)
    with ap.GradientTape() as outer:
        with ap.GradientTape() as inner:
            y = ap.sin(x) * x * x
        dy = inner.gradient(y, x)
    d2y = outer.gradient(dy, x)
    f = lambda v: jnp.sin(v) * v * v  # noqa: E731
    close(dy, jax.grad(f)(1.5))
    close(d2y, jax.grad(jax.grad(f))(1.5))


def test_output_gradients_and_jacobian() -> None:
    v = ap.Variable(np.array([0.1, 0.2, 0.3], np.float32))
    with ap.GradientTape(persistent=True) as tape:
        y = ap.sin(v) * 2.0
    weights = np.array([1.0, -2.0, 3.0], np.float32)
    close(tape.gradient(y, v, output_gradients=weights), weights * 2 * np.cos(v.numpy()))
    close(tape.jacobian(y, v), jax.jacobian(lambda u: jnp.sin(u) * 2.0)(v.value))


def test_reset_forgets_the_recording() -> None:
    w = ap.Variable(3.0)
    with ap.GradientTape() as tape:
        _ = w * w
        tape.reset()
        y = w * 5.0
    close(tape.gradient(y, w), 5.0)


def test_integer_sources_are_refused() -> None:
    k = ap.Variable(np.arange(3, dtype=np.int32))
    with ap.GradientTape() as tape:
        y = ap.sum(ap.astype(k, np.float32))
    with pytest.raises(DerivativeError, match="not floating point"):
        tape.gradient(y, k)


def test_repeated_structure_reuses_one_program_and_compiles() -> None:
    x = jnp.linspace(0.0, 1.0, 7)
    w = ap.Variable(np.ones(7, np.float32))

    def step() -> Any:
        with ap.GradientTape() as tape:
            loss = ap.sum(ap.exp(w * x) - w)
        return tape.gradient(loss, w)

    before = len(program_module._PROGRAMS)
    results = [step() for _ in range(4)]
    assert len(program_module._PROGRAMS) == before + 1
    program = list(program_module._PROGRAMS.values())[-1]
    program.wait_compiled()
    results.append(step())
    assert program._compiled is not None and program.uses == 5
    want = jax.grad(lambda u: jnp.sum(jnp.exp(u * x) - u))(w.value)
    for r in results:
        close(r, want)


def test_eager_tensor_materializes_on_demand() -> None:
    w = ap.Variable(np.array([1.0, 4.0], np.float32))
    with ap.GradientTape() as tape:
        y = ap.sqrt(w)
    assert isinstance(y, ap.EagerTensor) and y.shape == (2,)
    close(np.asarray(y), [1.0, 2.0])
    close(jnp.sum(y), 3.0)  # JAX functions take it via __jax_array__
    assert f"{float(ap.sum(y)):.1f}" == "3.0"
    close(tape.gradient(y, w), [0.5, 0.25])


def test_optimizers_match_optax() -> None:
    for ours, theirs in [(ap.optimizers.Adam(0.1), optax.adam(0.1, eps=1e-7)),
                         (ap.optimizers.SGD(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
                         (ap.optimizers.RMSprop(0.01), optax.rmsprop(0.01, eps=1e-7))]:
        w = ap.Variable(np.array([1.0, -2.0], np.float32))
        p = jnp.array([1.0, -2.0])
        state = theirs.init(p)
        for _ in range(5):
            with ap.GradientTape() as tape:
                loss = ap.sum(ap.square(w - 3.0))
            ours.apply_gradients(zip([tape.gradient(loss, w)], [w]))
            g = jax.grad(lambda q: jnp.sum((q - 3.0) ** 2))(p)
            updates, state = theirs.update(g, state, p)
            p = optax.apply_updates(p, updates)
        close(w.value, p, tol=1e-5)
        assert ours.iterations == 5


def test_optimizer_errors() -> None:
    opt = ap.optimizers.SGD(0.1)
    w = ap.Variable(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="No gradients provided"):  # as Keras does
        opt.apply_gradients([(None, w)])
    opt.apply_gradients([])  # nothing to apply: a no-op
    close(w.value, [1.0, 1.0])
    assert opt.iterations == 0
    with pytest.raises(ValueError, match="gradient shape differs"):
        opt.apply_gradients([(np.ones(3, np.float32), w)])


def test_function_traces_once_per_signature_and_reads_variables_each_call() -> None:
    scale = ap.Variable(2.0)
    traces = []

    @ap.function
    def f(x: Any) -> Any:
        traces.append(1)
        return ap.sum(ap.sin(x)) * scale

    x = np.linspace(0, 1, 5).astype(np.float32)
    close(f(x), np.sum(np.sin(x)) * 2)
    first = len(traces)  # 2: the first trace meets `scale` and traces again with it as input
    assert first <= 2
    scale.assign(3.0)
    close(f(x + 1), np.sum(np.sin(x + 1)) * 3)
    assert len(traces) == first  # same signature: no trace
    f(np.ones(4, np.float32))
    assert len(traces) == first + 1  # a new signature: one trace (its variables are known)
    with ap.GradientTape() as tape:  # inside a tape the function is recorded
        y = f(ap.multiply(scale, x))
    close(tape.gradient(y, scale), jax.grad(lambda s: jnp.sum(jnp.sin(s * x)) * s)(3.0))


def test_a_jax_function_reading_a_recorded_value_is_refused_not_silently_lost() -> None:
    w = ap.Variable(np.array([1.0, 2.0], np.float32))
    with pytest.raises(DerivativeError, match="use the ap.\\* op"), ap.GradientTape():
        _ = jnp.array([3.0, 4.0], np.float32) * w  # jax.Array.__mul__ would bypass the tape
    with ap.GradientTape() as tape:
        y = ap.sum(ap.multiply(jnp.array([3.0, 4.0], np.float32), w))
        with tape.stop_recording():
            assert float(jnp.sum(w)) == 3.0  # reading outside the recording is fine
    close(tape.gradient(y, w), [3.0, 4.0])
    assert float(jnp.sum(w)) == 3.0


def test_eager_tensors_index_and_iterate() -> None:
    w = ap.Variable(np.arange(3, dtype=np.float32))
    with ap.GradientTape() as tape:
        y = ap.square(w)
        z = y[1] * 2.0 + y[-1]
    assert [float(r) for r in y] == [0.0, 1.0, 4.0]
    close(z, 6.0)
    close(tape.gradient(z, w), [0.0, 4.0, 4.0])


def test_tapes_in_two_threads_record_separately() -> None:
    import threading

    results: dict[str, Any] = {}

    def train(name: str, scale: float) -> None:
        w = ap.Variable(np.ones(4, np.float32) * scale)
        with ap.GradientTape() as tape:
            y = ap.sum(ap.square(w))
        results[name] = tape.gradient(y, w)

    threads = [threading.Thread(target=train, args=(f"t{k}", k + 1.0)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    close(results["t0"], 2 * np.ones(4))
    close(results["t1"], 4 * np.ones(4))
