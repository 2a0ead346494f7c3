"""Graphs: building, running, derivation (`ap.gradients` = `jax.grad`), simplification, errors."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_primitives import SPECS

import adplugin as ap
from adplugin._errors import DerivativeError
from adplugin._primitive import NOT_DIFFERENTIABLE, ZERO_DERIVATIVE
from adplugin.ir.graph import DERIVATIVE, GraphError
from adplugin.transforms.simplify import op_count, simplify

# piecewise-constant or refused derivatives: nothing to compare on random points
NON_DIFFERENTIABLE = {n for n in SPECS
                      if ap.get_primitive(n).jvp in (ZERO_DERIVATIVE, NOT_DIFFERENTIABLE)}
DIFFERENTIABLE = sorted(n for n in SPECS if n not in NON_DIFFERENTIABLE)


def _float_positions(args: tuple[Any, ...]) -> list[int]:
    return [i for i, a in enumerate(args) if np.asarray(a).dtype.kind == "f"]


def _weighted_output(name: str, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """A scalar function of the float operands: sum(w * prim(args)) and its JAX twin."""
    prim = ap.get_primitive(name)
    out_shape = jax.eval_shape(lambda *a: prim.bind(*a, **params), *args).shape
    w = np.random.default_rng(1).standard_normal(out_shape).astype(np.float32)
    floats = _float_positions(args)

    def jax_fn(*xs: Any) -> Any:
        full = list(args)
        for i, x in zip(floats, xs):
            full[i] = x
        return jnp.sum(prim.bind(*full, **params) * w)

    return jax_fn, w, floats


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_graph_gradients_equal_jax_grad_on_every_primitive(name: str) -> None:
    spec = SPECS[name]
    jax_fn, w, floats = _weighted_output(name, spec.args, spec.params)
    with ap.Graph() as g:
        holders = {i: ap.placeholder(np.shape(spec.args[i]), np.float32, name=f"x{i}")
                   for i in floats}
        operands = [holders.get(i, spec.args[i]) for i in range(len(spec.args))]
        y = ap.sum(ap.multiply(ap.get_primitive(name).bind(*operands, **spec.params), w))
        grads = ap.gradients(y, [holders[i] for i in floats])
        # second order: gradient of <grad, v>, a Hessian-vector product
        v = [np.full(np.shape(spec.args[i]), 0.5, np.float32) for i in floats]
        gv = functools.reduce(ap.add, [ap.sum(ap.multiply(gr, vi)) for gr, vi in zip(grads, v)])
        hvp = ap.gradients(gv, [holders[i] for i in floats], unconnected_gradients="zero")
    g.verify()
    feed = {holders[i]: spec.args[i] for i in floats}
    got, got_hvp = g.run([grads, hvp], feed)
    xs = [spec.args[i] for i in floats]
    want = jax.grad(jax_fn, argnums=tuple(range(len(xs))))(*xs)
    hess_v = jax.jvp(jax.grad(jax_fn, argnums=tuple(range(len(xs)))), xs, v)[1]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    for a, b in zip(got_hvp, hess_v):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


OPS = [
    ("sin", lambda x: ap.sin(x), jnp.sin),
    ("tanh", lambda x: ap.tanh(x), jnp.tanh),
    ("exp", lambda x: ap.exp(ap.multiply(x, 0.3)), lambda x: jnp.exp(x * 0.3)),
    ("square", lambda x: ap.square(x), jnp.square),
    ("sigmoid", lambda x: ap.sigmoid(x), jax.nn.sigmoid),
    ("log1p_sq", lambda x: ap.log1p(ap.square(x)), lambda x: jnp.log1p(jnp.square(x))),
]
BINOPS = [
    ("add", lambda x, y: x + y, lambda x, y: x + y),
    ("mul", lambda x, y: x * y, lambda x, y: x * y),
    ("sub", lambda x, y: x - y, lambda x, y: x - y),
    ("max", lambda x, y: ap.maximum(x, y), jnp.maximum),
    ("div", lambda x, y: x / (ap.square(y) + 1.0), lambda x, y: x / (jnp.square(y) + 1.0)),
]


@st.composite
def expressions(draw: Any) -> list[tuple[str, int, int]]:
    """A random expression DAG over inputs 0 and 1: (op, operand, operand) per step."""
    steps = []
    for k in range(draw(st.integers(1, 8))):
        available = k + 2
        if draw(st.booleans()):
            steps.append(("u" + str(draw(st.integers(0, len(OPS) - 1))),
                          draw(st.integers(0, available - 1)), -1))
        else:
            steps.append(("b" + str(draw(st.integers(0, len(BINOPS) - 1))),
                          draw(st.integers(0, available - 1)), draw(st.integers(0, available - 1))))
    return steps


def _evaluate(steps: list[tuple[str, int, int]], x: Any, y: Any, ours: bool) -> Any:
    values = [x, y]
    for op, i, j in steps:
        if op[0] == "u":
            fn = OPS[int(op[1:])][1 if ours else 2]
            values.append(fn(values[i]))
        else:
            fn = BINOPS[int(op[1:])][1 if ours else 2]
            values.append(fn(values[i], values[j]))
    total = values[-1]
    return ap.sum(total) if ours else jnp.sum(total)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(steps=expressions(), seed=st.integers(0, 1000))
def test_random_expression_graphs_match_jax(steps: list[tuple[str, int, int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    x0, y0 = (rng.uniform(-1.5, 1.5, 3).astype(np.float32) for _ in range(2))
    with ap.Graph() as g:
        x, y = ap.placeholder((3,), name="x"), ap.placeholder((3,), name="y")
        f = _evaluate(steps, x, y, ours=True)
        gx, gy = ap.gradients(f, [x, y], unconnected_gradients="zero")
        hx, hy = ap.gradients(ap.sum(gx), [x, y], unconnected_gradients="zero")
    value, grads, second = g.run([f, [gx, gy], [hx, hy]], {x: x0, y: y0})
    jf = lambda a, b: _evaluate(steps, a, b, ours=False)  # noqa: E731
    np.testing.assert_allclose(value, jf(x0, y0), rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, jax.grad(jf, (0, 1))(x0, y0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    want2 = jax.grad(lambda a, b: jnp.sum(jax.grad(jf, 0)(a, b)), (0, 1))(x0, y0)
    for a, b in zip(second, want2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_seed_polynomial_first_and_second_derivatives() -> None:
    with ap.Graph() as g:
        a, b = ap.placeholder((), name="a"), ap.placeholder((), name="b")
        f = 2 * a * b**2 + 3 * a**2 * b
        (da,) = ap.gradients(f, [a])
        (dab,) = ap.gradients(da, [b])
        (hess,) = ap.hessians(f, [a])
        (tangent,) = ap.forward_gradients(f, [a], [1.0])
    assert [float(v) for v in g.run([f, da, dab, hess, tangent], {a: 2.0, b: 3.0})] == \
        [72.0, 54.0, 24.0, 18.0, 54.0]
    assert any(n.role == DERIVATIVE for n in g.nodes)
    text = g.to_text([da])
    assert "integer_pow" in text and "# derivative" in text
    dot = g.to_dot([da])
    assert dot.startswith('digraph "') and "#f8cecc" in dot and "#dae8fc" in dot


def test_forward_gradients_of_placeholders_with_unknown_dims() -> None:
    # derived once the fed shape is known, per shape, as ap.gradients is
    with ap.Graph() as g:
        x = ap.placeholder((None, 3), name="x")
        t = ap.placeholder((None, 3), name="t")
        y = ap.sum(ap.tanh(x) * x, axis=1)
        (jv,) = ap.forward_gradients([y], [x], [t])
    rng = np.random.default_rng(3)
    for rows in (5, 2):
        xv, tv = (rng.standard_normal((rows, 3)).astype(np.float32) for _ in range(2))
        want = jax.jvp(lambda a: jnp.sum(jnp.tanh(a) * a, axis=1), (xv,), (tv,))[1]
        np.testing.assert_allclose(g.run(jv, {x: xv, t: tv}), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tangents do not match xs"):
        ap.forward_gradients([y], [x], [])


def test_hessians_of_a_vector_function() -> None:
    x0 = np.array([0.3, -0.7, 1.1], np.float32)
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        f = ap.sum(ap.sin(x) * ap.square(x)) + ap.sum(x)**2
        (h,) = ap.hessians(f, [x])
    want = jax.hessian(lambda v: jnp.sum(jnp.sin(v) * v**2) + jnp.sum(v)**2)(x0)
    np.testing.assert_allclose(g.run(h, {x: x0}), want, rtol=1e-5, atol=1e-5)


def test_gradients_to_an_intermediate_tensor_and_stop_gradient() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((), name="x")
        h = ap.sin(x)
        y = h * h + ap.stop_gradient(h) * x
        gh, gx = ap.gradients(y, [h, x])
    got_h, got_x = g.run([gh, gx], {x: 0.5})
    s = np.sin(np.float32(0.5))
    np.testing.assert_allclose(got_h, 2 * s, rtol=1e-6)
    np.testing.assert_allclose(got_x, 2 * s * np.cos(0.5) + s, rtol=1e-6)


def test_grad_ys_and_unconnected_gradients() -> None:
    with ap.Graph() as g:
        x, z = ap.placeholder((2,), name="x"), ap.placeholder((2,), name="z")
        y = ap.exp(x)
        gx, gz = ap.gradients(y, [x, z], grad_ys=np.array([2.0, 3.0], np.float32))
        (gz0,) = ap.gradients(y, [z], unconnected_gradients="zero")
    assert gz is None
    x0 = np.array([0.1, 0.2], np.float32)
    np.testing.assert_allclose(g.run(gx, {x: x0}), np.array([2, 3]) * np.exp(x0), rtol=1e-6)
    np.testing.assert_array_equal(g.run(gz0, {x: x0, z: x0}), [0, 0])


def test_simplification_keeps_derivative_graphs_small() -> None:
    n = 200
    with ap.Graph() as g:
        x = ap.placeholder((), name="x")
        y = x
        for _ in range(n // 2):
            y = ap.sin(y) * x
        (dx,) = ap.gradients(y, [x])
    small, mapping = simplify(g, [dx])
    small.verify()
    assert op_count(small, [mapping[dx.node.id]]) <= 5 * n  # n forward + <= 4n derivative
    assert op_count(small, [mapping[dx.node.id]]) < op_count(g, [dx])
    chain = jnp.float32(0.7)
    y_ref = chain
    f = lambda v: _chain(v, n)  # noqa: E731
    np.testing.assert_allclose(g.run(dx, {x: 0.7}), jax.grad(f)(y_ref), rtol=1e-4)


def _chain(v: Any, n: int) -> Any:
    y = v
    for _ in range(n // 2):
        y = jnp.sin(y) * v
    return y


def test_run_compiles_once_per_fetch_set() -> None:
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        y = ap.tanh(x) * 2.0
    for k in range(3):
        np.testing.assert_allclose(g.run(y, {x: np.full(3, k, np.float32)}),
                                   np.tanh(np.full(3, k)) * 2, rtol=1e-6)
    assert len(g._compiled) == 1
    assert "stablehlo.tanh" in g._compiled.values()[0].lower(
        np.zeros(3, np.float32)).as_text()


def test_ops_on_constants_inside_a_graph_add_nodes() -> None:
    with ap.Graph() as g:
        c = ap.add(1.0, 2.0)
    assert isinstance(c, ap.Tensor) and float(g.run(c)) == 3.0


ERRORS = [
    ("wrong feed shape", lambda g, x, y: g.run(y, {x: np.ones(4, np.float32)}),
     r"wrong shape fed for x"),
    ("wrong feed dtype", lambda g, x, y: g.run(y, {x: np.array(["a", "b", "c"])}),
     r"wrong dtype fed for x"),
    ("missing feed", lambda g, x, y: g.run(y, {}), r"placeholder .* was not fed.*x"),
    ("foreign fetch", lambda g, x, y: ap.Graph().run(y, {x: np.ones(3, np.float32)}),
     r"fetched a tensor of another graph"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_graph_errors_name_the_tensor(case: Any) -> None:
    _, call, pattern = case
    with ap.Graph() as g:
        x = ap.placeholder((3,), name="x")
        y = ap.sin(x)
    with pytest.raises(GraphError, match=pattern):
        call(g, x, y)


def test_gradient_of_an_integer_tensor_is_refused() -> None:
    with ap.Graph():
        k = ap.placeholder((3,), np.int32, name="k")
        y = ap.sum(ap.astype(k, np.float32))
        with pytest.raises(DerivativeError, match="non-floating tensor k"):
            ap.gradients(y, [k])


def test_mixing_graphs_is_refused() -> None:
    with ap.Graph():
        a = ap.placeholder((), name="a")
    with ap.Graph():
        b = ap.placeholder((), name="b")
        with pytest.raises(GraphError, match="another graph"):
            ap.add(a, b)


def test_basic_indexing_of_tensors_matches_numpy_with_gradients() -> None:
    x0 = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    keys: list[Any] = [0, (slice(None), 1), (Ellipsis, -1), (None, slice(1, None), slice(None, 2)),
                       (1, 2, 3), (slice(None), slice(1, 3), None), slice(5, 9)]
    with ap.Graph() as g:
        x = ap.placeholder((2, 3, 4), name="x")
        outs = [x[k] for k in keys]
        (grad,) = ap.gradients(ap.sum(x[0, :, 1:]) + x[1, 2, 3], [x])
    for got, k in zip(g.run(outs, {x: x0}), keys):
        np.testing.assert_array_equal(got, x0[k])
    want = jax.grad(lambda v: jnp.sum(v[0, :, 1:]) + v[1, 2, 3])(x0)
    np.testing.assert_array_equal(g.run(grad, {x: x0}), want)
    with pytest.raises(IndexError, match="out of range"):
        x[2]
    with pytest.raises(IndexError, match="unit-step"):
        x[::2]
