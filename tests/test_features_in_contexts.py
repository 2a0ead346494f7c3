"""This session's features in the contexts every feature must hold in: a second thread, inside
jax.jit, inside a tape."""

from __future__ import annotations

import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import adplugin as ap


def _in_threads(work: Any, n: int = 4) -> list[Any]:
    """`work(k)` in n threads started together; their results (errors re-raised)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(k: int) -> None:
        barrier.wait()
        try:
            results[k] = work(k)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            results[k] = e

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_eager_indexing_in_threads_in_jit_and_in_a_tape() -> None:
    data = np.arange(60, dtype=np.float32).reshape(20, 3)
    v = ap.Variable(data)

    def rows(k: int) -> list[np.ndarray]:
        return [np.asarray(v[i, 1:]) for i in range(k, 20, 4)]

    for k, got in enumerate(_in_threads(rows)):
        np.testing.assert_array_equal(np.stack(got), data[k::4, 1:])
    np.testing.assert_array_equal(jax.jit(lambda a: a[3, 1:])(v), data[3, 1:])
    with ap.GradientTape() as tape:
        y = ap.sum(v[5] * v[7])
    np.testing.assert_array_equal(np.asarray(tape.gradient(y, v))[[5, 7]], data[[7, 5]])


def test_explain_gradient_in_a_thread_and_for_a_target_computed_in_jit() -> None:
    def why(k: int) -> str:
        x = ap.Variable(np.float32(k + 1.0))
        with ap.GradientTape() as tape:
            y = ap.stop_gradient(x * 2.0) * 3.0
        assert tape.gradient(y, x) is None
        return ap.explain_gradient(y, x, tape)

    for text in _in_threads(why):
        assert "stop_gradient" in text
    x = jnp.float32(2.0)
    with ap.GradientTape() as tape:
        tape.watch(x)
        y = jax.jit(lambda a: a * a)(x)  # JAX's computation: the tape never sees it
    assert tape.gradient(y, x) is None
    assert "jax" in ap.explain_gradient(y, x, tape).lower()


def test_optimizers_and_functions_in_threads_match_one_thread() -> None:
    def train(k: int) -> float:
        w = ap.Variable(np.full(3, float(k), np.float32))
        opt = ap.optimizers.Adam(0.1)

        @ap.function
        def step() -> Any:
            with ap.GradientTape() as tape:
                loss = ap.sum(ap.square(w - 1.0))
            opt.apply_gradients([(tape.gradient(loss, w), w)])
            return loss

        for _ in range(10):
            step()
        return float(ap.sum(w))

    alone = [train(k) for k in range(4)]
    np.testing.assert_allclose(_in_threads(train), alone, rtol=1e-6)


def test_eager_constants_in_jit_and_in_threads() -> None:
    assert float(jax.jit(lambda a: ap.multiply(ap.constant(2.0), a))(3.0)) == 6.0

    def grad(k: int) -> float:
        c = ap.constant(float(k))
        with ap.GradientTape() as tape:
            tape.watch(c)
            y = c * c * c
        return float(tape.gradient(y, c))

    assert _in_threads(grad) == [3.0 * k * k for k in range(4)]
