"""`ap.*` wrappers against `jax.numpy`: values, dtypes and gradients over drawn shapes, dtypes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import adplugin as ap

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

BINARY: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "add": (ap.add, jnp.add),
    "subtract": (ap.subtract, jnp.subtract),
    "multiply": (ap.multiply, jnp.multiply),
    "divide": (ap.divide, jnp.divide),
    "maximum": (ap.maximum, jnp.maximum),
    "minimum": (ap.minimum, jnp.minimum),
    "equal": (ap.equal, jnp.equal),
    "not_equal": (ap.not_equal, jnp.not_equal),
    "less": (ap.less, jnp.less),
    "less_equal": (ap.less_equal, jnp.less_equal),
    "greater": (ap.greater, jnp.greater),
    "greater_equal": (ap.greater_equal, jnp.greater_equal),
}
UNARY: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "negative": (ap.negative, jnp.negative),
    "square": (ap.square, jnp.square),
    "exp": (ap.exp, jnp.exp),
    "expm1": (ap.expm1, jnp.expm1),
    "sin": (ap.sin, jnp.sin),
    "cos": (ap.cos, jnp.cos),
    "tanh": (ap.tanh, jnp.tanh),
    "sigmoid": (ap.sigmoid, lambda x: jax.nn.sigmoid(jnp.asarray(x, jnp.result_type(x, 1.0)))),
    "abs": (ap.abs, jnp.abs),
    "sign": (ap.sign, jnp.sign),
    "isfinite": (ap.isfinite, jnp.isfinite),
}
POSITIVE_UNARY = {
    "sqrt": (ap.sqrt, jnp.sqrt),
    "log": (ap.log, jnp.log),
    "log1p": (ap.log1p, jnp.log1p),
}
DTYPES = [np.float32, np.int32, np.bool_, np.int8, np.uint8, np.float16]


def arrays(dtype: Any, shape: tuple[int, ...], low: float = -3, high: float = 3) -> Any:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        elements = st.booleans()
    elif dtype.kind in "iu":
        elements = st.integers(max(int(low), 0 if dtype.kind == "u" else -5), 5)
    else:
        elements = st.floats(low, high, width=dtype.itemsize * 8)
    return hnp.arrays(dtype, shape, elements=elements)


@st.composite
def broadcastable_pair(draw: Any, dtypes: list[Any] = DTYPES) -> tuple[Any, Any]:
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4))
    a_dtype, b_dtype = draw(st.sampled_from(dtypes)), draw(st.sampled_from(dtypes))
    scalar = draw(st.sampled_from([None, "a", "b"]))
    a = draw(arrays(a_dtype, shapes.input_shapes[0]))
    b = draw(arrays(b_dtype, shapes.input_shapes[1]))
    if scalar == "a":
        a = draw(st.sampled_from([2, 0.5, True]))
    if scalar == "b":
        b = draw(st.sampled_from([3, -1.5, False]))
    return a, b


def assert_same(got: Any, want: Any, rtol: float = 2e-6) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        tol = 2e-3 if want.dtype == np.float16 else rtol
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(pair=broadcastable_pair())
def test_binary_ops_match_jax_numpy(name: str, pair: tuple[Any, Any]) -> None:
    ours, theirs = BINARY[name]
    a, b = pair
    if name == "subtract" and all(np.asarray(v).dtype == bool for v in pair):
        return  # numpy forbids boolean subtraction; so do both libraries
    try:
        want = theirs(a, b)
    except TypeError:
        with pytest.raises(TypeError):
            ours(a, b)
        return
    assert_same(ours(a, b), want)


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(dtype=st.sampled_from(DTYPES), shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
       data=st.data())
def test_unary_ops_match_jax_numpy(name: str, dtype: Any, shape: Any, data: Any) -> None:
    ours, theirs = UNARY[name]
    if np.dtype(dtype) == np.bool_ and name in ("negative", "sign"):
        return
    x = data.draw(arrays(dtype, shape))
    assert_same(ours(x), theirs(x), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(POSITIVE_UNARY))
@SETTINGS
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), data=st.data())
def test_positive_domain_ops_match_jax_numpy(name: str, shape: Any, data: Any) -> None:
    ours, theirs = POSITIVE_UNARY[name]
    x = data.draw(arrays(np.float32, shape, low=0.125, high=5))
    assert_same(ours(x), theirs(x), rtol=1e-5)


@SETTINGS
@given(pair=broadcastable_pair(dtypes=[np.float32]))
def test_gradients_of_an_expression_match_jax_grad(pair: tuple[Any, Any]) -> None:
    a, b = (np.asarray(v, np.float32) for v in pair)

    def ours(a: Any, b: Any) -> Any:
        z = ap.add(ap.multiply(ap.sin(a), ap.tanh(b)), ap.maximum(a, b))
        return ap.multiply(ap.exp(ap.negative(ap.square(z))), ap.sigmoid(a))

    def theirs(a: Any, b: Any) -> Any:
        z = jnp.sin(a) * jnp.tanh(b) + jnp.maximum(a, b)
        return jnp.exp(-jnp.square(z)) * jax.nn.sigmoid(a)

    f, g = (lambda a, b, fn=fn: jnp.sum(fn(a, b)) for fn in (ours, theirs))
    for got, want in zip(jax.grad(f, (0, 1))(a, b), jax.grad(g, (0, 1))(a, b)):
        assert_same(got, want, rtol=1e-5)


@pytest.mark.parametrize("exponent", [0, 1, 2, 3, -1, -3, 0.5, 2.5])
def test_power_matches_jax_numpy_with_derivatives(exponent: Any) -> None:
    x = np.array([0.5, 1.5, 2.0, 3.0], np.float32)
    assert_same(ap.power(x, exponent), jnp.power(x, exponent), rtol=1e-6)
    for order in (jax.grad, lambda f: jax.grad(jax.grad(f))):
        got = jax.vmap(order(lambda v: ap.power(v, exponent)))(x)
        want = jax.vmap(order(lambda v: jnp.power(v, exponent)))(x)
        assert_same(got, want, rtol=1e-5)


def test_integer_power_of_integers_is_exact() -> None:
    x = np.arange(-4, 5, dtype=np.int32)
    assert_same(ap.power(x, 3), jnp.power(x, 3))
    assert_same(ap.power(x, np.int32(2)), jnp.power(x, np.int32(2)))


def test_edge_point_derivatives_follow_jax_grad() -> None:
    zero = np.float32(0.0)
    cases = [
        (ap.sqrt, jnp.sqrt),
        (ap.abs, jnp.abs),
        (lambda x: ap.maximum(x, 0.0), lambda x: jnp.maximum(x, 0.0)),
        (lambda x: ap.minimum(x, 0.0), lambda x: jnp.minimum(x, 0.0)),
        (lambda x: ap.power(x, 2.5), lambda x: jnp.power(x, 2.5)),
        (lambda x: ap.power(x, 0.0), lambda x: jnp.power(x, 0.0)),
        (lambda x: ap.power(x, 3), lambda x: jnp.power(x, 3)),
        (lambda x: ap.power(2.0, x), lambda x: jnp.power(2.0, x)),
        (lambda x: ap.power(zero, x), lambda x: jnp.power(zero, x)),
        (ap.sign, jnp.sign),
    ]
    for ours, theirs in cases:
        np.testing.assert_array_equal(jax.grad(ours)(zero), jax.grad(theirs)(zero))


def test_where_broadcasts_and_differentiates_like_jnp() -> None:
    c = np.array([True, False, True])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert_same(ap.where(c, x, 1.0), jnp.where(c, x, 1.0))
    assert_same(ap.where(np.array([1, 0, 2]), x, -x), jnp.where(np.array([1, 0, 2]), x, -x))
    got = jax.grad(lambda v: jnp.sum(ap.where(c, ap.sin(v), v * v)))(x)
    want = jax.grad(lambda v: jnp.sum(jnp.where(c, jnp.sin(v), v * v)))(x)
    assert_same(got, want)


def test_python_scalars_are_weakly_typed() -> None:
    x16 = np.ones(3, np.float16)
    assert ap.add(x16, 2.0).dtype == np.float16
    assert ap.multiply(np.ones(3, np.int8), 3).dtype == np.int8
    assert ap.add(1, 2).dtype == jnp.add(1, 2).dtype
    assert ap.add(np.ones(3, np.int32), 1.5).dtype == np.float32


def test_astype_and_stop_gradient() -> None:
    x = np.array([-1.5, 0.0, 2.7], np.float32)
    for dtype in (np.int32, np.bool_, np.float16, np.uint8):
        assert_same(ap.astype(x, dtype), jnp.asarray(x).astype(dtype))
    assert jax.grad(lambda v: ap.sum(ap.astype(v, np.int32).astype(np.float32) * v))(x) is not None
    assert float(jax.grad(lambda v: ap.stop_gradient(v) * v)(np.float32(3.0))) == 3.0


SHAPE_CASES = [
    (lambda x: ap.reshape(x, (3, -1)), lambda x: jnp.reshape(x, (3, -1))),
    (lambda x: ap.transpose(x), lambda x: jnp.transpose(x)),
    (lambda x: ap.transpose(x, (1, 0, 2)), lambda x: jnp.transpose(x, (1, 0, 2))),
    (lambda x: ap.expand_dims(x, (0, -1)), lambda x: jnp.expand_dims(x, (0, -1))),
    (lambda x: ap.squeeze(ap.expand_dims(x, 1), 1), lambda x: x),
    (lambda x: ap.broadcast_to(x, (2, 2, 3, 4)), lambda x: jnp.broadcast_to(x, (2, 2, 3, 4))),
    (lambda x: ap.concatenate([x, ap.sin(x)], axis=-1),
     lambda x: jnp.concatenate([x, jnp.sin(x)], axis=-1)),
]


@pytest.mark.parametrize("case", range(len(SHAPE_CASES)))
def test_shape_ops_match_jnp_with_gradients(case: int) -> None:
    ours, theirs = SHAPE_CASES[case]
    x = np.random.default_rng(case).standard_normal((2, 3, 4)).astype(np.float32)
    assert_same(ours(x), theirs(x))
    w = np.random.default_rng(9).standard_normal(np.shape(theirs(x))).astype(np.float32)
    got = jax.grad(lambda v: jnp.sum(ours(v) * w))(x)
    want = jax.grad(lambda v: jnp.sum(theirs(v) * w))(x)
    assert_same(got, want)


def test_float64_with_x64_enabled() -> None:
    with jax.enable_x64(True):
        x = np.linspace(0.1, 2.0, 5)
        for ours, theirs in [*UNARY.values(), *POSITIVE_UNARY.values()]:
            assert_same(ours(x), theirs(x), rtol=1e-12)
        assert ap.add(x, 1).dtype == np.float64
        got = jax.grad(lambda v: jnp.sum(ap.tanh(ap.multiply(v, v))))(x)
        want = jax.grad(lambda v: jnp.sum(jnp.tanh(v * v)))(x)
        assert_same(got, want, rtol=1e-12)
        m = np.linspace(-1.0, 1.0, 15).reshape(5, 3)
        pairs = [
            (lambda a: ap.matmul(a, a.T), lambda a: a @ a.T),
            (lambda a: ap.logsumexp(a, axis=0), lambda a: jax.nn.logsumexp(a, axis=0)),
            (lambda a: ap.mean(a, axis=1), lambda a: jnp.mean(a, axis=1)),
            (lambda a: ap.max(a), jnp.max),
            (lambda a: ap.take(a, np.array([4, 0, 2]), axis=0), lambda a: a[np.array([4, 0, 2])]),
            (lambda a: ap.power(a, 2.5), lambda a: jnp.power(a, 2.5)),
        ]
        for ours, theirs in pairs:
            assert_same(ours(m), theirs(m), rtol=1e-12)
            assert_same(jax.grad(lambda a, f=ours: jnp.sum(f(a)))(m),
                        jax.grad(lambda a, f=theirs: jnp.sum(f(a)))(m), rtol=1e-12)


def _mlp_ours(p: Any, x: Any) -> Any:
    h = ap.tanh(ap.add(ap.matmul(x, p["w1"]), p["b1"]))
    logits = ap.matmul(h, p["w2"])
    return ap.mean(ap.subtract(ap.logsumexp(logits, axis=-1), ap.take(logits, 0, axis=-1)))


def _mlp_jnp(p: Any, x: Any) -> Any:
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    logits = h @ p["w2"]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])


def test_every_jax_transformation_agrees_with_jnp_on_a_model() -> None:
    rng = np.random.default_rng(0)
    p = {"w1": rng.standard_normal((4, 5)).astype(np.float32) * 0.5,
         "b1": rng.standard_normal(5).astype(np.float32) * 0.1,
         "w2": rng.standard_normal((5, 3)).astype(np.float32) * 0.5}
    x = rng.standard_normal((8, 4)).astype(np.float32)
    for transform in (jax.grad, jax.jacfwd, jax.jacrev, jax.hessian,
                      lambda f: jax.jit(jax.grad(f))):
        got, want = transform(_mlp_ours)(p, x), transform(_mlp_jnp)(p, x)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    per_example = jax.vmap(jax.grad(_mlp_ours), in_axes=(None, 0))(p, x[:, None])
    want = jax.vmap(jax.grad(_mlp_jnp), in_axes=(None, 0))(p, x[:, None])
    for a, b in zip(jax.tree.leaves(per_example), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sharded_jit_over_host_devices_agrees_with_unsharded() -> None:
    from jax.sharding import NamedSharding, PartitionSpec

    n = len(jax.devices())
    assert n == 8, "the test setup asks for 8 host devices"
    rng = np.random.default_rng(1)
    p = {"w1": rng.standard_normal((4, 5)).astype(np.float32),
         "b1": np.zeros(5, np.float32), "w2": rng.standard_normal((5, 3)).astype(np.float32)}
    x = rng.standard_normal((16, 4)).astype(np.float32)
    mesh = jax.make_mesh((n,), ("batch",))
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch", None)))
    step = jax.jit(jax.value_and_grad(_mlp_ours))
    (v1, g1), (v2, g2) = step(p, xs), step(p, x)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    text = step.lower(p, xs).as_text()
    assert "custom_call" not in text and "stablehlo.dot_general" in text


REDUCTIONS = {
    "sum": (ap.sum, jnp.sum),
    "mean": (ap.mean, jnp.mean),
    "max": (ap.max, jnp.max),
    "logsumexp": (ap.logsumexp, jax.nn.logsumexp),
}


@st.composite
def reduction_case(draw: Any) -> tuple[Any, Any, bool]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    axes = draw(st.lists(st.integers(-len(shape), len(shape) - 1), max_size=len(shape),
                         unique_by=lambda a: a % len(shape)))
    axis = draw(st.sampled_from([None, tuple(axes)] + ([axes[0]] if axes else [])))
    dtype = draw(st.sampled_from([np.float32, np.int32, np.bool_, np.float16]))
    return draw(arrays(dtype, shape)), axis, draw(st.booleans())


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@SETTINGS
@given(case=reduction_case())
def test_reductions_match_jax_numpy_with_gradients(name: str, case: Any) -> None:
    ours, theirs = REDUCTIONS[name]
    x, axis, keepdims = case
    if name == "logsumexp" and np.asarray(x).dtype == np.bool_:
        x = np.asarray(x, np.float32)
    assert_same(ours(x, axis=axis, keepdims=keepdims), theirs(x, axis=axis, keepdims=keepdims),
                rtol=1e-5)
    if np.asarray(x).dtype == np.float32:
        got = jax.grad(lambda v: jnp.sum(ours(v, axis=axis, keepdims=keepdims)))(x)
        want = jax.grad(lambda v: jnp.sum(theirs(v, axis=axis, keepdims=keepdims)))(x)
        assert_same(got, want, rtol=1e-5)


@st.composite
def matmul_shapes(draw: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Operand shapes NumPy's matmul accepts: 1-D or matrices with broadcast batch dims."""
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    a = (k,) if draw(st.booleans()) else (*batch.input_shapes[0], n, k)
    b = (k,) if draw(st.booleans()) else (*batch.input_shapes[1], k, m)
    return a, b


@SETTINGS
@given(shapes=matmul_shapes(), data=st.data())
def test_matmul_broadcasting_matches_jax_numpy(shapes: Any, data: Any) -> None:
    a = data.draw(arrays(np.float32, shapes[0]))
    b = data.draw(arrays(np.float32, shapes[1]))
    assert_same(ap.matmul(a, b), jnp.matmul(a, b), rtol=1e-5)
    got = jax.grad(lambda u, v: jnp.sum(ap.matmul(u, v)), (0, 1))(a, b)
    want = jax.grad(lambda u, v: jnp.sum(jnp.matmul(u, v)), (0, 1))(a, b)
    for g, w in zip(got, want):
        assert_same(g, w, rtol=1e-5)
