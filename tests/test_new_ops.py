"""The ops added for issue 8 against jax.numpy / jax.nn: values, dtypes, jax.grad, jit, vmap,
graphs with ap.gradients, GradientTape, edge points (ties, zeros, NaN) and bad arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import adplugin as ap
from adplugin._errors import AxisError, OpShapeError, OpTypeError

RNG = np.random.default_rng(8)


def normal(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


F = normal(3, 4)
F[0, :2] = F[0, 2]  # a tie of three in row 0
F[1, 1] = 0.0
F3 = normal(2, 3, 4)
Z = normal(3, 4)
Z[1, 2] = Z[2, 0] = 0.0  # zeros for products
I = np.array([[0, 2, 1, 4], [3, 3, -1, 0]], np.int32)

# name -> (ap function, jax reference, operands)
CASES: dict[str, tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]] = {
    "min": (lambda x: ap.min(x, axis=1), lambda x: jnp.min(x, axis=1), (F,)),
    "min-all-keepdims": (lambda x: ap.min(x, keepdims=True),
                         lambda x: jnp.min(x, keepdims=True), (F3,)),
    "prod": (lambda x: ap.prod(x, axis=(0, 2)), lambda x: jnp.prod(x, axis=(0, 2)), (F3,)),
    "prod-zeros": (lambda x: ap.prod(x, axis=1), lambda x: jnp.prod(x, axis=1), (Z,)),
    "var": (lambda x: ap.var(x, axis=1, ddof=1), lambda x: jnp.var(x, axis=1, ddof=1), (F,)),
    "var-all": (ap.var, jnp.var, (F3,)),
    "std": (lambda x: ap.std(x, axis=0, keepdims=True),
            lambda x: jnp.std(x, axis=0, keepdims=True), (F,)),
    "argmax": (lambda x: ap.argmax(x, axis=1), lambda x: jnp.argmax(x, axis=1), (F,)),
    "argmax-flat": (lambda x: ap.argmax(x, keepdims=True),
                    lambda x: jnp.argmax(x, keepdims=True), (F3,)),
    "argmin": (lambda x: ap.argmin(x, axis=0), lambda x: jnp.argmin(x, axis=0), (F,)),
    "softmax": (ap.softmax, jax.nn.softmax, (F,)),
    "softmax-axes": (lambda x: ap.softmax(x, axis=(0, 2)),
                     lambda x: jax.nn.softmax(x, axis=(0, 2)), (F3,)),
    "log_softmax": (lambda x: ap.log_softmax(x, axis=0),
                    lambda x: jax.nn.log_softmax(x, axis=0), (F,)),
    "relu": (ap.relu, jax.nn.relu, (F,)),
    "clip": (lambda x: ap.clip(x, F[0, 0], 0.5), lambda x: jnp.clip(x, F[0, 0], 0.5), (F,)),
    "clip-max-only": (lambda x: ap.clip(x, max=0.0), lambda x: jnp.clip(x, max=0.0), (F,)),
    "tan": (ap.tan, jnp.tan, (F * 0.5,)),
    "erf": (ap.erf, jax.scipy.special.erf, (F,)),
    "stack": (lambda a, b: ap.stack([a, b], axis=1), lambda a, b: jnp.stack([a, b], axis=1),
              (F, Z)),
    "stack-last": (lambda a, b: ap.stack((a, b), axis=-1),
                   lambda a, b: jnp.stack((a, b), axis=-1), (F, Z)),
    "cumsum": (lambda x: ap.cumsum(x, axis=1), lambda x: jnp.cumsum(x, axis=1), (F,)),
    "cumsum-flat": (ap.cumsum, jnp.cumsum, (F3,)),
    "cumprod-zeros": (lambda x: ap.cumprod(x, axis=1), lambda x: jnp.cumprod(x, axis=1), (Z,)),
    "one_hot": (lambda i: ap.one_hot(i, 4), lambda i: jax.nn.one_hot(i, 4), (I,)),
    "one_hot-axis0": (lambda i: ap.one_hot(i, 5, axis=0), lambda i: jax.nn.one_hot(i, 5, axis=0),
                      (I,)),
    "sort": (lambda x: ap.sort(x, axis=1), lambda x: jnp.sort(x, axis=1), (F,)),
    "sort-flat": (lambda x: ap.sort(x, axis=None), lambda x: jnp.sort(x, axis=None), (F3,)),
    "argsort": (lambda x: ap.argsort(x, axis=0), lambda x: jnp.argsort(x, axis=0), (F,)),
    # primitives reached through lax (no NumPy wrapper): cumulative max/min/logsumexp
    "cummax": (lambda x: ap.get_primitive("cummax").bind(x, axis=1, reverse=False),
               lambda x: lax.cummax(x, axis=1), (F,)),
    "cummin-reverse": (lambda x: ap.get_primitive("cummin").bind(x, axis=1, reverse=True),
                       lambda x: lax.cummin(x, axis=1, reverse=True), (F,)),
    "cumlogsumexp": (lambda x: ap.get_primitive("cumlogsumexp").bind(x, axis=0, reverse=False),
                     lambda x: lax.cumlogsumexp(x, axis=0), (F,)),
    "clamp": (lambda x: ap.get_primitive("clamp").bind(np.full(x.shape, F[0, 0]), x,
                                                       np.full(x.shape, np.float32(0.5))),
              lambda x: lax.clamp(F[0, 0], x, np.float32(0.5)), (F,)),
}


def _is_float(x: Any) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.floating))


def _weights(shape: tuple[int, ...]) -> np.ndarray:
    # a weighted sum: plain sums of softmax (1) or sort outputs would hide wrong derivatives
    return np.linspace(-1.0, 2.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def _loss(fn: Callable[..., Any], shape: tuple[int, ...]) -> Callable[..., Any]:
    w = _weights(shape)
    return lambda *xs: jnp.sum(jnp.asarray(fn(*xs)) * w)


def _float_positions(args: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(args) if _is_float(a))


def _differentiable(name: str) -> bool:
    _, ref, args = CASES[name]
    return bool(_float_positions(args)) and _is_float(jax.eval_shape(ref, *args))


# argmax, argmin, argsort and one_hot give integers: their derivative tests do not apply
DIFFERENTIABLE = sorted(n for n in CASES if _differentiable(n))


def assert_same(got: Any, want: Any, rtol: float = 2e-6, atol: float = 2e-6) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.dtype, got.shape,
                                                                 want.dtype, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_dtypes_match_jax(name: str) -> None:
    fn, ref, args = CASES[name]
    assert_same(fn(*args), ref(*args))
    assert_same(jax.jit(fn)(*args), ref(*args))


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_grad_matches_jax_grad(name: str) -> None:
    fn, ref, args = CASES[name]
    free = _float_positions(args)
    out = jax.eval_shape(ref, *args)
    got = jax.grad(_loss(fn, out.shape), free)(*args)
    want = jax.grad(_loss(ref, out.shape), free)(*args)
    for g, w in zip(got, want):
        assert_same(g, w, rtol=1e-5, atol=1e-6)
    # second order where the op has one: the gradient of a weighted sum of the gradient
    got2 = jax.grad(lambda *a: jnp.sum(jax.grad(_loss(fn, out.shape), free)(*a)[0] ** 2),
                    free)(*args)
    want2 = jax.grad(lambda *a: jnp.sum(jax.grad(_loss(ref, out.shape), free)(*a)[0] ** 2),
                     free)(*args)
    for g, w in zip(got2, want2):
        assert_same(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_matches_a_loop(name: str) -> None:
    fn, ref, args = CASES[name]
    batch = [np.stack([a, a[::-1] if a.ndim else a, a]) for a in args]
    got = jax.vmap(fn)(*batch)
    want = np.stack([ref(*[b[k] for b in batch]) for k in range(3)])
    assert_same(got, want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_in_a_graph_with_gradients(name: str) -> None:
    fn, ref, args = CASES[name]
    out = jax.eval_shape(ref, *args)
    free = _float_positions(args)
    with ap.Graph() as g:
        xs = [ap.placeholder(a.shape, a.dtype) for a in args]
        y = fn(*xs)
        fetches = [y]
        if free and _is_float(out):
            loss = ap.sum(ap.multiply(y, _weights(out.shape)))
            fetches += ap.gradients(loss, [xs[i] for i in free])
    values = g.run(fetches, dict(zip(xs, args)))
    assert_same(values[0], ref(*args))
    if len(values) > 1:
        want = jax.grad(_loss(ref, out.shape), free)(*args)
        for got, w in zip(values[1:], want):
            assert_same(got, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_on_a_gradient_tape(name: str) -> None:
    fn, ref, args = CASES[name]
    out = jax.eval_shape(ref, *args)
    free = _float_positions(args)
    xs = [jnp.asarray(a) for a in args]
    with ap.GradientTape() as tape:
        for i in free:
            tape.watch(xs[i])
        loss = ap.sum(ap.multiply(fn(*xs), _weights(out.shape)))
    got = tape.gradient(loss, [xs[i] for i in free])
    want = jax.grad(_loss(ref, out.shape), free)(*args)
    for g, w in zip(got, want):
        assert_same(g, w, rtol=1e-5, atol=1e-6)
    assert_same(loss, _loss(ref, out.shape)(*args), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Edge points: ties, zeros, NaN, infinities
# ----------------------------------------------------------------------------------------------

def grads_agree(fn: Callable[..., Any], ref: Callable[..., Any], *args: Any) -> bool:
    """Whether jax.grad of sum(fn) and of sum(ref) agree at `args` (values must too)."""
    vals = np.allclose(fn(*args), ref(*args), equal_nan=True)
    got = jax.grad(lambda *a: jnp.sum(fn(*a)))(*args)
    want = jax.grad(lambda *a: jnp.sum(ref(*a)))(*args)
    return bool(vals and np.allclose(got, want, equal_nan=True, atol=1e-6))


EDGES: list[tuple[str, Callable[..., Any], Callable[..., Any], Any]] = [
    ("relu at 0 and NaN", ap.relu, jax.nn.relu, np.array([-1.0, 0.0, -0.0, 2.0, np.nan],
                                                            np.float32)),
    ("min ties", lambda x: ap.min(x), jnp.min, np.array([1.0, 1.0, 2.0, 1.0], np.float32)),
    ("min ties per row", lambda x: ap.min(x, axis=0), lambda x: jnp.min(x, axis=0),
     np.array([[1.0, 3.0], [1.0, 2.0]], np.float32)),
    ("clip at both bounds", lambda x: ap.clip(x, 0.0, 1.0), lambda x: jnp.clip(x, 0.0, 1.0),
     np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan], np.float32)),
    ("lax.clamp at both bounds (no operand gets the derivative)",
     lambda x: ap.get_primitive("clamp").bind(np.zeros(x.shape, np.float32), x,
                                              np.ones(x.shape, np.float32)),
     lambda x: lax.clamp(0.0, x, 1.0), np.array([-1.0, 0.0, 0.5, 1.0, 2.0], np.float32)),
    ("prod of zeros", lambda x: ap.prod(x), jnp.prod,
     np.array([0.0, 2.0, 0.0, 3.0, 1.5], np.float32)),
    ("prod of one zero", lambda x: ap.prod(x), jnp.prod,
     np.array([2.0, 0.0, 3.0], np.float32)),
    ("cumprod with zeros", lambda x: ap.cumprod(x), jnp.cumprod,
     np.array([2.0, 0.0, 3.0, 0.0, 4.0], np.float32)),
    ("cummax ties", lambda x: ap.get_primitive("cummax").bind(x, axis=0, reverse=False),
     lambda x: lax.cummax(x, axis=0), np.array([1.0, 3.0, 3.0, 2.0, 3.0, 5.0], np.float32)),
    ("sort ties, NaN and -0.0", lambda x: ap.sort(x) * np.arange(6.0, dtype=np.float32),
     lambda x: jnp.sort(x) * np.arange(6.0), np.array([1.0, np.nan, 0.0, -0.0, 1.0, -2.0],
                                                      np.float32)),
    ("softmax of large entries", lambda x: ap.softmax(x) * np.arange(3.0, dtype=np.float32),
     lambda x: jax.nn.softmax(x) * np.arange(3.0), np.array([1000.0, 999.0, -1000.0],
                                                              np.float32)),
    ("log_softmax with -inf", lambda x: ap.log_softmax(x)[1:],
     lambda x: jax.nn.log_softmax(x)[1:], np.array([-np.inf, 0.0, 1.0], np.float32)),
    ("std of a constant (infinite derivative)", lambda x: ap.std(x), jnp.std,
     np.array([2.0, 2.0, 2.0], np.float32)),
    ("var with ddof >= N is NaN", lambda x: ap.var(x, ddof=3), lambda x: jnp.var(x, ddof=3),
     np.array([1.0, 2.0, 4.0], np.float32)),
    ("erf far out", ap.erf, jax.scipy.special.erf, np.array([-6.0, 0.0, 6.0], np.float32)),
]


@pytest.mark.parametrize("case", EDGES, ids=[c[0] for c in EDGES])
def test_edge_points_match_jax(case: tuple[str, Any, Any, Any]) -> None:
    _, fn, ref, x = case
    assert grads_agree(fn, ref, x)


def test_edge_check_catches_a_primal_differentiated_relu() -> None:
    # the planted bug: relu as max(x, 0) has derivative 0.5 at 0, JAX's relu 0
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    assert not grads_agree(lambda v: ap.maximum(v, 0.0), jax.nn.relu, x)
    # and a min that gave a tie's whole derivative to one element
    assert not grads_agree(lambda v: v[0] + 0 * v, lambda v: jnp.min(v) + 0 * v,
                           np.array([1.0, 1.0], np.float32))


def test_edge_values() -> None:
    x = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(ap.argmax(x, axis=1), jnp.argmax(x, axis=1))  # [1, 0]
    np.testing.assert_array_equal(ap.argmin(x, axis=1), jnp.argmin(x, axis=1))
    assert ap.argmax(x, axis=1).tolist() == [1, 0]  # the first NaN; the first of tied maxima
    np.testing.assert_array_equal(ap.one_hot(np.array([-1, 5, 2]), 3),
                                  jax.nn.one_hot(np.array([-1, 5, 2]), 3))  # rows of zeros
    assert not np.any(np.isnan(ap.softmax(np.array([1e4, 0.0], np.float32))))


@pytest.mark.parametrize("fn, ref, x", [
    (ap.prod, jnp.prod, np.array([True, True, False])),
    (ap.cumsum, jnp.cumsum, np.array([True, True, False])),
    (ap.cumprod, jnp.cumprod, np.arange(1, 5, dtype=np.int8)),
    (ap.prod, jnp.prod, np.arange(1, 5, dtype=np.int16)),
    (ap.var, jnp.var, np.arange(6, dtype=np.int32)),
    (ap.std, jnp.std, np.arange(6, dtype=np.float16)),
    (ap.min, jnp.min, np.array([3, 250, 7], np.uint8)),
    (ap.argmax, jnp.argmax, np.array([False, True, True])),
    (ap.erf, jax.scipy.special.erf, np.arange(3, dtype=np.int32)),
    (ap.tan, jnp.tan, np.arange(3, dtype=np.int32)),
    (ap.relu, jax.nn.relu, np.array([-2, 0, 3], np.int32)),
    (ap.sort, jnp.sort, np.array([3, -1, 2], np.int32)),
    (ap.softmax, jax.nn.softmax, np.arange(4, dtype=np.int32)),
    (lambda x: ap.clip(x, 1, 2.5), lambda x: jnp.clip(x, 1, 2.5), np.arange(4, dtype=np.int32)),
    (lambda x: ap.stack([x, 1.5 * x]), lambda x: jnp.stack([x, 1.5 * x]),
     np.arange(3, dtype=np.int32)),
    (lambda x: ap.one_hot(x, 3, dtype=np.int32), lambda x: jax.nn.one_hot(x, 3, dtype=np.int32),
     np.arange(3, dtype=np.int32)),
], ids=["prod-bool", "cumsum-bool", "cumprod-int8", "prod-int16", "var-int", "std-f16",
        "min-uint8", "argmax-bool", "erf-int", "tan-int", "relu-int", "sort-int",
        "softmax-int", "clip-promotes", "stack-promotes", "one_hot-dtype"])
def test_dtype_promotion_matches_jnp(fn: Callable[..., Any], ref: Callable[..., Any],
                                     x: np.ndarray) -> None:
    assert_same(fn(x), ref(x), rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Bad arguments: clear errors naming the op
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, text", [
    (lambda: ap.min(F, axis=2), AxisError, "ap.min"),
    (lambda: ap.min(np.zeros((0, 3), np.float32), axis=0), OpShapeError, "no identity"),
    (lambda: ap.prod(F, axis=(0, 0)), AxisError, "ap.prod"),
    (lambda: ap.var(F, ddof="1"), OpTypeError, "ddof"),
    (lambda: ap.std(F, axis=-3), AxisError, "ap.std"),
    (lambda: ap.argmax(F, axis=(0, 1)), OpTypeError, "ap.argmax"),
    (lambda: ap.argmin(F, axis=2), AxisError, "ap.argmin"),
    (lambda: ap.argmax(np.zeros((0,), np.float32)), OpShapeError, "empty"),
    (lambda: ap.softmax(F, axis=3), AxisError, "ap.softmax"),
    (lambda: ap.log_softmax(F, axis="x"), OpTypeError, "ap.log_softmax"),
    (lambda: ap.one_hot(I, -1), OpTypeError, "num_classes"),
    (lambda: ap.one_hot(I, 3, axis=4), AxisError, "ap.one_hot"),
    (lambda: ap.stack([F, F[:2]]), OpShapeError, "same shape"),
    (lambda: ap.stack([]), OpTypeError, "ap.stack"),
    (lambda: ap.cumsum(F, axis=2), AxisError, "ap.cumsum"),
    (lambda: ap.cumprod(F, axis=1.0), OpTypeError, "ap.cumprod"),
    (lambda: ap.sort(np.float32(1.0)), OpShapeError, "ap.sort"),
    (lambda: ap.argsort(F, axis=5), AxisError, "ap.argsort"),
    (lambda: ap.tan("x"), OpTypeError, "ap.tan"),
    (lambda: ap.erf(None), OpTypeError, "ap.erf"),
    (lambda: ap.relu("x"), OpTypeError, "ap.relu"),
    (lambda: ap.clip("x", 0, 1), OpTypeError, "ap.maximum"),
    (lambda: ap.get_primitive("cumsum").bind(np.ones(3, bool), axis=0, reverse=False),
     OpTypeError, "ap.cumsum"),
    (lambda: ap.get_primitive("argmax").bind(F, axes=(0, 1), index_dtype=np.dtype(np.int32)),
     OpShapeError, "ap.argmax"),
    (lambda: ap.get_primitive("sort").bind(F, dimension=2, is_stable=True), OpShapeError,
     "ap.sort"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_raise_clear_errors(call: Callable[[], Any], error: type,
                                          text: str) -> None:
    with pytest.raises(error, match=text) as info:
        call()
    msg = str(info.value)
    assert "Given:" in msg and "Expected:" in msg and "Fix:" in msg, msg


def test_new_ops_are_exported_and_their_primitives_registered() -> None:
    for name in ("min", "prod", "var", "std", "argmax", "argmin", "softmax", "log_softmax",
                 "relu", "clip", "tan", "stack", "cumsum", "cumprod", "one_hot", "erf", "sort",
                 "argsort"):
        assert name in ap.__all__ and callable(getattr(ap, name)), name
    for prim in ("reduce_min", "reduce_prod", "argmax", "argmin", "cumsum", "cumprod", "cummax",
                 "cummin", "cumlogsumexp", "erf", "tan", "rem", "sort", "argsort", "clamp"):
        assert prim in ap.list_primitives(), prim
