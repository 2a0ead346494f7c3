"""Threads and asyncio tasks race on the dispatch context for real, and get single-threaded results.

Every race starts its workers together at a `threading.Barrier`, many times over, with Python's
thread switch interval shortened so that threads interleave inside ops. The references are the
same computations run on one thread before the race (themselves checked against `jax.grad`
and closed forms), so any op landing in another thread's graph or tape shows up as a wrong
value, a foreign node or an exception.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap

Worker = Callable[[int], None]  # called once per repetition with the repetition's number


@pytest.fixture(autouse=True)
def fast_thread_switching() -> Iterator[None]:
    """Switch threads every 200 us (default 5 ms), so they interleave inside single ops."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(2e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def race(workers: list[Worker], reps: int, timeout: float = 120.0) -> None:
    """Run each worker on its own thread, `reps` times, all starting each repetition together;
    re-raise the first failure (with the worker's name) once every thread has stopped. A
    thread still running after `timeout` seconds is reported as a deadlock."""
    barrier = threading.Barrier(len(workers), timeout=timeout)
    errors: list[tuple[str, BaseException]] = []

    def loop(name: str, work: Worker) -> None:
        try:
            for rep in range(reps):
                barrier.wait()
                work(rep)
        except threading.BrokenBarrierError:
            pass  # another worker failed and broke the barrier: its error is reported
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append((name, e))
            barrier.abort()

    threads = [threading.Thread(target=loop, args=(f"worker{i}:{getattr(w, '__name__', w)}", w),
                                daemon=True) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        barrier.abort()
        raise AssertionError(f"{len(stuck)} of {len(threads)} threads still running after "
                             f"{timeout:.0f} s: a deadlock")
    if errors:
        name, error = errors[0]
        raise AssertionError(f"{name} failed ({len(errors)} failures in all): "
                             f"{type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------------------------
# Workloads: tape training, graph building, eager ops
# ----------------------------------------------------------------------------------------------

N_TRAINERS, STEPS, LR = 8, 20, 0.1


@cache
def regression_data(k: int) -> tuple[jax.Array, jax.Array]:
    """Trainer k's data: y = (k + 1) x - 0.5 plus noise, 16 points."""
    rng = np.random.default_rng(k)
    x = rng.normal(size=16).astype(np.float32)
    y = ((k + 1) * x - 0.5 + 0.1 * rng.normal(size=16)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def train_with_tape(k: int, opt: Any, steps: int = STEPS) -> np.ndarray:
    """Linear regression with a tape and SGD: the losses, then the final w and b."""
    x, y = regression_data(k)
    w, b = ap.Variable(0.0, name="w"), ap.Variable(0.0, name="b")
    losses = []
    for _ in range(steps):
        with ap.GradientTape() as tape:
            loss = ap.mean(ap.square(w * x + b - y))
        grads = tape.gradient(loss, [w, b])
        opt.apply_gradients(zip(grads, [w, b]))
        losses.append(float(loss))
    return np.array([*losses, float(w.value), float(b.value)])


def train_with_jax(k: int, steps: int = STEPS) -> np.ndarray:
    """The same training in plain JAX: jax.value_and_grad and w -= lr * g."""
    x, y = regression_data(k)

    def loss_fn(params: tuple[Any, Any]) -> Any:
        w, b = params
        return jnp.mean(jnp.square(w * x + b - y))

    params = (jnp.float32(0.0), jnp.float32(0.0))
    losses = []
    for _ in range(steps):
        loss, (gw, gb) = jax.value_and_grad(loss_fn)(params)
        params = (params[0] - LR * gw, params[1] - LR * gb)
        losses.append(float(loss))
    return np.array([*losses, float(params[0]), float(params[1])])


@cache
def single_threaded_training(k: int) -> np.ndarray:
    result = train_with_tape(k, ap.optimizers.SGD(learning_rate=LR))
    np.testing.assert_allclose(result, train_with_jax(k), rtol=1e-5, atol=1e-6)
    return result


def seed_values(a: float, b: float) -> np.ndarray:
    """f = 2ab^2 + 3a^2b, df/da = 2b^2 + 6ab, d2f/da db = 4b + 6a (closed forms)."""
    return np.array([2 * a * b**2 + 3 * a**2 * b, 2 * b**2 + 6 * a * b, 4 * b + 6 * a],
                    np.float32)


def build_seed_graph() -> tuple[ap.Graph, list[Any]]:
    """The seed's graph and its derived gradient graphs: [a, b, f, df/da, d2f/da db]."""
    with ap.Graph(name="seed") as g:
        a, b = ap.placeholder((), name="a"), ap.placeholder((), name="b")
        f = 2 * a * b**2 + 3 * a**2 * b
        (df,) = ap.gradients(f, [a])
        (d2f,) = ap.gradients(df, [b])
    assert df is not None and d2f is not None
    return g, [a, b, f, df, d2f]


@cache
def seed_text() -> str:
    return build_seed_graph()[0].to_text()


def run_seed(g: ap.Graph, tensors: list[Any], a: float, b: float) -> np.ndarray:
    """Run inside `with g:` (as a user would): running must add nothing to g."""
    pa, pb, *fetches = tensors
    with g:
        before = len(g.nodes)
        out = np.array([float(v) for v in g.run(fetches, {pa: a, pb: b})], np.float32)
        assert len(g.nodes) == before, "g.run added nodes to the graph being built"
    return out


def check_eager_ops(rep: int) -> None:
    """Eager ops on NumPy and JAX values return plain values, never another thread's node."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3) + rep
    b = np.full((3,), 0.5, np.float32)
    out = ap.add(a, b)
    assert isinstance(out, jax.Array), f"eager ap.add returned {type(out).__name__}"
    np.testing.assert_array_equal(np.asarray(out), a + b)
    prod = ap.multiply(jnp.asarray(a), 2.0)
    assert isinstance(prod, jax.Array), f"eager ap.multiply returned {type(prod).__name__}"
    np.testing.assert_array_equal(np.asarray(prod), a * 2)
    c = ap.constant(a)  # outside graphs: an eager tensor (tf.constant in TensorFlow 2)
    assert not isinstance(c, ap.Tensor), "ap.constant outside a graph returned a graph tensor"
    np.testing.assert_array_equal(np.asarray(c * 3.0 + 1.0), a * 3 + 1)
    total = ap.sum(ap.square(ap.subtract(a, b)))
    assert isinstance(total, jax.Array), f"eager ap.sum returned {type(total).__name__}"
    np.testing.assert_allclose(float(total), float(np.sum((a - b) ** 2)), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# The acceptance race
# ----------------------------------------------------------------------------------------------

def test_trainers_graph_builders_and_eager_ops_race_100_times() -> None:
    """8 threads training with tapes while others build graphs and run eager ops: every result
    equals the single-threaded one, 100 repetitions."""
    reps = 100
    expected = [single_threaded_training(k) for k in range(N_TRAINERS)]
    text = seed_text()
    results: dict[int, list[np.ndarray]] = {k: [] for k in range(N_TRAINERS)}

    def trainer(k: int) -> Worker:
        opt = ap.optimizers.SGD(learning_rate=LR)  # one per thread, reused: compiled once

        def work(rep: int) -> None:
            results[k].append(train_with_tape(k, opt))

        work.__name__ = f"trainer{k}"
        return work

    persistent = build_seed_graph()  # compiled once, run every repetition

    def builder(rep: int) -> None:
        g, tensors = build_seed_graph()
        assert g.to_text() == text, "the graph built holds nodes it did not build"
        a, b = float(rep % 7) - 3.0, float(rep % 5) + 1.0
        np.testing.assert_allclose(run_seed(*persistent, a, b), seed_values(a, b), rtol=1e-6)
        if rep % 25 == 0:  # a fresh graph compiles: now and then
            np.testing.assert_allclose(run_seed(g, tensors, a, b), seed_values(a, b), rtol=1e-6)

    def eager(rep: int) -> None:
        for i in range(5):
            check_eager_ops(rep + i)

    race([trainer(k) for k in range(N_TRAINERS)] + [builder, builder, eager, eager], reps)
    for k in range(N_TRAINERS):
        assert len(results[k]) == reps
        for got in results[k]:
            np.testing.assert_allclose(got, expected[k], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Graphs in threads
# ----------------------------------------------------------------------------------------------

def _cubic_graph(k: int) -> tuple[ap.Graph, Any, Any, Any]:
    """f = sum((k+1) x^3 + sin(x)) and its derived gradient, in a graph of thread k."""
    with ap.Graph(name="cubic") as g:
        x = ap.placeholder((4,), name="x")
        f = ap.sum((k + 1.0) * x**3 + ap.sin(x))
        (df,) = ap.gradients(f, [x])
    return g, x, f, df


def test_threads_derive_at_once_on_their_own_graphs() -> None:
    n, reps = 6, 30
    texts = [_cubic_graph(k)[0].to_text() for k in range(n)]
    last: dict[int, tuple[ap.Graph, Any, Any, Any]] = {}

    def deriver(k: int) -> Worker:
        def work(rep: int) -> None:
            g, x, f, df = _cubic_graph(k)
            assert df is not None, "ap.gradients returned None while another thread derived"
            assert g.to_text() == texts[k], "the derived graph differs from the one-thread one"
            last[k] = (g, x, f, df)

        return work

    race([deriver(k) for k in range(n)], reps)
    xv = np.linspace(-1.0, 1.0, 4, dtype=np.float32)
    for k, (g, x, _f, df) in last.items():
        reference = jax.grad(lambda v, k=k: jnp.sum((k + 1.0) * v**3 + jnp.sin(v)))(xv)
        np.testing.assert_allclose(np.asarray(g.run(df, {x: xv})), reference, rtol=1e-5)


def test_graph_run_inside_the_graph_being_built() -> None:
    """g.run inside `with g:` runs on JAX: constants alone, constants larger than 1024
    elements, placeholders; nothing is added to g, in any of the racing threads."""
    big = np.linspace(0.0, 1.0, 3000, dtype=np.float32)

    def runner(k: int) -> Worker:
        def work(rep: int) -> None:
            with ap.Graph() as g:
                c = ap.constant(big * (k + 1))
                total = ap.sum(c * c)
                small = ap.constant(2.0) * 3.0 + k
                x = ap.placeholder((3,), name="x")
                y = ap.sum(x * c[:3])
                before = len(g.nodes)
                got_total, got_small = g.run([total, small])
                got_y = g.run(y, {x: np.ones(3, np.float32)})
                assert len(g.nodes) == before, "g.run added nodes to the graph being built"
            np.testing.assert_allclose(float(got_total), float(np.sum((big * (k + 1)) ** 2)),
                                       rtol=1e-5)
            assert float(got_small) == 6.0 + k
            np.testing.assert_allclose(float(got_y), float(np.sum(big[:3] * (k + 1))), rtol=1e-6)

        return work

    race([runner(k) for k in range(4)], 3)


def test_jit_of_ap_ops_inside_a_graph_adds_nothing_to_it() -> None:
    """A jax.jit'ed function of ap ops called inside `with ap.Graph()` is JAX's: it returns
    arrays, and no node lands in the graph (while other threads build and run eagerly)."""

    @jax.jit
    def step(v: Any) -> Any:
        return ap.sum(ap.multiply(ap.tanh(v), v)) + ap.mean(ap.exp(v))

    def reference(v: Any) -> Any:
        return jnp.sum(jnp.tanh(v) * v) + jnp.mean(jnp.exp(v))

    def jitter(k: int) -> Worker:
        def work(rep: int) -> None:
            v = jnp.arange(5.0) * 0.1 * (k + 1) + rep
            with ap.Graph() as g:
                x = ap.placeholder((5,))
                before = len(g.nodes)
                out = step(v)
                grad = jax.grad(step)(v)
                assert len(g.nodes) == before, "a jitted function added nodes to the graph"
                assert isinstance(out, jax.Array) and isinstance(grad, jax.Array)
                y = ap.sum(x)  # the graph still takes its own ops
                assert isinstance(y, ap.Tensor) and y.graph is g
            np.testing.assert_allclose(float(out), float(reference(v)), rtol=1e-5)
            np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(reference)(v)),
                                       rtol=1e-5)

        return work

    race([jitter(0), jitter(1), jitter(2), lambda rep: check_eager_ops(rep)], 10)


# ----------------------------------------------------------------------------------------------
# Tapes in threads
# ----------------------------------------------------------------------------------------------

def _second_derivative(x0: float) -> tuple[float, float]:
    """Nested tapes: d(x^3 + x^2)/dx and its derivative."""
    x = ap.Variable(x0)
    with ap.GradientTape() as outer:
        with ap.GradientTape() as inner:
            y = x * x * x + ap.square(x)
        dy = inner.gradient(y, x)
    d2y = outer.gradient(dy, x)
    return float(dy), float(d2y)


def test_nested_tapes_in_threads() -> None:
    f = lambda v: v**3 + v**2  # noqa: E731
    expected = {k: (float(jax.grad(f)(k * 0.5 - 1.0)), float(jax.grad(jax.grad(f))(k * 0.5 - 1.0)))
                for k in range(6)}

    def nester(k: int) -> Worker:
        def work(rep: int) -> None:
            got = _second_derivative(k * 0.5 - 1.0)
            np.testing.assert_allclose(got, expected[k], rtol=1e-5, atol=1e-6)

        return work

    race([nester(k) for k in range(6)], 20)


def test_watched_arrays_and_graphs_in_threads() -> None:
    """Tapes watching jax.Arrays (tracked by identity) race graph builders: gradients match
    jax.grad and no graph gets a tape's op."""
    text = seed_text()

    def watcher(k: int) -> Worker:
        def work(rep: int) -> None:
            x = jnp.linspace(-1.0, 1.0, 6) * (k + 1) + rep * 0.01
            with ap.GradientTape() as tape:
                tape.watch(x)
                y = ap.sum(ap.sin(x) * x)
                _ = np.asarray(y)  # a read inside the tape
            g = tape.gradient(y, x)
            np.testing.assert_allclose(np.asarray(g), np.asarray(
                jax.grad(lambda v: jnp.sum(jnp.sin(v) * v))(x)), rtol=1e-5, atol=1e-6)

        return work

    def builder(rep: int) -> None:
        assert build_seed_graph()[0].to_text() == text

    race([watcher(k) for k in range(4)] + [builder, builder], 20)


# ----------------------------------------------------------------------------------------------
# asyncio tasks: one scope per task
# ----------------------------------------------------------------------------------------------

async def _build_with_yields(k: int) -> str:
    """The cubic graph built op by op, yielding to other tasks between ops."""
    with ap.Graph(name="cubic") as g:
        x = ap.placeholder((4,), name="x")
        await asyncio.sleep(0)
        cube = x**3
        await asyncio.sleep(0)
        f = ap.sum((k + 1.0) * cube + ap.sin(x))
        await asyncio.sleep(0)
        (df,) = ap.gradients(f, [x])
        await asyncio.sleep(0)
        assert df is not None
    return g.to_text()


async def _eager_with_yields(k: int) -> None:
    for rep in range(4):
        check_eager_ops(rep + k)
        await asyncio.sleep(0)


async def _train_with_yields(k: int) -> np.ndarray:
    x, y = regression_data(k)
    w, b = ap.Variable(0.0), ap.Variable(0.0)
    opt = ap.optimizers.SGD(learning_rate=LR)
    losses = []
    for _ in range(STEPS):
        with ap.GradientTape() as tape:
            pred = w * x + b
            await asyncio.sleep(0)
            loss = ap.mean(ap.square(pred - y))
        grads = tape.gradient(loss, [w, b])
        opt.apply_gradients(zip(grads, [w, b]))
        losses.append(float(loss))
    return np.array([*losses, float(w.value), float(b.value)])


def test_asyncio_tasks_each_have_their_own_scope() -> None:
    texts = [_cubic_graph(k)[0].to_text() for k in range(4)]
    expected = [single_threaded_training(k) for k in range(2)]

    async def main() -> list[Any]:
        return await asyncio.gather(*[_build_with_yields(k) for k in range(4)],
                                    *[_eager_with_yields(k) for k in range(2)],
                                    *[_train_with_yields(k) for k in range(2)])

    out = asyncio.run(main())
    assert out[:4] == texts
    for got, want in zip(out[6:], expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# ap.function in threads: each trace pushes its own frame scope
# ----------------------------------------------------------------------------------------------

def test_compiled_train_steps_in_threads() -> None:
    """Each thread its own `@ap.function` train step (tape, gradient, apply_gradients inside):
    the losses and final values equal plain JAX training's, while other threads build graphs
    and run eager ops."""
    steps = 10
    expected = {k: train_with_jax(k, steps) for k in range(3)}
    text = seed_text()

    def compiled_trainer(k: int) -> Worker:
        x, y = regression_data(k)
        w, b = ap.Variable(0.0), ap.Variable(0.0)
        opt = ap.optimizers.SGD(learning_rate=LR)

        @ap.function
        def step(x: Any, y: Any) -> Any:
            with ap.GradientTape() as tape:
                loss = ap.mean(ap.square(w * x + b - y))
            opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
            return loss

        def work(rep: int) -> None:
            w.assign(0.0)
            b.assign(0.0)
            losses = [float(step(x, y)) for _ in range(steps)]
            got = np.array([*losses, float(w.value), float(b.value)])
            np.testing.assert_allclose(got, expected[k], rtol=1e-5, atol=1e-6)

        return work

    def builder(rep: int) -> None:
        assert build_seed_graph()[0].to_text() == text

    race([compiled_trainer(k) for k in range(3)] + [builder, check_eager_ops], 5)


def test_variables_in_graphs_built_by_threads() -> None:
    """TensorFlow 1 style: each thread reads its own variable in a graph it builds and runs an
    assignment; the reads see the value from before the run, the assignment lands."""

    def graph_trainer(k: int) -> Worker:
        v = ap.Variable(float(k), name=f"v{k}")

        def work(rep: int) -> None:
            start = float(v.value)
            with ap.Graph() as g:
                y = v * 3.0 + 1.0
                update = v.assign_add(1.0)
            got_y, _ = g.run([y, update])
            assert float(got_y) == 3.0 * start + 1.0
            assert float(v.value) == start + 1.0
            assert len(g.nodes) < 20, "the graph holds nodes another thread built"

        return work

    race([graph_trainer(k) for k in range(4)], 5, timeout=15.0)


def test_constants_made_inside_jit_inside_a_graph_stay_out_of_it() -> None:
    """`ap.constant` / `ap.convert_to_tensor` traced by `jax.jit` inside `with ap.Graph()` are
    JAX values of that trace: the jitted function works and the graph gets no node."""

    def scaled(v: Any) -> Any:
        return ap.multiply(ap.constant(2.0), ap.convert_to_tensor(v)) + ap.constant([1.0, 2.0])

    def worker(k: int) -> Worker:
        def work(rep: int) -> None:
            v = jnp.asarray([1.0, -1.0]) * (k + rep)
            with ap.Graph() as g:
                before = len(g.nodes)
                out = jax.jit(scaled)(v)  # a fresh jit: traced here, inside the graph
                assert len(g.nodes) == before, "a constant traced by jit landed in the graph"
            np.testing.assert_allclose(np.asarray(out), 2.0 * np.asarray(v) + [1.0, 2.0])

        return work

    race([worker(k) for k in range(3)], 3)
