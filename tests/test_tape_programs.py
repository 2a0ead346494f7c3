"""Recorded programs: cache keys cover what a program depends on, reads inside a tape stay
cheap, background compiles see the caller's JAX configuration, and a failed compile falls back
to interpretation instead of breaking every later call."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adplugin as ap
from adplugin.eager import program as program_module
from adplugin.eager.recording import EagerTensor


def close(a: Any, b: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_reading_values_inside_a_tape_watching_an_array_does_not_recurse() -> None:
    x = jnp.linspace(0.5, 1.5, 4)
    with ap.GradientTape() as tape:
        tape.watch(x)
        y = ap.sin(x)
        seen = []
        for _ in range(300):  # deep chains read at every step: no recursion, no re-hooking
            y = ap.multiply(y, 1.001)
            seen.append(float(np.asarray(y)[0]))
        loss = ap.sum(y)
    close(seen[-1], np.sin(0.5) * 1.001 ** 300, tol=1e-4)
    close(tape.gradient(loss, x), jax.grad(lambda u: jnp.sum(jnp.sin(u) * 1.001 ** 300))(x),
          tol=1e-4)


def test_a_read_after_each_op_interprets_only_the_new_ops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from adplugin.eager import recording

    counts: list[int] = []
    original = recording.evaluate

    def counting(nodes: Any, outputs: Any, env: Any) -> Any:
        counts.append(sum(1 for n in nodes if n.kind == "op"))
        return original(nodes, outputs, env)

    monkeypatch.setattr(recording, "evaluate", counting)
    v = ap.Variable(np.ones(3, np.float32))
    with ap.GradientTape() as tape:
        y = v * 1.0
        for _ in range(50):
            y = ap.tanh(y)
            float(ap.sum(y))  # a read after every op
        loss = ap.sum(y)
    assert len(counts) == 50 and max(counts) <= 5  # O(1) per read, not the whole prefix
    want = jax.grad(lambda u: jnp.sum(_tanh_chain(u * 1.0, 50)))(v.value)
    close(tape.gradient(loss, v), want, tol=1e-4)


def _tanh_chain(y: Any, n: int) -> Any:
    for _ in range(n):
        y = jnp.tanh(y)
    return y


def test_steps_with_and_without_extra_reads_each_keep_working() -> None:
    # The program cache used to hit with another leaf count: a step that read `b` after the
    # loss broke every later step of that structure. Steps here read `b` before the loss,
    # after it, or not at all, in turn; each must get its own (compiled) program.
    w = ap.Variable(np.float32(2.0))
    b = ap.Variable(np.float32(3.0))
    for step in range(9):
        with ap.GradientTape() as tape:
            extra = b * 2.0 if step % 3 == 0 else None  # a leaf before w's
            loss = ap.square(w * 1.5)
            if step % 3 == 1:
                extra = b * 2.0  # a leaf after the loss
        (gw,) = tape.gradient(loss, [w])
        close(gw, 2 * 1.5 * 1.5 * float(w.value))
        if extra is not None:
            close(extra, 2 * float(b.value))
        w.assign_sub(0.1 * gw)
        for p in program_module._PROGRAMS.values():  # later steps run compiled programs
            p.wait_compiled()


def _train(steps: int) -> list[Any]:
    w = ap.Variable(jnp.linspace(0.1, 0.4, 4))
    x = jnp.linspace(-1.0, 1.0, 4)
    out = []
    for _ in range(steps):
        with ap.GradientTape() as tape:
            loss = ap.sum(ap.exp(w * x) - w * w)
        g = tape.gradient(loss, w)
        out.append((np.asarray(g), np.asarray(g).dtype))
        w.assign_sub(0.01 * g)
    return out


@pytest.fixture
def compile_in_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """Programs never compile on their first call: the second one compiles in the background
    thread (the path that must carry the caller's configuration and survive failures)."""
    program_module._PROGRAMS.clear()
    monkeypatch.setattr(program_module.Program, "_compile_first", lambda self: False)


def test_background_compiles_run_in_the_callers_x64_context(compile_in_background: None
                                                            ) -> None:
    with jax.enable_x64(True):
        results = _train(3)
        for p in program_module._PROGRAMS.values():
            p.wait_compiled()
        results += _train(2)
        w = jnp.linspace(0.1, 0.4, 4)
        x = jnp.linspace(-1.0, 1.0, 4)
        want = jax.grad(lambda u: jnp.sum(jnp.exp(u * x) - u * u))(w)
    assert all(dtype == np.float64 for _, dtype in results)
    close(results[-2][0], want)
    compiled = [p for p in program_module._PROGRAMS.values() if p._compiled is not None]
    assert compiled, "the repeated structure was compiled"


@pytest.mark.parametrize("where", ["first call", "background"])
def test_a_failed_compile_warns_once_and_falls_back_to_interpretation(
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    program_module._PROGRAMS.clear()
    first = where == "first call"
    monkeypatch.setattr(program_module.Program, "_compile_first", lambda self: first)

    def broken(self: Any, values: Any) -> Any:
        raise RuntimeError("planted compile failure")

    monkeypatch.setattr(program_module.Program, "_compile", broken)
    x = jnp.linspace(0.0, 1.0, 5)
    w = ap.Variable(np.ones(5, np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            with ap.GradientTape() as tape:
                loss = ap.sum(ap.sin(w * x))
            g = tape.gradient(loss, w)
            close(g, x * np.cos(x))
            for p in program_module._PROGRAMS.values():
                p.wait_compiled()
    failures = [w for w in caught if "planted compile failure" in str(w.message)]
    assert len(failures) == 1


def test_programs_are_keyed_by_constant_values_not_identities() -> None:
    # Steps whose recorded constants (Python numbers) differ only in value must not share a
    # program; ones that agree do.
    w = ap.Variable(np.ones(3, np.float32))
    for scale in (2.0, 3.0, 2.0, 3.0, 2.0, 3.0):
        with ap.GradientTape() as tape:
            loss = ap.sum(w * w * scale)
        close(tape.gradient(loss, w), np.full(3, 2 * scale))
        for p in program_module._PROGRAMS.values():
            p.wait_compiled()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_structure_with_other_arrays_each_step_stays_right(dtype: str) -> None:
    # sum(k @ x): a NumPy constant k (a leaf, fed) and a watched array x, new values every
    # step. The structure repeats, so steps run interpreted, then compiled in the background,
    # then compiled: each must differentiate at its own values (jax.grad: k's column sums).
    rng = np.random.default_rng(7)
    with jax.enable_x64(dtype == "float64"):
        for _ in range(12):
            k = rng.standard_normal((3, 3)).astype(dtype)
            x = jnp.asarray(rng.standard_normal((3, 4)).astype(dtype))
            with ap.GradientTape() as tape:
                tape.watch(x)
                y = ap.sum(ap.matmul(k, x))
            got = tape.gradient(y, x)
            assert got.dtype == np.dtype(dtype)
            close(got, jax.grad(lambda v, k=k: jnp.sum(k @ v))(x))
            for p in program_module._PROGRAMS.values():
                p.wait_compiled()


def test_eager_constants_have_operators_and_are_recorded_when_watched() -> None:
    x = ap.constant(3.0)
    assert isinstance(x, EagerTensor)
    y = x * 2 + 1
    assert isinstance(y, EagerTensor) and float(y) == 7.0
    with ap.GradientTape() as tape:
        tape.watch(x)
        z = x * x * x
    close(tape.gradient(z, x), 27.0)
    with ap.GradientTape() as tape:  # not watched: not recorded
        z = x * x
    assert tape.gradient(z, x) is None


def test_no_hidden_default_graph() -> None:
    with pytest.raises(ap.GraphError, match="with ap.Graph"):
        ap.placeholder((2,))
    with pytest.raises(ap.GraphError, match="no graph"):
        ap.get_default_graph()
    with ap.Graph() as g:
        assert ap.get_default_graph() is g
        c = ap.constant(2.0)
        assert isinstance(c, ap.Tensor) and c.graph is g
